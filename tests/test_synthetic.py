"""Tests of the synthetic try-on generator: determinism, formats and the exactness of the stored flow."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from train.synthetic.data import SyntheticTryOnDataset, sample_seed
from train.synthetic.export import make_examples, write_vitonhd_layout
from train.synthetic.garments import PATTERNS
from train.synthetic.people import AGNOSTIC_GREY, DENSEPOSE_PARTS, SyntheticSample, check_size, make_sample, render_densepose
from train.synthetic.warping import sample_at_flow, thin_plate_spline

SEEDS = range(12)


@pytest.fixture(scope="module")
def samples() -> list[SyntheticSample]:
    return [make_sample(seed) for seed in SEEDS]


def _warp(garment: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """The garment (uint8 or bool, H x W [x C]) warped by ``flow`` with torch's grid_sample, in [0, 1]."""
    image = torch.from_numpy(garment.astype(np.float32) / (255.0 if garment.dtype == np.uint8 else 1.0))
    image = image.reshape(image.shape[0], image.shape[1], -1).permute(2, 0, 1)[None]
    out = F.grid_sample(
        image, torch.from_numpy(flow)[None], mode="bilinear", padding_mode="zeros", align_corners=True
    )
    return out[0].permute(1, 2, 0).numpy()


def _fields(sample: SyntheticSample) -> dict[str, np.ndarray]:
    return {k: v for k, v in vars(sample).items() if isinstance(v, np.ndarray)}


# ------------------------------------------------------------------------------------------ determinism


def test_same_seed_gives_identical_arrays() -> None:
    first, second = make_sample(7), make_sample(7)
    assert first.pattern == second.pattern and first.seed == second.seed == 7
    for name, value in _fields(first).items():
        np.testing.assert_array_equal(value, _fields(second)[name], err_msg=name)


def test_different_seeds_differ(samples: list[SyntheticSample]) -> None:
    for a, b in itertools.pairwise(samples):
        assert not np.array_equal(a.person, b.person)
        assert not np.array_equal(a.garment, b.garment)
        assert not np.array_equal(a.flow_valid, b.flow_valid)


def test_all_pattern_families_occur() -> None:
    assert {make_sample(seed, (64, 48)).pattern for seed in range(40)} == set(PATTERNS)


# ------------------------------------------------------------------------------------------ formats


@pytest.mark.parametrize("size", [(128, 96), (64, 48), (96, 96)])
def test_shapes_dtypes_and_ranges(size: tuple[int, int]) -> None:
    s = make_sample(3, size)
    h, w = size
    for name, dtype, shape in [
        ("person", np.uint8, (h, w, 3)),
        ("garment", np.uint8, (h, w, 3)),
        ("agnostic", np.uint8, (h, w, 3)),
        ("densepose", np.uint8, (h, w, 3)),
        ("mask", np.bool_, (h, w)),
        ("cloth_mask", np.bool_, (h, w)),
        ("flow_valid", np.bool_, (h, w)),
        ("parts", np.uint8, (h, w)),
        ("flow", np.float32, (h, w, 2)),
    ]:
        value = getattr(s, name)
        assert value.dtype == dtype and value.shape == shape, name
    assert np.all(np.abs(s.flow[s.flow_valid]) <= 1.0)
    assert np.all(s.flow[~s.flow_valid] == 0.0)
    assert set(np.unique(s.parts)) <= {0, *DENSEPOSE_PARTS.values()}
    assert 0.08 < s.flow_valid.mean() < 0.5, "the garment should cover a good part of the person"


def test_densepose_is_grey_render_of_parts(samples: list[SyntheticSample]) -> None:
    for s in samples[:3]:
        expected = np.round(s.parts.astype(np.float64) * 255 / 24).astype(np.uint8)
        for channel in range(3):
            np.testing.assert_array_equal(s.densepose[..., channel], expected)
    np.testing.assert_array_equal(
        render_densepose(np.array([[0, 1, 12, 24]], np.uint8))[0, :, 0], [0, 11, 128, 255]
    )


def test_render_densepose_rejects_bad_parts() -> None:
    for bad in (np.full((4, 4), 25, np.uint8), np.full((4, 4), -1), np.zeros((4, 4, 3), np.uint8)):
        with pytest.raises(ValueError, match="0..24"):
            render_densepose(bad)


