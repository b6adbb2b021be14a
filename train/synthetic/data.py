"""Splits of the synthetic try-on data: which seed each sample has, rendered splits cached on disk, model
batches, and the training dataset (the samples themselves: :mod:`train.synthetic.people`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from train.synthetic.people import Size, SyntheticSample, check_seed, check_size, make_sample

SPLITS: tuple[str, ...] = ("train", "test")
_SPLIT_SPAN = 2**31


def sample_seed(split: str, index: int, base_seed: int = 0) -> int:
    """Seed of sample ``index`` of ``split``; the train and test ranges of every base seed are disjoint."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    index = check_seed(index, "index")
    if index >= _SPLIT_SPAN:
        raise ValueError(f"index must be below {_SPLIT_SPAN}, got {index}")
    return check_seed(base_seed, "base_seed") * 2 * _SPLIT_SPAN + SPLITS.index(split) * _SPLIT_SPAN + index



def stack_split(samples: Sequence, images: dict[str, np.ndarray], with_flow: bool) -> dict[str, np.ndarray]:
    """A split's arrays under the keys :func:`to_batch` reads: ``images`` (``person``, ``garment``, ``mask``),
    then the samples' ``densepose`` and ``seed`` and, ``with_flow``, their ``flow`` and ``flow_valid``.

    Why ``samples`` of any type with those fields: the try-on and pose-transfer samples share them.
    """
    arrays = {
        **images,
        "densepose": np.stack([s.densepose for s in samples]),
        "seed": np.array([s.seed for s in samples], dtype=np.int64),
    }
    if with_flow:
        arrays["flow"] = np.stack([s.flow for s in samples])
        arrays["flow_valid"] = np.stack([s.flow_valid for s in samples])
    return arrays


def stack_samples(samples: list[SyntheticSample], with_flow: bool) -> dict[str, np.ndarray]:
    images = {
        "person": np.stack([s.person for s in samples]),
        "garment": np.stack([s.garment for s in samples]),
        "mask": np.stack([s.mask for s in samples]),
    }
    return stack_split(samples, images, with_flow)


def cached_split(
    name: str,
    count: int,
    size: Size,
    seed: int,
    with_flow: bool,
    cache_dir: str | Path | None,
    render: Callable[[tuple[int, int]], dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """``render((height, width))`` of ``count`` samples, or its copy in ``cache_dir`` (written on first use).

    One ``.npz`` per ``name`` (the split; other tasks than try-on prefix it)/count/size/seed/flows.
    """
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"count must be a positive int, got {count!r}")
    height, width = check_size(size)
    path = None
    if cache_dir is not None:
        flows = "-flow" if with_flow else ""
        path = Path(cache_dir) / f"{name}-{height}x{width}-n{count}-s{seed}{flows}.npz"
        if path.is_file():
            with np.load(path) as stored:
                return {key: stored[key] for key in stored.files}
    arrays = render((height, width))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **arrays)
    return arrays


def render_split(
    split: str,
    count: int,
    size: Size = (128, 96),
    seed: int = 0,
    *,
    with_flow: bool = True,
    cache_dir: str | Path | None = None,
) -> dict[str, np.ndarray]:
    """Samples ``0..count-1`` of ``split`` (as ``SyntheticTryOnDataset`` numbers them), stacked as arrays.

    Rendering costs ~25 ms a sample, so training runs cache the uint8 arrays in ``cache_dir`` (one ``.npz``
    per split/count/size/seed) instead of re-rendering them every epoch.
    """

    def render(image_size: tuple[int, int]) -> dict[str, np.ndarray]:
        samples = [make_sample(sample_seed(split, index, seed), image_size) for index in range(count)]
        return stack_samples(samples, with_flow)

    return cached_split(split, count, size, seed, with_flow, cache_dir, render)


def _signed(images: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, C) -> float32 (..., C, H, W) in [-1, 1], the released normalisation."""
    return torch.from_numpy(images).movedim(-1, -3).float() / 127.5 - 1.0


def to_batch(split: dict[str, np.ndarray], indices: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
    """Tensors of the chosen samples in the released normalisation (the keys ``training_losses`` takes).

    ``image``/``reference``/``densepose`` (B, 3, H, W) in [-1, 1], ``mask`` (B, 1, H, W) in {0, 1}; with
    flows also ``flow`` (B, H, W, 2) and ``flow_valid`` (B, 1, H, W).
    """
    index = np.asarray(indices, dtype=np.int64)
    batch = {
        "image": _signed(split["person"][index]),
        "reference": _signed(split["garment"][index]),
        "mask": torch.from_numpy(split["mask"][index]).float()[:, None],
        "densepose": _signed(split["densepose"][index]),
    }
    if "flow" in split:
        batch["flow"] = torch.from_numpy(split["flow"][index])
        batch["flow_valid"] = torch.from_numpy(split["flow_valid"][index]).float()[:, None]
    return batch


class SyntheticTryOnDataset(Dataset):
    """Samples rendered on the fly; index ``i`` of a split always gives the same sample.

    Items: ``image`` (person) and ``reference`` (garment) (3, H, W) in [-1, 1]; ``mask`` and ``flow_valid``
    (1, H, W) float {0, 1}; ``densepose`` (3, H, W) in [-1, 1]; ``flow`` (H, W, 2) float32; ``seed`` int.
    With ``cache_dir`` the whole split is rendered once (:func:`render_split`, stored in that folder and
    read back by later runs) and kept in memory without flows: items then have no ``flow``/``flow_valid``
    unless ``with_flow`` (training needs them only for the flow-supervision term or the garment-pixel mask).
    """

    def __init__(
        self,
        split: str = "train",
        size: Size = (128, 96),
        length: int = 1000,
        seed: int = 0,
        *,
        cache_dir: str | Path | None = None,
        with_flow: bool = False,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if (
            not isinstance(length, (int, np.integer))
            or isinstance(length, bool)
            or not 0 < length <= _SPLIT_SPAN
        ):
            raise ValueError(f"length must be an int in 1..{_SPLIT_SPAN}, got {length!r}")
        self.split, self.size, self.length, self.seed = (
            split,
            check_size(size),
            int(length),
            check_seed(seed),
        )
        self.cached = (
            None
            if cache_dir is None
            else render_split(split, self.length, self.size, self.seed, with_flow=with_flow, cache_dir=cache_dir)
        )

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of length {self.length}")
        index %= self.length
        if self.cached is not None:
            arrays, row = self.cached, index
        else:
            arrays, row = stack_samples([make_sample(sample_seed(self.split, index, self.seed), self.size)], True), 0
        item: dict[str, torch.Tensor | int] = {key: value[0] for key, value in to_batch(arrays, [row]).items()}
        item["seed"] = int(arrays["seed"][row])
        return item
