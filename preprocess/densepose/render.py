"""The three DensePose images the Leffa models were trained on, all at the input image size.

Parula colormap: the released segmentation render maps ``I * 255 / 24`` through OpenCV's
COLORMAP_PARULA. That map is defined by 9 control colours, MATLAB's parula(64) rows 0, 8, 16, ..., 56, 63
quantised to 8 bits and stored as c/255 with 4 decimals, linearly interpolated at 256 evenly spaced
points and rounded to uint8. ``PARULA_CONTROL_POINTS`` holds those colours and ``parula_lut`` rebuilds the
256-entry table from them (identical to cv2's), so no OpenCV call is needed here.
"""

from __future__ import annotations

import numpy as np

from .result import DensePoseResult

NUM_PARTS = 24
PARULA_CONTROL_POINTS = np.array(
    [
        (0.2078, 0.1647, 0.5294),
        (0.0118, 0.3882, 0.8824),
        (0.0784, 0.5216, 0.8314),
        (0.0235, 0.6549, 0.7765),
        (0.2196, 0.7255, 0.6196),
        (0.5725, 0.7490, 0.4510),
        (0.8510, 0.7294, 0.3373),
        (0.9882, 0.8078, 0.1804),
        (0.9765, 0.9843, 0.0549),
    ],
    dtype=np.float64,
)


def parula_lut() -> np.ndarray:
    """(256, 3) uint8 RGB Parula table: control colours linearly interpolated, ×255, rounded."""
    positions = np.linspace(0.0, 1.0, len(PARULA_CONTROL_POINTS))
    samples = np.linspace(0.0, 1.0, 256)
    channels = [np.interp(samples, positions, PARULA_CONTROL_POINTS[:, c]) for c in range(3)]
    return np.rint(np.stack(channels, axis=1) * 255.0).astype(np.uint8)


_PARULA = parula_lut()


def render_segmentation(result: DensePoseResult) -> np.ndarray:
    """VITON-HD densepose image: (H, W, 3) uint8 RGB, Parula of uint8(I*255/24), all people, black background.

    Where people overlap, the lower-scoring one is drawn last, as DensePose's visualiser does.
    """
    index_map = result.require_person().part_index_map()
    scaled = (index_map.astype(np.float32) * (255.0 / NUM_PARTS)).clip(0, 255).astype(np.uint8)
    image = _PARULA[scaled]
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