def _part_centre(parts: np.ndarray, *names: str) -> tuple[float, float]:
    """Mean (row, column) of the pixels labelled with any of the named DensePose parts."""
    rows, cols = np.nonzero(np.isin(parts, [DENSEPOSE_PARTS[n] for n in names]))
    return float(rows.mean()), float(cols.mean())


def test_densepose_parts_follow_the_body_layout(samples: list[SyntheticSample]) -> None:
    """Head above torso above legs; person's right (image left) parts left of the left ones."""
    for s in samples:
        head = _part_centre(s.parts, "head_left", "head_right")
        torso = _part_centre(s.parts, "torso")
        legs = _part_centre(s.parts, "upper_leg_left", "upper_leg_right")
        assert head[0] < torso[0] < legs[0]
        right_arm, left_arm = (
            _part_centre(s.parts, "upper_arm_right"),
            _part_centre(s.parts, "upper_arm_left"),
        )
        assert right_arm[1] < torso[1] < left_arm[1]
        assert _part_centre(s.parts, "head_right")[1] < _part_centre(s.parts, "head_left")[1]


def test_garment_is_on_white_outside_its_mask(samples: list[SyntheticSample]) -> None:
    for s in samples:
        assert np.all(s.garment[~s.cloth_mask] == 255)
        assert 0.15 < s.cloth_mask.mean() < 0.6
        # fine detail: the share of garment pixels whose colour differs from the left or upper neighbour
        # (measured over 400 seeds: at least 0.06 for the patterned families, 0.025 for colour blocks)
        m, g = s.cloth_mask, s.garment
        inside = m[1:, 1:] & m[:-1, 1:] & m[1:, :-1]
        changes = np.any(g[1:, 1:] != g[1:, :-1], axis=-1) | np.any(g[1:, 1:] != g[:-1, 1:], axis=-1)
        assert changes[inside].mean() > (0.02 if s.pattern == "blocks" else 0.05)


# ------------------------------------------------------------------------------------------ flow


def test_flow_warps_garment_onto_person_exactly(samples: list[SyntheticSample]) -> None:
    """grid_sample(garment, flow) reproduces the person's garment pixels up to uint8 rounding."""
    errors = []
    for s in samples:
        warped = _warp(s.garment, s.flow)
        error = np.abs(warped - s.person / 255.0)[s.flow_valid]
        errors.append(error)
        assert error.max() <= 0.5 / 255 + 1e-4
    assert np.concatenate(errors).mean() < 1e-3  # measured about 2.3e-4 (uniform rounding error)


def test_valid_flow_points_into_the_garment(samples: list[SyntheticSample]) -> None:
    for s in samples:
        alpha = _warp(s.cloth_mask, s.flow)[..., 0]
        assert np.all(alpha[s.flow_valid] >= 0.5 - 1e-5)


def test_flow_is_invalid_where_no_garment_shows(samples: list[SyntheticSample]) -> None:
    p = DENSEPOSE_PARTS
    occluders = [p["head_left"], p["head_right"], p["hand_left"], p["hand_right"]]
    for s in samples:
        assert not np.any(s.flow_valid & np.isin(s.parts, occluders))
        assert not np.any(s.flow_valid[:, 0]) and not np.any(s.flow_valid[0])  # frame edge is background
        # where the person's pixel differs from the warped garment, the pixel cannot be marked valid
        differs = np.abs(_warp(s.garment, s.flow) - s.person / 255.0).max(axis=-1) > 2 / 255
        assert not np.any(differs & s.flow_valid)


def test_flow_is_locally_smooth(samples: list[SyntheticSample]) -> None:
    """One person pixel step moves the garment position by about one garment pixel (a smooth map)."""
    for s in samples:
        h, w = s.flow_valid.shape
        pixels = (s.flow + 1) / 2 * np.array([w - 1, h - 1], np.float32)
        both = s.flow_valid[:, 1:] & s.flow_valid[:, :-1]
        steps = np.linalg.norm(pixels[:, 1:] - pixels[:, :-1], axis=-1)[both]
        assert 0.5 < np.median(steps) < 1.5
        assert np.quantile(steps, 0.98) < 3.0  # only seams between garment pieces jump


