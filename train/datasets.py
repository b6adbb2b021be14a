"""Datasets for training and evaluating Leffa: VITON-HD, DressCode and DeepFashion pose transfer.

Every item is a dict of fixed-size tensors in the released model's normalisation, so the default
``torch.utils.data.default_collate`` batches them:

- ``image`` (3, H, W) in [-1, 1]: the person, i.e. the training target.
- ``reference`` (3, H, W) in [-1, 1]: the garment (try-on) or the source person (pose transfer).
- ``mask`` (1, H, W) float in {0, 1}: the inpainting mask, binarised at 0.5; all ones for pose transfer.
- ``densepose`` (3, H, W) in [-1, 1]: the densepose condition in the form the matching model wants.
- ``name`` / ``reference_name``: file names of the person and the reference.

Images are resized with LANCZOS, masks, densepose and flows with nearest neighbour (a resize to the
stored size is skipped). Augmentation is off unless an :class:`Augmentation` is given.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from leffa.core.transforms import densepose_to_tensor, image_to_tensor, mask_to_tensor

Size = tuple[int, int]
MaskFn = Callable[[np.ndarray, np.ndarray, str], np.ndarray]
"""``mask_fn(parse, keypoints, category) -> mask``: computes an agnostic mask when none is stored.

``parse`` is the (h, w) integer label map as stored, ``keypoints`` an (18, 2) float array of OpenPose
``[x, y]`` in the frame of ``parse`` (missing points are ``[0, 0]``), ``category`` one of ``upper_body``,
``lower_body``, ``dresses``. The result is an (h, w) array: bool, float in [0, 1] or uint8 in 0..255.
"""

SPLITS = ("train", "test")
MODES = ("paired", "unpaired")
DRESSCODE_CATEGORIES = ("upper_body", "lower_body", "dresses")

IMAGE_FILL = 1.0
"""Value for pixels an augmentation shifts in from outside: white, the datasets' background."""
DENSEPOSE_FILL = -1.0
"""Densepose background (black render, IUV all zero) in [-1, 1]."""


