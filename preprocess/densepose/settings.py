"""Test-time settings of densepose_rcnn_R_50_FPN_s1x as the released demo runs it."""

from __future__ import annotations

from dataclasses import dataclass

PIXEL_MEAN_BGR = (103.53, 116.28, 123.675)
SIZE_DIVISIBILITY = 32


@dataclass(frozen=True)
class DensePoseSettings:
    """Inference knobs; the defaults are the demo's (score threshold 0.5, not the config's 0.05)."""

    score_threshold: float = 0.5
    box_nms_threshold: float = 0.5
    detections_per_image: int = 100
    rpn_pre_nms_topk: int = 1000
    rpn_post_nms_topk: int = 1000
    rpn_nms_threshold: float = 0.7
    shortest_edge: int = 800
    max_size: int = 1333

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        for name in ("box_nms_threshold", "rpn_nms_threshold"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        for name in (
            "detections_per_image",
            "rpn_pre_nms_topk",
            "rpn_post_nms_topk",
            "shortest_edge",
            "max_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