# ------------------------------------------------------------------------------------------ mask


def test_mask_covers_garment_and_keeps_head_and_hands(samples: list[SyntheticSample]) -> None:
    p = DENSEPOSE_PARTS
    kept = [p["head_left"], p["head_right"], p["hand_left"], p["hand_right"]]
    for s in samples:
        assert np.all(s.mask[s.flow_valid])
        assert not np.any(s.mask & np.isin(s.parts, kept))
        assert np.all(s.mask[np.isin(s.parts, [p["upper_arm_left"], p["upper_arm_right"]])])
        assert s.mask.sum() > 1.1 * s.flow_valid.sum(), "the mask should be generous around the garment"


def test_agnostic_is_person_with_grey_mask(samples: list[SyntheticSample]) -> None:
    for s in samples:
        np.testing.assert_array_equal(s.agnostic[~s.mask], s.person[~s.mask])
        assert np.all(s.agnostic[s.mask] == AGNOSTIC_GREY)


# ------------------------------------------------------------------------------------------ thin-plate spline


def _naive_thin_plate_spline(src: np.ndarray, dst: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Textbook TPS: kernel r^2 log r^2 plus an affine part, solved with the side conditions."""

    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        r2 = ((a[:, None] - b[None]) ** 2).sum(-1)
        return r2 * np.log(np.maximum(r2, 1e-300))

    n = len(src)
    system = np.zeros((n + 3, n + 3))
    system[:n, :n] = kernel(src, src)
    system[:n, n] = system[n, :n] = 1.0
    system[:n, n + 1 :] = src
    system[n + 1 :, :n] = src.T
    coef = np.linalg.solve(system, np.concatenate([dst, np.zeros((3, 2))]))
    return kernel(points, src) @ coef[:n] + coef[n] + points @ coef[n + 1 :]


def test_thin_plate_spline_interpolates_and_matches_the_textbook_spline() -> None:
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 1, (9, 2))
    dst = src + rng.normal(0, 0.05, src.shape)
    spline = thin_plate_spline(src, dst)
    np.testing.assert_allclose(spline(src), dst, atol=1e-9)
    points = rng.uniform(-0.5, 1.5, (200, 2))
    np.testing.assert_allclose(spline(points), _naive_thin_plate_spline(src, dst, points), atol=1e-9)


def test_thin_plate_spline_reproduces_affine_maps() -> None:
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 1, (7, 2))
    matrix, shift = np.array([[1.2, 0.3], [-0.1, 0.9]]), np.array([0.5, -0.2])
    points = rng.uniform(-1, 2, (50, 2))
    np.testing.assert_allclose(
        thin_plate_spline(src, src @ matrix.T + shift)(points), points @ matrix.T + shift, atol=1e-9
    )


def _naive_bilinear(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """grid_sample's bilinear rule written out per pixel: align_corners=True, zeros outside the image."""
    h, w = image.shape[:2]
    out = np.zeros(flow.shape[:2] + image.shape[2:])
    for (i, j), (fx, fy) in zip(np.ndindex(flow.shape[:2]), flow.reshape(-1, 2), strict=True):
        x, y = (fx + 1) / 2 * (w - 1), (fy + 1) / 2 * (h - 1)
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        for dx, dy in itertools.product((0, 1), (0, 1)):
            if 0 <= x0 + dx < w and 0 <= y0 + dy < h:
                weight = (1 - abs(x - x0 - dx)) * (1 - abs(y - y0 - dy))
                out[i, j] += weight * image[y0 + dy, x0 + dx]
    return out


def test_sample_at_flow_is_bilinear_with_zeros_outside() -> None:
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (6, 5, 3)).astype(np.uint8)
    flow = rng.uniform(-1.3, 1.3, (4, 7, 2)).astype(np.float32)
    np.testing.assert_allclose(sample_at_flow(image, flow), _naive_bilinear(image.astype(np.float64), flow), atol=1e-3)
    grey = sample_at_flow(image[..., 0], flow)
    assert grey.shape == (4, 7) and grey.dtype == np.float32
    corners = np.array([[[-1.0, -1.0], [1.0, 1.0]]], np.float32)
    np.testing.assert_array_equal(sample_at_flow(image, corners, mode="nearest")[0], image[[0, -1], [0, -1]])


