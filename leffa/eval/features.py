"""FID/KID image features exactly as clean-fid computes them (the paper's evaluation).

clean-fid's "clean" mode reads each image as RGB, resizes it to 299x299 with PIL bicubic per channel in
float (antialiased, unlike legacy FID code) and feeds values in [0, 255] to the TF-Inception-v3 port
(``inception-2015-12-05.pt``, pool3, 2048-d). With that file present, FID/KID are comparable to the
paper's tables. A feature extractor here is any callable from such a (B, 3, 299, 299) float batch to a
(B, D) tensor (clean-fid's custom-extractor contract); tests pass a small fake one.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from cleanfid import downloads_helper
from cleanfid.fid import get_files_features
from cleanfid.inception_torchscript import InceptionV3W
from torch import Tensor

INCEPTION_FILE = "inception-2015-12-05.pt"


class FeatureExtractor(Protocol):
    """Maps (B, 3, 299, 299) float images in [0, 255] to (B, D) features; ``name`` goes into reports."""

    name: str

    def __call__(self, images: Tensor) -> Tensor: ...


def metric_weights_dir() -> Path:
    """Where metric network weights are looked for: torch hub's checkpoint folder (torchvision's cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def inception_weights(folder: str | Path | None = None, *, download: bool = True) -> Path:
    """The TF-Inception file in ``folder`` (default :func:`metric_weights_dir`), fetched by clean-fid if absent.

    A failed download leaves nothing behind and raises FileNotFoundError saying which file to put where.
    """
    folder = Path(folder) if folder is not None else metric_weights_dir()
    path = folder / INCEPTION_FILE
    if path.is_file():
        return path
    missing = (
        f"FID/KID need clean-fid's TF-Inception weights {INCEPTION_FILE} in {folder}; "
        f"download {downloads_helper.inception_url} and put it there"
    )
    if not download:
        raise FileNotFoundError(missing)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        downloads_helper.check_download_inception(fpath=str(folder))
    except OSError as error:
        path.unlink(missing_ok=True)  # absent before the download: a partial file is ours
        raise FileNotFoundError(f"{missing} (the download failed: {error})") from error
    return path


class CleanFIDInception:
    """clean-fid's TF-Inception-v3 pool3 features (2048-d) on ``device``, frozen."""

    name = "clean-fid TF-Inception-v3 pool3"
    dim = 2048

    def __init__(
        self,
        device: str | torch.device = "cpu",
        weights_dir: str | Path | None = None,
        *,
        download: bool = True,
    ) -> None:
        path = inception_weights(weights_dir, download=download)
        with warnings.catch_warnings():  # clean-fid's weights are TorchScript, whose loader torch deprecates
            warnings.filterwarnings(
                "ignore", message="`torch.jit.load` is deprecated", category=FutureWarning
            )
            net = InceptionV3W(str(path.parent), download=False)
        self.net = net.eval().requires_grad_(False).to(device)

    def __call__(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            return self.net(images)


def image_features(
    paths: Sequence[Path], extractor: FeatureExtractor, batch_size: int, device: str | torch.device
) -> np.ndarray:
    """(N, D) float64 features of the image files, through clean-fid's loader and "clean" resize."""
    features = get_files_features(
        [str(path) for path in paths],
        model=extractor,
        num_workers=0,
        batch_size=batch_size,
        device=torch.device(device),
        mode="clean",
        verbose=False,
    )
    return features.astype(np.float64)
