"""Flow fields read out of attention maps, warping, and the Leffa loss (paper §3).

Conventions used throughout (they match ``torch.nn.functional.grid_sample`` with ``align_corners=True``):

- A coordinate is ``(x, y)`` in ``[-1, 1]``; ``-1`` is the centre of the first pixel/token, ``+1`` the centre
  of the last one.
- The reference grid ``C`` of an ``h x w`` map lists the token positions in row-major order:
  token ``k = i * w + j`` sits at ``(x_j, y_i)`` with ``x = linspace(-1, 1, w)``, ``y = linspace(-1, 1, h)``.
- Attention maps are ``(B, n_q, n_k)``: rows are target (query) tokens, columns reference (key) tokens,
  both row-major, already softmaxed over the keys and averaged over heads.
- A flow is ``(B, h, w, 2)`` of absolute sampling positions in the reference (not offsets).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from leffa.common import check_grid_size


#: Regions the Leffa loss can score, and its reductions (see :func:`leffa_loss`).
LEFFA_MASKS = ("inpainting", "garment")
LEFFA_REDUCTIONS = ("element_mean", "mask_mean")


@dataclass(frozen=True)
class LeffaLossConfig:
    """Paper defaults for the Leffa loss: ``L = L_diffusion + weight * L_leffa``.

    ``theta_resolution`` selects layers with ``h_l / H >= theta_resolution``; samples whose timestep is
    ``>= theta_timestep`` get no Leffa loss; ``temperature`` divides the attention logits. Beyond the paper,
    for ablations: ``mask`` ``garment`` scores only the garment pixels (synthetic data, which knows them)
    instead of the inpainting mask, and ``reduction`` picks :func:`leffa_loss`'s normalisation.
    """

    weight: float = 1e-3
    theta_resolution: float = 1 / 32
    theta_timestep: int = 500
    temperature: float = 2.0
    mask: str = "inpainting"
    reduction: str = "element_mean"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"LeffaLossConfig.weight must be a finite number >= 0, got {self.weight}")
        if not (0 < self.theta_resolution <= 1):
            raise ValueError(
                f"LeffaLossConfig.theta_resolution must be in (0, 1] (a fraction of the image height), "
                f"got {self.theta_resolution}"
            )
        if self.theta_timestep < 0:
            raise ValueError(f"LeffaLossConfig.theta_timestep must be >= 0, got {self.theta_timestep}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(
                f"LeffaLossConfig.temperature must be a finite number > 0, got {self.temperature}"
            )
        if self.mask not in LEFFA_MASKS:
            raise ValueError(f"LeffaLossConfig.mask must be one of {LEFFA_MASKS}, got {self.mask!r}")
        if self.reduction not in LEFFA_REDUCTIONS:
            raise ValueError(
                f"LeffaLossConfig.reduction must be one of {LEFFA_REDUCTIONS}, got {self.reduction!r}"
            )


@dataclass(frozen=True)
class FlowSupervisionConfig:
    """The teacher term of :func:`flow_supervision_loss` (not in the paper; synthetic data only):
    ``L += weight * L_flow``, attention read at ``temperature``, samples with ``t >= theta_timestep`` skipped."""

    weight: float = 1.0
    temperature: float = 1.0
    theta_timestep: int = 1000

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"FlowSupervisionConfig.weight must be a finite number >= 0, got {self.weight}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(
                f"FlowSupervisionConfig.temperature must be a finite number > 0, got {self.temperature}"
            )
        if self.theta_timestep < 0:
            raise ValueError(f"FlowSupervisionConfig.theta_timestep must be >= 0, got {self.theta_timestep}")


@dataclass
class LeffaLossOutput:
    """The loss to optimise (``total``, before the weight) and each layer's share for logging."""

    total: Tensor
    per_layer: dict[str, Tensor]


def _check_flow(flow: Tensor, name: str = "flow") -> None:
    if not isinstance(flow, Tensor) or flow.ndim != 4 or flow.shape[-1] != 2:
        shape = tuple(flow.shape) if isinstance(flow, Tensor) else type(flow).__name__
        raise ValueError(f"{name} must be a tensor of shape (B, h, w, 2), got {shape}")


