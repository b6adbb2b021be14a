"""DensePoseModel: checkpoint loading, device placement and image → DensePoseResult."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.ops import clip_boxes_to_image

from leffa.common import check_device

from .boxes import nonempty
from .chart import chart_to_person
from .checkpoint import load_weights, read_detectron2_checkpoint
from .inputs import prepare_image, to_rgb_array
from .network import DensePoseRCNN
from .result import DensePoseResult
from .settings import DensePoseSettings

CHECKPOINT_FILE = "densepose/model_final_162be9.pkl"
HF_REPO_ID = "franciszzj/Leffa"


def resolve_checkpoint(path: str | Path) -> Path:
    """The .pkl file itself, or ``densepose/model_final_162be9.pkl`` inside a checkpoint directory."""
    path = Path(path)
    candidate = path / CHECKPOINT_FILE if path.is_dir() else path
    if not candidate.is_file():
        raise FileNotFoundError(
            f"DensePose checkpoint {CHECKPOINT_FILE} not found at {candidate}. It comes from the Hugging "
            f"Face repo {HF_REPO_ID}: python -m leffa download densepose --ckpt-dir <checkpoint dir>"
        )
    return candidate


class DensePoseModel:
    """DensePose R50-FPN s1x for one image at a time; fp32 by default, any torch device.

    On CPU and CUDA the network runs in channels-last memory format (about 20% faster convolutions on
    CPU); other devices keep the default layout.
    """

    def __init__(self, network: DensePoseRCNN, settings: DensePoseSettings | None = None) -> None:
        self.network = network.eval()
        self.settings = settings or DensePoseSettings()
        self.to(self.device)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        settings: DensePoseSettings | None = None,
    ) -> DensePoseModel:
        """Load the released detectron2 pickle (file or checkpoint directory) safely and strictly."""
        weights = read_detectron2_checkpoint(resolve_checkpoint(path))
        with torch.device("meta"):
            network = DensePoseRCNN()
        load_weights(network, weights)
        return cls(network, settings).to(device, dtype)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.network.parameters()).dtype

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> DensePoseModel:
        """Move (and optionally cast) the network in place; returns self."""
        if device is not None:
            check_device(torch.device(device))
        self.network.to(device=device, dtype=dtype)
        fast_layout = self.device.type in ("cpu", "cuda")
        self.memory_format = torch.channels_last if fast_layout else torch.contiguous_format
        self.network.to(memory_format=self.memory_format)
        return self

    @torch.inference_mode()
    def predict(self, image: Image.Image | np.ndarray) -> DensePoseResult:
        """Detect people in an RGB image and return their charts in the image's own pixel frame."""
        rgb = to_rgb_array(image)
        height, width = rgb.shape[:2]
        batch, resized = prepare_image(rgb, self.settings, self.device, self.dtype)
        output = self.network(batch.contiguous(memory_format=self.memory_format), resized, self.settings)
        boxes = output.boxes.float().clone()
        boxes[:, 0::2] *= width / resized[1]
        boxes[:, 1::2] *= height / resized[0]
        boxes = clip_boxes_to_image(boxes, (height, width))
        keep = torch.nonzero(nonempty(boxes)).squeeze(1)
        boxes, scores = boxes[keep], output.scores[keep].float()
        people = []
        if output.charts is not None:
            charts = output.charts
            people = [
                chart_to_person(charts.coarse_segm[i], charts.fine_segm[i], charts.u[i], charts.v[i], box)
                for i, box in zip(keep.tolist(), boxes, strict=True)
            ]
        return DensePoseResult(
            boxes=boxes.cpu().numpy(),
            scores=scores.cpu().numpy(),
            people=people,
            image_size=(height, width),
            score_threshold=self.settings.score_threshold,
        )
