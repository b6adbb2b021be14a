"""Region proposal network: shared head over P2–P6, anchors, per-level top-k and NMS."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import batched_nms, clip_boxes_to_image

from .backbone import FEATURE_STRIDES, FPN_CHANNELS
from .boxes import apply_deltas, cell_anchors, finite_rows, grid_anchors, nonempty
from .settings import DensePoseSettings

RPN_LEVELS = ("p2", "p3", "p4", "p5", "p6")
ANCHOR_SIZES = {"p2": 32, "p3": 64, "p4": 128, "p5": 256, "p6": 512}
ASPECT_RATIOS = (0.5, 1.0, 2.0)
RPN_DELTA_WEIGHTS = (1.0, 1.0, 1.0, 1.0)


class RPNHead(nn.Module):
    """3×3 conv + ReLU, then per-anchor objectness logit and 4 box deltas."""

    def __init__(self, num_anchors: int = len(ASPECT_RATIOS)) -> None:
        super().__init__()
        self.conv = nn.Conv2d(FPN_CHANNELS, FPN_CHANNELS, 3, padding=1)
        self.objectness_logits = nn.Conv2d(FPN_CHANNELS, num_anchors, 1)
        self.anchor_deltas = nn.Conv2d(FPN_CHANNELS, num_anchors * 4, 1)

    def forward(self, feature: Tensor) -> tuple[Tensor, Tensor]:
        """Single image: logits (H*W*A,) and deltas (H*W*A, 4) in (row, column, anchor) order."""
        hidden = F.relu(self.conv(feature))
        logits = self.objectness_logits(hidden)[0].permute(1, 2, 0).reshape(-1)
        deltas = self.anchor_deltas(hidden)[0]
        _, height, width = deltas.shape
        deltas = deltas.view(-1, 4, height, width).permute(2, 3, 0, 1).reshape(-1, 4)
        return logits, deltas


class RPN(nn.Module):
    """Turns FPN features of one image into at most ``rpn_post_nms_topk`` proposal boxes."""

    def __init__(self) -> None:
        super().__init__()
        self.rpn_head = RPNHead()

    def forward(
        self, features: dict[str, Tensor], image_size: tuple[int, int], settings: DensePoseSettings
    ) -> Tensor:
        """Proposals (K, 4) in the resized, unpadded image frame, best objectness first."""
        all_boxes, all_scores, all_levels = [], [], []
        for level_index, name in enumerate(RPN_LEVELS):
            feature = features[name]
            logits, deltas = self.rpn_head(feature)
            keep = min(settings.rpn_pre_nms_topk, logits.shape[0])
            scores, order = torch.topk(logits.float(), keep, sorted=True)
            cells = cell_anchors(ANCHOR_SIZES[name], ASPECT_RATIOS).to(feature.device)
            anchors = grid_anchors(cells, FEATURE_STRIDES[name], feature.shape[2], feature.shape[3])
            all_boxes.append(apply_deltas(deltas[order], anchors[order], RPN_DELTA_WEIGHTS))
            all_scores.append(scores)
            all_levels.append(torch.full_like(order, level_index))
        boxes, scores, levels = torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_levels)
        valid = finite_rows(boxes, scores)
        boxes, scores, levels = boxes[valid], scores[valid], levels[valid]
        boxes = clip_boxes_to_image(boxes, image_size)
        valid = nonempty(boxes)
        boxes, scores, levels = boxes[valid], scores[valid], levels[valid]
        keep = batched_nms(boxes, scores, levels, settings.rpn_nms_threshold)[: settings.rpn_post_nms_topk]
        return boxes[keep]
