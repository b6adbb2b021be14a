"""Image-quality metrics as the paper reports them: PSNR, SSIM, LPIPS, FID and KID.

Conventions (reference README §6): images are float tensors (B, 3, H, W) in [0, 1]. SSIM follows
torchmetrics' defaults (Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, data_range 1, averaged over the
valid, unpadded region). LPIPS is v0.1 with a SqueezeNet (the paper's choice) or AlexNet backbone. FID and
KID follow clean-fid (KID is a raw value here; reports show it x1000). Paired metrics are returned per
image so a caller can average over a whole test set.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from PIL import Image
from torch import Tensor, nn


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


def gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    """Normalised 1-D Gaussian taps centred on the middle tap (float64)."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    taps = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return taps / taps.sum()


def ssim_map(
    a: Tensor,
    b: Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """SSIM index map (B, C, H - w + 1, W - w + 1) in float64 over the valid (unpadded) window positions."""
    a, b = _check_images(a, b)
    if min(a.shape[-2:]) < window_size:
        raise ValueError(
            f"SSIM needs images of at least {window_size}x{window_size}, got {tuple(a.shape[-2:])}"
        )
    channels = a.shape[1]
    taps = gaussian_window(window_size, sigma).to(a.device)
    window = torch.outer(taps, taps).expand(channels, 1, window_size, window_size)
    x, y = a.double(), b.double()

    def local_mean(t: Tensor) -> Tensor:
        return F.conv2d(t, window, groups=channels)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x**2
    var_y = local_mean(y * y) - mu_y**2
    cov = local_mean(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


def ssim(
    a: Tensor,
    b: Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """Per-image SSIM, shape (B,): Gaussian-weighted local statistics, map averaged over the valid region."""
    index = ssim_map(a, b, data_range, window_size, sigma, k1, k2)
    return index.flatten(1).mean(1).to(a.dtype)


LPIPS_TAPS = {"squeeze": (1, 4, 7, 9, 10, 11, 12), "alex": (1, 4, 7, 9, 11)}
"""Indices in torchvision's ``features`` whose outputs LPIPS compares (the ReLU / Fire outputs)."""
LPIPS_CHANNELS = {"squeeze": (64, 128, 256, 384, 384, 512, 512), "alex": (64, 192, 384, 256, 256)}
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
LPIPS_EPS = 1e-10


def lpips_linear_weights_path(backbone: str) -> Path:
    """The v0.1 linear-layer weights shipped inside the ``lpips`` wheel."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "pretrained LPIPS needs the linear-layer weights shipped in the 'lpips' package: "
            "pip install lpips==0.1.4 (or use pretrained=False for random weights)"
        )
    path = Path(spec.submodule_search_locations[0]) / "weights" / "v0.1" / f"{backbone}.pth"
    if not path.is_file():
        raise FileNotFoundError(f"the installed lpips package has no {path}; reinstall lpips==0.1.4")
    return path


def _lpips_backbone(backbone: str, pretrained: bool) -> nn.Sequential:
    if backbone == "squeeze":
        net = tvm.squeezenet1_1(weights=tvm.SqueezeNet1_1_Weights.IMAGENET1K_V1 if pretrained else None)
    else:
        net = tvm.alexnet(weights=tvm.AlexNet_Weights.IMAGENET1K_V1 if pretrained else None)
    return net.features[: LPIPS_TAPS[backbone][-1] + 1]


class LPIPS(nn.Module):
    """LPIPS v0.1 distance, per image (B,), for images in [0, 1] (mapped to [-1, 1] internally).

    Features of each tapped layer are unit-normalised over channels, their squared difference is
    weighted by a 1x1 linear layer, averaged spatially, and the layers are summed. ``pretrained=True``
    takes the ImageNet backbone from torchvision (downloaded on first use) and the linear weights from the
    ``lpips`` package; ``pretrained=False`` gives random weights for tests (linear weights kept
    non-negative, like trained ones, so distances stay >= 0). Parameters are frozen; gradients still
    reach the inputs.
    """

    def __init__(self, backbone: str = "squeeze", pretrained: bool = True) -> None:
        super().__init__()
        if backbone not in LPIPS_TAPS:
            raise ValueError(f"LPIPS backbone must be one of {', '.join(LPIPS_TAPS)}; got {backbone!r}")
        self.backbone = backbone
        weights_path = lpips_linear_weights_path(backbone) if pretrained else None
        self.features = _lpips_backbone(backbone, pretrained)
        self.taps = LPIPS_TAPS[backbone]
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in LPIPS_CHANNELS[backbone])
        if weights_path is None:
            for lin in self.lins:
                nn.init.uniform_(lin.weight, 0.0, 2.0 / lin.in_channels)
        else:
            self.load_linear_weights(weights_path)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))
        self.eval()
        self.requires_grad_(False)

    def load_linear_weights(self, path: Path) -> None:
        """Load v0.1 linear weights (``lin<i>.model.1.weight``) from an lpips weights file."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        for index, lin in enumerate(self.lins):
            key = f"lin{index}.model.1.weight"
            if key not in state or state[key].shape != lin.weight.shape:
                raise ValueError(
                    f"{path} lacks {key} of shape {tuple(lin.weight.shape)}; reinstall lpips==0.1.4"
                )
            lin.weight.data.copy_(state[key])

    def layer_features(self, images: Tensor) -> list[Tensor]:
        """Outputs of the tapped backbone layers for images in [0, 1]."""
        x = ((images * 2.0 - 1.0) - self.shift) / self.scale
        outputs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                outputs.append(x)
        return outputs

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        a, b = _check_images(a, b)
        if a.shape[1] != 3:
            raise ValueError(f"LPIPS needs RGB images, got {a.shape[1]} channels")
        total = torch.zeros(a.shape[0], dtype=a.dtype, device=a.device)
        for lin, fa, fb in zip(self.lins, self.layer_features(a), self.layer_features(b), strict=True):
            na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + LPIPS_EPS)
            nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + LPIPS_EPS)
            total = total + lin((na - nb) ** 2).mean((2, 3))[:, 0]
        return total


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of (N, D) features, float64, N >= 2."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need (N, D) features with N >= 2, got shape {features.shape}")
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrt(S1 S2))`` between two Gaussians.

    As clean-fid: a non-finite square root is retried with ``eps`` added to both diagonals, and an
    imaginary part (numerical noise) is dropped unless its diagonal exceeds 1e-3.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    dim = mu1.shape[0]
    if mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(
            f"mismatched statistics: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape}"
        )
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(dim) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imaginary = np.abs(np.diagonal(covmean).imag).max()
        if imaginary > 1e-3:
            raise ValueError(
                f"matrix square root has an imaginary component {imaginary:.3g}; too few samples?"
            )
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID between two (N, D) feature sets."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def kid(
    features1: np.ndarray,
    features2: np.ndarray,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    seed: int = 0,
) -> float:
    """Kernel Inception Distance (raw; reports show x1000), as clean-fid.

    Unbiased MMD^2 with the kernel ``k(x, y) = (x.y / D + 1)^3``, averaged over ``num_subsets`` random
    subsets of ``m = min(N1, N2, max_subset_size)`` rows drawn without replacement from each set.
    """
    x_all = np.asarray(features1, dtype=np.float64)
    y_all = np.asarray(features2, dtype=np.float64)
    if x_all.ndim != 2 or y_all.ndim != 2 or x_all.shape[1] != y_all.shape[1]:
        raise ValueError(f"need (N, D) feature sets of equal D, got {x_all.shape} and {y_all.shape}")
    dim = x_all.shape[1]
    m = min(len(x_all), len(y_all), max_subset_size)
    if m < 2 or num_subsets < 1:
        raise ValueError(
            f"KID needs at least 2 samples per set and 1 subset, got m={m}, subsets={num_subsets}"
        )
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = x_all[rng.choice(len(x_all), m, replace=False)]
        y = y_all[rng.choice(len(y_all), m, replace=False)]
        within = (x @ x.T / dim + 1.0) ** 3 + (y @ y.T / dim + 1.0) ** 3
        between = (x @ y.T / dim + 1.0) ** 3
        total += (within.sum() - np.trace(within)) / (m * (m - 1)) - 2.0 * between.sum() / m**2
    return float(total / num_subsets)