def _valid_pixels(valid: Tensor, batch: int, height: int, width: int) -> Tensor:
    """``valid`` given as (B, 1, H, W) or (B, H, W), as (B, H, W)."""
    if valid.shape == (batch, 1, height, width):
        valid = valid[:, 0]
    if valid.shape != (batch, height, width):
        raise ValueError(
            f"valid must have shape {(batch, 1, height, width)} or {(batch, height, width)}, "
            f"got {tuple(valid.shape)}"
        )
    return valid


def _check_image(image: Tensor, name: str) -> None:
    if not isinstance(image, Tensor) or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"{name} must be a tensor of shape (B, C, H, W), got {shape}")


def reference_grid(
    h: int, w: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """Normalised ``(x, y)`` positions of an ``h x w`` token map in row-major order, shape ``(h*w, 2)``."""
    h, w = check_grid_size((h, w), "reference_grid size")
    ys = torch.linspace(-1.0, 1.0, h, device=device, dtype=dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=device, dtype=dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x, grid_y), dim=-1).reshape(h * w, 2)


def attention_to_flow(attn: Tensor, query_size: tuple[int, int], key_size: tuple[int, int]) -> Tensor:
    """Flow ``F = Â · C``: each target token's attention-weighted mean reference position.

    Returns absolute positions of shape ``(B, h_q, w_q, 2)``.
    """
    h_q, w_q = check_grid_size(query_size, "query_size")
    h_k, w_k = check_grid_size(key_size, "key_size")
    if not isinstance(attn, Tensor) or attn.ndim != 3:
        shape = tuple(attn.shape) if isinstance(attn, Tensor) else type(attn).__name__
        raise ValueError(f"attn must be a tensor of shape (B, n_q, n_k) averaged over heads, got {shape}")
    if not attn.is_floating_point():
        raise ValueError(f"attn must be a floating-point tensor of probabilities, got dtype {attn.dtype}")
    batch, n_q, n_k = attn.shape
    if n_q != h_q * w_q:
        raise ValueError(f"attn has {n_q} query tokens but query_size {query_size} gives {h_q * w_q}")
    if n_k != h_k * w_k:
        raise ValueError(f"attn has {n_k} key tokens but key_size {key_size} gives {h_k * w_k}")
    grid = reference_grid(h_k, w_k, device=attn.device, dtype=attn.dtype)
    return torch.matmul(attn, grid).reshape(batch, h_q, w_q, 2)


