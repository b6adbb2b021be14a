"""Metrics against hand computations and naive reference implementations written here (no downloads)."""

from __future__ import annotations

import json
import math
import urllib.error

import lpips
import numpy as np
import pytest
import torch
import torchvision.models as tvm
from cleanfid import downloads_helper
from PIL import Image
from torch import nn

from leffa.eval.features import INCEPTION_FILE, CleanFIDInception, image_features, inception_weights
from leffa.eval.metrics import (
    LPIPS,
    evaluate_folders,
    fid_from_features,
    kid,
    psnr,
    ssim,
    ssim_map,
    write_report,
)


def test_psnr_known_values_and_identical_images():
    a = torch.zeros(2, 3, 8, 8)
    b = a.clone()
    b[0] += 0.1
    b[1] += 0.5
    torch.testing.assert_close(psnr(a, b), torch.tensor([20.0, 10 * math.log10(4.0)]), atol=1e-5, rtol=0)
    assert torch.isinf(psnr(a, a)).all()
    torch.testing.assert_close(
        psnr(a[0] * 255, b[0] * 255, data_range=255.0), torch.tensor([20.0]), atol=1e-4, rtol=0
    )


# --- SSIM --------------------------------------------------------------------------------------------------


def naive_ssim_map(a: np.ndarray, b: np.ndarray, size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """SSIM of one (C, H, W) pair at every pixel: explicit Gaussian-weighted sums over its window of the
    reflect-padded images (torchmetrics >= 2024 keeps the border and pads by reflection)."""
    half = size // 2
    offsets = np.arange(size) - half
    weights = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma**2))
    weights /= weights.sum()
    c1, c2 = 0.01**2, 0.03**2
    pad = ((0, 0), (half, half), (half, half))
    a, b = np.pad(a, pad, mode="reflect"), np.pad(b, pad, mode="reflect")
    channels, height, width = a.shape[0], a.shape[1] - 2 * half, a.shape[2] - 2 * half
    out = np.empty((channels, height, width))
    for channel in range(channels):
        for i in range(height):
            for j in range(width):
                x, y = a[channel, i : i + size, j : j + size], b[channel, i : i + size, j : j + size]
                mx, my = (weights * x).sum(), (weights * y).sum()
                vx, vy = (weights * (x - mx) ** 2).sum(), (weights * (y - my) ** 2).sum()
                cov = (weights * (x - mx) * (y - my)).sum()
                out[channel, i, j] = ((2 * mx * my + c1) * (2 * cov + c2)) / (
                    (mx**2 + my**2 + c1) * (vx + vy + c2)
                )
    return out


def test_ssim_is_the_mean_of_the_reflect_padded_map_of_a_naive_computation():
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 16, 14, generator=generator)
    b = (a + 0.2 * torch.rand(2, 3, 16, 14, generator=generator)).clamp(0, 1)
    maps = [naive_ssim_map(a[i].double().numpy(), b[i].double().numpy()) for i in range(2)]
    full = ssim_map(a, b)
    assert full.shape == (2, 3, 16, 14)
    np.testing.assert_allclose(full.double().numpy(), np.stack(maps), atol=1e-5)
    expected = torch.tensor([m.mean() for m in maps], dtype=torch.float32)
    torch.testing.assert_close(ssim(a, b), expected, atol=1e-5, rtol=0)


def test_ssim_identical_is_one_and_bad_input_rejected():
    a = torch.rand(1, 3, 20, 20)
    torch.testing.assert_close(ssim(a, a), torch.ones(1), atol=1e-6, rtol=0)
    assert ssim(a, 1 - a).item() < 0.5
    with pytest.raises(ValueError, match=r"at least 6x6, got \(5, 20\)"):
        ssim(torch.rand(1, 3, 5, 20), torch.rand(1, 3, 5, 20))
    with pytest.raises(ValueError, match="equal shapes"):
        ssim(torch.rand(1, 3, 20, 20), torch.rand(1, 3, 20, 21))


# --- LPIPS -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def squeeze_lpips():
    torch.manual_seed(0)
    return LPIPS("squeeze", pretrained=False)


