"""Synthetic samples written as files: a VITON-HD style folder (for the real-data loaders and
``train/prepare.py``) and the app's example inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from train.synthetic.data import sample_seed
from train.synthetic.people import Size, check_seed, check_size, make_sample


def _save_jpeg(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image).save(path, quality=95, subsampling=0)


def _save_mask(mask: np.ndarray, path: Path) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255).save(
        path, **({"quality": 95} if path.suffix == ".jpg" else {})
    )


_LAYOUT_DIRS = ("image", "cloth", "cloth-mask", "agnostic-mask", "agnostic-v3.2", "image-densepose", "flow")


def write_vitonhd_layout(
    root: str | Path, n_train: int, n_test: int, size: Size = (128, 96), seed: int = 0
) -> Path:
    """Write a VITON-HD style folder of synthetic samples and return its root.

    Per split: ``image/``, ``cloth/``, ``agnostic-v3.2/``, ``image-densepose/`` and ``cloth-mask/`` as
    ``NNNNN_00.jpg`` (quality 95 without chroma subsampling, so fine textures survive),
    ``agnostic-mask/NNNNN_00_mask.png`` and ``flow/NNNNN_00.npy`` (float32 (H, W, 3): x, y, valid);
    ``train_pairs.txt`` / ``test_pairs.txt`` hold paired lines. Names run on across splits (test starts at
    ``n_train``) so no name appears in both.
    """
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    size, seed, root = check_size(size), check_seed(seed), Path(root)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"layout root {root} exists and is not a folder; pick another path")
    offset = 0
    for split, count in (("train", int(n_train)), ("test", int(n_test))):
        folders = {name: root / split / name for name in _LAYOUT_DIRS}
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for index in range(count):
            sample = make_sample(sample_seed(split, index, seed), size)
            stem = f"{offset + index:05d}_00"
            _save_jpeg(sample.person, folders["image"] / f"{stem}.jpg")
            _save_jpeg(sample.garment, folders["cloth"] / f"{stem}.jpg")
            _save_jpeg(sample.agnostic, folders["agnostic-v3.2"] / f"{stem}.jpg")
            _save_jpeg(sample.densepose, folders["image-densepose"] / f"{stem}.jpg")
            _save_mask(sample.cloth_mask, folders["cloth-mask"] / f"{stem}.jpg")
            _save_mask(sample.mask, folders["agnostic-mask"] / f"{stem}_mask.png")
            flow = np.concatenate([sample.flow, sample.flow_valid[..., None].astype(np.float32)], axis=-1)
            np.save(folders["flow"] / f"{stem}.npy", flow)
            lines.append(f"{stem}.jpg {stem}.jpg\n")
        (root / f"{split}_pairs.txt").write_text("".join(lines))
        offset += count
    return root


def make_examples(
    out_dir: str | Path, n: int = 4, size: Size = (256, 192), seed: int = 0
) -> list[dict[str, Path]]:
    """Write ``n`` held-out (test-split) examples for the app demo as PNGs; return their paths per example.

    Files: ``person_KK.png``, ``garment_KK.png``, ``mask_KK.png`` (0/255) and ``densepose_KK.png``.
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    size, seed, out_dir = check_size(size), check_seed(seed), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for k in range(int(n)):
        sample = make_sample(sample_seed("test", k, seed), size)
        images = {
            "person": sample.person,
            "garment": sample.garment,
            "mask": sample.mask.astype(np.uint8) * 255,
            "densepose": sample.densepose,
        }
        paths = {name: out_dir / f"{name}_{k:02d}.png" for name in images}
        for name, image in images.items():
            Image.fromarray(image).save(paths[name])
        written.append(paths)
    return written