class FeatureExtractor(Protocol):
    """Maps images (B, 3, H, W) in [0, 1] to features (B, D); ``name`` identifies it in reports."""

    name: str

    def __call__(self, images: Tensor) -> Tensor: ...


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def clean_resize(images: Tensor, size: tuple[int, int] = (299, 299)) -> Tensor:
    """clean-fid's "clean" resize: quantise to uint8, PIL bicubic per channel in float mode, clip to 0..255.

    Returns (B, C, h, w) float32 in [0, 255]. Unlike a tensor bilinear resize this antialiases, which is
    why clean-fid scores differ from legacy FID implementations.
    """
    quantised = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    height, width = size
    out = np.empty((*quantised.shape[:2], height, width), dtype=np.float32)
    for i, image in enumerate(quantised):
        for c, channel in enumerate(image):
            resized = Image.fromarray(channel.astype(np.float32)).resize(
                (width, height), Image.Resampling.BICUBIC
            )
            out[i, c] = np.asarray(resized).clip(0, 255)
    return torch.from_numpy(out)


class InceptionFeatureExtractor:
    """torchvision Inception-v3 pool3 (2048-d) features after :func:`clean_resize` to 299x299.

    ``pretrained=True`` downloads torchvision's ImageNet weights on first use. These are not the
    TF-Inception weights clean-fid uses, so absolute FID/KID values are not comparable with the paper's;
    compare runs scored with the same extractor (its ``name`` goes into the report).
    """

    dim = 2048

    def __init__(self, pretrained: bool = True, device: str | torch.device = "cpu") -> None:
        if pretrained:
            net = tvm.inception_v3(weights=tvm.Inception_V3_Weights.IMAGENET1K_V1)
        else:
            net = tvm.inception_v3(weights=None, aux_logits=False, transform_input=True, init_weights=True)
        net.fc = nn.Identity()
        self.net = net.eval().requires_grad_(False).to(device)
        self.device = torch.device(device)
        self.name = "torchvision-inception-v3-pool3" + ("" if pretrained else "-random")
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) images in [0, 1], got shape {tuple(images.shape)}")
        x = clean_resize(images).to(self.device) / 255.0
        return self.net((x - self.mean) / self.std).float().cpu()


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


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


def extract_features(
    paths: list[Path], extractor: FeatureExtractor, batch_size: int, device: str | torch.device
) -> np.ndarray:
    """(N, D) float64 features of the images at ``paths``."""
    batches = [extractor(load_image_batch(chunk).to(device)) for chunk in _chunks(paths, batch_size)]
    return torch.cat(batches).double().cpu().numpy()


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
    the training set). Defaults:
    pretrained LPIPS SqueezeNet and AlexNet, and :class:`InceptionFeatureExtractor`.
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
    extractor = (
        feature_extractor if feature_extractor is not None else InceptionFeatureExtractor(device=device)
    )
    pred_features = extract_features(list(predictions.values()), extractor, batch_size, device)
    ref_features = extract_features(list(reference.values()), extractor, batch_size, device)
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
