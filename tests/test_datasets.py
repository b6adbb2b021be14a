"""Dataset loaders on tiny fake copies of the VITON-HD, DressCode and DeepFashion layouts.

Images are written as PNG data (also under ``.jpg`` names, PIL reads by content) so expected values are
exact.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from train.datasets import (
    Augmentation,
    DeepFashionPoseDataset,
    DressCodeDataset,
    VitonHDDataset,
)

H, W = 32, 24


def rng_image(seed: int, height: int = H, width: int = W, channels: int = 3) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def as_model_image(array: np.ndarray) -> torch.Tensor:
    """Independent [-1, 1] conversion: (h, w, 3) uint8 -> (3, h, w)."""
    return torch.tensor(array.astype(np.float64) / 127.5 - 1.0, dtype=torch.float32).permute(2, 0, 1)


def make_vitonhd(root: Path, split: str = "train", with_masks: bool = True) -> dict:
    names = ["00001_00.jpg", "00002_00.jpg"]
    (root).mkdir(parents=True, exist_ok=True)
    (root / f"{split}_pairs.txt").write_text(f"{names[0]} {names[1]}\n\n{names[1]} {names[0]}\n")
    arrays = {}
    for i, name in enumerate(names):
        stem = Path(name).stem
        arrays[("image", name)] = rng_image(10 + i)
        arrays[("cloth", name)] = rng_image(20 + i)
        arrays[("dense", name)] = rng_image(30 + i)
        save(root / split / "image" / name, arrays[("image", name)])
        save(root / split / "cloth" / name, arrays[("cloth", name)])
        save(root / split / "image-densepose" / name, arrays[("dense", name)])
        mask = np.zeros((H, W), dtype=np.uint8)
        mask[:, : W // 2] = 128
        mask[: H // 2, W // 2 :] = 127
        arrays[("mask", name)] = mask
        if with_masks:
            save(root / split / "agnostic-mask" / f"{stem}_mask.png", mask)
    return arrays


def test_vitonhd_paired_values_and_names(tmp_path):
    arrays = make_vitonhd(tmp_path)
    dataset = VitonHDDataset(tmp_path, split="train", mode="paired", size=(H, W))
    assert len(dataset) == 2
    item = dataset[0]
    assert item["name"] == "00001_00.jpg" and item["reference_name"] == "00001_00.jpg"
    torch.testing.assert_close(
        item["image"], as_model_image(arrays[("image", "00001_00.jpg")]), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        item["reference"], as_model_image(arrays[("cloth", "00001_00.jpg")]), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        item["densepose"], as_model_image(arrays[("dense", "00001_00.jpg")]), atol=1e-6, rtol=0
    )
    expected_mask = torch.zeros(1, H, W)
    expected_mask[:, :, : W // 2] = 1.0
    assert torch.equal(item["mask"], expected_mask)
    assert "flow" not in item


def test_vitonhd_unpaired_uses_second_column(tmp_path):
    arrays = make_vitonhd(tmp_path, split="test")
    item = VitonHDDataset(tmp_path, split="test", mode="unpaired", size=(H, W))[0]
    assert item["name"] == "00001_00.jpg" and item["reference_name"] == "00002_00.jpg"
    torch.testing.assert_close(
        item["reference"], as_model_image(arrays[("cloth", "00002_00.jpg")]), atol=1e-6, rtol=0
    )


def test_vitonhd_resize_lanczos_images_nearest_masks(tmp_path):
    arrays = make_vitonhd(tmp_path)
    item = VitonHDDataset(tmp_path, size=(16, 16))[0]
    source = Image.fromarray(arrays[("image", "00001_00.jpg")])
    expected = as_model_image(np.asarray(source.resize((16, 16), Image.Resampling.LANCZOS)))
    torch.testing.assert_close(item["image"], expected, atol=1e-6, rtol=0)
    assert item["image"].shape == (3, 16, 16) and item["mask"].shape == (1, 16, 16)
    assert set(item["mask"].unique().tolist()) == {0.0, 1.0}
    dense = np.asarray(Image.fromarray(arrays[("dense", "00001_00.jpg")]))
    values = {tuple(v) for v in dense.reshape(-1, 3)}
    resized = ((item["densepose"] + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).reshape(-1, 3)
    assert {tuple(v) for v in resized.tolist()} <= values


def test_vitonhd_batches_with_default_collate(tmp_path):
    make_vitonhd(tmp_path)
    batch = next(iter(DataLoader(VitonHDDataset(tmp_path, size=(H, W)), batch_size=2)))
    assert batch["image"].shape == (2, 3, H, W) and batch["mask"].shape == (2, 1, H, W)
    assert batch["densepose"].shape == (2, 3, H, W) and batch["image"].dtype == torch.float32
    assert batch["name"] == ["00001_00.jpg", "00002_00.jpg"]


def test_vitonhd_mask_fn_used_when_no_stored_mask(tmp_path):
    make_vitonhd(tmp_path, with_masks=False)
    parse = np.zeros((H, W), dtype=np.uint8)
    parse[4:10, 2:6] = 4
    save(tmp_path / "train" / "image-parse-v3" / "00001_00.png", parse)
    points = [[float(i), float(i + 1), 1.0] for i in range(18)]
    points[3][2] = 0.0
    keypoints = {"people": [{"pose_keypoints_2d": [v for p in points for v in p]}]}
    (tmp_path / "train" / "openpose_json").mkdir()
    (tmp_path / "train" / "openpose_json" / "00001_00_keypoints.json").write_text(json.dumps(keypoints))
    calls = []

    def mask_fn(parse_map, kps, category):
        calls.append((parse_map.copy(), kps.copy(), category))
        return parse_map == 4

    item = VitonHDDataset(tmp_path, size=(H, W), mask_fn=mask_fn)[0]
    ((seen_parse, seen_kps, category),) = calls
    assert category == "upper_body"
    assert np.array_equal(seen_parse, parse)
    expected_kps = np.array([p[:2] for p in points], dtype=np.float32)
    expected_kps[3] = 0.0
    assert np.array_equal(seen_kps, expected_kps)
    assert torch.equal(item["mask"][0], torch.from_numpy(parse == 4).float())


def test_vitonhd_missing_mask_without_mask_fn_names_path(tmp_path):
    make_vitonhd(tmp_path, with_masks=False)
    with pytest.raises(FileNotFoundError, match=r"00001_00_mask\.png.*expected VITON-HD layout"):
        VitonHDDataset(tmp_path, size=(H, W))[0]


def test_vitonhd_layout_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*expected VITON-HD layout"):
        VitonHDDataset(tmp_path / "nowhere")
    tmp_path.joinpath("root").mkdir()
    with pytest.raises(
        FileNotFoundError, match=r"train_pairs\.txt; expected VITON-HD layout: .*<root>/train/image/\*\.jpg"
    ):
        VitonHDDataset(tmp_path / "root")
    make_vitonhd(tmp_path / "ok")
    (tmp_path / "ok" / "train" / "image" / "00002_00.jpg").unlink()
    dataset = VitonHDDataset(tmp_path / "ok", size=(H, W))
    with pytest.raises(FileNotFoundError, match=r"image/00002_00\.jpg.*VITON-HD"):
        dataset[1]
    with pytest.raises(IndexError):
        dataset[2]


def test_vitonhd_bad_pairs_files(tmp_path):
    make_vitonhd(tmp_path)
    (tmp_path / "train_pairs.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match="lists no pairs"):
        VitonHDDataset(tmp_path)
    (tmp_path / "train_pairs.txt").write_text("a.jpg b.jpg\nlonely.jpg\n")
    with pytest.raises(ValueError, match="line 2"):
        VitonHDDataset(tmp_path)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"split": "val"}, "split must be one of train, test"),
        ({"mode": "crossed"}, "mode must be one of paired, unpaired"),
        ({"size": (30, 24)}, "multiples of 8"),
        ({"size": 512}, "height, width"),
    ],
)
def test_vitonhd_bad_arguments(tmp_path, kwargs, message):
    make_vitonhd(tmp_path)
    with pytest.raises(ValueError, match=message):
        VitonHDDataset(tmp_path, **kwargs)


def make_flow(root: Path) -> dict:
    flows = {}
    for i, stem in enumerate(["00001_00", "00002_00"]):
        generator = np.random.default_rng(40 + i)
        flow = generator.uniform(-1, 1, (H, W, 3)).astype(np.float32)
        flow[..., 2] = (generator.uniform(size=(H, W)) > 0.3).astype(np.float32)
        (root / "train" / "flow").mkdir(parents=True, exist_ok=True)
        np.save(root / "train" / "flow" / f"{stem}.npy", flow)
        flows[stem] = flow
    return flows


def test_vitonhd_flow_loaded_when_present(tmp_path):
    make_vitonhd(tmp_path)
    flows = make_flow(tmp_path)
    item = VitonHDDataset(tmp_path, size=(H, W))[0]
    assert torch.equal(item["flow"], torch.from_numpy(flows["00001_00"][..., :2]))
    assert torch.equal(item["flow_valid"][0], torch.from_numpy(flows["00001_00"][..., 2]))
    half = VitonHDDataset(tmp_path, size=(H // 2, W))[0]
    assert half["flow"].shape == (H // 2, W, 2) and half["flow_valid"].shape == (1, H // 2, W)
    assert torch.equal(half["flow"], torch.from_numpy(flows["00001_00"][::2, :, :2]))


def test_vitonhd_bad_flow_file(tmp_path):
    make_vitonhd(tmp_path)
    make_flow(tmp_path)
    np.save(tmp_path / "train" / "flow" / "00001_00.npy", np.zeros((H, W, 2), dtype=np.float32))
    with pytest.raises(ValueError, match=r"00001_00\.npy.*\(h, w, 3\)"):
        VitonHDDataset(tmp_path, size=(H, W))[0]


def test_flip_mirrors_sample_and_negates_flow_x(tmp_path):
    make_vitonhd(tmp_path)
    make_flow(tmp_path)
    plain = VitonHDDataset(tmp_path, size=(H, W))[1]
    flipped = VitonHDDataset(tmp_path, size=(H, W), augment=Augmentation(flip_probability=1.0))[1]
    for key in ("image", "reference", "mask", "densepose", "flow_valid"):
        assert torch.equal(flipped[key], plain[key].flip(-1)), key
    assert torch.equal(flipped["flow"][..., 0], -plain["flow"][..., 0].flip(-1))
    assert torch.equal(flipped["flow"][..., 1], plain["flow"][..., 1].flip(-1))


def test_augmentation_off_or_zero_is_identity(tmp_path):
    make_vitonhd(tmp_path)
    plain = VitonHDDataset(tmp_path, size=(H, W))[0]
    noop = VitonHDDataset(tmp_path, size=(H, W), augment=Augmentation())[0]
    for key in ("image", "reference", "mask", "densepose"):
        assert torch.equal(noop[key], plain[key])


def test_augmentation_deterministic_per_seed_index_epoch(tmp_path):
    make_vitonhd(tmp_path)
    augment = Augmentation(flip_probability=0.5, max_scale=0.2, max_shift=0.1, seed=3)
    first = VitonHDDataset(tmp_path, size=(H, W), augment=augment)
    second = VitonHDDataset(tmp_path, size=(H, W), augment=augment)
    assert torch.equal(first[0]["image"], second[0]["image"])
    draws = {tuple(torch.rand(4, generator=augment.generator(epoch, 0)).tolist()) for epoch in range(3)}
    assert len(draws) == 3
    first.set_epoch(1)
    assert not torch.equal(first[0]["image"], second[0]["image"])
    assert augment.generator(0, 0).initial_seed() != augment.generator(0, 1).initial_seed()


def naive_nearest_warp(mask: np.ndarray, scale: float, shift: tuple[float, float]) -> np.ndarray:
    """Output pixel p (normalised, pixel centres) shows input (p - 2 shift) / scale; outside -> 0."""
    height, width = mask.shape
    out = np.zeros_like(mask)
    for i in range(height):
        for j in range(width):
            px, py = (2 * j + 1) / width - 1, (2 * i + 1) / height - 1
            qx, qy = (px - 2 * shift[0]) / scale, (py - 2 * shift[1]) / scale
            sj, si = round((qx + 1) * width / 2 - 0.5), round((qy + 1) * height / 2 - 0.5)
            if 0 <= si < height and 0 <= sj < width:
                out[i, j] = mask[si, sj]
    return out


def test_scale_shift_matches_naive_warp_and_is_shared(tmp_path):
    make_vitonhd(tmp_path)
    augment = Augmentation(max_scale=0.3, max_shift=0.2, seed=5)
    plain = VitonHDDataset(tmp_path, size=(H, W))[0]
    pattern = (torch.arange(H * W).reshape(1, H, W) % 7 < 3).float()
    sample = dict(plain, mask=pattern, densepose=pattern.expand(3, H, W) * 2 - 1)
    out = augment(sample, augment.generator(0, 0))
    u = torch.rand(4, generator=augment.generator(0, 0), dtype=torch.float64).tolist()
    scale = 1 + 0.3 * (2 * u[1] - 1)
    shift = (0.2 * (2 * u[2] - 1), 0.2 * (2 * u[3] - 1))
    expected = naive_nearest_warp(pattern[0].numpy(), scale, shift)
    assert np.array_equal(out["mask"][0].numpy(), expected)
    assert torch.equal(out["densepose"], out["mask"].expand(3, H, W) * 2 - 1)
    assert torch.equal(out["reference"], plain["reference"])
    assert out["image"].min() >= -1 and out["image"].max() <= 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"flip_probability": 1.5}, "flip_probability"),
        ({"max_scale": 1.0}, "max_scale"),
        ({"max_shift": -0.1}, "max_shift"),
    ],
)
def test_augmentation_rejects_bad_ranges(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Augmentation(**kwargs)


def make_dresscode(
    root: Path, categories=("upper_body", "lower_body", "dresses"), with_masks: bool = True
) -> dict:
    arrays = {}
    for c, category in enumerate(categories):
        folder = root / category
        ids = [f"{c}0001", f"{c}0002"]
        folder.mkdir(parents=True)
        (folder / "train_pairs.txt").write_text("".join(f"{i}_0.jpg {i}_1.jpg\n" for i in ids))
        (folder / "test_pairs_paired.txt").write_text("".join(f"{i}_0.jpg {i}_1.jpg\n" for i in ids))
        (folder / "test_pairs_unpaired.txt").write_text(f"{ids[0]}_0.jpg {ids[1]}_1.jpg\n")
        for k, item_id in enumerate(ids):
            seed = 100 * c + 10 * k
            arrays[(category, item_id, "person")] = rng_image(seed)
            arrays[(category, item_id, "garment")] = rng_image(seed + 1)
            arrays[(category, item_id, "dense")] = rng_image(seed + 2, channels=1) % 25
            save(folder / "images" / f"{item_id}_0.jpg", arrays[(category, item_id, "person")])
            save(folder / "images" / f"{item_id}_1.jpg", arrays[(category, item_id, "garment")])
            save(folder / "dense" / f"{item_id}_5.png", arrays[(category, item_id, "dense")])
            label_map = (rng_image(seed + 3, channels=1) % 18).astype(np.uint8)
            arrays[(category, item_id, "labels")] = label_map
            save(folder / "label_maps" / f"{item_id}_4.png", label_map)
            if with_masks:
                save(folder / "masks" / f"{item_id}_0.png", (label_map == 4).astype(np.uint8) * 255)
    return arrays


def test_dresscode_single_category_values(tmp_path):
    arrays = make_dresscode(tmp_path)
    item = DressCodeDataset(tmp_path, category="lower_body", split="test", mode="paired", size=(H, W))[1]
    assert (item["name"], item["reference_name"], item["category"]) == (
        "10002_0.jpg",
        "10002_1.jpg",
        "lower_body",
    )
    torch.testing.assert_close(
        item["image"], as_model_image(arrays[("lower_body", "10002", "person")]), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        item["reference"], as_model_image(arrays[("lower_body", "10002", "garment")]), atol=1e-6, rtol=0
    )
    dense = arrays[("lower_body", "10002", "dense")]
    torch.testing.assert_close(
        item["densepose"], as_model_image(np.repeat(dense[..., None], 3, axis=2)), atol=1e-6, rtol=0
    )
    expected_mask = torch.from_numpy(arrays[("lower_body", "10002", "labels")] == 4).float()[None]
    assert torch.equal(item["mask"], expected_mask)


def test_dresscode_all_categories_and_unpaired(tmp_path):
    make_dresscode(tmp_path)
    everything = DressCodeDataset(tmp_path, category="all", split="train", size=(H, W))
    assert len(everything) == 6
    assert [everything[i]["category"] for i in (0, 2, 4)] == ["upper_body", "lower_body", "dresses"]
    unpaired = DressCodeDataset(tmp_path, category="dresses", split="test", mode="unpaired", size=(H, W))
    assert len(unpaired) == 1
    assert (unpaired[0]["name"], unpaired[0]["reference_name"]) == ("20001_0.jpg", "20002_1.jpg")


def test_dresscode_takes_its_arguments_by_position_as_the_trainer_passes_them(tmp_path):
    make_dresscode(tmp_path)
    augment = Augmentation(flip_probability=1.0)
    by_position = DressCodeDataset(tmp_path, "dresses", "test", "unpaired", (H, W), augment, None)
    by_name = DressCodeDataset(
        tmp_path, category="dresses", split="test", mode="unpaired", size=(H, W), augment=augment, mask_fn=None
    )
    assert (by_position.category, by_position.split, by_position.mode) == ("dresses", "test", "unpaired")
    assert by_position.size == (H, W) and by_position.augment is augment and by_position.mask_fn is None
    assert by_position[0]["reference_name"] == by_name[0]["reference_name"] == "20002_1.jpg"
    assert torch.equal(by_position[0]["image"], by_name[0]["image"])


def test_dresscode_mask_fn_gets_label_map_keypoints_category(tmp_path):
    arrays = make_dresscode(tmp_path, categories=("dresses",), with_masks=False)
    points = [[float(i), float(2 * i), 0.9, float(i)] for i in range(18)]
    (tmp_path / "dresses" / "keypoints").mkdir()
    (tmp_path / "dresses" / "keypoints" / "00001_2.json").write_text(json.dumps({"keypoints": points}))
    seen = []

    def mask_fn(label_map, keypoints, category):
        seen.append((label_map, keypoints, category))
        return np.where(label_map == 7, 255, 0).astype(np.uint8)

    item = DressCodeDataset(tmp_path, category="dresses", size=(H, W), mask_fn=mask_fn)[0]
    ((label_map, keypoints, category),) = seen
    assert category == "dresses"
    assert np.array_equal(label_map, arrays[("dresses", "00001", "labels")])
    assert np.array_equal(keypoints, np.array([p[:2] for p in points], dtype=np.float32))
    assert torch.equal(item["mask"][0], torch.from_numpy(label_map == 7).float())


def test_dresscode_errors(tmp_path):
    make_dresscode(tmp_path, categories=("upper_body",))
    with pytest.raises(ValueError, match="only paired training pairs"):
        DressCodeDataset(tmp_path, split="train", mode="unpaired")
    with pytest.raises(ValueError, match="category must be one of upper_body, lower_body, dresses, all"):
        DressCodeDataset(tmp_path, category="shoes")
    with pytest.raises(FileNotFoundError, match=r"lower_body.*expected DressCode layout"):
        DressCodeDataset(tmp_path, category="lower_body")
    (tmp_path / "upper_body" / "dense" / "00001_5.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"dense/00001_5\.png.*expected DressCode layout"):
        DressCodeDataset(tmp_path, size=(H, W))[0]


def make_deepfashion(root: Path) -> dict:
    arrays = {}
    root.mkdir(parents=True, exist_ok=True)
    (root / "train_pairs.txt").write_text("src.jpg tgt.jpg\n")
    for i, name in enumerate(["src", "tgt"]):
        arrays[name] = rng_image(200 + i, 2 * H, 2 * W)
        save(root / "images" / f"{name}.jpg", arrays[name])
    block = np.random.default_rng(7).integers(0, 256, (H, W, 3), dtype=np.uint8)
    block[..., 2] %= 25
    block[0, 0] = (255, 0, 24)
    block[0, 1] = (0, 255, 12)
    arrays["iuv"] = block
    save(root / "densepose" / "tgt.png", block.repeat(2, axis=0).repeat(2, axis=1))
    return arrays


def test_deepfashion_sample(tmp_path):
    arrays = make_deepfashion(tmp_path)
    dataset = DeepFashionPoseDataset(tmp_path, split="train", size=(H, W))
    item = dataset[0]
    assert (item["name"], item["reference_name"]) == ("tgt.jpg", "src.jpg")
    expected_target = np.asarray(Image.fromarray(arrays["tgt"]).resize((W, H), Image.Resampling.LANCZOS))
    torch.testing.assert_close(item["image"], as_model_image(expected_target), atol=1e-6, rtol=0)
    expected_source = np.asarray(Image.fromarray(arrays["src"]).resize((W, H), Image.Resampling.LANCZOS))
    torch.testing.assert_close(item["reference"], as_model_image(expected_source), atol=1e-6, rtol=0)
    assert torch.equal(item["mask"], torch.ones(1, H, W))
    iuv = arrays["iuv"].astype(np.float64)
    expected = np.stack([iuv[..., 0] / 255, iuv[..., 1] / 255, iuv[..., 2] / 24]) * 2 - 1
    torch.testing.assert_close(
        item["densepose"], torch.tensor(expected, dtype=torch.float32), atol=1e-6, rtol=0
    )
    assert item["densepose"][:, 0, 0].tolist() == [1.0, -1.0, 1.0]
    assert item["densepose"][2, 0, 1].item() == 0.0
    assert DeepFashionPoseDataset(tmp_path).size == (512, 352)


def test_deepfashion_errors(tmp_path):
    make_deepfashion(tmp_path)
    with pytest.raises(
        FileNotFoundError, match=r"test_pairs\.txt.*expected DeepFashion pose-transfer layout"
    ):
        DeepFashionPoseDataset(tmp_path, split="test")
    (tmp_path / "densepose" / "tgt.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"densepose/tgt\.png.*DeepFashion"):
        DeepFashionPoseDataset(tmp_path, size=(H, W))[0]


def test_deepfashion_flip_mirrors_iuv_without_part_swap(tmp_path):
    make_deepfashion(tmp_path)
    plain = DeepFashionPoseDataset(tmp_path, size=(H, W))[0]
    flipped = DeepFashionPoseDataset(tmp_path, size=(H, W), augment=Augmentation(flip_probability=1.0))[0]
    assert torch.equal(flipped["densepose"], plain["densepose"].flip(-1))
    assert math.isclose(flipped["mask"].mean().item(), 1.0)


def test_shift_fills_mask_with_zero_for_tryon_and_one_for_pose_transfer(tmp_path):
    make_deepfashion(tmp_path / "pose")
    make_vitonhd(tmp_path / "tryon")
    augment = Augmentation(max_shift=0.3, seed=1)
    pose = DeepFashionPoseDataset(tmp_path / "pose", size=(H, W), augment=augment)[0]
    assert torch.equal(pose["mask"], torch.ones(1, H, W))
    tryon_plain = VitonHDDataset(tmp_path / "tryon", size=(H, W))[0]
    tryon = VitonHDDataset(tmp_path / "tryon", size=(H, W), augment=augment)[0]
    shifted_in = (tryon["image"] == 1.0).all(0) & (tryon["densepose"] == -1.0).all(0)
    assert shifted_in.any() and (tryon["mask"][0][shifted_in] == 0).all()
    assert not torch.equal(tryon["mask"], tryon_plain["mask"])


def test_malformed_keypoints_json_names_file(tmp_path):
    make_vitonhd(tmp_path, with_masks=False)
    save(tmp_path / "train" / "image-parse-v3" / "00001_00.png", np.zeros((H, W), dtype=np.uint8))
    (tmp_path / "train" / "openpose_json").mkdir()
    (tmp_path / "train" / "openpose_json" / "00001_00_keypoints.json").write_text("{not json")
    dataset = VitonHDDataset(tmp_path, size=(H, W), mask_fn=lambda parse, kps, category: parse)
    with pytest.raises(ValueError, match=r"00001_00_keypoints\.json is not valid JSON"):
        dataset[0]
