"""The exact maps of the synthetic data: thin-plate splines between landmarks, and reading an image at
``grid_sample`` positions (the very call the renderer draws with, so the true flow reproduces the pixels)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.interpolate import RBFInterpolator


def thin_plate_spline(src: np.ndarray, dst: np.ndarray) -> RBFInterpolator:
    """The 2-D thin-plate spline through the control points: maps ``src`` (n, 2) exactly onto ``dst``."""
    return RBFInterpolator(np.asarray(src, np.float64), np.asarray(dst, np.float64), kernel="thin_plate_spline")


def to_flow(g: np.ndarray, h: int, w: int) -> np.ndarray:
    """Garment pixel coordinates (..., 2) -> float32 grid_sample coordinates (align_corners=True)."""
    return (g * (2.0 / np.array([w - 1, h - 1])) - 1.0).astype(np.float32)


def sample_at_flow(image: np.ndarray, flow: np.ndarray, mode: str = "bilinear") -> np.ndarray:
    """``image`` (H, W) or (H, W, C) read at the positions of ``flow`` (h, w, 2) by ``grid_sample``
    (``align_corners=True``, zero outside), as float32 (h, w) or (h, w, C).

    The generator renders with this very call, so ``grid_sample(garment, flow)`` gives the person's
    garment pixels back exactly (before their rounding to uint8).
    """
    planes = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    channels_last = planes.ndim == 3
    planes = planes.permute(2, 0, 1) if channels_last else planes[None]
    grid = torch.from_numpy(np.ascontiguousarray(flow, dtype=np.float32))[None]
    out = F.grid_sample(planes[None], grid, mode=mode, padding_mode="zeros", align_corners=True)[0]
    return (out.permute(1, 2, 0) if channels_last else out[0]).numpy()


def sample_bilinear(image: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """:func:`sample_at_flow` at pixel coordinates ``gx``, ``gy`` (the image's own size)."""
    h, w = image.shape[:2]
    return sample_at_flow(image, to_flow(np.stack([gx, gy], axis=-1), h, w))
