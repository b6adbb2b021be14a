"""The offline preparation command, with fake models standing in for parsing, OpenPose and DensePose."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from preprocess.masks import agnostic_mask
from preprocess.parsing import LABEL, PARSE_HEIGHT, PARSE_WIDTH
from leffa.common import NoPersonError
from train.prepare import SKIPPED_FILE, main, mask_from_models, prepare_split, resize_mask

H, W = 32, 24


def photo(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


@pytest.fixture()
def root(tmp_path):
    """A VITON-HD style test split with four PNG photos (and one stored mask already present)."""
    folder = tmp_path / "test" / "image"
    folder.mkdir(parents=True)
    for index in range(4):
        Image.fromarray(photo(index)).save(folder / f"{index:05d}_00.png")
    (tmp_path / "test" / "agnostic-mask").mkdir()
    Image.fromarray(np.full((H, W), 255, np.uint8)).save(
        tmp_path / "test" / "agnostic-mask" / "00000_00_mask.png"
    )
    return tmp_path


class FakeModels:
    """Deterministic stand-ins: the mask keeps pixels brighter than average; the densepose render is the
    photo's colour inverted; photos whose top-left pixel is even find no person in DensePose."""

    def __init__(self, nobody: set[int] = frozenset()):
        self.calls = {"mask": 0, "densepose": 0}
        self.nobody = nobody

    def mask(self, person: Image.Image) -> np.ndarray:
        self.calls["mask"] += 1
        grey = np.asarray(person.convert("L"))
        return grey > grey.mean()

    def densepose(self, person: Image.Image) -> np.ndarray:
        self.calls["densepose"] += 1
        array = np.asarray(person)
        if int(array[0, 0, 0]) in self.nobody:
            raise NoPersonError("nobody here")
        return 255 - array


def test_writes_missing_masks_and_densepose(root):
    fake = FakeModels()
    summary = prepare_split(root, "test", mask_fn=fake.mask, densepose_fn=fake.densepose)
    assert (summary.masks_written, summary.densepose_written, summary.already_present) == (3, 4, 0)
    assert fake.calls == {"mask": 3, "densepose": 4}
    for index in range(4):
        name = f"{index:05d}_00"
        expected = photo(index)
        dense = np.asarray(Image.open(root / "test" / "image-densepose" / f"{name}.png"))
        assert np.array_equal(dense, 255 - expected)
        mask = np.asarray(Image.open(root / "test" / "agnostic-mask" / f"{name}_mask.png"))
        if index == 0:  # stored before: kept
            assert (mask == 255).all()
        else:
            grey = np.asarray(Image.fromarray(expected).convert("L"))
            assert np.array_equal(mask, np.where(grey > grey.mean(), 255, 0))

    again = prepare_split(root, "test", mask_fn=fake.mask, densepose_fn=fake.densepose)
    assert (again.masks_written, again.densepose_written, again.already_present) == (0, 0, 4)
    redo = prepare_split(root, "test", mask_fn=fake.mask, densepose_fn=None, overwrite=True)
    assert (redo.masks_written, redo.densepose_written) == (4, 0)
    assert not (np.asarray(Image.open(root / "test" / "agnostic-mask" / "00000_00_mask.png")) == 255).all()


def test_photos_without_a_person_are_skipped_and_listed(root):
    nobody = {int(photo(2)[0, 0, 0])}
    summary = prepare_split(root, "test", mask_fn=None, densepose_fn=FakeModels(nobody).densepose)
    assert summary.densepose_written == 3
    assert summary.skipped == [("00002_00.png", "nobody here")]
    assert not (root / "test" / "image-densepose" / "00002_00.png").exists()
    assert (root / "test" / SKIPPED_FILE).read_text() == "00002_00.png\tnobody here\n"


def test_shards_split_the_photos(root):
    fake = FakeModels()
    summary = prepare_split(
        root, "test", mask_fn=None, densepose_fn=fake.densepose, num_shards=2, shard_index=1
    )
    assert summary.densepose_written == 2
    assert sorted(p.name for p in (root / "test" / "image-densepose").iterdir()) == [
        "00001_00.png",
        "00003_00.png",
    ]


def test_jpeg_photos_get_jpeg_renders(tmp_path):
    folder = tmp_path / "train" / "image"
    folder.mkdir(parents=True)
    Image.fromarray(photo(9)).save(folder / "00009_00.jpg", quality=95)
    prepare_split(tmp_path, "train", mask_fn=None, densepose_fn=lambda p: np.full((H, W, 3), 200, np.uint8))
    render = np.asarray(Image.open(tmp_path / "train" / "image-densepose" / "00009_00.jpg"))
    assert render.shape == (H, W, 3) and np.abs(render.astype(int) - 200).max() <= 1


def test_errors(root):
    with pytest.raises(FileNotFoundError, match=r"expected VITON-HD layout <root>/<split>/image"):
        prepare_split(root, "train", mask_fn=None, densepose_fn=None)
    with pytest.raises(
        ValueError, match=r"mask_fn returned shape \(8, 8\) for a 24x32 photo; expected \(32, 24\)"
    ):
        prepare_split(
            root, "test", mask_fn=lambda p: np.zeros((8, 8), bool), densepose_fn=None, overwrite=True
        )
    with pytest.raises(ValueError, match="shard_index must be in"):
        prepare_split(root, "test", mask_fn=None, densepose_fn=None, num_shards=2, shard_index=2)


def naive_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    rows = np.minimum(((np.arange(height) + 0.5) * mask.shape[0] / height).astype(int), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * mask.shape[1] / width).astype(int), mask.shape[1] - 1)
    return mask[rows][:, cols]


def test_resize_mask_is_nearest_neighbour():
    mask = np.random.default_rng(0).random((13, 7)) > 0.5
    for height, width in [(26, 14), (39, 21), (13, 7)]:
        assert np.array_equal(resize_mask(mask, (width, height)), naive_nearest(mask, height, width))


def test_mask_from_models_uses_the_parse_frame_and_resizes_to_the_photo():
    parse = np.zeros((PARSE_HEIGHT, PARSE_WIDTH), np.uint8)
    parse[150:350, 110:270] = LABEL["upper_clothes"]
    parse[60:140, 150:230] = LABEL["face"]
    keypoints = np.zeros((18, 2), np.float32)
    keypoints[[1, 2, 5]] = [[192, 150], [130, 160], [254, 160]]
    person = Image.new("RGB", (192, 256))
    seen = []
    mask_fn = mask_from_models(lambda p: seen.append(p.size) or parse, lambda p: keypoints)
    mask = mask_fn(person)
    reference = agnostic_mask(parse, keypoints, "upper_body", "viton_hd")
    assert seen == [(192, 256)] and mask.shape == (256, 192) and mask.dtype == bool
    assert reference.any() and np.array_equal(mask, naive_nearest(reference, 256, 192))


def test_cli(root, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--root", str(root), "--skip-masks", "--skip-densepose"])
    assert exit_info.value.code == 2 and "nothing to do" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="parsing"):
        main(["--root", str(root), "--ckpt-dir", str(root / "no-weights"), "--skip-densepose"])
