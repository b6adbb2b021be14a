"""Tests of the synthetic pose-transfer generator: determinism, exact flow, occlusion-aware parts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from train.synthetic.data import sample_seed
from train.synthetic.people import DENSEPOSE_PARTS, make_sample, render_densepose
from train.synthetic.pose import PoseSample, SyntheticPoseDataset, make_pose_sample
from train.synthetic.pose_examples import write_pose_examples

SEEDS = [sample_seed("test", index) for index in range(4)]


@pytest.fixture(scope="module")
def samples() -> list[PoseSample]:
    return [make_pose_sample(seed) for seed in SEEDS]


def test_same_seed_same_arrays_and_pose_a_is_the_try_on_person(samples: list[PoseSample]) -> None:
    again = make_pose_sample(SEEDS[0])
    for name in ("source", "target", "densepose", "flow", "flow_valid"):
        np.testing.assert_array_equal(getattr(again, name), getattr(samples[0], name))
    np.testing.assert_array_equal(samples[0].source, make_sample(SEEDS[0]).person)
    assert not np.array_equal(samples[0].source, samples[0].target)


def test_grid_sample_of_the_source_at_the_flow_reproduces_the_target(samples: list[PoseSample]) -> None:
    for sample in samples:
        source = torch.from_numpy(sample.source).permute(2, 0, 1)[None].float()
        warped = F.grid_sample(source, torch.from_numpy(sample.flow)[None], mode="bilinear", align_corners=True)
        warped = warped[0].permute(1, 2, 0).numpy()
        error = np.abs(warped - sample.target.astype(np.float64))[sample.flow_valid]
        assert error.max() <= 0.5 + 1e-3  # bilinear sample rounded to uint8
        assert np.all(sample.flow[~sample.flow_valid] == 0)
        assert np.abs(sample.flow).max() <= 1.0 + 1.0 / 47.5  # at most half a pixel past the border


def test_target_parts_point_at_the_same_part_of_the_source(samples: list[PoseSample]) -> None:
    for sample in samples:
        h, w = sample.target_parts.shape
        x = np.rint((sample.flow[..., 0] + 1) / 2 * (w - 1)).astype(int)
        y = np.rint((sample.flow[..., 1] + 1) / 2 * (h - 1)).astype(int)
        labelled = sample.target_parts > 0
        assert labelled.sum() > 0.2 * h * w
        np.testing.assert_array_equal(sample.source_parts[y[labelled], x[labelled]], sample.target_parts[labelled])
        assert np.all(sample.flow_valid[labelled])
        np.testing.assert_array_equal(sample.densepose, render_densepose(sample.target_parts))


def test_the_pose_moves_the_limbs(samples: list[PoseSample]) -> None:
    """The flow is far from the identity on the arms (they rotate about the shoulders)."""
    arms = [DENSEPOSE_PARTS[f"{part}_{side}"] for part in ("lower_arm", "hand") for side in ("left", "right")]
    shifts = []
    for sample in samples:
        h, w = sample.target_parts.shape
        grid_x, grid_y = np.meshgrid(np.linspace(-1, 1, w), np.linspace(-1, 1, h))
        moved = np.hypot((sample.flow[..., 0] - grid_x) * (w - 1) / 2, (sample.flow[..., 1] - grid_y) * (h - 1) / 2)
        shifts.append(moved[np.isin(sample.target_parts, arms)].mean())
    assert np.mean(shifts) > 8.0


def test_dataset_items_are_model_inputs(tmp_path) -> None:
    dataset = SyntheticPoseDataset("test", (128, 96), length=2, cache_dir=tmp_path)
    cached = SyntheticPoseDataset("test", (128, 96), length=2, cache_dir=tmp_path)
    assert [path.name for path in tmp_path.iterdir()] == ["pose_transfer-test-128x96-n2-s0-flow.npz"]
    torch.testing.assert_close(cached[1]["flow"], dataset[1]["flow"])
    item = dataset[1]
    sample = make_pose_sample(sample_seed("test", 1))
    assert item["image"].shape == item["reference"].shape == item["densepose"].shape == (3, 128, 96)
    torch.testing.assert_close(item["image"], torch.from_numpy(sample.target).permute(2, 0, 1).float() / 127.5 - 1)
    torch.testing.assert_close(item["reference"], torch.from_numpy(sample.source).permute(2, 0, 1).float() / 127.5 - 1)
    assert torch.equal(item["mask"], torch.ones(1, 128, 96))
    assert item["flow"].shape == (128, 96, 2) and item["flow_valid"].shape == (1, 128, 96)
    with pytest.raises(IndexError, match="index 2 out of range for a dataset of length 2"):
        dataset[2]
    with pytest.raises(ValueError, match="split must be one of"):
        SyntheticPoseDataset("val")



def test_pose_examples_are_the_check_batch_pixels_and_refuse_what_a_png_cannot_hold(tmp_path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = {key: rng.integers(0, 256, (2, 3, 8, 6), dtype=np.uint8) for key in ("person", "reference", "densepose")}
    signed = {key: (torch.from_numpy(value).float() / 127.5 - 1.0).numpy() for key, value in pixels.items()}
    np.savez(tmp_path / "batch.npz", **signed)
    written = write_pose_examples(tmp_path / "batch.npz", tmp_path / "out", [1, 0])
    assert [paths["target"].name for paths in written] == ["pose_00_target.png", "pose_01_target.png"]
    for k, index in enumerate([1, 0]):
        for part, key in (("person", "reference"), ("target", "person"), ("densepose", "densepose")):
            stored = np.asarray(Image.open(written[k][part]))
            np.testing.assert_array_equal(stored, np.moveaxis(pixels[key][index], 0, -1))
    with pytest.raises(ValueError, match=r"indices must be distinct samples in 0..1, got \[0, 0\]"):
        write_pose_examples(tmp_path / "batch.npz", tmp_path / "out", [0, 0])
    np.savez(tmp_path / "blurred.npz", **{**signed, "densepose": signed["densepose"] + 1e-3})
    with pytest.raises(ValueError, match="densepose: values are not 8-bit levels"):
        write_pose_examples(tmp_path / "blurred.npz", tmp_path / "other", [0])
