"""ComfyUI's image and mask tensors to and from PIL images, checked.

ComfyUI passes an IMAGE as a float tensor (batch, height, width, channels) in 0..1 and a MASK as (batch, height,
width) in 0..1 (1 = the region to change). The library takes PIL images, so each node converts at its edges.
8-bit values go through exactly: a channel value k becomes k / 255 and comes back as round(255 · v), the way
ComfyUI's LoadImage reads files.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from leffa.core.validation import check_finite


def checked_images(images: object, name: str) -> torch.Tensor:
    """``images`` if it is an IMAGE batch (B, H, W, 3 or 4) of finite values; a ``ValueError`` naming the
    input otherwise."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be an IMAGE (batch, height, width, 3 channels), got {shape}")
    _check_values(images, name)
    return images


def checked_masks(masks: object, name: str) -> torch.Tensor:
    """``masks`` as a MASK batch (B, H, W); a single (H, W) mask gets a batch of one."""
    if isinstance(masks, torch.Tensor) and masks.ndim == 2:
        masks = masks.unsqueeze(0)
    if not isinstance(masks, torch.Tensor) or masks.ndim != 3:
        shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise ValueError(f"{name} must be a MASK (batch, height, width), got {shape}")
    _check_values(masks, name)
    return masks


def _check_values(values: torch.Tensor, name: str) -> None:
    if values.numel() == 0:
        raise ValueError(f"{name} is empty ({tuple(values.shape)})")
    check_finite(values, name)


def batch_count(*batches: tuple[torch.Tensor | None, str]) -> int:
    """How many pairs a node makes from inputs of these batch sizes: a batch of one goes with every item
    of the others; two larger batches must agree."""
    sizes = {name: len(batch) for batch, name in batches if batch is not None}
    larger = {name: size for name, size in sizes.items() if size > 1}
    if len(set(larger.values())) > 1:
        listed = ", ".join(f"{name} {size}" for name, size in larger.items())
        raise ValueError(f"the batches do not match ({listed}): give one image, or as many as the others")
    return max(sizes.values(), default=1)


def _item(batch: torch.Tensor, index: int) -> np.ndarray:
    """Item ``index`` of a batch (a batch of one for every index) as uint8."""
    values = batch[min(index, len(batch) - 1)].detach().to("cpu", torch.float32).clamp(0, 1).numpy()
    return np.round(values * 255).astype(np.uint8)


def image_at(images: torch.Tensor, index: int) -> Image.Image:
    """Image ``index`` of an IMAGE batch as RGB (an alpha channel is dropped)."""
    return Image.fromarray(np.ascontiguousarray(_item(images, index)[..., :3]), "RGB")


def mask_at(masks: torch.Tensor, index: int) -> Image.Image:
    """Mask ``index`` of a MASK batch as a black-and-white image (white = change)."""
    return Image.fromarray(_item(masks, index), "L")


def to_images(pictures: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
    """PIL images or uint8 arrays of one size as an IMAGE batch."""
    arrays = [np.asarray(picture.convert("RGB") if isinstance(picture, Image.Image) else picture) for picture in pictures]
    return torch.from_numpy(np.stack(arrays).astype(np.float32) / 255.0)


def to_masks(masks: Sequence[Image.Image]) -> torch.Tensor:
    """Black-and-white images of one size as a MASK batch of 0 and 1."""
    return torch.from_numpy(np.stack([np.asarray(mask.convert("L")) > 127 for mask in masks]).astype(np.float32))
