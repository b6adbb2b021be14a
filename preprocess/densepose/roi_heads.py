"""Box head (person detection) and DensePose branch (decoder, conv head, chart predictor)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import batched_nms, clip_boxes_to_image

from .backbone import FEATURE_STRIDES, FPN_CHANNELS
from .boxes import apply_deltas, finite_rows, multilevel_roi_align
from .layers import Conv2dReLU
from .settings import DensePoseSettings

ROI_LEVELS = ("p2", "p3", "p4", "p5")
BOX_POOL_SIZE = 7
DENSEPOSE_POOL_SIZE = 28
POOL_SAMPLING_RATIO = 2
BOX_DELTA_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
HEAD_CHANNELS = 512
NUM_HEAD_CONVS = 8
NUM_PARTS = 24
DECODER_CONVS = {"p2": 1, "p3": 1, "p4": 2, "p5": 3}


@dataclass
class ChartOutputs:
    """Raw 112×112 chart logits/regressions per detection (box frame)."""

    coarse_segm: Tensor
    fine_segm: Tensor
    u: Tensor
    v: Tensor


class BoxHead(nn.Module):
    """Two fully connected layers with ReLU on flattened 7×7 RoI features."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(FPN_CHANNELS * BOX_POOL_SIZE * BOX_POOL_SIZE, 1024)
        self.fc2 = nn.Linear(1024, 1024)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.fc2(F.relu(self.fc1(torch.flatten(x, 1)))))


class BoxPredictor(nn.Module):
    """Class scores (person, background) and one set of class-specific box deltas."""

    def __init__(self) -> None:
        super().__init__()
        self.cls_score = nn.Linear(1024, 2)
        self.bbox_pred = nn.Linear(1024, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class Decoder(nn.Module):
    """Merges P2–P5 into one stride-4 map: per-level 3×3 conv+ReLU stacks with ×2 upsampling, summed."""

    def __init__(self) -> None:
        super().__init__()
        for name, num_convs in DECODER_CONVS.items():
            layers: list[nn.Module] = []
            for _ in range(num_convs):
                layers.append(Conv2dReLU(FPN_CHANNELS, FPN_CHANNELS))
                if FEATURE_STRIDES[name] != FEATURE_STRIDES["p2"]:
                    layers.append(nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False))
            self.add_module(name, nn.Sequential(*layers))
        self.predictor = nn.Conv2d(FPN_CHANNELS, FPN_CHANNELS, 1)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        merged = self.p2(features["p2"])
        for name in ROI_LEVELS[1:]:
            merged = merged + getattr(self, name)(features[name])
        return self.predictor(merged)


class DensePoseHead(nn.Module):
    """Eight 3×3 conv + ReLU layers, 512 channels."""

    def __init__(self) -> None:
        super().__init__()
        for index in range(1, NUM_HEAD_CONVS + 1):
            in_channels = FPN_CHANNELS if index == 1 else HEAD_CHANNELS
            self.add_module(f"body_conv_fcn{index}", Conv2dReLU(in_channels, HEAD_CHANNELS))

    def forward(self, x: Tensor) -> Tensor:
        for index in range(1, NUM_HEAD_CONVS + 1):
            x = getattr(self, f"body_conv_fcn{index}")(x)
        return x


class ChartPredictor(nn.Module):
    """Transposed 4×4/2 convs to coarse (2), fine (25), U (25), V (25) maps, then bilinear ×2."""

    def __init__(self) -> None:
        super().__init__()
        self.ann_index_lowres = self._deconv(2)
        self.index_uv_lowres = self._deconv(NUM_PARTS + 1)
        self.u_lowres = self._deconv(NUM_PARTS + 1)
        self.v_lowres = self._deconv(NUM_PARTS + 1)

    @staticmethod
    def _deconv(out_channels: int) -> nn.ConvTranspose2d:
        return nn.ConvTranspose2d(HEAD_CHANNELS, out_channels, 4, stride=2, padding=1)

    def forward(self, x: Tensor) -> ChartOutputs:
        def upsample(y: Tensor) -> Tensor:
            return F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)

        return ChartOutputs(
            coarse_segm=upsample(self.ann_index_lowres(x)),
            fine_segm=upsample(self.index_uv_lowres(x)),
            u=upsample(self.u_lowres(x)),
            v=upsample(self.v_lowres(x)),
        )


class DensePoseROIHeads(nn.Module):
    """Scores and refines proposals, keeps persons, then predicts DensePose charts for them."""

    def __init__(self) -> None:
        super().__init__()
        self.box_head = BoxHead()
        self.box_predictor = BoxPredictor()
        self.decoder = Decoder()
        self.densepose_head = DensePoseHead()
        self.densepose_predictor = ChartPredictor()

    def detect(
        self,
        features: dict[str, Tensor],
        proposals: Tensor,
        image_size: tuple[int, int],
        settings: DensePoseSettings,
    ) -> tuple[Tensor, Tensor]:
        """Person boxes (N, 4) and scores (N,) above the threshold after NMS, best first."""
        levels = [features[name] for name in ROI_LEVELS]
        strides = [FEATURE_STRIDES[name] for name in ROI_LEVELS]
        pooled = multilevel_roi_align(levels, proposals, strides, BOX_POOL_SIZE, POOL_SAMPLING_RATIO)
        logits, deltas = self.box_predictor(self.box_head(pooled))
        scores = F.softmax(logits.float(), dim=-1)
        boxes = apply_deltas(deltas, proposals, BOX_DELTA_WEIGHTS)
        valid = finite_rows(boxes, scores)
        boxes, scores = boxes[valid], scores[valid, 0]
        boxes = clip_boxes_to_image(boxes, image_size)
        keep = scores > settings.score_threshold
        boxes, scores = boxes[keep], scores[keep]
        classes = torch.zeros_like(scores, dtype=torch.int64)
        keep = batched_nms(boxes, scores, classes, settings.box_nms_threshold)[
            : settings.detections_per_image
        ]
        return boxes[keep], scores[keep]

    def predict_charts(self, features: dict[str, Tensor], boxes: Tensor) -> ChartOutputs:
        """112×112 chart outputs for each box (given in the network's input frame)."""
        merged = self.decoder(features)
        pooled = multilevel_roi_align(
            [merged], boxes, [FEATURE_STRIDES["p2"]], DENSEPOSE_POOL_SIZE, POOL_SAMPLING_RATIO
        )
        return self.densepose_predictor(self.densepose_head(pooled))
