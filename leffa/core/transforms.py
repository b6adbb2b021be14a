"""Conversions between PIL images and the tensors the model takes, and letterboxing to the model size.

Normalisation as released: images in [-1, 1]; masks binarised at 0.5 to {0, 1}; try-on DensePose renders
are plain RGB images in [-1, 1]; pose-transfer DensePose is an IUV image whose U, V channels are divided by
255 and I by 24 before mapping to [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

DensePoseFormat = Literal["rgb", "iuv"]
DENSEPOSE_FORMATS: tuple[str, ...] = ("rgb", "iuv")
#: Default model resolution (width, height), as the released checkpoints were trained.
DEFAULT_SIZE: tuple[int, int] = (768, 1024)


@dataclass(frozen=True)
class Letterbox:
    """Where an image was placed inside a letterboxed canvas, to crop results back to its framing."""

    original_size: tuple[int, int]
    canvas_size: tuple[int, int]
    box: tuple[int, int, int, int]


def letterbox(
    image: Image.Image,
    size: tuple[int, int] = DEFAULT_SIZE,
    *,
    fill: tuple[int, int, int] = (255, 255, 255),
    resample: Image.Resampling = Image.Resampling.BICUBIC,
) -> tuple[Image.Image, Letterbox]:
    """Scale ``image`` to fit ``size`` (width, height), bicubic, centred on white, as the released demo does
    (``fill`` and ``resample`` for masks and DensePose: black, nearest)."""
    width, height = size
    scale = min(height / image.height, width / image.width)
    new_w = max(1, min(width, round(image.width * scale)))
    new_h = max(1, min(height, round(image.height * scale)))
    resized = image.convert("RGB").resize((new_w, new_h), resample)
    canvas = Image.new("RGB", (width, height), fill)
    left, top = (width - new_w) // 2, (height - new_h) // 2
    canvas.paste(resized, (left, top))
    return canvas, Letterbox(image.size, (width, height), (left, top, left + new_w, top + new_h))


def crop_back(result: Image.Image, box: Letterbox) -> Image.Image:
    """Undo :func:`letterbox`: crop the content region of ``result`` and resize to the original size."""
    if result.size != box.canvas_size:
        result = result.resize(box.canvas_size, Image.Resampling.BICUBIC)
    return result.crop(box.box).resize(box.original_size, Image.Resampling.BICUBIC)


def _resized(image: Image.Image, size: tuple[int, int] | None, resample: Image.Resampling) -> Image.Image:
    return image if size is None or image.size == tuple(size) else image.resize(tuple(size), resample)


def image_to_tensor(image: Image.Image, size: tuple[int, int] | None = None) -> torch.Tensor:
    """RGB image → (1, 3, H, W) float in [-1, 1]; ``size`` (width, height) resizes with LANCZOS."""
    array = np.asarray(_resized(image.convert("RGB"), size, Image.Resampling.LANCZOS), dtype=np.float32)
    return torch.from_numpy(array / 127.5 - 1.0).permute(2, 0, 1).unsqueeze(0).contiguous()


def mask_to_tensor(mask: Image.Image | np.ndarray, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Any mask image or array → (1, 1, H, W) float in {0, 1}, binarised at half of its range."""
    if isinstance(mask, np.ndarray):
        array = mask.astype(np.float32)
        if mask.dtype == np.uint8:
            array /= 255.0
        if array.ndim == 3:
            array = array.mean(axis=2)
        mask = Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8))
    grey = np.asarray(_resized(mask.convert("L"), size, Image.Resampling.NEAREST), dtype=np.float32) / 255.0
    return torch.from_numpy((grey >= 0.5).astype(np.float32))[None, None]


def densepose_to_tensor(
    densepose: Image.Image | np.ndarray, size: tuple[int, int] | None = None, fmt: DensePoseFormat = "rgb"
) -> torch.Tensor:
    """DensePose render → (1, 3, H, W) in [-1, 1] per the model's format (``rgb`` try-on, ``iuv`` pose)."""
    if fmt not in DENSEPOSE_FORMATS:
        raise ValueError(f"unknown densepose format {fmt!r}; use one of {', '.join(DENSEPOSE_FORMATS)}")
    if isinstance(densepose, np.ndarray):
        densepose = Image.fromarray(densepose.astype(np.uint8))
    array = np.asarray(_resized(densepose.convert("RGB"), size, Image.Resampling.NEAREST), dtype=np.float32)
    if fmt == "rgb":
        scaled = array / 255.0
    else:
        scaled = array / np.array([255.0, 255.0, 24.0], dtype=np.float32)
    return torch.from_numpy(scaled * 2.0 - 1.0).permute(2, 0, 1).unsqueeze(0).contiguous()


def tensor_to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] → (B, H, W, 3) uint8, rounded as released."""
    unit = (images.float() / 2 + 0.5).clamp(0, 1)
    return (unit * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
