"""Evaluation: sharding, option checks, and a full generate-and-score run on a synthetic VITON-HD layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from PIL import Image

from leffa.eval.metrics import LPIPS
from leffa.core.serialization import save_state_dict
from train.evaluate import EvalOptions, evaluate, main, shard
from train.synthetic.export import write_vitonhd_layout

SIZE = (64, 48)


pytestmark = pytest.mark.usefixtures("fresh_accelerate")


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """Synthetic VITON-HD layout with 5 test pairs (names 00001_00 .. 00005_00)."""
    return write_vitonhd_layout(tmp_path_factory.mktemp("vitonhd"), n_train=1, n_test=5, size=SIZE)


class ChannelStatistics:
    """Small download-free feature extractor (per-channel mean and std) so FID/KID are defined for 5 images."""

    name = "channel-statistics"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        flat = images.flatten(2)
        return torch.cat([flat.mean(2), flat.std(2)], dim=1)


def options(tmp_path, layout, **overrides) -> EvalOptions:
    values = {
        "checkpoint": "unused",
        "dataset": "vitonhd",
        "data_root": str(layout),
        "output_dir": str(tmp_path / "eval"),
        "size": SIZE,
        "steps": 2,
        "batch_size": 2,
    }
    return EvalOptions(**{**values, **overrides})


def naive_psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2)
    return 10 * np.log10(1 / mse)


def test_shards_cover_every_pair_once_with_equal_batch_counts():
    for count, world, batch in [(5, 2, 2), (4, 2, 2), (1, 3, 4), (7, 3, 1)]:
        shards = [shard(count, rank, world, batch) for rank in range(world)]
        assert len({len(batches) for batches in shards}) == 1
        assert all(len(b) <= batch for batches in shards for b in batches)
        flat = sorted(i for batches in shards for b in batches for i in b)
        assert flat == list(range(count))
    assert shard(5, 0, 2, 2) == [[0, 1], [4]] and shard(5, 1, 2, 2) == [[2, 3], []]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mode": "unpaired", "metrics": ("ssim",)}, "need ground truth"),
        ({"dataset": "dresscode"}, "--category is required for dresscode"),
        ({"category": "upper_body"}, "applies only to it"),
        ({"data_root": None}, "--data-root is required"),
        ({"metrics": ("fid", "is")}, r"unknown metrics \['is'\]"),
        ({"dataset": "deepfashion", "mode": "unpaired"}, "only paired"),
        ({"steps": 0}, "--steps must be >= 1"),
        ({"pretrained_metrics": False}, "FID/KID have no random-weight variant"),
    ],
)
def test_bad_options(tmp_path, layout, overrides, message):
    with pytest.raises(ValueError, match=message):
        options(tmp_path, layout, **overrides)


def test_default_metrics_follow_the_mode(tmp_path, layout):
    assert options(tmp_path, layout).metrics == ("psnr", "ssim", "lpips_squeeze", "lpips_alex", "fid", "kid")
    assert options(tmp_path, layout, mode="unpaired").metrics == ("fid", "kid")


@pytest.mark.parametrize("mode", ["paired", "unpaired"])
def test_evaluate_writes_images_and_report(tmp_path, layout, tiny_model, mode):
    torch.manual_seed(0)
    lpips = {"squeeze": LPIPS("squeeze", pretrained=False)}
    metrics = ("psnr", "ssim", "lpips_squeeze", "fid", "kid") if mode == "paired" else ()
    opts = options(tmp_path, layout, mode=mode, metrics=metrics)
    results = evaluate(
        opts,
        Accelerator(cpu=True),
        model=tiny_model,
        feature_extractor=ChannelStatistics(),
        lpips_models=lpips,
    )

    out = tmp_path / "eval"
    stems = [f"{i:05d}_00" for i in range(1, 6)]
    assert sorted(p.stem for p in (out / "images").iterdir()) == stems
    for stem in stems:  # ground truth = the dataset's person photo at the evaluated size
        truth = np.asarray(Image.open(out / "ground_truth" / f"{stem}.png"))
        assert np.array_equal(truth, np.asarray(Image.open(layout / "test" / "image" / f"{stem}.jpg")))
    expected = {"num_images", "num_reference_images", "fid", "kid", "feature_extractor"}
    if mode == "paired":
        expected |= {"psnr", "ssim", "lpips_squeeze"}
        pairs = [
            (
                np.asarray(Image.open(out / "images" / f"{s}.png")),
                np.asarray(Image.open(out / "ground_truth" / f"{s}.png")),
            )
            for s in stems
        ]
        assert results["psnr"] == pytest.approx(np.mean([naive_psnr(a, b) for a, b in pairs]), rel=1e-5)
    assert set(results) == expected and results["num_images"] == 5

    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["mode"] == mode and report["settings"]["steps"] == 2
    assert report["settings"]["size"] == "64x48" and report["settings"]["num_processes"] == 1
    assert report["results"]["kid_x1000"] == pytest.approx(results["kid"] * 1000)
    markdown = (out / "report.md").read_text()
    assert "| KID x1000 |" in markdown and "| dataset | vitonhd |" in markdown


def test_generation_is_reproducible(tmp_path, layout, tiny_model):
    accelerator = Accelerator(cpu=True)
    runs = []
    for name in ("a", "b"):
        opts = options(tmp_path / name, layout, metrics=("psnr",), limit=2)
        evaluate(opts, accelerator, model=tiny_model)
        runs.append(np.asarray(Image.open(tmp_path / name / "eval" / "images" / "00001_00.png")))
    assert np.array_equal(*runs)


def test_cli_with_random_metric_weights(tmp_path, layout, tiny_model):
    checkpoint = save_state_dict(tiny_model.state_dict(), tmp_path / "tiny.safetensors")
    out = tmp_path / "cli"
    argv = [
        "--checkpoint", str(checkpoint), "--dataset", "vitonhd", "--data-root", str(layout),
        "--size", "64", "48", "--steps", "2", "--batch-size", "3", "--output-dir", str(out),
        "--metrics", "psnr", "ssim", "lpips_squeeze", "lpips_alex", "--random-metric-weights",
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["results"]) == {
        "num_images",
        "num_reference_images",
        "psnr",
        "ssim",
        "lpips_squeeze",
        "lpips_alex",
    }
    assert report["settings"]["metric_weights"] == "random (not comparable)"
    assert report["settings"]["lpips_backbones"] == "SqueezeNet, AlexNet"
    assert 0 <= report["results"]["ssim"] <= 1 and report["results"]["lpips_alex"] >= 0


def test_cli_rejects_bad_options(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", "x", "--dataset", "vitonhd", "--output-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--data-root is required" in capsys.readouterr().err