@dataclass(frozen=True)
class Augmentation:
    """Random augmentation, deterministic given ``seed``, the epoch and the item index.

    Horizontal flips mirror the whole sample (person, reference, mask, densepose, flow) so the garment
    pattern stays consistent with the target. Pose-transfer IUV maps are mirrored without swapping the
    left/right body-part labels or mirroring U: the model only needs a densepose consistent with the
    image, not a physically valid one. Scale and shift move only the target-side maps (image, mask,
    densepose, flow) identically; the reference and the flow values (positions in the reference) stay.
    """

    flip_probability: float = 0.0
    max_scale: float = 0.0
    """Scale factor drawn uniformly from ``[1 - max_scale, 1 + max_scale]`` about the image centre."""
    max_shift: float = 0.0
    """Shift drawn uniformly from ``[-max_shift, max_shift]`` times the image width/height."""
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.flip_probability <= 1.0:
            raise ValueError(f"flip_probability must be in [0, 1], got {self.flip_probability}")
        if not 0.0 <= self.max_scale < 1.0:
            raise ValueError(f"max_scale must be in [0, 1), got {self.max_scale}")
        if not 0.0 <= self.max_shift < 1.0:
            raise ValueError(f"max_shift must be in [0, 1), got {self.max_shift}")

    def generator(self, epoch: int, index: int) -> torch.Generator:
        """A generator seeded from (seed, epoch, index), well mixed so neighbouring items differ."""
        state = np.random.SeedSequence([self.seed, epoch, index]).generate_state(2, dtype=np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def __call__(self, sample: dict, generator: torch.Generator, mask_fill: float = 0.0) -> dict:
        """Augment ``sample`` in a new dict; four uniforms are always drawn so items stay reproducible.

        ``mask_fill`` is the mask value for pixels shifted in from outside: 0 (keep the white fill) for
        try-on, 1 for pose transfer, whose mask covers the whole image.
        """
        u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        out = dict(sample)
        if u[0] < self.flip_probability:
            out = _hflip(out)
        scale = 1.0 + self.max_scale * (2.0 * u[1] - 1.0)
        shift = (self.max_shift * (2.0 * u[2] - 1.0), self.max_shift * (2.0 * u[3] - 1.0))
        if self.max_scale > 0.0 or self.max_shift > 0.0:
            out = _scale_shift(out, scale, shift, mask_fill)
        return out


def _hflip(sample: dict) -> dict:
    """Mirror every spatial entry; flow x is negated because the reference is mirrored too."""
    out = dict(sample)
    for key in ("image", "reference", "mask", "densepose", "flow_valid"):
        if key in out:
            out[key] = out[key].flip(-1)
    if "flow" in out:
        flow = out["flow"].flip(1)
        out["flow"] = torch.stack([-flow[..., 0], flow[..., 1]], dim=-1)
    return out


def _warp(x: Tensor, grid: Tensor, mode: str, fill: float) -> Tensor:
    """Resample a (C, H, W) map on ``grid``, filling outside pixels with ``fill``."""
    warped = F.grid_sample((x - fill)[None], grid, mode=mode, padding_mode="zeros", align_corners=False)
    return warped[0] + fill


def _scale_shift(sample: dict, scale: float, shift: tuple[float, float], mask_fill: float) -> dict:
    """Scale about the centre and shift the target-side maps; output p shows input (p - t) / s."""
    out = dict(sample)
    height, width = out["image"].shape[-2:]
    theta = torch.tensor(
        [[1.0 / scale, 0.0, -2.0 * shift[0] / scale], [0.0, 1.0 / scale, -2.0 * shift[1] / scale]]
    )
    grid = F.affine_grid(theta[None], [1, 1, height, width], align_corners=False)
    out["image"] = _warp(out["image"], grid, "bilinear", IMAGE_FILL).clamp(-1.0, 1.0)
    out["mask"] = _warp(out["mask"], grid, "nearest", mask_fill)
    out["densepose"] = _warp(out["densepose"], grid, "nearest", DENSEPOSE_FILL)
    if "flow" in out:
        out["flow"] = _warp(out["flow"].permute(2, 0, 1), grid, "nearest", 0.0).permute(1, 2, 0)
        out["flow_valid"] = _warp(out["flow_valid"], grid, "nearest", 0.0)
    return out


def check_size(size: Size, minimum: int = 8) -> Size:
    """``size`` as ``(height, width)`` ints, or a ValueError saying what a valid size is: both sides
    multiples of 8 (the VAE stride) and at least ``minimum``."""
    ok = (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in size)
    )
    if not ok or min(size) < minimum or size[0] % 8 or size[1] % 8:
        raise ValueError(
            f"size must be (height, width) with both ints, multiples of 8 (the VAE stride) and at least "
            f"{minimum}, got {size!r}; e.g. (512, 384)"
        )
    return int(size[0]), int(size[1])


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _require(path: Path, layout: str, kind: str = "file") -> Path:
    exists = path.is_dir() if kind == "folder" else path.is_file()
    if not exists:
        raise FileNotFoundError(f"missing {kind} {path}; {layout}")
    return path


def read_pairs(path: Path, layout: str) -> list[tuple[str, str]]:
    """Read a pairs file: one pair of file names per line, blank lines skipped, extra columns ignored."""
    _require(path, layout)
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise ValueError(f"{path} line {number}: expected two file names, got {line!r}; {layout}")
        pairs.append((fields[0], fields[1]))
    if not pairs:
        raise ValueError(f"pairs file {path} lists no pairs; {layout}")
    return pairs


def _open(path: Path, layout: str) -> Image.Image:
    return Image.open(_require(path, layout))


def _wh(size: Size) -> tuple[int, int]:
    height, width = size
    return width, height


def load_image(path: Path, size: Size, layout: str) -> Tensor:
    """An RGB photo as (3, H, W) in [-1, 1], LANCZOS-resized (the inference conversion)."""
    return image_to_tensor(_open(path, layout), _wh(size))[0]


def load_densepose_image(path: Path, size: Size, layout: str) -> Tensor:
    """A densepose render (or a grey I map, repeated 3x) treated as an image, nearest-resized."""
    return densepose_to_tensor(_open(path, layout), _wh(size), "rgb")[0]


def load_iuv(path: Path, size: Size, layout: str) -> Tensor:
    """A DensePose IUV PNG, channels [U, V, I]: U, V / 255 and I / 24, then x2-1; nearest-resized."""
    return densepose_to_tensor(_open(path, layout), _wh(size), "iuv")[0]


