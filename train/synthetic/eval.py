"""Metrics of the synthetic try-on benchmark: attention-flow error against the true flow, and image quality.

Why a separate module: the synthetic task knows, for every garment pixel of the target, where it comes from
in the garment image (``train/synthetic/people.py``), so the flow read out of attention (``leffa.core.flow``) can be
scored directly in pixels instead of through FID. Everything here is deterministic for a given seed.

Conventions: images are float (B, 3, H, W) in [0, 1] for the image metrics; regions are (B, 1, H, W) or
(B, H, W) masks; flows are absolute ``grid_sample`` positions (``align_corners=True``), as in ``leffa.core.flow``.
The scored region of the flow and texture metrics is ``flow_valid`` (target pixels that show the garment),
which lies inside the inpainting mask.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch import Tensor

from leffa.core.attention import AttentionObserver
from leffa.core.flow import attention_to_flow, end_point_error, leffa_loss, reference_grid, upsample_flow, warp
from leffa.eval.metrics import ssim_map
from leffa.core.model import LeffaModel
from leffa.core.pipeline import LeffaPipeline
from leffa.core.recording import layer_sizes, record_attention
from train.batches import generate_batch
from train.synthetic.data import to_batch


# --------------------------------------------------------------------------------------- image metrics


def _region(region: Tensor, images: Tensor) -> Tensor:
    """``region`` as float (B, 1, H, W) matching ``images`` (B, C, H, W)."""
    if region.ndim == 3:
        region = region[:, None]
    batch, _, height, width = images.shape
    if region.shape != (batch, 1, height, width):
        raise ValueError(
            f"region must have shape {(batch, 1, height, width)} or {(batch, height, width)}, "
            f"got {tuple(region.shape)}"
        )
    return region.to(images.dtype)


def _check_pair(a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(
            f"images must both be (B, C, H, W) of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def masked_l1(a: Tensor, b: Tensor, region: Tensor) -> Tensor:
    """Mean absolute difference over the region's pixels and all channels, per image ``(B,)``."""
    _check_pair(a, b)
    weights = _region(region, a)
    total = ((a - b).abs() * weights).sum(dim=(1, 2, 3))
    return total / (weights.sum(dim=(1, 2, 3)) * a.shape[1])


def masked_psnr(a: Tensor, b: Tensor, region: Tensor, data_range: float = 1.0) -> Tensor:
    """PSNR in dB of the mean squared error over the region's pixels, per image ``(B,)``."""
    _check_pair(a, b)
    weights = _region(region, a).double()
    squared = ((a.double() - b.double()) ** 2 * weights).sum(dim=(1, 2, 3))
    mse = squared / (weights.sum(dim=(1, 2, 3)) * a.shape[1])
    return (10.0 * torch.log10(data_range**2 / mse)).to(a.dtype)


def masked_ssim(a: Tensor, b: Tensor, region: Tensor) -> Tensor:
    """SSIM (torchmetrics, data range 1) with its per-pixel map averaged over the region, per image."""
    _check_pair(a, b)
    weights = _region(region, a).double()
    index = ssim_map(a, b)
    score = (index.mean(dim=1, keepdim=True) * weights).sum(dim=(1, 2, 3)) / weights.sum(dim=(1, 2, 3))
    return score.to(a.dtype)


