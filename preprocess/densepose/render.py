"""The three DensePose images the Leffa models were trained on, all at the input image size.

The released segmentation render maps ``I * 255 / 24`` through OpenCV's COLORMAP_PARULA; this module
calls the same OpenCV colormap.
"""

from __future__ import annotations

import cv2
import numpy as np

from .result import DensePoseResult

NUM_PARTS = 24


def _parula_rgb(values: np.ndarray) -> np.ndarray:
    """OpenCV's Parula colours of uint8 values (any shape), as RGB uint8 with a trailing channel axis."""
    flat = np.ascontiguousarray(values, dtype=np.uint8).reshape(-1, 1)
    bgr = cv2.applyColorMap(flat, cv2.COLORMAP_PARULA)[:, 0]
    return np.ascontiguousarray(bgr[:, ::-1]).reshape(*values.shape, 3)


def parula_lut() -> np.ndarray:
    """(256, 3) uint8 RGB Parula table, OpenCV's COLORMAP_PARULA at every uint8 value."""
    return _parula_rgb(np.arange(256, dtype=np.uint8))


def render_segmentation(result: DensePoseResult) -> np.ndarray:
    """VITON-HD densepose image: (H, W, 3) uint8 RGB, Parula of uint8(I*255/24), all people, black background.

    Where people overlap, the lower-scoring one is drawn last, as DensePose's visualiser does.
    """
    index_map = result.require_person().part_index_map()
    scaled = (index_map.astype(np.float32) * (255.0 / NUM_PARTS)).clip(0, 255).astype(np.uint8)
    image = _parula_rgb(scaled)
    image[index_map == 0] = 0
    return image


def render_dresscode(result: DensePoseResult) -> np.ndarray:
    """DressCode densepose image: the top-scoring person's part index I (0..24) repeated in 3 channels."""
    part_index = result.person_iuv(0)[:, :, 0].astype(np.uint8)
    return np.repeat(part_index[:, :, None], 3, axis=2)


def render_iuv(result: DensePoseResult) -> np.ndarray:
    """Pose-transfer densepose image: top-scoring person, (H, W, 3) uint8 [U*255, V*255, I], zero elsewhere.

    U and V are truncated to integers after scaling, as DensePose's own uint8 IUV conversion does.
    """
    iuv = result.person_iuv(0)
    image = np.empty(iuv.shape, dtype=np.uint8)
    image[:, :, 0] = (iuv[:, :, 1] * 255.0).astype(np.uint8)
    image[:, :, 1] = (iuv[:, :, 2] * 255.0).astype(np.uint8)
    image[:, :, 2] = iuv[:, :, 0].astype(np.uint8)
    return image
