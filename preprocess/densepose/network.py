"""The whole DensePose R-CNN; its state_dict names equal the detectron2 checkpoint keys."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .backbone import FPNBackbone
from .roi_heads import ChartOutputs, DensePoseROIHeads
from .rpn import RPN
from .settings import DensePoseSettings


@dataclass
class NetworkOutput:
    """Detections in the resized input frame; ``charts`` is None when nothing was detected."""

    boxes: Tensor
    scores: Tensor
    charts: ChartOutputs | None


class DensePoseRCNN(nn.Module):
    """GeneralizedRCNN with DensePose ROI heads, inference only, one image at a time."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = FPNBackbone()
        self.proposal_generator = RPN()
        self.roi_heads = DensePoseROIHeads()

    @torch.inference_mode()
    def forward(
        self, image: Tensor, image_size: tuple[int, int], settings: DensePoseSettings
    ) -> NetworkOutput:
        """Run on a normalised, padded (1, 3, H, W) BGR tensor; ``image_size`` is the unpadded (h, w)."""
        if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != 3:
            raise ValueError(f"expected a (1, 3, H, W) image tensor, got shape {tuple(image.shape)}")
        if image.shape[2] % 32 or image.shape[3] % 32:
            raise ValueError(
                f"image height and width must be padded to multiples of 32, got {tuple(image.shape)}"
            )
        features = self.backbone(image)
        proposals = self.proposal_generator(features, image_size, settings)
        boxes, scores = self.roi_heads.detect(features, proposals, image_size, settings)
        charts = self.roi_heads.predict_charts(features, boxes) if boxes.shape[0] else None
        return NetworkOutput(boxes=boxes, scores=scores, charts=charts)
