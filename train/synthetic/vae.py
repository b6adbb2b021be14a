"""Train the tiny AutoencoderKL of the synthetic benchmark on synthetic person and garment images.

Why: a randomly initialised VAE turns every image into noise, so the tiny Leffa model needs a VAE of its
own before its UNets can learn anything. Loss: L1 + ``gradient_weight`` x L1 of the images' finite
differences (keeps the stripe and glyph edges that plain L1 blurs; LPIPS needs pretrained weights this
offline project does not have) + ``kl_weight`` x KL, as in latent diffusion. The latent scaling factor is
measured after training (1 / std of the latents), as Stable Diffusion's 0.18215 was.

Usage: ``python -m train.synthetic.vae train/configs/synthetic-vae.yaml`` writes ``vae.safetensors``,
``vae.json`` (config with the measured scaling factor) and ``metrics.json`` to the config's output_dir.

Config (YAML, every key required unless a default is given):

- ``output_dir``: folder for the outputs; ``seed``: weights, data order and posterior samples.
- ``data``: ``size`` [height, width], ``train_count`` distinct training samples, ``eval_count`` test
  samples for the reconstruction metrics, ``synthetic_seed`` (base seed of the splits), ``cache_dir``.
- ``vae_config``: keys overriding ``leffa/core/base_configs/tiny/vae.json``.
- ``steps``, ``batch_size``, ``learning_rate``, ``warmup_steps`` (default 100), ``kl_weight``,
  ``gradient_weight``, ``log_every`` (default 100), ``crop`` ([height, width] of random training crops,
  multiples of the VAE's downsampling; default: whole images).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from diffusers import AutoencoderKL
from safetensors.torch import save_file

from leffa.core.configs import load_base_configs
from train.synthetic.eval import masked_psnr, masked_ssim, render_split, to_batch


@dataclass(frozen=True)
class VaeTrainConfig:
    """See the module docstring for the meaning of each key."""

    output_dir: str
    seed: int
    data: dict[str, Any]
    vae_config: dict[str, Any]
    steps: int
    batch_size: int
    learning_rate: float
    kl_weight: float
    gradient_weight: float
    warmup_steps: int = 100
    log_every: int = 100
    crop: list[int] | None = None


_DATA_KEYS = ("size", "train_count", "eval_count", "synthetic_seed", "cache_dir")


def load_vae_config(path: str | Path) -> VaeTrainConfig:
    """Read and check a VAE training config; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}; see train/configs/synthetic-vae.yaml")
    raw = yaml.safe_load(path.read_text())
    names = [f.name for f in fields(VaeTrainConfig)]
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a mapping with keys {', '.join(names)}")
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; valid keys: {', '.join(names)}")
    data = raw.get("data")
    if not isinstance(data, dict) or sorted(data) != sorted(_DATA_KEYS):
        raise ValueError(f"{path}: data must have exactly the keys {', '.join(_DATA_KEYS)}, got {data!r}")
    try:
        config = VaeTrainConfig(**{**raw, "learning_rate": float(raw.get("learning_rate", "nan"))})
    except TypeError as error:
        raise ValueError(f"{path}: {error}") from error
    for key in ("steps", "batch_size"):
        if not isinstance(getattr(config, key), int) or getattr(config, key) < 1:
            raise ValueError(f"{path}: {key} must be a positive int, got {getattr(config, key)!r}")
    if not config.learning_rate > 0:
        raise ValueError(f"{path}: learning_rate must be a number > 0, got {raw.get('learning_rate')!r}")
    return config


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


def _learning_rate(step: int, config: VaeTrainConfig) -> float:
    """Linear warmup, then cosine decay to zero."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))


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
    data = config.data
    size = tuple(data["size"])
    train = render_split(
        "train",
        data["train_count"],
        size,
        data["synthetic_seed"],
        with_flow=False,
        cache_dir=data["cache_dir"],
    )
    test = render_split("test", data["eval_count"], size, data["synthetic_seed"], cache_dir=data["cache_dir"])
    vae = build_vae(config.vae_config)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed)
    count = len(train["seed"])
    vae.train()
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, config)
        index = torch.randint(0, count, (config.batch_size,), generator=generator).numpy()
        images = _training_images(to_batch(train, index), generator, tuple(config.crop) if config.crop else None)
        posterior = vae.encode(images).latent_dist
        reconstruction = vae.decode(posterior.sample(generator)).sample
        rec_loss = reconstruction_loss(reconstruction, images, config.gradient_weight)
        kl = posterior.kl().mean() / images[0].numel()
        loss = rec_loss + config.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % config.log_every == 0 or step == config.steps - 1:
            log(
                f"step {step} loss {loss.item():.4f} rec {rec_loss.item():.4f} kl {kl.item():.3f} {time.time() - start:.0f}s"
            )
    vae.eval()
    sample_images = to_batch(train, np.arange(min(count, 512)))
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
    parser.add_argument("config", help="YAML config, e.g. train/configs/synthetic-vae.yaml")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared, busy CPU)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    train_vae(load_vae_config(args.config), log=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
