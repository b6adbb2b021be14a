"""Chart post-processing: 112×112 network outputs → per-person I/U/V maps at the box's pixel size."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F


@dataclass
class PersonChart:
    """One person's DensePose chart in the image frame, covering the integer box ``box_xywh``.

    ``labels`` (h, w) uint8 holds the body part index I (0 = background, 1..24 parts) and ``uv``
    (2, h, w) float32 the U and V coordinates in [0, 1] (0 where I = 0).
    """

    box_xywh: tuple[int, int, int, int]
    labels: np.ndarray
    uv: np.ndarray


def integer_box_xywh(box_xyxy: Tensor) -> tuple[int, int, int, int]:
    """(x, y, w, h) of a float xyxy box, each truncated to an integer as DensePose does."""
    x1, y1, x2, y2 = (float(value) for value in box_xyxy)
    return int(x1), int(y1), int(x2 - x1), int(y2 - y1)


def _resize(maps: Tensor, height: int, width: int) -> Tensor:
    return F.interpolate(maps[None].float(), (height, width), mode="bilinear", align_corners=False)[0]


def chart_to_person(coarse: Tensor, fine: Tensor, u: Tensor, v: Tensor, box_xyxy: Tensor) -> PersonChart:
    """Resize one detection's outputs to its box; I = argmax(fine) where argmax(coarse) > 0, U/V at I."""
    x, y, w, h = integer_box_xywh(box_xyxy)
    w, h = max(w, 1), max(h, 1)
    foreground = _resize(coarse, h, w).argmax(dim=0) > 0
    labels = _resize(fine, h, w).argmax(dim=0) * foreground
    index = labels[None]
    uv = torch.cat((_resize(u, h, w).gather(0, index), _resize(v, h, w).gather(0, index)))
    uv = torch.where(index > 0, uv.clamp(0.0, 1.0), torch.zeros_like(uv))
    return PersonChart(
        box_xywh=(x, y, w, h),
        labels=labels.to(torch.uint8).cpu().numpy(),
        uv=uv.cpu().numpy().astype(np.float32),
    )


def paste_region(
    person: PersonChart, image_size: tuple[int, int]
) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Slices (into the image, into the person's maps) of the part of the box that lies inside the image."""
    height, width = image_size
    x, y, w, h = person.box_xywh
    x0, y0 = min(max(x, 0), width), min(max(y, 0), height)
    x1, y1 = min(max(x + w, 0), width), min(max(y + h, 0), height)
    image_slices = (slice(y0, y1), slice(x0, x1))
    chart_slices = (slice(y0 - y, y1 - y), slice(x0 - x, x1 - x))
    return image_slices, chart_slices