def naive_lpips(model: LPIPS, a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """The LPIPS v0.1 formula written out in numpy on the package network's own layer features."""
    net = model.net

    def layers(images: torch.Tensor) -> list[np.ndarray]:
        with torch.no_grad():
            return [f.double().numpy() for f in net.net(net.scaling_layer(images * 2 - 1))]

    totals = np.zeros(a.shape[0])
    for lin, fa, fb in zip(net.lins, layers(a), layers(b), strict=True):
        na = fa / (np.sqrt((fa**2).sum(axis=1, keepdims=True)) + 1e-10)
        nb = fb / (np.sqrt((fb**2).sum(axis=1, keepdims=True)) + 1e-10)
        w = lin.model[1].weight.double().numpy().reshape(-1)
        totals += np.einsum("bchw,c->bhw", (na - nb) ** 2, w).mean(axis=(1, 2))
    return totals


def test_lpips_formula_identical_and_symmetry(squeeze_lpips):
    generator = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 3, 48, 40, generator=generator), torch.rand(2, 3, 48, 40, generator=generator)
    d = squeeze_lpips(a, b)
    assert d.shape == (2,)
    np.testing.assert_allclose(d.numpy(), naive_lpips(squeeze_lpips, a, b), atol=1e-5)
    assert (d > 0).all()
    torch.testing.assert_close(squeeze_lpips(b, a), d, atol=1e-6, rtol=0)
    assert squeeze_lpips(a, a).abs().max().item() == 0.0
    with torch.no_grad():
        torch.testing.assert_close(d, squeeze_lpips.net(a * 2 - 1, b * 2 - 1).flatten(), atol=1e-6, rtol=0)


def test_lpips_frozen_but_differentiable_in_input(squeeze_lpips):
    assert not any(p.requires_grad for p in squeeze_lpips.parameters())
    a = torch.rand(1, 3, 32, 32, requires_grad=True)
    squeeze_lpips(a, torch.rand(1, 3, 32, 32)).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


@pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum).*:UserWarning")
@pytest.mark.parametrize("backbone", ["squeeze", "alex"])
def test_lpips_linear_weights_always_come_from_the_package(backbone):
    shipped = lpips.LPIPS(net=backbone, pnet_rand=True, verbose=False)
    ours = LPIPS(backbone, pretrained=False)
    for lin, reference in zip(ours.net.lins, shipped.lins, strict=True):
        assert torch.equal(lin.model[1].weight, reference.model[1].weight)
        assert (lin.model[1].weight >= 0).all()


def test_lpips_pretrained_backbone_comes_from_torchvision(monkeypatch):
    """Offline: torchvision's cached-or-downloaded state dict is replaced by a known one."""
    state = tvm.squeezenet1_1(weights=None).state_dict()
    monkeypatch.setattr(tvm.SqueezeNet1_1_Weights, "get_state_dict", lambda self, *a, **k: state)
    model = LPIPS("squeeze", pretrained=True)
    backbone = {k.split(".", 1)[1]: v for k, v in model.net.net.state_dict().items()}
    assert backbone and all(torch.equal(v, state[f"features.{k}"]) for k, v in backbone.items())


def test_lpips_errors(monkeypatch):
    with pytest.raises(ValueError, match="squeeze, alex"):
        LPIPS("vgg", pretrained=False)

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tvm.SqueezeNet1_1_Weights, "get_state_dict", offline)
    with pytest.raises(FileNotFoundError, match=r"squeezenet1_1-b8a52dc0\.pth in .*checkpoints; download"):
        LPIPS("squeeze", pretrained=True)


# --- FID and KID -------------------------------------------------------------------------------------------


def naive_fid(x: np.ndarray, y: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2) through symmetric eigendecompositions."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    eigenvalues, vectors = np.linalg.eigh(s1)
    root1 = vectors @ np.diag(np.sqrt(eigenvalues.clip(0))) @ vectors.T
    cross = np.sqrt(np.linalg.eigvalsh(root1 @ s2 @ root1).clip(0)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross)


def test_fid_matches_the_naive_formula():
    generator = np.random.default_rng(0)
    x = generator.normal(size=(60, 4))
    y = generator.normal(0.5, 1.5, size=(80, 4)) @ generator.normal(size=(4, 4))
    assert fid_from_features(x, y) == pytest.approx(naive_fid(x, y), rel=1e-7)
    assert abs(fid_from_features(x, x)) < 1e-8
    assert fid_from_features(x, x + 1.0) == pytest.approx(4.0, rel=1e-6)
    with pytest.raises(ValueError, match="equal D"):
        fid_from_features(x, y[:, :3])
    with pytest.raises(ValueError, match="at least 2 samples per set, got 1 and 80"):
        fid_from_features(x[:1], y)