# ------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("size", [(100, 96), (128, 90), (24, 24), (128,), "128x96", (128.0, 96), (True, 96)])
def test_bad_sizes_are_rejected(size: object) -> None:
    with pytest.raises(ValueError, match="multiples of 8"):
        check_size(size)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [-1, 1.5, "3", None])
def test_bad_seeds_are_rejected(seed: object) -> None:
    with pytest.raises(ValueError, match="non-negative int"):
        make_sample(seed)  # type: ignore[arg-type]


def test_split_seeds_are_disjoint_and_stable() -> None:
    for base in (0, 1, 5):
        train = {sample_seed("train", i, base) for i in range(2000)}
        test = {sample_seed("test", i, base) for i in range(2000)}
        assert len(train) == len(test) == 2000 and not train & test
    assert not {sample_seed("train", i, 0) for i in range(100)} & {
        sample_seed("train", i, 1) for i in range(100)
    }
    assert sample_seed("test", 3, 0) == 2**31 + 3
    with pytest.raises(ValueError, match="split must be one of"):
        sample_seed("val", 0)
    with pytest.raises(ValueError, match="index must be below"):
        sample_seed("train", 2**31)


def test_generation_is_fast() -> None:
    make_sample(0)
    start = time.perf_counter()
    for seed in range(10):
        make_sample(seed)
    per_sample = (time.perf_counter() - start) / 10
    assert per_sample < 0.25, f"{per_sample * 1000:.0f} ms per 128x96 sample (measured ~15 ms idle)"


# ------------------------------------------------------------------------------------------ dataset


def test_dataset_items_match_samples_in_released_normalisation() -> None:
    data = SyntheticTryOnDataset("train", size=(64, 48), length=5, seed=2)
    assert len(data) == 5
    item = data[3]
    s = make_sample(sample_seed("train", 3, 2), (64, 48))
    assert item["seed"] == s.seed
    for name, source in (("image", s.person), ("reference", s.garment), ("densepose", s.densepose)):
        tensor = item[name]
        assert tensor.shape == (3, 64, 48) and tensor.dtype == torch.float32
        assert -1.0 <= tensor.min() and tensor.max() <= 1.0
        np.testing.assert_allclose(tensor.permute(1, 2, 0).numpy(), source / 127.5 - 1.0, atol=1e-6)
    for name, source in (("mask", s.mask), ("flow_valid", s.flow_valid)):
        assert item[name].shape == (1, 64, 48) and item[name].dtype == torch.float32
        np.testing.assert_array_equal(item[name][0].numpy(), source.astype(np.float32))
    assert item["flow"].shape == (64, 48, 2) and item["flow"].dtype == torch.float32
    np.testing.assert_array_equal(item["flow"].numpy(), s.flow)


def test_dataset_is_deterministic_and_splits_differ() -> None:
    train = SyntheticTryOnDataset("train", size=(64, 48), length=3)
    test = SyntheticTryOnDataset("test", size=(64, 48), length=3)
    assert torch.equal(train[1]["image"], SyntheticTryOnDataset("train", size=(64, 48), length=3)[1]["image"])
    assert torch.equal(train[-1]["image"], train[2]["image"])
    assert not torch.equal(train[1]["image"], test[1]["image"])
    assert train[0]["seed"] != test[0]["seed"]
    with pytest.raises(IndexError, match="out of range"):
        train[3]


def test_cached_dataset_renders_once_and_gives_the_same_items_without_flows(tmp_path) -> None:
    plain = SyntheticTryOnDataset("test", size=(64, 48), length=3, seed=1)
    cached = SyntheticTryOnDataset("test", size=(64, 48), length=3, seed=1, cache_dir=tmp_path)
    (stored,) = tmp_path.iterdir()
    assert stored.name == "test-64x48-n3-s1.npz"
    stamp = stored.stat().st_mtime_ns
    again = SyntheticTryOnDataset("test", size=(64, 48), length=3, seed=1, cache_dir=tmp_path)
    assert stored.stat().st_mtime_ns == stamp  # read back, not rendered again
    for index in (0, 2, -1):
        expected = plain[index]
        for item in (cached[index], again[index]):
            assert set(item) == {"image", "reference", "mask", "densepose", "seed"}
            assert item["seed"] == expected["seed"]
            for key in ("image", "reference", "mask", "densepose"):
                assert torch.equal(item[key], expected[key]), key