def binarise_mask(array: np.ndarray, size: Size) -> Tensor:
    """(1, H, W) float {0, 1} from an (h, w) bool / [0, 1] float / 0..255 uint8 mask, nearest-resized."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"a mask must be a 2-D (h, w) array, got shape {array.shape}")
    return mask_to_tensor(array, _wh(size))[0]


def load_mask(path: Path, size: Size, layout: str) -> Tensor:
    """A stored mask image as (1, H, W) float {0, 1}."""
    return binarise_mask(np.asarray(_open(path, layout).convert("L")), size)


def load_label_map(path: Path, layout: str) -> np.ndarray:
    """A parse / label map PNG as stored (palette indices or grey levels), shape (h, w)."""
    array = np.asarray(_open(path, layout))
    if array.ndim != 2:
        raise ValueError(f"label map {path} has shape {array.shape}; expected a single-channel (h, w) PNG")
    return array


def _keypoints_array(points: list, path: Path) -> np.ndarray:
    """(18, 2) float32 [x, y]; points with zero confidence become [0, 0]."""
    array = np.asarray(points, dtype=np.float32)
    if array.ndim == 1 and array.size % 3 == 0:
        array = array.reshape(-1, 3)
    if array.ndim != 2 or array.shape[0] != 18 or array.shape[1] < 3:
        raise ValueError(f"{path}: expected 18 keypoints of (x, y, confidence, ...), got shape {array.shape}")
    xy = array[:, :2].copy()
    xy[array[:, 2] <= 0] = 0.0
    return xy


def _read_json(path: Path, layout: str) -> object:
    try:
        return json.loads(_require(path, layout).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); {layout}") from error


def load_openpose_keypoints(path: Path, layout: str) -> np.ndarray:
    """VITON-HD ``*_keypoints.json`` (``people[0].pose_keypoints_2d``) as (18, 2); no person -> zeros."""
    data = _read_json(path, layout)
    people = data.get("people") if isinstance(data, dict) else None
    if people is None:
        raise ValueError(f"{path}: expected an OpenPose JSON object with a 'people' list; {layout}")
    if not people:
        return np.zeros((18, 2), dtype=np.float32)
    if not isinstance(people[0], dict) or "pose_keypoints_2d" not in people[0]:
        raise ValueError(f"{path}: people[0] has no 'pose_keypoints_2d'; {layout}")
    return _keypoints_array(people[0]["pose_keypoints_2d"], path)


def load_dresscode_keypoints(path: Path, layout: str) -> np.ndarray:
    """DressCode ``*_2.json`` (``keypoints``: 18 rows of ``[x, y, confidence, index]``) as (18, 2)."""
    data = _read_json(path, layout)
    if not isinstance(data, dict) or "keypoints" not in data:
        raise ValueError(f"{path}: expected a JSON object with a 'keypoints' list; {layout}")
    return _keypoints_array(data["keypoints"], path)


def load_flow(path: Path, size: Size) -> tuple[Tensor, Tensor]:
    """A synthetic flow ``.npy`` (h, w, 3: x, y, valid) as flow (H, W, 2) and valid (1, H, W) {0, 1}.

    x, y are absolute sampling positions in the reference in [-1, 1] (``leffa.core.flow`` convention), so
    resizing changes the map's resolution, not its values.
    """
    array = np.load(path)
    if array.ndim != 3 or array.shape[2] != 3 or not np.issubdtype(array.dtype, np.floating):
        raise ValueError(
            f"flow file {path} has shape {array.shape} and dtype {array.dtype}; "
            "expected float (h, w, 3) holding x, y, valid"
        )
    maps = torch.from_numpy(array.astype(np.float32)).permute(2, 0, 1)
    if tuple(maps.shape[-2:]) != size:
        maps = F.interpolate(maps[None], size=size, mode="nearest")[0]
    return maps[:2].permute(1, 2, 0).contiguous(), (maps[2:] >= 0.5).float()


class PairDataset(Dataset):
    """Shared item plumbing: root, split and size checks, index checks, per-item seeded augmentation,
    epoch-dependent seeds."""

    mask_fill = 0.0
    """Mask value for pixels an augmentation shifts in (see :meth:`Augmentation.__call__`)."""

    def __init__(self, root: str | Path, split: str, size: Size, augment: Augmentation | None) -> None:
        self.root = Path(root)
        self.split = _check_choice("split", split, SPLITS)
        self.size = check_size(size)
        self.augment = augment
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draws for a new epoch (items stay reproducible per epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> dict:
        """The un-augmented sample at ``index``."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} items")
        sample = self.load(index)
        if self.augment is None:
            return sample
        return self.augment(sample, self.augment.generator(self.epoch, index), self.mask_fill)