def naive_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(u, v) = (u.v / d + 1)^3 by explicit double loops."""
    d, m = x.shape[1], len(x)

    def k(u, v):
        return (float(np.dot(u, v)) / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_naive_double_loop():
    generator = np.random.default_rng(2)
    x, y = generator.normal(size=(12, 5)), generator.normal(0.5, 1.2, size=(12, 5))
    assert kid(x, y, num_subsets=3) == pytest.approx(naive_mmd(x, y), rel=1e-9, abs=1e-12)


def test_kid_subsets_follow_the_seed_and_leave_numpy_global_state_alone():
    generator = np.random.default_rng(3)
    x, y = generator.normal(size=(120, 6)), generator.normal(0.3, 1.0, size=(120, 6))
    np.random.seed(123)
    expected_next = np.random.random()
    np.random.seed(123)
    subsampled = kid(x, y, num_subsets=20, max_subset_size=40, seed=4)
    assert np.random.random() == expected_next
    assert subsampled == kid(x, y, num_subsets=20, max_subset_size=40, seed=4)
    assert subsampled != kid(x, y, num_subsets=20, max_subset_size=40, seed=5)
    assert subsampled == pytest.approx(naive_mmd(x, y), rel=0.5)


def test_kid_errors():
    x = np.zeros((5, 6))
    with pytest.raises(ValueError, match="equal D"):
        kid(x, x[:, :5])
    with pytest.raises(ValueError, match="at least 2 samples"):
        kid(x[:1], x)
    with pytest.raises(ValueError, match="at least 1 subset"):
        kid(x, x, num_subsets=0)


# --- clean-fid features ------------------------------------------------------------------------------------


class FakeInceptionLayers(nn.Module):
    """Stands in for the TF-Inception trunk: a fixed 1x1 projection to 2048 channels, spatially averaged."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 2048, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).mean((2, 3))


class FakeInception(nn.Module):
    """The TorchScript interface clean-fid loads from inception-2015-12-05.pt (a ``layers`` child)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = FakeInceptionLayers()

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return self.layers(x)


@pytest.fixture(scope="module")
def fake_inception_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hub")
    torch.manual_seed(0)
    with pytest.warns(FutureWarning, match="deprecated"):
        torch.jit.script(FakeInception()).save(str(folder / INCEPTION_FILE))
    return folder


def naive_clean_resize(array: np.ndarray) -> np.ndarray:
    """clean-fid's "clean" resize of one uint8 (H, W, 3) image: PIL bicubic per channel in float, 299x299."""
    channels = [
        np.asarray(Image.fromarray(array[:, :, c].astype(np.float32)).resize((299, 299), Image.BICUBIC))
        for c in range(3)
    ]
    return np.stack(channels).clip(0, 255)


def test_clean_fid_inception_features_of_image_files(tmp_path, fake_inception_dir):
    arrays = random_arrays(8, count=3, shape=(40, 30, 3))
    write_images(tmp_path / "images", arrays)
    extractor = CleanFIDInception(weights_dir=fake_inception_dir, download=False)
    features = image_features(sorted((tmp_path / "images").iterdir()), extractor, 2, "cpu")
    assert features.shape == (3, CleanFIDInception.dim) and features.dtype == np.float64
    proj = extractor.net.layers.proj
    weight, bias = proj.weight.detach().double().numpy()[:, :, 0, 0], proj.bias.detach().double().numpy()
    for row, array in zip(features, arrays, strict=True):
        resized = (naive_clean_resize(array) - 128) / 128
        np.testing.assert_allclose(row, weight @ resized.reshape(3, -1).mean(1) + bias, atol=1e-4)


def test_missing_inception_weights_name_the_file_and_folder(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=rf"{INCEPTION_FILE} in {tmp_path}; download https://"):
        inception_weights(tmp_path, download=False)

    def partial_download(fpath):
        (tmp_path / INCEPTION_FILE).write_bytes(b"partial")
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(downloads_helper, "check_download_inception", partial_download)
    with pytest.raises(FileNotFoundError, match="put it there .the download failed"):
        CleanFIDInception(weights_dir=tmp_path)
    assert not (tmp_path / INCEPTION_FILE).exists()


# --- folders and reports ----------------------------------------------------------------------------------


class ChannelStatistics:
    """A tiny stand-in feature extractor: per-channel mean and standard deviation (6-d) of 0..255 images."""

    name = "channel-statistics"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        flat = images.flatten(2)
        return torch.cat([flat.mean(2), flat.std(2)], dim=1)


def write_images(folder, arrays, suffix=".png"):
    folder.mkdir(parents=True, exist_ok=True)
    for index, array in enumerate(arrays):
        Image.fromarray(array).save(folder / f"{index:03d}{suffix}")


def random_arrays(seed: int, count: int = 6, shape=(24, 20, 3)) -> list[np.ndarray]:
    generator = np.random.default_rng(seed)
    return [generator.integers(0, 256, shape, dtype=np.uint8) for _ in range(count)]