def image_metrics(generated: Tensor, target: Tensor, garment: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Per-image L1 / PSNR / SSIM of the visible garment region and L1 of the whole mask, images in [0, 1]."""
    return {
        "garment_l1": masked_l1(generated, target, garment),
        "garment_psnr": masked_psnr(generated, target, garment),
        "garment_ssim": masked_ssim(generated, target, garment),
        "mask_l1": masked_l1(generated, target, mask),
    }


# ---------------------------------------------------------------------------------------- flow metrics


def flow_epe(flow: Tensor, true_flow: Tensor, valid: Tensor) -> Tensor:
    """End-point error in image pixels, per sample ``(B,)``: ``flow`` (B, h, w, 2) is first upsampled
    bilinearly to the true flow's size (B, H, W, 2), as the Leffa loss upsamples it before warping."""
    height, width = true_flow.shape[1:3]
    return end_point_error(upsample_flow(flow.float(), (height, width)), true_flow.float(), valid)


def identity_flow(batch: int, height: int, width: int) -> Tensor:
    """Every pixel points at the same position in the reference (the 'copy in place' baseline)."""
    return reference_grid(height, width).reshape(1, height, width, 2).expand(batch, -1, -1, -1).clone()


def uniform_attention_flow(batch: int, query_size: tuple[int, int], key_size: tuple[int, int]) -> Tensor:
    """The flow of attention spread evenly over all reference tokens (the 'attends nowhere' baseline).

    Every query gets the mean reference position, the centre of the reference, whatever the grids.
    """
    keys = key_size[0] * key_size[1]
    attention = torch.full((batch, query_size[0] * query_size[1], keys), 1.0 / keys)
    return attention_to_flow(attention, query_size, key_size)


def warp_l1(reference: Tensor, target: Tensor, flow: Tensor, valid: Tensor) -> Tensor:
    """L1 between the target and the reference warped by ``flow``, over ``valid``; images in [0, 1]."""
    return masked_l1(warp(reference, flow.float()), target, valid)


# ---------------------------------------------------------------------------------------- model probes


@dataclass(frozen=True)
class EvalSettings:
    """What the benchmark measures; the defaults are the ones reported in ``docs/synthetic-benchmark.md``."""

    timesteps: tuple[int, ...] = (100, 300)
    temperature: float = 1.0
    num_inference_steps: int = 20
    sampler_trace_timesteps: tuple[int, ...] = (101, 301)
    sampler_count: int = 16
    guidance_scale: float = 2.5
    seed: int = 0
    batch_size: int = 16


def _unit(images: Tensor) -> Tensor:
    return (images.float() / 2 + 0.5).clamp(0, 1)


@dataclass(frozen=True)
class TeacherForcing:
    """A batch's true latent with fixed noise and its conditioning at latent size: what the teacher-forced
    passes feed the model, drawn once per seed so every model and timestep sees the same noise."""

    latents: Tensor
    masked: Tensor
    ref_latents: Tensor
    noise: Tensor
    mask: Tensor
    densepose: Tensor
    scheduler: DDPMScheduler

    @classmethod
    def of(cls, model: LeffaModel, batch: Mapping[str, Tensor], seed: int = 0) -> TeacherForcing:
        generator = torch.Generator().manual_seed(seed)
        size = batch["image"].shape[-2:]
        latent_hw = (size[0] // model.vae_scale_factor, size[1] // model.vae_scale_factor)
        latents = model.encode_image(batch["image"], generator).float()
        masked = model.encode_image(batch["image"] * (batch["mask"] < 0.5), generator)
        ref_latents = model.encode_image(batch["reference"], generator)
        noise = torch.randn(latents.shape, generator=generator)
        mask = F.interpolate(batch["mask"], size=latent_hw, mode="nearest")
        densepose = F.interpolate(batch["densepose"], size=latent_hw, mode="nearest")
        return cls(latents, masked, ref_latents, noise, mask, densepose, model.make_scheduler())

    def predict(self, model: LeffaModel, t: int, observer: AttentionObserver) -> tuple[Tensor, Tensor]:
        """The latent noised to timestep ``t`` and the model's conditional noise prediction on it."""
        step = torch.full((self.latents.shape[0],), int(t), dtype=torch.long)
        noisy = self.scheduler.add_noise(self.latents, self.noise, step)
        features = model.reference_features(self.ref_latents, step)
        eps = model.predict_noise(noisy, self.mask, self.masked, self.densepose, step, features, observer=observer)
        return noisy, eps


@torch.no_grad()
def teacher_forced(
    model: LeffaModel,
    batch: Mapping[str, Tensor],
    timesteps: Iterable[int],
    *,
    temperature: float = 1.0,
    seed: int = 0,
    rows: Sequence[tuple[float, float]] | None = None,
) -> dict[int, dict]:
    """One conditional forward pass per timestep on the noised true latent (same noise for every model).

    Returns per timestep: ``flows`` per layer (B, h, w, 2), ``x0`` (B, 3, H, W) in [0, 1] (the decoded
    one-step estimate of the clean image) and, when ``rows`` (query points in normalised image coordinates)
    are given, ``rows`` per layer (B, points, reference tokens): where those queries attend.
    """
    forced = TeacherForcing.of(model, batch, seed)
    results = {}
    for t in timesteps:
        recorder = record_attention(model, "all", flows=True, rows=rows, temperature=temperature)
        noisy, eps = forced.predict(model, t, recorder)
        eps = eps.float()
        alpha = forced.scheduler.alphas_cumprod[int(t)].float()
        x0 = (noisy - (1 - alpha).sqrt() * eps) / alpha.sqrt()
        results[int(t)] = {
            "flows": recorder.flows_at(None),
            "x0": _unit(model.decode_latents(x0)),
            "rows": {layer: value for (_, layer), value in recorder.row_records.items()},
        }
    return results


@torch.no_grad()
def sample(
    model: LeffaModel, batch: Mapping[str, Tensor], settings: EvalSettings, *, ref_acceleration: bool = False
) -> tuple[Tensor, dict[int, dict[str, Tensor]]]:
    """Generated images (B, 3, H, W) in [0, 1] and the conditional branch's flows at the traced timesteps.

    Flows are recorded only without reference acceleration (with it, every step attends to the features
    of one fixed timestep, so per-timestep flows say nothing new).
    """
    pipe = LeffaPipeline(model, uncond_cache_bytes=0)
    count = batch["image"].shape[0]
    timesteps = () if ref_acceleration else settings.sampler_trace_timesteps
    recorder = record_attention(
        model, "all", timesteps, flows=True, temperature=settings.temperature, keep_last=count
    )
    output = generate_batch(
        pipe,
        batch,
        num_inference_steps=settings.num_inference_steps,
        guidance_scale=settings.guidance_scale,
        generator=torch.Generator().manual_seed(settings.seed),
        ref_acceleration=ref_acceleration,
        output_type="pt",
        observer=recorder,
    )
    flows = {t: recorder.flows_at(t) for t in timesteps}
    return output.images.float(), flows


def _layer_level_names(model: LeffaModel, image_size: tuple[int, int]) -> dict[str, str]:
    """Layer name -> a short label of its token grid, e.g. ``16x12``."""
    factor = model.vae_scale_factor
    sizes = layer_sizes(model, (image_size[0] // factor, image_size[1] // factor))
    return {name: f"{h}x{w}" for name, (h, w) in sizes.items()}


def _flow_scores(
    flows: Mapping[str, Tensor], batch: Mapping[str, Tensor], labels: Mapping[str, str]
) -> dict[str, Tensor]:
    """EPE per layer, per resolution (flows of a resolution averaged) and of the mean over all layers."""
    true_flow, valid = batch["flow"], batch["flow_valid"] * batch["mask"]
    size = tuple(true_flow.shape[1:3])
    upsampled = {name: upsample_flow(flow.float(), size) for name, flow in flows.items()}
    scores = {f"epe/layer/{name}": flow_epe(flow, true_flow, valid) for name, flow in upsampled.items()}
    for label in dict.fromkeys(labels.values()):
        members = [upsampled[name] for name in upsampled if labels[name] == label]
        scores[f"epe/res/{label}"] = flow_epe(torch.stack(members).mean(0), true_flow, valid)
    mean_flow = torch.stack(list(upsampled.values())).mean(0)
    scores["epe/mean"] = flow_epe(mean_flow, true_flow, valid)
    scores["warp_l1/mean"] = warp_l1(_unit(batch["reference"]), _unit(batch["image"]), mean_flow, valid)
    return scores


def _chunks(count: int, size: int) -> list[np.ndarray]:
    return [np.arange(start, min(start + size, count)) for start in range(0, count, size)]


def _mean_over(per_sample: Mapping[str, list[Tensor]]) -> dict[str, float]:
    return {key: float(torch.cat(values).double().mean()) for key, values in per_sample.items()}


def evaluate_model(
    model: LeffaModel,
    split: Mapping[str, np.ndarray],
    settings: EvalSettings = EvalSettings(),
    *,
    sampler: bool = True,
) -> dict[str, float]:
    """All benchmark metrics of ``model`` on a rendered split (with flows), averaged over the samples.

    Keys: ``tf/t{t}/...`` teacher-forced flow errors and one-step image metrics (every sample); with
    ``sampler``, ``sample/{plain,accel}/...`` image metrics of generated images (plain and reference
    acceleration) and ``sample/plain/t{t}/epe/...`` flow errors of the sampler's conditional branch, on the
    first ``settings.sampler_count`` samples (whole batches) since sampling costs ~40x a teacher-forced pass.
    """
    if "flow" not in split:
        raise ValueError("evaluate_model needs a split rendered with_flow=True (it scores attention flows)")
    model.eval()
    image_size = tuple(split["person"].shape[1:3])
    labels = _layer_level_names(model, image_size)
    scores: dict[str, list[Tensor]] = {}

    def add(prefix: str, values: Mapping[str, Tensor]) -> None:
        for key, value in values.items():
            scores.setdefault(f"{prefix}/{key}", []).append(value.detach().float().cpu())

    for index in _chunks(len(split["seed"]), settings.batch_size):
        batch = to_batch(split, index)
        target = _unit(batch["image"])
        garment = batch["flow_valid"] * batch["mask"]
        forced = teacher_forced(
            model, batch, settings.timesteps, temperature=settings.temperature, seed=settings.seed
        )
        for t, result in forced.items():
            add(f"tf/t{t}", _flow_scores(result["flows"], batch, labels))
            add(f"tf/t{t}", image_metrics(result["x0"], target, garment, batch["mask"]))
        if not sampler or index[0] >= settings.sampler_count:
            continue
        for name, accel in (("plain", False), ("accel", True)):
            images, flows = sample(model, batch, settings, ref_acceleration=accel)
            add(f"sample/{name}", image_metrics(images, target, garment, batch["mask"]))
            for t, layer_flows in flows.items():
                add(f"sample/{name}/t{t}", _flow_scores(layer_flows, batch, labels))
    return _mean_over(scores)


def reference_flow_scores(split: Mapping[str, np.ndarray]) -> dict[str, float]:
    """EPE and warp L1 of the sanity baselines: identity flow, uniform attention and the true flow itself."""
    batch = to_batch(split, np.arange(len(split["seed"])))
    count, height, width = batch["flow"].shape[:3]
    valid = batch["flow_valid"] * batch["mask"]
    reference, target = _unit(batch["reference"]), _unit(batch["image"])
    flows = {
        "identity": identity_flow(count, height, width),
        "uniform": uniform_attention_flow(count, (height // 8, width // 8), (height // 8, width // 8)),
        "true": batch["flow"],
    }
    scores = {}
    for name, flow in flows.items():
        scores[f"{name}/epe"] = float(flow_epe(flow, batch["flow"], valid).double().mean())
        scores[f"{name}/warp_l1"] = float(warp_l1(reference, target, flow, valid).double().mean())
    return scores


# ----------------------------------------------------------------------------------- the loss on its own

#: Starting attentions of :func:`free_attention_study`.
STUDY_INITS = ("uniform", "identity", "true")


#: Width in tokens of the peaked starting attentions (before the temperature).
PEAK_WIDTH = 0.5


def _peaked_logits(centres: Tensor, grid: Tensor, token_size: Tensor) -> Tensor:
    """Gaussian logits ``-d^2 / (2 w^2)`` (d in tokens, w = PEAK_WIDTH) from each query's centre (B, n_q, 2)."""
    distance = (centres[:, :, None, :] - grid[None, None]) / token_size
    return -0.5 * distance.square().sum(-1) / PEAK_WIDTH**2


def free_attention_study(
    split: Mapping[str, np.ndarray],
    init: str,
    *,
    token_grid: tuple[int, int] = (16, 12),
    steps: int = 300,
    learning_rate: float = 0.1,
    temperature: float = 2.0,
) -> dict[str, float]:
    """Minimise the Leffa loss over free attention logits (no model) and report the flow error before/after.

    Why: it separates what the loss can teach from what a network can learn. Each query token of a
    ``token_grid`` owns a row of logits over the reference tokens; the flow is ``softmax(logits / τ) · C``,
    upsampled and scored exactly as the trained models' flows. ``init``: ``uniform`` (all logits equal, as
    the base model's attention measured), ``identity`` (peaked on the same position) or ``true`` (peaked on
    the true flow's token; identity where the true flow is undefined).
    """
    if init not in STUDY_INITS:
        raise ValueError(f"init must be one of {STUDY_INITS}, got {init!r}")
    batch = to_batch(split, np.arange(len(split["seed"])))
    count, height, width = batch["flow"].shape[:3]
    grid = reference_grid(*token_grid)
    token_size = torch.tensor([2.0 / (token_grid[1] - 1), 2.0 / (token_grid[0] - 1)])
    queries = grid[None].expand(count, -1, -1)
    if init == "uniform":
        logits = torch.zeros(count, grid.shape[0], grid.shape[0])
    else:
        centres = queries
        if init == "true":
            at_tokens = queries[:, None]  # the true flow read at each token's image position
            small = F.grid_sample(batch["flow"].permute(0, 3, 1, 2), at_tokens, mode="nearest", align_corners=True)
            known = F.grid_sample(batch["flow_valid"], at_tokens, mode="nearest", align_corners=True)
            centres = torch.where(known[:, 0, 0, :, None] > 0, small[:, :, 0].transpose(1, 2), queries)
        logits = _peaked_logits(centres, grid, token_size)
    logits = logits.clone().requires_grad_(True)
    reference, target = batch["reference"], batch["image"]
    valid = batch["flow_valid"] * batch["mask"]
    timesteps = torch.zeros(count, dtype=torch.long)

    def flow() -> Tensor:
        attention = (logits / temperature).softmax(-1)
        return attention_to_flow(attention, token_grid, token_grid)

    def scores(prefix: str) -> dict[str, float]:
        with torch.no_grad():
            current = flow()
            return {
                f"{prefix}/epe": float(flow_epe(current, batch["flow"], valid).mean()),
                f"{prefix}/warp_l1": float(warp_l1(_unit(reference), _unit(target), current, valid).mean()),
                f"{prefix}/loss": float(leffa_loss({"free": current}, reference, target, batch["mask"], timesteps).total),
            }

    result = scores("before")
    optimizer = torch.optim.Adam([logits], lr=learning_rate)
    for _ in range(steps):
        loss = leffa_loss({"free": flow()}, reference, target, batch["mask"], timesteps).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {**result, **scores("after")}