def upsample_flow(flow: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resize a flow of absolute positions to ``size`` (positions need no rescaling)."""
    _check_flow(flow)
    height, width = check_grid_size(size, "size")
    if flow.shape[1:3] == (height, width):
        return flow
    resized = F.interpolate(
        flow.permute(0, 3, 1, 2), size=(height, width), mode="bilinear", align_corners=True
    )
    return resized.permute(0, 2, 3, 1)


def warp(image: Tensor, flow: Tensor) -> Tensor:
    """Sample ``image`` (B, C, H, W) at the flow's positions, upsampling the flow to ``H x W`` first."""
    _check_image(image, "image")
    _check_flow(flow)
    if flow.shape[0] != image.shape[0]:
        raise ValueError(f"flow batch size {flow.shape[0]} does not match image batch size {image.shape[0]}")
    grid = upsample_flow(flow, tuple(image.shape[-2:])).to(image.dtype)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


def leffa_loss(
    flows: Mapping[str, Tensor],
    reference: Tensor,
    target: Tensor,
    mask: Tensor | None,
    timesteps: Tensor,
    *,
    theta_timestep: int = LeffaLossConfig.theta_timestep,
    reduction: str = "element_mean",
) -> LeffaLossOutput:
    """Leffa loss: how well each layer's flow warps the reference onto the target inside the mask.

    Reduction: for each layer ``l`` and sample ``b``,
    ``e[l, b] = mean over C*H*W of (M * (target - warp(reference, F_l)))**2``;
    a sample with ``timesteps[b] >= theta_timestep`` is multiplied by 0. Each layer's value is
    ``sum_b gate[b] * e[l, b] / B`` (divided by the full batch size B, so the scale does not jump with
    the number of gated samples), and ``total = sum_l per_layer[l]``. The mean is over all C*H*W
    elements, not over the mask area, so a small mask gives a small loss. Per-element means keep the value
    independent of image size (images in [-1, 1] give at most 4 per layer), which is the scale on which
    the paper's weight 1e-3 is applied by the caller. ``mask=None`` means all ones (pose transfer).
    ``reduction="mask_mean"`` divides by ``C`` times the mask's pixel count instead (a mean over the masked
    elements, so the scale no longer shrinks with the mask's share of the image; empty masks count 0).
    Computed in float32; differentiable with respect to the flows.
    """
    if reduction not in LEFFA_REDUCTIONS:
        raise ValueError(f"reduction must be one of {LEFFA_REDUCTIONS}, got {reduction!r}")
    if not flows:
        raise ValueError("flows is empty: select at least one layer to compute the Leffa loss")
    _check_image(reference, "reference")
    _check_image(target, "target")
    if reference.shape != target.shape:
        raise ValueError(
            f"reference {tuple(reference.shape)} and target {tuple(target.shape)} must have the same shape"
        )
    batch, _, height, width = target.shape
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.shape != (batch, 1, height, width):
            shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"mask must have shape {(batch, 1, height, width)} (B, 1, H, W), got {shape}")
        mask = mask.float()
    if not isinstance(timesteps, Tensor) or timesteps.shape not in ((batch,), ()):
        shape = tuple(timesteps.shape) if isinstance(timesteps, Tensor) else type(timesteps).__name__
        raise ValueError(f"timesteps must be a tensor of shape ({batch},) or a scalar tensor, got {shape}")
    for name, flow in flows.items():
        _check_flow(flow, f"flows[{name!r}]")
        if flow.shape[0] != batch:
            raise ValueError(f"flows[{name!r}] has batch size {flow.shape[0]}, images have {batch}")

    gate = (timesteps.to(target.device) < theta_timestep).float().expand(batch)
    reference = reference.float()
    target = target.float()
    per_layer: dict[str, Tensor] = {}
    for name, flow in flows.items():
        error = target - warp(reference, flow.float())
        if mask is not None:
            error = error * mask
        if reduction == "mask_mean" and mask is not None:
            elements = mask.sum(dim=(1, 2, 3)) * error.shape[1]
            per_sample = error.square().sum(dim=(1, 2, 3)) / elements.clamp(min=1)
        else:
            per_sample = error.square().mean(dim=(1, 2, 3))
        per_layer[name] = (per_sample * gate).sum() / batch
    total = torch.stack(list(per_layer.values())).sum()
    return LeffaLossOutput(total=total, per_layer=per_layer)


def select_layers_by_resolution(
    layer_sizes: Mapping[str, tuple[int, int]], image_height: int, theta: float
) -> list[str]:
    """Names of layers whose token-map height ``h_l`` satisfies ``h_l / image_height >= theta``, in order."""
    if isinstance(image_height, bool) or not isinstance(image_height, int) or image_height < 1:
        raise ValueError(f"image_height must be a positive int (pixels), got {image_height!r}")
    if not (0 < theta <= 1):
        raise ValueError(f"theta must be in (0, 1] (a fraction of the image height), got {theta}")
    selected = []
    for name, size in layer_sizes.items():
        layer_height, _ = check_grid_size(tuple(size), f"layer_sizes[{name!r}]")
        if layer_height >= theta * image_height * (1 - 1e-9):
            selected.append(name)
    return selected


