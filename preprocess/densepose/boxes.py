"""Box arithmetic of the detector: anchors, delta decoding, FPN level assignment, RoIAlign.

Boxes are (N, 4) tensors in absolute (x1, y1, x2, y2) pixel coordinates. Clipping is
``torchvision.ops.clip_boxes_to_image`` (the same clamps to [0, width] and [0, height] as detectron2).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import roi_align

DELTA_SCALE_CLAMP = math.log(1000.0 / 16)
CANONICAL_LEVEL = 4
CANONICAL_BOX_SIZE = 224


def cell_anchors(size: float, aspect_ratios: tuple[float, ...]) -> Tensor:
    """Anchors centred on (0, 0) with area size² and height/width = aspect ratio, one row per ratio."""
    rows = []
    for ratio in aspect_ratios:
        width = math.sqrt(size * size / ratio)
        height = ratio * width
        rows.append([-width / 2.0, -height / 2.0, width / 2.0, height / 2.0])
    return torch.tensor(rows, dtype=torch.float32)


def grid_anchors(cells: Tensor, stride: int, height: int, width: int) -> Tensor:
    """All anchors of a feature map (offset 0), ordered by row, then column, then cell anchor."""
    device = cells.device
    shift_x = torch.arange(0, width * stride, step=stride, dtype=torch.float32, device=device)
    shift_y = torch.arange(0, height * stride, step=stride, dtype=torch.float32, device=device)
    grid_y, grid_x = torch.meshgrid(shift_y, shift_x, indexing="ij")
    grid_x, grid_y = grid_x.reshape(-1), grid_y.reshape(-1)
    shifts = torch.stack((grid_x, grid_y, grid_x, grid_y), dim=1)
    return (shifts.view(-1, 1, 4) + cells.view(1, -1, 4)).reshape(-1, 4)


def apply_deltas(deltas: Tensor, boxes: Tensor, weights: tuple[float, float, float, float]) -> Tensor:
    """Decode (dx, dy, dw, dh) regressions relative to ``boxes``; dw/dh are clamped at log(1000/16)."""
    deltas = deltas.float()
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[:, 0] / wx
    dy = deltas[:, 1] / wy
    dw = torch.clamp(deltas[:, 2] / ww, max=DELTA_SCALE_CLAMP)
    dh = torch.clamp(deltas[:, 3] / wh, max=DELTA_SCALE_CLAMP)
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    pred_w = torch.exp(dw) * widths
    pred_h = torch.exp(dh) * heights
    return torch.stack(
        (
            pred_ctr_x - 0.5 * pred_w,
            pred_ctr_y - 0.5 * pred_h,
            pred_ctr_x + 0.5 * pred_w,
            pred_ctr_y + 0.5 * pred_h,
        ),
        dim=1,
    )


def nonempty(boxes: Tensor) -> Tensor:
    """Mask of boxes with strictly positive width and height."""
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def finite_rows(*tensors: Tensor) -> Tensor:
    """Mask of rows where every value of every tensor is finite."""
    mask = torch.ones(tensors[0].shape[0], dtype=torch.bool, device=tensors[0].device)
    for tensor in tensors:
        mask &= torch.isfinite(tensor.reshape(tensor.shape[0], -1)).all(dim=1)
    return mask


def assign_levels(boxes: Tensor, min_level: int, max_level: int) -> Tensor:
    """FPN level of each box, floor(4 + log2(sqrt(area) / 224)) clamped, returned relative to min_level."""
    sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = torch.floor(CANONICAL_LEVEL + torch.log2(sizes / CANONICAL_BOX_SIZE + 1e-8))
    return torch.clamp(levels, min=min_level, max=max_level).to(torch.int64) - min_level


def _roi_align(feature: Tensor, rois: Tensor, stride: int, output_size: int, sampling_ratio: int) -> Tensor:
    """RoIAlign computed in float32 (box coordinates lose pixels in half precision)."""
    pooled = roi_align(feature.float(), rois, output_size, 1.0 / stride, sampling_ratio, aligned=False)
    return pooled.to(feature.dtype)


def multilevel_roi_align(
    features: list[Tensor], boxes: Tensor, strides: list[int], output_size: int, sampling_ratio: int
) -> Tensor:
    """RoIAlign (aligned=False) of single-image boxes, each on the FPN level assigned to its size."""
    rois = torch.cat((boxes.new_zeros(boxes.shape[0], 1), boxes), dim=1).float()
    if len(features) == 1:
        return _roi_align(features[0], rois, strides[0], output_size, sampling_ratio)
    min_level = int(math.log2(strides[0]))
    levels = assign_levels(boxes, min_level, min_level + len(features) - 1)
    output = features[0].new_zeros(boxes.shape[0], features[0].shape[1], output_size, output_size)
    for index, (feature, stride) in enumerate(zip(features, strides, strict=True)):
        selected = torch.nonzero(levels == index).squeeze(1)
        if selected.numel():
            output[selected] = _roi_align(feature, rois[selected], stride, output_size, sampling_ratio)
    return output
