"""Metrics against hand computations and naive reference implementations written here."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from PIL import Image

from leffa.eval import metrics
from leffa.eval.metrics import (
    LPIPS,
    InceptionFeatureExtractor,
    clean_resize,
    evaluate_folders,
    fid_from_features,
    frechet_distance,
    kid,
    lpips_linear_weights_path,
    psnr,
    ssim,
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


def naive_ssim(a: np.ndarray, b: np.ndarray, size: int = 11, sigma: float = 1.5) -> float:
    """SSIM of one (C, H, W) pair by explicit loops over every valid window position."""
    offsets = np.arange(size) - size // 2
    weights = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma**2))
    weights /= weights.sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for channel in range(a.shape[0]):
        for i in range(a.shape[1] - size + 1):
            for j in range(a.shape[2] - size + 1):
                x, y = a[channel, i : i + size, j : j + size], b[channel, i : i + size, j : j + size]
                mx, my = (weights * x).sum(), (weights * y).sum()
                vx, vy = (weights * (x - mx) ** 2).sum(), (weights * (y - my) ** 2).sum()
                cov = (weights * (x - mx) * (y - my)).sum()
                values.append(((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_matches_naive_windowed_computation():
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 16, 14, generator=generator)
    b = (a + 0.2 * torch.rand(2, 3, 16, 14, generator=generator)).clamp(0, 1)
    expected = [naive_ssim(a[i].double().numpy(), b[i].double().numpy()) for i in range(2)]
    torch.testing.assert_close(ssim(a, b), torch.tensor(expected, dtype=torch.float32), atol=1e-5, rtol=0)


def test_ssim_identical_is_one_and_bad_input_rejected():
    a = torch.rand(1, 3, 20, 20)
    torch.testing.assert_close(ssim(a, a), torch.ones(1), atol=1e-6, rtol=0)
    assert ssim(a, 1 - a).item() < 0.5
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(1, 3, 8, 20), torch.rand(1, 3, 8, 20))
    with pytest.raises(ValueError, match="equal shapes"):
        ssim(torch.rand(1, 3, 20, 20), torch.rand(1, 3, 20, 21))


@pytest.fixture(scope="module")
def squeeze_lpips():
    torch.manual_seed(0)
    return LPIPS("squeeze", pretrained=False)


def naive_lpips(model: LPIPS, a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """The LPIPS formula written out in numpy on the model's own layer features."""
    totals = np.zeros(a.shape[0])
    for lin, fa, fb in zip(model.lins, model.layer_features(a), model.layer_features(b), strict=True):
        fa, fb = fa.double().numpy(), fb.double().numpy()
        na = fa / (np.sqrt((fa**2).sum(axis=1, keepdims=True)) + 1e-10)
        nb = fb / (np.sqrt((fb**2).sum(axis=1, keepdims=True)) + 1e-10)
        w = lin.weight.double().numpy().reshape(-1)
        weighted = np.einsum("bchw,c->bhw", (na - nb) ** 2, w)
        totals += weighted.mean(axis=(1, 2))
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


def test_lpips_frozen_but_differentiable_in_input(squeeze_lpips):
    assert not any(p.requires_grad for p in squeeze_lpips.parameters())
    a = torch.rand(1, 3, 32, 32, requires_grad=True)
    squeeze_lpips(a, torch.rand(1, 3, 32, 32)).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


@pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum).*:UserWarning")
@pytest.mark.parametrize("backbone", ["squeeze", "alex"])
def test_lpips_matches_lpips_package(backbone):
    lpips = pytest.importorskip("lpips")
    reference = lpips.LPIPS(net=backbone, pnet_rand=True, verbose=False)
    ours = LPIPS(backbone, pretrained=False)
    ours.load_linear_weights(lpips_linear_weights_path(backbone))
    for index, lin in enumerate(ours.lins):
        assert torch.equal(lin.weight, getattr(reference, f"lin{index}").model[1].weight)
    backbone_state = {
        k.split(".", 2)[2]: v for k, v in reference.state_dict().items() if k.startswith("net.slice")
    }
    ours.features.load_state_dict(backbone_state)
    generator = torch.Generator().manual_seed(2)
    a, b = torch.rand(2, 3, 64, 64, generator=generator), torch.rand(2, 3, 64, 64, generator=generator)
    with torch.no_grad():
        expected = reference(a, b, normalize=True).flatten()
    torch.testing.assert_close(ours(a, b), expected, atol=1e-5, rtol=1e-5)


def test_lpips_pretrained_loads_torchvision_backbone_and_lpips_linear_weights(monkeypatch):
    """Offline: torchvision's download is replaced by a known state dict."""
    pytest.importorskip("lpips")
    state = tvm.squeezenet1_1(weights=None).state_dict()
    monkeypatch.setattr(tvm.SqueezeNet1_1_Weights, "get_state_dict", lambda self, *a, **k: state)
    model = LPIPS("squeeze", pretrained=True)
    for key, value in model.features.state_dict().items():
        assert torch.equal(value, state[f"features.{key}"]), key
    linear = torch.load(lpips_linear_weights_path("squeeze"), map_location="cpu", weights_only=True)
    for index, lin in enumerate(model.lins):
        assert torch.equal(lin.weight, linear[f"lin{index}.model.1.weight"])


