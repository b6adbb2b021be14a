"""Image-quality metrics as the paper reports them (PSNR, SSIM, LPIPS, FID, KID), from maintained libraries.

Images are float tensors (B, 3, H, W) in [0, 1]; paired metrics are returned per image so a caller can
average over a whole test set.

- SSIM: torchmetrics' ``structural_similarity_index_measure`` (pinned 1.9.0) with its defaults (Gaussian
  window 11, sigma 1.5, K1 0.01, K2 0.03) and data_range 1, as the paper's evaluation. This version
  reflect-pads each image by 5 pixels and averages the SSIM map over the whole image, border included
  (torchmetrics changed this in 2024, Lightning-AI/torchmetrics#2721; earlier releases, and this module's
  former hand-written SSIM, averaged only the positions whose window fits inside the image). On uniform
  random images plus Gaussian noise the two averagings differ per image by at most 5.4e-3 at 64x48,
  1.8e-4 at 256x192 and 6.3e-6 at 1024x768; cropping torchmetrics' map by 5 pixels reproduces the old
  values to 3e-8.
- LPIPS: the ``lpips`` package (pinned 0.1.4), v0.1, SqueezeNet (the paper's choice) or AlexNet backbone.
- FID and KID: clean-fid (pinned 0.1.35) on the features of :mod:`leffa.eval.features`; KID is a raw value
  here, reports show it x1000 as the paper does.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path

import lpips
import numpy as np
import torch
import torchvision.models as tvm
from cleanfid.fid import fid_from_feats, kernel_distance
from PIL import Image
from torch import Tensor, nn
from torchmetrics.functional.image import structural_similarity_index_measure

from leffa.common import IMAGE_SUFFIXES
from leffa.eval.features import CleanFIDInception, FeatureExtractor, image_features, metric_weights_dir


def _check_images(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Both (B, C, H, W) (a single (C, H, W) image is batched) and of equal shape."""
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise TypeError(f"expected two tensors, got {type(a).__name__} and {type(b).__name__}")
    if not a.is_floating_point() or not b.is_floating_point():
        raise TypeError(f"expected float images in [0, 1], got {a.dtype} and {b.dtype}")
    if a.shape != b.shape:
        raise ValueError(f"images must have equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() == 3:
        a, b = a[None], b[None]
    if a.dim() != 4:
        raise ValueError(f"expected (B, C, H, W) or (C, H, W) images, got shape {tuple(a.shape)}")
    return a, b


def psnr(a: Tensor, b: Tensor, data_range: float = 1.0) -> Tensor:
    """Per-image PSNR in dB, shape (B,); identical images give ``inf`` (no cap)."""
    a, b = _check_images(a, b)
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return (10.0 * torch.log10(data_range**2 / mse)).to(a.dtype)


SSIM_PADDING = 5
"""torchmetrics reflect-pads by (11 - 1) / 2 pixels, so each side must be longer than that."""


def _check_ssim_images(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    a, b = _check_images(a, b)
    if min(a.shape[-2:]) <= SSIM_PADDING:
        raise ValueError(
            f"SSIM needs images of at least {SSIM_PADDING + 1}x{SSIM_PADDING + 1}, got {tuple(a.shape[-2:])}"
        )
    return a, b


def ssim_map(a: Tensor, b: Tensor, data_range: float = 1.0) -> Tensor:
    """torchmetrics' SSIM map (B, C, H, W) in float64, one value per pixel; :func:`ssim` is its mean.

    The inputs go to torchmetrics as float64: in float32 its local variances round so that two identical
    flat images score 1 - 1.6e-5 instead of 1.
    """
    a, b = _check_ssim_images(a, b)
    _, full = structural_similarity_index_measure(
        a.double(), b.double(), data_range=data_range, reduction="none", return_full_image=True
    )
    return full


def ssim(a: Tensor, b: Tensor, data_range: float = 1.0) -> Tensor:
    """Per-image SSIM, shape (B,), as torchmetrics computes it (see the module docstring and :func:`ssim_map`)."""
    a, b = _check_ssim_images(a, b)
    scores = structural_similarity_index_measure(
        a.double(), b.double(), data_range=data_range, reduction="none"
    )
    return scores.to(a.dtype)


LPIPS_BACKBONE_WEIGHTS = {
    "squeeze": tvm.SqueezeNet1_1_Weights.IMAGENET1K_V1,
    "alex": tvm.AlexNet_Weights.IMAGENET1K_V1,
}
"""The torchvision ImageNet weights the lpips package loads for each backbone."""


def lpips_backbone_missing(backbone: str) -> str:
    """What to do when torchvision cannot find or download an LPIPS backbone's weights."""
    url = LPIPS_BACKBONE_WEIGHTS[backbone].url
    return (
        f"LPIPS ({backbone}) needs torchvision's ImageNet weights {url.rsplit('/', 1)[-1]} in "
        f"{metric_weights_dir()}; download {url} and put it there (pretrained=False, or "
        "--random-metric-weights, uses a random backbone for smoke tests)"
    )


class LPIPS(nn.Module):
    """LPIPS v0.1 of the ``lpips`` package, per image (B,), for images in [0, 1].

    The linear-layer weights always come from the ``lpips`` package itself. ``pretrained=True`` takes the
    ImageNet backbone from torchvision's download cache (downloaded on first use when online);
    ``pretrained=False`` gives a random backbone for offline tests, so distances stay >= 0 but are not
    comparable. Parameters are frozen; gradients still reach the inputs.
    """

    def __init__(self, backbone: str = "squeeze", pretrained: bool = True) -> None:
        super().__init__()
        if backbone not in LPIPS_BACKBONE_WEIGHTS:
            raise ValueError(
                f"LPIPS backbone must be one of {', '.join(LPIPS_BACKBONE_WEIGHTS)}; got {backbone!r}"
            )
        self.backbone = backbone
        try:
            with warnings.catch_warnings():  # lpips 0.1.4 still passes torchvision's old `pretrained=`
                warnings.filterwarnings(
                    "ignore", message=".*(pretrained|weight enum).*", category=UserWarning
                )
                self.net = lpips.LPIPS(net=backbone, pnet_rand=not pretrained, verbose=False)
        except OSError as error:  # torchvision's download failed (offline) and nothing is cached
            raise FileNotFoundError(lpips_backbone_missing(backbone)) from error
        self.eval()
        self.requires_grad_(False)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        a, b = _check_images(a, b)
        if a.shape[1] != 3:
            raise ValueError(f"LPIPS needs RGB images, got {a.shape[1]} channels")
        return self.net(a, b, normalize=True).flatten()


def _check_features(features1: np.ndarray, features2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(features1, dtype=np.float64), np.asarray(features2, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need (N, D) feature sets of equal D, got {x.shape} and {y.shape}")
    if min(len(x), len(y)) < 2:
        raise ValueError(f"FID and KID need at least 2 samples per set, got {len(x)} and {len(y)}")
    return x, y


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """clean-fid's Fréchet distance between the Gaussians fitted to two (N, D) feature sets."""
    x, y = _check_features(features1, features2)
    with warnings.catch_warnings():  # clean-fid 0.1.35 passes sqrtm's `disp`, deprecated in scipy 1.17
        warnings.filterwarnings(
            "ignore", message="The `disp` argument is deprecated", category=DeprecationWarning
        )
        return float(fid_from_feats(x, y))


def kid(
    features1: np.ndarray,
    features2: np.ndarray,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    seed: int = 0,
) -> float:
    """clean-fid's Kernel Inception Distance (raw; reports show x1000), reproducible through ``seed``.

    Unbiased MMD^2 with the kernel ``(x.y / D + 1)^3`` averaged over ``num_subsets`` random subsets of
    ``min(N1, N2, max_subset_size)`` rows. clean-fid draws them from numpy's global generator, which is
    seeded here for the call and restored after.
    """
    x, y = _check_features(features1, features2)
    if num_subsets < 1:
        raise ValueError(f"KID needs at least 1 subset, got {num_subsets}")
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return kernel_distance(x, y, num_subsets, max_subset_size)
    finally:
        np.random.set_state(state)


def list_images(folder: str | Path) -> dict[str, Path]:
    """Images in ``folder`` keyed by file stem (so ``a.png`` pairs with ``a.jpg``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    images: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in images:
            raise ValueError(
                f"{folder} holds two images with the stem {path.stem!r}: "
                f"{images[path.stem].name}, {path.name}; keep one"
            )
        images[path.stem] = path
    if not images:
        raise ValueError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


def load_image_batch(paths: list[Path]) -> Tensor:
    """RGB images of one size as (B, 3, H, W) float in [0, 1]."""
    arrays = [np.asarray(Image.open(path).convert("RGB")) for path in paths]
    for path, array in zip(paths, arrays, strict=True):
        if array.shape != arrays[0].shape:
            raise ValueError(
                f"{path} is {array.shape[1]}x{array.shape[0]} but {paths[0]} is "
                f"{arrays[0].shape[1]}x{arrays[0].shape[0]}; evaluate images of one size"
            )
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def evaluate_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    *,
    paired: bool = True,
    set_metrics: bool = True,
    lpips_models: Mapping[str, LPIPS] | None = None,
    feature_extractor: FeatureExtractor | None = None,
    fid_reference_dir: str | Path | None = None,
    batch_size: int = 16,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict:
    """All metrics for generated images against ground truth; returns plain numbers by metric name.

    Paired metrics (PSNR, SSIM, ``lpips_<backbone>``) compare each prediction with the ground-truth image
    of the same stem (every prediction needs one) and are averaged; they are skipped when ``paired`` is
    False (unpaired try-on has no ground truth). FID and KID (skipped when ``set_metrics`` is False) compare
    the set of predictions with every image in ``fid_reference_dir`` (default ``gt_dir``; pose transfer uses
    the training set). Defaults: pretrained LPIPS SqueezeNet and AlexNet, and clean-fid's TF-Inception
    (:class:`leffa.eval.features.CleanFIDInception`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    predictions = list_images(pred_dir)
    reference = list_images(fid_reference_dir if fid_reference_dir is not None else gt_dir)
    results: dict = {"num_images": len(predictions), "num_reference_images": len(reference)}
    if paired:
        results.update(_paired_metrics(predictions, list_images(gt_dir), lpips_models, batch_size, device))
    if not set_metrics:
        return results
    extractor = feature_extractor if feature_extractor is not None else CleanFIDInception(device)
    pred_features = image_features(list(predictions.values()), extractor, batch_size, device)
    ref_features = image_features(list(reference.values()), extractor, batch_size, device)
    results["fid"] = fid_from_features(pred_features, ref_features)
    results["kid"] = kid(pred_features, ref_features, kid_subsets, kid_subset_size, seed)
    results["feature_extractor"] = extractor.name
    return results


def _paired_metrics(
    predictions: dict[str, Path],
    ground_truth: dict[str, Path],
    lpips_models: Mapping[str, LPIPS] | None,
    batch_size: int,
    device: str | torch.device,
) -> dict[str, float]:
    missing = sorted(set(predictions) - set(ground_truth))
    if missing:
        raise ValueError(
            f"{len(missing)} predictions have no ground truth of the same stem, e.g. {missing[:5]}"
        )
    if lpips_models is None:
        lpips_models = {name: LPIPS(name) for name in ("squeeze", "alex")}
    models = {name: model.to(device) for name, model in lpips_models.items()}
    scores: dict[str, list[Tensor]] = {"psnr": [], "ssim": [], **{f"lpips_{name}": [] for name in models}}
    for stems in _chunks(sorted(predictions), batch_size):
        pred = load_image_batch([predictions[s] for s in stems]).to(device)
        gt = load_image_batch([ground_truth[s] for s in stems]).to(device)
        if pred.shape != gt.shape:
            raise ValueError(
                f"prediction {predictions[stems[0]]} is {tuple(pred.shape[-2:])} but its ground "
                f"truth {ground_truth[stems[0]]} is {tuple(gt.shape[-2:])}; resize before scoring"
            )
        scores["psnr"].append(psnr(pred, gt).cpu())
        scores["ssim"].append(ssim(pred, gt).cpu())
        with torch.no_grad():
            for name, model in models.items():
                scores[f"lpips_{name}"].append(model(pred, gt).cpu())
    return {key: torch.cat(values).double().mean().item() for key, values in scores.items()}


METRIC_LABELS = {
    "fid": "FID",
    "kid_x1000": "KID x1000",
    "ssim": "SSIM",
    "psnr": "PSNR (dB)",
    "lpips_squeeze": "LPIPS (SqueezeNet)",
    "lpips_alex": "LPIPS (AlexNet)",
    "num_images": "images",
    "num_reference_images": "reference images",
    "feature_extractor": "FID/KID features",
}


def _display(results: dict) -> dict:
    """Results as reported: KID x1000 (as ``kid_x1000``), non-finite numbers as strings (JSON has no inf)."""
    shown = {}
    for key, value in results.items():
        if key == "kid":
            key, value = "kid_x1000", value * 1000.0
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        shown[key] = value
    return shown


def _cell(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def write_report(results: dict, settings: dict, path_stem: str | Path) -> tuple[Path, Path]:
    """Write ``<stem>.json`` ({"settings", "results"}) and ``<stem>.md`` (metric and setting tables)."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    shown = _display(results)
    json_path, md_path = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".md")
    json_path.write_text(json.dumps({"settings": settings, "results": shown}, indent=2, default=str) + "\n")
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {METRIC_LABELS.get(key, key)} | {_cell(value)} |" for key, value in shown.items()]
    lines += ["", "| setting | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in settings.items()]
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path
