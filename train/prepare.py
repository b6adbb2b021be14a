"""Offline preparation of a VITON-HD style dataset: agnostic masks and DensePose renders where missing.

    python train/prepare.py --root data/VITON-HD --split train test --ckpt-dir ckpts --device cuda

For every ``<root>/<split>/image/<name>`` this writes, unless it already exists (``--overwrite`` redoes it):

- ``agnostic-mask/<stem>_mask.png``: the VITON-HD agnostic mask (``preprocess.masks.agnostic_mask``,
  ``upper_body``, computed from the SCHP parse and OpenPose keypoints at 384x512), nearest-resized to the
  image's size, 0/255;
- ``image-densepose/<name>``: the DensePose part-index render the VITON-HD model was trained on
  (``preprocess.densepose.render_segmentation``), at the image's size.

These are the files :class:`train.datasets.VitonHDDataset` reads. Images in which no person is found are
skipped and listed in ``<root>/<split>/prepare_skipped.txt``. The models are passed in as callables, so the
loop can be tested (and reused) without the released weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: import from the repository root (see train/train.py).
    _REPO = Path(__file__).resolve().parents[1]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _REPO / "train"]
    sys.path.insert(0, str(_REPO))

import argparse
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from leffa.weights import ensure_files
from preprocess.masks import agnostic_mask
from leffa.common import IMAGE_SUFFIXES, NoPersonError
from preprocess.openpose import OpenPoseDetector
from preprocess.parsing import HumanParser

logger = logging.getLogger(__name__)

SKIPPED_FILE = "prepare_skipped.txt"

MaskFn = Callable[[Image.Image], np.ndarray]
"""Person photo -> (H, W) bool agnostic mask at the photo's size; raises ``NoPersonError`` (skipped)."""
DensePoseFn = Callable[[Image.Image], np.ndarray]
"""Person photo -> (H, W, 3) uint8 densepose render at the photo's size; raises ``NoPersonError`` (skipped)."""


