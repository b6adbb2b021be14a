"""Train the tiny AutoencoderKL of the synthetic benchmark on synthetic person and garment images.

Why: a randomly initialised VAE turns every image into noise, so the tiny Leffa model needs a VAE of its
own before its UNets can learn anything. Loss: L1 + ``gradient_weight`` x L1 of the images' finite
differences (keeps the stripe and glyph edges that plain L1 blurs; LPIPS needs pretrained weights this
offline project does not have) + ``kl_weight`` x KL, as in latent diffusion. The latent scaling factor is
measured after training (1 / std of the latents), as Stable Diffusion's 0.18215 was.

Usage: ``python -m train.synthetic.vae train/configs/synthetic/vae.yaml [--override key=value ...]`` writes
``vae.safetensors``, ``vae.json`` (config with the measured scaling factor) and ``metrics.json`` to the
config's output_dir.

Config: :class:`VaeTrainConfig`, read by the trainer's config system (``train/config.py``: same errors,
same ``--override``); ``data`` and ``optim`` are the trainer's sections (``data.type`` is ``synthetic``,
``data.length`` the number of distinct training samples; ``optim`` gives AdamW and the warmup + schedule),
``vae_config`` overrides ``leffa/core/base_configs/tiny/vae.json``, and ``train`` is this loop's own.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from diffusers import AutoencoderKL
from pydantic import Field
from safetensors.torch import save_file

from leffa.core.configs import load_base_configs
from train.config import ConfigError, DataConfig, ImageSize, Number, OptimConfig, Section, load_config
from train.batches import stack_items
from train.optimization import make_lr_scheduler, make_optimizer
from train.synthetic.data import render_split, to_batch
from train.synthetic.eval import masked_psnr, masked_ssim
from train.train import build_dataset


class VaeDataConfig(DataConfig):
    """The trainer's data section, rendered synthetic samples only."""

    type: Literal["synthetic"] = "synthetic"


class VaeLoopConfig(Section):
    """``crop``: [height, width] of random training crops, multiples of the VAE's downsampling (default:
    whole images); ``eval_count`` test samples score the reconstructions."""

    max_steps: Annotated[int, Field(ge=1)]
    batch_size: Annotated[int, Field(ge=1)]
    kl_weight: Annotated[Number, Field(ge=0.0)]
    gradient_weight: Annotated[Number, Field(ge=0.0)]
    crop: ImageSize | None = None
    eval_count: Annotated[int, Field(ge=1)] = 64
    log_every: Annotated[int, Field(ge=1)] = 100


class VaeTrainConfig(Section):
    """A VAE training run: ``seed`` fixes the weights, data order and posterior samples."""

    output_dir: str
    seed: Annotated[int, Field(ge=0)] = 0
    data: VaeDataConfig
    vae_config: dict[str, Any] = Field(default_factory=dict)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: VaeLoopConfig


#: Initial log-variance of the posterior. At diffusers' default (0) the decoder first sees latents buried in
#: unit-variance noise and a short CPU run ends blurry and grey; starting near-deterministic avoids that,
#: and the KL term is free to raise it.
INITIAL_LOG_VARIANCE = -10.0


def build_vae(overrides: dict[str, Any]) -> AutoencoderKL:
    """An AutoencoderKL from the tiny base config with ``overrides`` applied, posterior variance near zero."""
    vae = AutoencoderKL.from_config({**load_base_configs("tiny").vae, **overrides})
    latent_channels = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.bias[latent_channels:] = INITIAL_LOG_VARIANCE
    return vae


