"""DensePose R50-FPN (s1x) inference on plain torch/torchvision, loading detectron2's released checkpoint."""

from .chart import PersonChart
from .checkpoint import (
    UnsafePickleError,
    read_detectron2_checkpoint,
    write_detectron2_checkpoint,
)
from .model import CHECKPOINT_FILE, HF_REPO_ID, DensePoseModel
from .network import DensePoseRCNN
from .render import parula_lut, render_dresscode, render_iuv, render_segmentation
from .result import DensePoseResult
from .settings import DensePoseSettings

__all__ = [
    "CHECKPOINT_FILE",
    "HF_REPO_ID",
    "DensePoseModel",
    "DensePoseRCNN",
    "DensePoseResult",
    "DensePoseSettings",
    "PersonChart",
    "UnsafePickleError",
    "parula_lut",
    "read_detectron2_checkpoint",
    "render_dresscode",
    "render_iuv",
    "render_segmentation",
    "write_detectron2_checkpoint",
]