def test_lpips_errors(monkeypatch):
    with pytest.raises(ValueError, match="squeeze, alex"):
        LPIPS("vgg", pretrained=False)
    monkeypatch.setattr(metrics.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install lpips==0.1.4"):
        LPIPS("squeeze", pretrained=True)


def test_frechet_distance_one_dimensional_closed_form():
    m1, v1, m2, v2 = 0.3, 2.0, -1.1, 0.5
    expected = (m1 - m2) ** 2 + v1 + v2 - 2 * math.sqrt(v1 * v2)
    assert math.isclose(
        frechet_distance(np.array([m1]), np.array([[v1]]), np.array([m2]), np.array([[v2]])),
        expected,
        rel_tol=1e-9,
    )


def test_frechet_distance_general_covariances():
    generator = np.random.default_rng(0)
    a, b = generator.normal(size=(4, 4)), generator.normal(size=(4, 4))
    s1, s2 = a @ a.T + 0.1 * np.eye(4), b @ b.T + 0.1 * np.eye(4)
    mu1, mu2 = generator.normal(size=4), generator.normal(size=4)
    eigenvalues, vectors = np.linalg.eigh(s1)
    root1 = vectors @ np.diag(np.sqrt(eigenvalues)) @ vectors.T
    trace_cross = np.sqrt(np.linalg.eigvalsh(root1 @ s2 @ root1)).sum()
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_cross
    assert math.isclose(frechet_distance(mu1, s1, mu2, s2), expected, rel_tol=1e-9)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-9
    with pytest.raises(ValueError, match="mismatched statistics"):
        frechet_distance(mu1, s1, mu2[:3], s2[:3, :3])


def test_fid_identical_feature_sets_is_zero():
    features = np.random.default_rng(1).normal(size=(200, 8))
    assert abs(fid_from_features(features, features)) < 1e-8
    assert fid_from_features(features, features + 1.0) == pytest.approx(8.0, rel=1e-6)


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


def test_kid_subsets_deterministic_and_near_full_set_value():
    generator = np.random.default_rng(3)
    x, y = generator.normal(size=(120, 6)), generator.normal(0.3, 1.0, size=(120, 6))
    subsampled = kid(x, y, num_subsets=20, max_subset_size=40, seed=4)
    assert subsampled == kid(x, y, num_subsets=20, max_subset_size=40, seed=4)
    assert subsampled != kid(x, y, num_subsets=20, max_subset_size=40, seed=5)
    assert subsampled == pytest.approx(naive_mmd(x, y), rel=0.5)


def test_kid_identical_sets_is_zero_up_to_order_one_over_m():
    """For X = Y the unbiased estimate is (2 / m) (mean off-diagonal k - mean diagonal k), not exactly 0."""
    many = np.random.default_rng(6).normal(0.0, 0.3, size=(400, 16))
    x = many[:100]
    gram = (x @ x.T / 16 + 1.0) ** 3
    m = len(x)
    expected = 2.0 / m * ((gram.sum() - np.trace(gram)) / (m * (m - 1)) - np.trace(gram) / m)
    assert kid(x, x, num_subsets=2) == pytest.approx(expected, rel=1e-9)
    assert abs(kid(many, many, num_subsets=2)) < abs(expected) / 3


def test_kid_errors():
    x = np.zeros((5, 6))
    with pytest.raises(ValueError, match="equal D"):
        kid(x, x[:, :5])
    with pytest.raises(ValueError, match="at least 2 samples"):
        kid(x[:1], x)


def test_clean_resize_is_per_channel_pil_bicubic():
    image = torch.rand(1, 3, 20, 16)
    out = clean_resize(image, size=(9, 7))
    assert out.shape == (1, 3, 9, 7)
    quantised = (image[0] * 255).round().numpy().astype(np.float32)
    for c in range(3):
        expected = np.asarray(Image.fromarray(quantised[c]).resize((7, 9), Image.Resampling.BICUBIC)).clip(
            0, 255
        )
        np.testing.assert_allclose(out[0, c].numpy(), expected, atol=1e-4)
    constant = clean_resize(torch.full((1, 3, 30, 20), 0.5))
    assert constant.shape == (1, 3, 299, 299) and torch.allclose(
        constant, torch.full_like(constant, 128.0), atol=1e-3
    )


@pytest.mark.slow
def test_inception_extractor_random_weights_shape_and_determinism():
    torch.manual_seed(0)
    extractor = InceptionFeatureExtractor(pretrained=False)
    image = torch.rand(1, 3, 40, 30)
    features = extractor(image)
    assert features.shape == (1, InceptionFeatureExtractor.dim) and features.dtype == torch.float32
    assert torch.equal(features, extractor(image))
    assert extractor.name.endswith("-random")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        extractor(torch.rand(3, 40, 30))


@pytest.mark.slow
def test_inception_extractor_pretrained_path_offline(monkeypatch):
    state = tvm.inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict()
    monkeypatch.setattr(tvm.Inception_V3_Weights, "get_state_dict", lambda self, *a, **k: state)
    extractor = InceptionFeatureExtractor(pretrained=True)
    assert extractor.name == "torchvision-inception-v3-pool3"
    assert extractor.net.transform_input and isinstance(extractor.net.fc, torch.nn.Identity)
    assert torch.equal(extractor.net.Conv2d_1a_3x3.conv.weight, state["Conv2d_1a_3x3.conv.weight"])


class ChannelStatistics:
    """A tiny stand-in feature extractor: per-channel mean and standard deviation (6-d)."""

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
    pred_features, gt_features = extractor(pred).double().numpy(), extractor(gt).double().numpy()
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
    from PIL import Image

    from leffa.eval.metrics import evaluate_folders

    for folder in ("pred", "gt"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (16, 16), (10, 20, 30)).save(tmp_path / folder / "a.png")

    def fail(images):
        raise AssertionError("no features should be extracted")

    results = evaluate_folders(tmp_path / "pred", tmp_path / "gt", set_metrics=False, lpips_models={}, feature_extractor=fail)
    assert "fid" not in results and "kid" not in results and results["ssim"] == pytest.approx(1.0)