def _finite_differences(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return images[..., 1:, :] - images[..., :-1, :], images[..., :, 1:] - images[..., :, :-1]


def reconstruction_loss(
    reconstruction: torch.Tensor, images: torch.Tensor, gradient_weight: float
) -> torch.Tensor:
    """L1 of the pixels plus ``gradient_weight`` x L1 of the vertical and horizontal differences."""
    loss = (reconstruction - images).abs().mean()
    for rec_d, img_d in zip(_finite_differences(reconstruction), _finite_differences(images), strict=True):
        loss = loss + gradient_weight * (rec_d - img_d).abs().mean()
    return loss


def _training_images(
    batch: dict[str, torch.Tensor], generator: torch.Generator, crop: tuple[int, int] | None
) -> torch.Tensor:
    """Each item is the person, the garment or the masked person (what the Leffa model encodes), at random,
    cut to a random ``crop`` (one offset per batch) when given: the VAE is convolutional, and a quarter-size
    crop costs a quarter of a step, so more steps fit the same CPU time."""
    masked = batch["image"] * (batch["mask"] < 0.5)
    choice = torch.randint(0, 3, (batch["image"].shape[0],), generator=generator).view(-1, 1, 1, 1)
    images = torch.where(choice == 0, batch["image"], torch.where(choice == 1, batch["reference"], masked))
    if crop is None:
        return images
    height, width = images.shape[-2:]
    top = int(torch.randint(0, height - crop[0] + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - crop[1] + 1, (1,), generator=generator))
    return images[..., top : top + crop[0], left : left + crop[1]]


@torch.no_grad()
def measure_scaling_factor(vae: AutoencoderKL, images: torch.Tensor, generator: torch.Generator) -> float:
    """1 / std of posterior samples, so scaled latents have unit variance like the noise."""
    latents = torch.cat([vae.encode(chunk).latent_dist.sample(generator) for chunk in images.split(64)])
    return float(1.0 / latents.float().std())


@torch.no_grad()
def reconstruction_metrics(vae: AutoencoderKL, split: dict[str, np.ndarray]) -> dict[str, float]:
    """PSNR/SSIM of posterior-mean reconstructions: whole person and garment images, and the visible
    garment region of the person (the texture the try-on model must reproduce)."""
    vae.eval()
    batch = to_batch(split, np.arange(len(split["seed"])))
    scores: dict[str, list[torch.Tensor]] = {}
    for name in ("image", "reference"):
        for chunk, region in zip(
            batch[name].split(32), (batch["flow_valid"] * batch["mask"]).split(32), strict=True
        ):
            rec = vae.decode(vae.encode(chunk).latent_dist.mode()).sample
            a, b = (rec / 2 + 0.5).clamp(0, 1), (chunk / 2 + 0.5).clamp(0, 1)
            full = torch.ones_like(region)
            label = "person" if name == "image" else "garment"
            scores.setdefault(f"{label}_psnr", []).append(masked_psnr(a, b, full))
            scores.setdefault(f"{label}_ssim", []).append(masked_ssim(a, b, full))
            if name == "image":
                scores.setdefault("person_garment_region_psnr", []).append(masked_psnr(a, b, region))
                scores.setdefault("person_garment_region_ssim", []).append(masked_ssim(a, b, region))
    return {key: float(torch.cat(values).double().mean()) for key, values in scores.items()}


def train_vae(config: VaeTrainConfig, log=print) -> dict[str, Any]:
    """Train, measure the scaling factor, evaluate and save; returns the metrics written to metrics.json."""
    start = time.time()
    torch.manual_seed(config.seed)
    data, loop = config.data, config.train
    seed = data.synthetic_seed or 0
    train = build_dataset(data, "train")
    test = render_split("test", loop.eval_count, data.size, seed, cache_dir=data.cache_dir)
    vae = build_vae(config.vae_config)
    optimizer = make_optimizer(vae.parameters(), config.optim)
    lr_scheduler = make_lr_scheduler(optimizer, config.optim, loop.max_steps)
    generator = torch.Generator().manual_seed(config.seed)
    count = len(train)
    vae.train()
    for step in range(loop.max_steps):
        index = torch.randint(0, count, (loop.batch_size,), generator=generator).numpy()
        images = _training_images(stack_items([train[i] for i in index]), generator, loop.crop)
        posterior = vae.encode(images).latent_dist
        reconstruction = vae.decode(posterior.sample(generator)).sample
        rec_loss = reconstruction_loss(reconstruction, images, loop.gradient_weight)
        kl = posterior.kl().mean() / images[0].numel()
        loss = rec_loss + loop.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.optim.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(vae.parameters(), config.optim.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        if step % loop.log_every == 0 or step == loop.max_steps - 1:
            log(
                f"step {step} loss {loss.item():.4f} rec {rec_loss.item():.4f} kl {kl.item():.3f} {time.time() - start:.0f}s"
            )
    vae.eval()
    sample_images = stack_items([train[i] for i in range(min(count, 512))])
    scale = measure_scaling_factor(
        vae, torch.cat([sample_images["image"], sample_images["reference"]]), generator
    )
    vae.register_to_config(scaling_factor=scale)
    metrics = {
        **reconstruction_metrics(vae, test),
        "scaling_factor": scale,
        "wall_seconds": time.time() - start,
    }
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {name: t.detach().contiguous() for name, t in vae.state_dict().items()}, str(out / "vae.safetensors")
    )
    config_dict = {key: value for key, value in dict(vae.config).items() if not key.startswith("_")}
    (out / "vae.json").write_text(
        json.dumps({"_class_name": "AutoencoderKL", **config_dict}, indent=2, default=list)
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log(f"done: {json.dumps(metrics)}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the synthetic benchmark's tiny VAE")
    parser.add_argument("config", help="YAML config, e.g. train/configs/synthetic/vae.yaml")
    parser.add_argument(
        "--override", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="replace config values"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared, busy CPU)"
    )
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.override, schema=VaeTrainConfig)
    except (FileNotFoundError, ConfigError) as error:
        parser.exit(2, f"error: {error}\n")
    torch.set_num_threads(args.threads)
    train_vae(config, log=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