def test_dataset_batches_with_default_collate() -> None:
    loader = torch.utils.data.DataLoader(SyntheticTryOnDataset(size=(64, 48), length=4), batch_size=2)
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 3, 64, 48) and batch["flow"].shape == (2, 64, 48, 2)
    assert batch["flow_valid"].shape == (2, 1, 64, 48)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "val"}, "split must be one of"),
        ({"length": 0}, "length must be"),
        ({"size": (60, 48)}, "multiples"),
    ],
)
def test_dataset_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SyntheticTryOnDataset(**kwargs)


# ------------------------------------------------------------------------------------------ files


def test_vitonhd_layout_files_read_back(tmp_path) -> None:
    root = write_vitonhd_layout(tmp_path / "vitonhd", n_train=2, n_test=1, size=(64, 48), seed=4)
    assert (root / "train_pairs.txt").read_text() == "00000_00.jpg 00000_00.jpg\n00001_00.jpg 00001_00.jpg\n"
    assert (root / "test_pairs.txt").read_text() == "00002_00.jpg 00002_00.jpg\n"
    for split, index, stem in (("train", 0, "00000_00"), ("train", 1, "00001_00"), ("test", 0, "00002_00")):
        s = make_sample(sample_seed(split, index, 4), (64, 48))
        folder = root / split
        for name, expected in (
            ("image", s.person),
            ("cloth", s.garment),
            ("agnostic-v3.2", s.agnostic),
            ("image-densepose", s.densepose),
        ):
            with Image.open(folder / name / f"{stem}.jpg") as image:
                assert image.format == "JPEG" and image.mode == "RGB" and image.size == (48, 64)
                # JPEG quality 95 without chroma subsampling: measured at most 2.4 grey levels mean error
                assert np.abs(np.asarray(image, np.float64) - expected).mean() < 3.0, name
        with Image.open(folder / "cloth-mask" / f"{stem}.jpg") as image:
            assert image.mode == "L"
            np.testing.assert_array_equal(np.asarray(image) >= 128, s.cloth_mask)
        with Image.open(folder / "agnostic-mask" / f"{stem}_mask.png") as image:
            np.testing.assert_array_equal(np.asarray(image), s.mask.astype(np.uint8) * 255)
        flow = np.load(folder / "flow" / f"{stem}.npy")
        assert flow.dtype == np.float32 and flow.shape == (64, 48, 3)
        np.testing.assert_array_equal(flow[..., :2], s.flow)
        np.testing.assert_array_equal(flow[..., 2], s.flow_valid.astype(np.float32))
    assert sorted(p.name for p in (root / "test" / "image").iterdir()) == ["00002_00.jpg"]


def test_vitonhd_layout_rejects_bad_arguments(tmp_path) -> None:
    with pytest.raises(ValueError, match="n_train must be a non-negative int"):
        write_vitonhd_layout(tmp_path, n_train=-1, n_test=1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        write_vitonhd_layout(tmp_path / "file", n_train=1, n_test=1)


def test_make_examples_writes_demo_pngs(tmp_path) -> None:
    written = make_examples(tmp_path, n=2, size=(64, 48), seed=1)
    assert [sorted(paths) for paths in written] == [["densepose", "garment", "mask", "person"]] * 2
    s = make_sample(sample_seed("test", 1, 1), (64, 48))
    for name, expected in (("person", s.person), ("garment", s.garment), ("densepose", s.densepose)):
        assert written[1][name].name == f"{name}_01.png"
        np.testing.assert_array_equal(np.asarray(Image.open(written[1][name])), expected)
    np.testing.assert_array_equal(np.asarray(Image.open(written[1]["mask"])), s.mask.astype(np.uint8) * 255)
    with pytest.raises(ValueError, match="positive int"):
        make_examples(tmp_path, n=0)


def test_make_examples_default_size_is_256x192(tmp_path) -> None:
    (paths,) = make_examples(tmp_path, n=1)
    for path in paths.values():
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (192, 256)