class TryOnDataset(PairDataset):
    """What the try-on datasets share on top of :class:`PairDataset`: the paired/unpaired ``mode`` and the
    optional ``mask_fn``. Once these are checked, :meth:`scan` checks the dataset's own layout."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        mode: str = "paired",
        size: Size = (1024, 768),
        augment: Augmentation | None = None,
        mask_fn: MaskFn | None = None,
    ) -> None:
        super().__init__(root, split, size, augment)
        self.mode = _check_choice("mode", mode, MODES)
        self.mask_fn = mask_fn
        self.scan()

    def scan(self) -> None:
        """Check the folders and read the pairs; sets ``self.layout``, the expected layout errors name."""
        raise NotImplementedError


class VitonHDDataset(TryOnDataset):
    """VITON-HD try-on pairs; the reference is the person's own cloth in paired mode.

    Takes ``(root, split="train", mode="paired", size=(1024, 768), augment=None, mask_fn=None)`` (see
    :class:`TryOnDataset`). Masks come from ``agnostic-mask/`` when stored there, else from
    ``mask_fn(parse, keypoints, "upper_body")`` on ``image-parse-v3`` and ``openpose_json``. When a ``flow/``
    folder exists (the synthetic dataset), every item also carries ``flow`` (H, W, 2) and ``flow_valid``
    (1, H, W).
    """

    def scan(self) -> None:
        split = self.split
        self.layout = (
            f"expected VITON-HD layout: <root>/{split}_pairs.txt ('person.jpg cloth.jpg' per line), "
            f"<root>/{split}/image/*.jpg, <root>/{split}/cloth/*.jpg, <root>/{split}/image-densepose/*.jpg, "
            f"<root>/{split}/agnostic-mask/<stem>_mask.png (or image-parse-v3/<stem>.png + "
            f"openpose_json/<stem>_keypoints.json with a mask_fn), optional <root>/{split}/flow/<stem>.npy"
        )
        _require(self.root, self.layout, "folder")
        self.pairs = read_pairs(self.root / f"{split}_pairs.txt", self.layout)
        self.folder = _require(self.root / split, self.layout, "folder")
        for name in ("image", "cloth", "image-densepose"):
            _require(self.folder / name, self.layout, "folder")
        self.has_flow = (self.folder / "flow").is_dir()

    def __len__(self) -> int:
        return len(self.pairs)

    def _mask(self, stem: str) -> Tensor:
        stored = self.folder / "agnostic-mask" / f"{stem}_mask.png"
        if stored.is_file() or self.mask_fn is None:
            return load_mask(stored, self.size, self.layout)
        parse = load_label_map(self.folder / "image-parse-v3" / f"{stem}.png", self.layout)
        keypoints = load_openpose_keypoints(
            self.folder / "openpose_json" / f"{stem}_keypoints.json", self.layout
        )
        return binarise_mask(self.mask_fn(parse, keypoints, "upper_body"), self.size)

    def load(self, index: int) -> dict:
        person, cloth = self.pairs[index]
        reference = person if self.mode == "paired" else cloth
        stem = Path(person).stem
        sample = {
            "image": load_image(self.folder / "image" / person, self.size, self.layout),
            "reference": load_image(self.folder / "cloth" / reference, self.size, self.layout),
            "mask": self._mask(stem),
            "densepose": load_densepose_image(
                self.folder / "image-densepose" / person, self.size, self.layout
            ),
            "name": person,
            "reference_name": reference,
        }
        if self.has_flow:
            flow_path = _require(self.folder / "flow" / f"{stem}.npy", self.layout)
            sample["flow"], sample["flow_valid"] = load_flow(flow_path, self.size)
        return sample


class DressCodeDataset(TryOnDataset):
    """DressCode try-on pairs of one category, or of all three (``category="all"``).

    Takes ``(root, category="upper_body", split="train", mode="paired", size=(1024, 768), augment=None,
    mask_fn=None)``: ``category``, then the :class:`TryOnDataset` arguments, by position or by name.

    Pairs files are per category: ``train_pairs.txt`` (train is paired only), ``test_pairs_paired.txt``,
    ``test_pairs_unpaired.txt``. ``densepose`` is ``dense/<id>_5.png`` (the I map) repeated 3x as an
    image, as the released DressCode model wants. Masks come from ``masks/<id>_0.png`` when stored, else
    from ``mask_fn(label_map, keypoints, category)`` on ``label_maps/<id>_4.png`` and
    ``keypoints/<id>_2.json``. Items also carry ``category``.
    """

    def __init__(self, root: str | Path, category: str = "upper_body", *args: Any, **options: Any) -> None:
        self.category = _check_choice("category", category, DRESSCODE_CATEGORIES + ("all",))
        super().__init__(root, *args, **options)

    def scan(self) -> None:
        split, mode, category = self.split, self.mode, self.category
        if split == "train" and mode != "paired":
            raise ValueError("DressCode has only paired training pairs (train_pairs.txt); use mode='paired'")
        self.layout = (
            "expected DressCode layout: <root>/<category>/{train_pairs.txt, test_pairs_paired.txt, "
            "test_pairs_unpaired.txt}, <root>/<category>/images/<id>_0.jpg (person) and <id>_1.jpg "
            "(garment), <root>/<category>/dense/<id>_5.png, <root>/<category>/masks/<id>_0.png (or "
            "label_maps/<id>_4.png + keypoints/<id>_2.json with a mask_fn); category in "
            + ", ".join(DRESSCODE_CATEGORIES)
        )
        _require(self.root, self.layout, "folder")
        pairs_file = "train_pairs.txt" if split == "train" else f"test_pairs_{mode}.txt"
        categories = DRESSCODE_CATEGORIES if category == "all" else (category,)
        self.items: list[tuple[str, str, str]] = []
        for name in categories:
            folder = _require(self.root / name, self.layout, "folder")
            for sub in ("images", "dense"):
                _require(folder / sub, self.layout, "folder")
            self.items += [(name, p, g) for p, g in read_pairs(folder / pairs_file, self.layout)]

    def __len__(self) -> int:
        return len(self.items)

    @staticmethod
    def _item_id(person: str) -> str:
        """``013563_0.jpg`` -> ``013563``."""
        return Path(person).stem.rsplit("_", 1)[0]

    def _mask(self, folder: Path, person: str, category: str) -> Tensor:
        stored = folder / "masks" / f"{Path(person).stem}.png"
        if stored.is_file() or self.mask_fn is None:
            return load_mask(stored, self.size, self.layout)
        item_id = self._item_id(person)
        label_map = load_label_map(folder / "label_maps" / f"{item_id}_4.png", self.layout)
        keypoints = load_dresscode_keypoints(folder / "keypoints" / f"{item_id}_2.json", self.layout)
        return binarise_mask(self.mask_fn(label_map, keypoints, category), self.size)

    def load(self, index: int) -> dict:
        category, person, garment = self.items[index]
        folder = self.root / category
        dense = folder / "dense" / f"{self._item_id(person)}_5.png"
        return {
            "image": load_image(folder / "images" / person, self.size, self.layout),
            "reference": load_image(folder / "images" / garment, self.size, self.layout),
            "mask": self._mask(folder, person, category),
            "densepose": load_densepose_image(dense, self.size, self.layout),
            "name": person,
            "reference_name": garment,
            "category": category,
        }


class DeepFashionPoseDataset(PairDataset):
    """DeepFashion pose-transfer pairs: generate the target person in the target's DensePose pose.

    ``image`` is the target, ``reference`` the source person, ``densepose`` the target's IUV map and
    ``mask`` all ones (the whole image is generated). Images are resized to ``size`` without letterboxing.
    """

    mask_fill = 1.0

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        size: Size = (512, 352),
        augment: Augmentation | None = None,
    ) -> None:
        super().__init__(root, split, size, augment)
        self.layout = (
            f"expected DeepFashion pose-transfer layout: <root>/{split}_pairs.txt ('source.jpg target.jpg' "
            "per line), <root>/images/*.jpg, <root>/densepose/<stem>.png (IUV, channels U, V, I)"
        )
        _require(self.root, self.layout, "folder")
        self.pairs = read_pairs(self.root / f"{split}_pairs.txt", self.layout)
        for name in ("images", "densepose"):
            _require(self.root / name, self.layout, "folder")

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> dict:
        source, target = self.pairs[index]
        iuv_path = self.root / "densepose" / f"{Path(target).stem}.png"
        return {
            "image": load_image(self.root / "images" / target, self.size, self.layout),
            "reference": load_image(self.root / "images" / source, self.size, self.layout),
            "mask": torch.ones(1, *self.size),
            "densepose": load_iuv(iuv_path, self.size, self.layout),
            "name": target,
            "reference_name": source,
        }