def test_evaluate_folders_identical_images(tmp_path, squeeze_lpips):
    arrays = random_arrays(5)
    write_images(tmp_path / "pred", arrays)
    write_images(tmp_path / "gt", arrays)
    results = evaluate_folders(
        tmp_path / "pred",
        tmp_path / "gt",
        lpips_models={"squeeze": squeeze_lpips},
        feature_extractor=ChannelStatistics(),
        batch_size=4,
    )
    assert results["num_images"] == 6 and results["num_reference_images"] == 6
    assert math.isinf(results["psnr"])
    assert results["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert results["lpips_squeeze"] == 0.0
    assert abs(results["fid"]) < 1e-6
    assert results["feature_extractor"] == "channel-statistics"


def test_evaluate_folders_averages_per_image_metrics(tmp_path, squeeze_lpips):
    preds, gts = random_arrays(6), random_arrays(7)
    write_images(tmp_path / "pred", preds, ".png")
    write_images(tmp_path / "gt", gts, ".bmp")
    extractor = ChannelStatistics()
    results = evaluate_folders(
        tmp_path / "pred",
        tmp_path / "gt",
        lpips_models={"squeeze": squeeze_lpips},
        feature_extractor=extractor,
        batch_size=4,
        kid_subsets=5,
    )
    pred = torch.from_numpy(np.stack(preds)).permute(0, 3, 1, 2).float() / 255
    gt = torch.from_numpy(np.stack(gts)).permute(0, 3, 1, 2).float() / 255
    assert results["psnr"] == pytest.approx(psnr(pred, gt).double().mean().item(), rel=1e-6)
    assert results["ssim"] == pytest.approx(ssim(pred, gt).double().mean().item(), rel=1e-6)
    assert results["lpips_squeeze"] == pytest.approx(squeeze_lpips(pred, gt).double().mean().item(), rel=1e-5)
    pred_features, gt_features = (
        extractor(torch.from_numpy(np.stack([naive_clean_resize(a) for a in arrays]))).double().numpy()
        for arrays in (preds, gts)
    )
    assert results["fid"] == pytest.approx(fid_from_features(pred_features, gt_features), rel=1e-6)
    assert results["kid"] == pytest.approx(naive_mmd(pred_features, gt_features), rel=1e-6)


def test_evaluate_folders_unpaired_and_reference_dir(tmp_path):
    write_images(tmp_path / "pred", random_arrays(8))
    write_images(tmp_path / "train", random_arrays(9, count=9, shape=(32, 24, 3)))
    results = evaluate_folders(
        tmp_path / "pred",
        tmp_path / "missing-gt",
        paired=False,
        feature_extractor=ChannelStatistics(),
        fid_reference_dir=tmp_path / "train",
    )
    assert "ssim" not in results and "psnr" not in results
    assert results["num_reference_images"] == 9 and results["fid"] > 0


def test_evaluate_folders_errors(tmp_path, squeeze_lpips):
    write_images(tmp_path / "pred", random_arrays(1, count=3))
    write_images(tmp_path / "gt", random_arrays(2, count=2))
    kwargs = {"lpips_models": {"squeeze": squeeze_lpips}, "feature_extractor": ChannelStatistics()}
    with pytest.raises(ValueError, match=r"1 predictions have no ground truth.*'002'"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt", **kwargs)
    write_images(tmp_path / "gt_big", random_arrays(2, count=3, shape=(32, 20, 3)))
    with pytest.raises(ValueError, match="resize before scoring"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt_big", **kwargs)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate_folders(tmp_path / "nothing", tmp_path / "gt", **kwargs)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        evaluate_folders(tmp_path / "empty", tmp_path / "gt", **kwargs)


def test_write_report_json_and_markdown(tmp_path):
    results = {
        "num_images": 4,
        "fid": 4.54,
        "kid": 0.00005,
        "ssim": 0.899,
        "psnr": float("inf"),
        "lpips_squeeze": 0.048,
        "feature_extractor": "x",
    }
    settings = {"dataset": "vitonhd", "mode": "paired", "steps": 30, "checkpoint": tmp_path / "model.pth"}
    json_path, md_path = write_report(results, settings, tmp_path / "reports" / "vitonhd")
    assert (json_path.name, md_path.name) == ("vitonhd.json", "vitonhd.md")
    data = json.loads(json_path.read_text())
    assert data["results"]["kid_x1000"] == pytest.approx(0.05)
    assert "kid" not in data["results"] and data["results"]["psnr"] == "inf"
    assert data["settings"]["steps"] == 30 and data["settings"]["checkpoint"].endswith("model.pth")
    markdown = md_path.read_text()
    for row in (
        "| FID | 4.5400 |",
        "| KID x1000 | 0.0500 |",
        "| LPIPS (SqueezeNet) | 0.0480 |",
        "| PSNR (dB) | inf |",
        "| mode | paired |",
    ):
        assert row in markdown


def test_set_metrics_can_be_skipped(tmp_path):
    for folder in ("pred", "gt"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (16, 16), (10, 20, 30)).save(tmp_path / folder / "a.png")

    def fail(images):
        raise AssertionError("no features should be extracted")

    results = evaluate_folders(
        tmp_path / "pred", tmp_path / "gt", set_metrics=False, lpips_models={}, feature_extractor=fail
    )
    assert "fid" not in results and "kid" not in results and results["ssim"] == pytest.approx(1.0)
