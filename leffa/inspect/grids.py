"""Where the cells of an attention grid sit on the image: exact token grids and block-averaged (pooled) ones.

Token grids follow :mod:`leffa.core.flow` (``align_corners=True``): token ``j`` of ``w`` sits at pixel
``j * (W - 1) / (w - 1)`` of a ``W``-pixel image, so the first and last tokens are on the image edges.

A map pooled to fewer cells (``AttentionRecorder``'s ``map_size``, by ``adaptive_avg_pool2d``) holds in cell
``b`` the average of tokens ``start_b .. end_b - 1`` (torch's bins: ``start = floor(b * n / m)``,
``end = ceil((b + 1) * n / m)``), on the query side and the key side alike. Such a cell sits at the mean
position of its tokens, the block centre. Reading a pooled grid as if it were a token grid puts its first
and last cells on the image edges and stretches every picture outward by up to half a block (12 px at the
edges of a 1024x768 image whose 128x96 tokens are pooled to 32x24): this module keeps them apart.
"""

from __future__ import annotations

import math

import numpy as np


def _check_counts(tokens: int, cells: int) -> None:
    if not 1 <= cells <= tokens:
        raise ValueError(f"a grid of {tokens} tokens cannot be pooled to {cells} cells; need 1 <= cells <= tokens")


def token_positions(tokens: int, pixels: int) -> np.ndarray:
    """Pixel coordinate of each of ``tokens`` tokens along an image side of ``pixels`` pixels (a lone token at
    0, as ``reference_grid`` puts it at -1)."""
    return np.linspace(0.0, pixels - 1, tokens)


def pooling_bins(tokens: int, cells: int) -> list[tuple[int, int]]:
    """``(start, end)`` token ranges that ``adaptive_avg_pool`` averages into each of ``cells`` cells."""
    _check_counts(tokens, cells)
    return [(math.floor(b * tokens / cells), math.ceil((b + 1) * tokens / cells)) for b in range(cells)]


def cell_positions(tokens: int, cells: int, pixels: int) -> np.ndarray:
    """Pixel coordinate of each cell of a ``tokens``-long side pooled to ``cells``: its block centre."""
    positions = token_positions(tokens, pixels)
    return np.array([positions[start:end].mean() for start, end in pooling_bins(tokens, cells)])


def cell_under(coordinate: float, tokens: int, cells: int, pixels: int) -> int:
    """The cell holding the token nearest to pixel ``coordinate`` (the first one, where bins overlap)."""
    if tokens == 1 or pixels == 1:
        return 0
    token = int(round(coordinate * (tokens - 1) / (pixels - 1)))
    return next(b for b, (start, end) in enumerate(pooling_bins(tokens, cells)) if start <= token < end)


def interpolation_weights(positions: np.ndarray, coordinates: np.ndarray) -> np.ndarray:
    """``(len(coordinates), len(positions))`` weights of linear interpolation between cells at ``positions``
    (increasing), constant beyond the first and last: ``weights @ values`` reads values at ``coordinates``."""
    identity = np.eye(len(positions))
    return np.stack([np.interp(coordinates, positions, column) for column in identity], axis=1)


def grid_to_image(
    values: np.ndarray, token_size: tuple[int, int], image_size: tuple[int, int]
) -> np.ndarray:
    """A grid of cell values ``(h, w)`` (tokens, or tokens pooled to ``h x w``) read bilinearly at every
    pixel of an ``image_size`` image, with each cell at its own position; float64 ``(H, W)``.

    For an unpooled grid this is ``F.interpolate(..., mode="bilinear", align_corners=True)``.
    """
    (h, w), (tokens_h, tokens_w), (height, width) = values.shape, token_size, image_size
    rows = interpolation_weights(cell_positions(tokens_h, h, height), np.arange(height, dtype=np.float64))
    columns = interpolation_weights(cell_positions(tokens_w, w, width), np.arange(width, dtype=np.float64))
    return rows @ np.asarray(values, np.float64) @ columns.T