def end_point_error(
    flow_pred: Tensor, flow_true: Tensor, valid: Tensor, *, image_size: tuple[int, int] | None = None
) -> Tensor:
    """Mean Euclidean distance in pixels between two flows over ``valid`` pixels, per sample ``(B,)``.

    Normalised units become pixels with ``(W - 1) / 2`` and ``(H - 1) / 2``, where ``(H, W)`` is
    ``image_size`` (the reference image the positions point into) and defaults to the flow size.
    Samples without any valid pixel give NaN.
    """
    _check_flow(flow_pred, "flow_pred")
    _check_flow(flow_true, "flow_true")
    if flow_pred.shape != flow_true.shape:
        raise ValueError(f"flow_pred {tuple(flow_pred.shape)} and flow_true {tuple(flow_true.shape)} differ")
    batch, height, width, _ = flow_pred.shape
    valid = _valid_pixels(valid, batch, height, width)
    image_height, image_width = (
        check_grid_size(image_size, "image_size") if image_size is not None else (height, width)
    )
    scale = flow_pred.new_tensor([(image_width - 1) / 2, (image_height - 1) / 2])
    distance = ((flow_pred - flow_true) * scale).norm(dim=-1)
    weights = valid.to(distance.dtype)
    return (distance * weights).sum(dim=(1, 2)) / weights.sum(dim=(1, 2))


def attention_entropy(attn: Tensor) -> Tensor:
    """Entropy in nats of each attention row, averaged over queries: ``(..., n_q, n_k) -> (...)``."""
    if not isinstance(attn, Tensor) or attn.ndim < 2:
        shape = tuple(attn.shape) if isinstance(attn, Tensor) else type(attn).__name__
        raise ValueError(f"attn must be a tensor of shape (..., n_q, n_k), got {shape}")
    return -torch.special.xlogy(attn, attn).sum(dim=-1).mean(dim=-1)


def flow_supervision_loss(
    flows: Mapping[str, Tensor],
    true_flow: Tensor,
    valid: Tensor,
    timesteps: Tensor,
    *,
    theta_timestep: int = 1000,
) -> LeffaLossOutput:
    """Teacher term, not in the paper: end-point error of each layer's flow against a known true flow.

    Why: the Leffa loss can only sharpen correspondence a model already has (it scores a warp, whose
    gradient vanishes under near-uniform attention); where the true flow is known (synthetic data) this term
    gives a model that correspondence to start from. For each layer ``l`` and sample ``b``,
    ``e[l, b]`` is the mean over ``valid`` pixels of ``|| upsample(F_l) - F_true ||_2`` in normalised units
    (the flow is upsampled bilinearly to the true flow's ``H x W``, as :func:`warp` does); samples without
    valid pixels or with ``timesteps[b] >= theta_timestep`` count 0. Each layer's value is
    ``sum_b e[l, b] / B`` and ``total`` is the mean over layers, so the weight does not grow with the layer
    count. ``true_flow`` is (B, H, W, 2), ``valid`` (B, 1, H, W) or (B, H, W). Computed in float32.
    """
    if not flows:
        raise ValueError("flows is empty: select at least one layer to supervise")
    _check_flow(true_flow, "true_flow")
    batch, height, width, _ = true_flow.shape
    valid = _valid_pixels(valid, batch, height, width)
    if not isinstance(timesteps, Tensor) or timesteps.shape not in ((batch,), ()):
        shape = tuple(timesteps.shape) if isinstance(timesteps, Tensor) else type(timesteps).__name__
        raise ValueError(f"timesteps must be a tensor of shape ({batch},) or a scalar tensor, got {shape}")
    weights = valid.float()
    pixels = weights.sum(dim=(1, 2))
    gate = (timesteps.to(true_flow.device) < theta_timestep).float().expand(batch) * (pixels > 0).float()
    true_flow = true_flow.float()
    per_layer: dict[str, Tensor] = {}
    for name, flow in flows.items():
        _check_flow(flow, f"flows[{name!r}]")
        if flow.shape[0] != batch:
            raise ValueError(f"flows[{name!r}] has batch size {flow.shape[0]}, the true flow has {batch}")
        distance = (upsample_flow(flow.float(), (height, width)) - true_flow).norm(dim=-1)
        per_sample = (distance * weights).sum(dim=(1, 2)) / pixels.clamp(min=1)
        per_layer[name] = (per_sample * gate).sum() / batch
    total = torch.stack(list(per_layer.values())).mean()
    return LeffaLossOutput(total=total, per_layer=per_layer)