@dataclass
class PrepareSummary:
    """What one split's preparation did (file names relative to the split's ``image/`` folder)."""

    masks_written: int = 0
    densepose_written: int = 0
    already_present: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool (h, w) mask to ``size`` = (width, height)."""
    image = Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255)
    return np.asarray(image.resize(size, Image.Resampling.NEAREST)) >= 128


def mask_from_models(
    parse: Callable[[Image.Image], np.ndarray],
    keypoints: Callable[[Image.Image], np.ndarray],
    category: str = "upper_body",
    variant: str = "viton_hd",
) -> MaskFn:
    """A :data:`MaskFn` from a parser (photo -> 512x384 labels) and a pose detector (photo -> (18, 2))."""

    def compute(person: Image.Image) -> np.ndarray:
        mask = agnostic_mask(parse(person), keypoints(person), category, variant)
        return resize_mask(mask, person.size)

    return compute


def _write_image(array: np.ndarray, path: Path) -> None:
    options = {"quality": 95, "subsampling": 0} if path.suffix.lower() in (".jpg", ".jpeg") else {}
    Image.fromarray(array).save(path, **options)


def _check_output(array: np.ndarray, person: Image.Image, name: str, channels: int | None) -> np.ndarray:
    array = np.asarray(array)
    expected = (person.height, person.width) + ((channels,) if channels else ())
    if array.shape != expected:
        raise ValueError(
            f"{name} returned shape {array.shape} for a {person.width}x{person.height} photo; expected {expected}"
        )
    return array


def prepare_split(
    root: str | Path,
    split: str,
    *,
    mask_fn: MaskFn | None,
    densepose_fn: DensePoseFn | None,
    overwrite: bool = False,
    num_shards: int = 1,
    shard_index: int = 0,
) -> PrepareSummary:
    """Write the missing masks (when ``mask_fn``) and densepose renders (when ``densepose_fn``) of a split.

    ``num_shards``/``shard_index`` split the photos (sorted by name) between independent runs.
    """
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
    folder = Path(root) / split
    image_dir = folder / "image"
    if not image_dir.is_dir():
        raise FileNotFoundError(
            f"missing folder {image_dir}; expected VITON-HD layout <root>/<split>/image/*.jpg"
        )
    photos = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[
        shard_index::num_shards
    ]
    mask_dir, dense_dir = folder / "agnostic-mask", folder / "image-densepose"
    summary = PrepareSummary()
    for photo in tqdm(photos, desc=f"prepare {split}", dynamic_ncols=True):
        mask_path = mask_dir / f"{photo.stem}_mask.png"
        dense_path = dense_dir / photo.name
        todo_mask = mask_fn is not None and (overwrite or not mask_path.is_file())
        todo_dense = densepose_fn is not None and (overwrite or not dense_path.is_file())
        if not (todo_mask or todo_dense):
            summary.already_present += 1
            continue
        person = Image.open(photo).convert("RGB")
        try:
            mask = _check_output(mask_fn(person), person, "mask_fn", None) if todo_mask else None
            dense = _check_output(densepose_fn(person), person, "densepose_fn", 3) if todo_dense else None
        except NoPersonError as error:
            summary.skipped.append((photo.name, str(error)))
            continue
        if mask is not None:
            mask_dir.mkdir(exist_ok=True)
            Image.fromarray(mask.astype(bool).astype(np.uint8) * 255).save(mask_path)
            summary.masks_written += 1
        if dense is not None:
            dense_dir.mkdir(exist_ok=True)
            _write_image(dense.astype(np.uint8), dense_path)
            summary.densepose_written += 1
    if summary.skipped:
        lines = "".join(f"{name}\t{reason}\n" for name, reason in summary.skipped)
        (folder / SKIPPED_FILE).write_text(lines)
    return summary


# ----------------------------------------------------------------------------- released models


def load_mask_fn(ckpt_dir: str | Path | None, device: str, *, download: bool = False) -> MaskFn:
    """SCHP parsing + OpenPose from the released weights, as a :data:`MaskFn`."""
    files = ensure_files("parsing", ckpt_dir, download=download)
    files.update(ensure_files("openpose", ckpt_dir, download=download))
    parser = HumanParser(files["parsing_atr"], files["parsing_lip"], device=device)
    detector = OpenPoseDetector(files["openpose"], device=device)
    return mask_from_models(
        lambda person: parser(person).labels,
        lambda person: detector(person).keypoints,
    )


def load_densepose_fn(ckpt_dir: str | Path | None, device: str, *, download: bool = False) -> DensePoseFn:
    """DensePose R50-FPN from the released weights, rendering the VITON-HD part-index image."""
    from preprocess.densepose import DensePoseModel, render_segmentation

    files = ensure_files("densepose", ckpt_dir, download=download)
    model = DensePoseModel.from_checkpoint(files["densepose_weights"], device=device)
    return lambda person: render_segmentation(model.predict(person))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train/prepare.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="VITON-HD style dataset folder")
    parser.add_argument("--split", nargs="+", default=["train", "test"], choices=("train", "test"))
    parser.add_argument("--ckpt-dir", help="released weights folder (default: $LEFFA_CKPT_DIR or ./ckpts)")
    parser.add_argument("--download", action="store_true", help="download missing weights from the Hub")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--overwrite", action="store_true", help="recompute files that already exist")
    parser.add_argument("--skip-masks", action="store_true", help="do not compute agnostic masks")
    parser.add_argument("--skip-densepose", action="store_true", help="do not compute densepose renders")
    parser.add_argument("--num-shards", type=int, default=1, help="split the photos between N runs")
    parser.add_argument("--shard-index", type=int, default=0, help="which of the N shards this run does")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.skip_masks and args.skip_densepose:
        parser.error("nothing to do: --skip-masks and --skip-densepose are both set")
    mask_fn = None if args.skip_masks else load_mask_fn(args.ckpt_dir, args.device, download=args.download)
    densepose_fn = (
        None if args.skip_densepose else load_densepose_fn(args.ckpt_dir, args.device, download=args.download)
    )
    for split in args.split:
        summary = prepare_split(
            args.root,
            split,
            mask_fn=mask_fn,
            densepose_fn=densepose_fn,
            overwrite=args.overwrite,
            num_shards=args.num_shards,
            shard_index=args.shard_index,
        )
        logger.info(
            f"{split}: {summary.masks_written} masks and {summary.densepose_written} densepose renders written, "
            f"{summary.already_present} photos already complete, {len(summary.skipped)} skipped"
        )
        if summary.skipped:
            logger.warning(
                f"no person found in {len(summary.skipped)} photos; see {Path(args.root) / split / SKIPPED_FILE}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
