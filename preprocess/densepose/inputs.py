"""Image → network input exactly as detectron2's DefaultPredictor prepares it for this model."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .settings import PIXEL_MEAN_BGR, SIZE_DIVISIBILITY, DensePoseSettings


def to_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a PIL image or a uint8 array (grey, RGB or RGBA; alpha is dropped)."""
    if isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"))
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(
                f"expected a uint8 image array (0..255), got dtype {image.dtype}; convert it first"
            )
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
            raise ValueError(
                f"expected an (H, W), (H, W, 3) or (H, W, 4) image array, got shape {image.shape}"
            )
        array = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[:, :, :3]
    else:
        raise TypeError(f"expected a PIL image or a numpy uint8 array, got {type(image).__name__}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image is empty: size {array.shape[1]}x{array.shape[0]}")
    return np.ascontiguousarray(array)


def resized_shape(height: int, width: int, shortest_edge: int, max_size: int) -> tuple[int, int]:
    """ResizeShortestEdge's output (h, w): shortest side to ``shortest_edge``, longest at most ``max_size``.

    Sides are rounded half up; extreme aspect ratios are kept at least 1 pixel tall/wide.
    """
    scale = shortest_edge / min(height, width)
    if height < width:
        new_h, new_w = float(shortest_edge), width * scale
    else:
        new_h, new_w = height * scale, float(shortest_edge)
    if max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return max(int(new_h + 0.5), 1), max(int(new_w + 0.5), 1)


def prepare_image(
    rgb: np.ndarray, settings: DensePoseSettings, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Resize (PIL bilinear on uint8), flip to BGR, subtract the pixel mean, zero-pad to a multiple of 32.

    Returns the (1, 3, H, W) tensor and the unpadded resized (h, w).
    """
    height, width = resized_shape(rgb.shape[0], rgb.shape[1], settings.shortest_edge, settings.max_size)
    resized = np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR))
    bgr = torch.from_numpy(np.ascontiguousarray(resized[:, :, ::-1].transpose(2, 0, 1))).to(device)
    mean = torch.tensor(PIXEL_MEAN_BGR, dtype=torch.float32, device=device).view(3, 1, 1)
    normalised = bgr.float() - mean
    padded_h = -(-height // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY
    padded_w = -(-width // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY
    batch = torch.zeros((1, 3, padded_h, padded_w), dtype=torch.float32, device=device)
    batch[0, :, :height, :width] = normalised
    return batch.to(dtype), (height, width)
