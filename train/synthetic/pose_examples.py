"""Write the app's pose-transfer examples from the pose demo model's check batch.

Why: the pose demo model (``assets/demo-model/pose_transfer/``) was trained on synthetic pose pairs, so the
app's pose examples must be such pairs, held out from training: the check batch's test samples. Its
DensePose is the synthetic grey part render ``round(I * 255 / 24)`` in all three channels, which the app
converts as an RGB image (``x / 255 * 2 - 1``, the format of every non-SDXL model,
``LeffaPipeline.default_densepose_format``); that gives the check batch's tensor bit for bit, so each
sample is stored as 8-bit PNGs without loss.

Files per sample ``KK``: ``pose_KK_person.png`` (the appearance: the person in pose A), ``pose_KK_target.png``
(the same person in pose B, the photo shown as the target pose) and ``pose_KK_densepose.png`` (pose B's
DensePose, the model's pose input).

    python -m train.synthetic.pose_examples --indices 0 1 2 4
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from leffa.assets import DEMO_MODEL_DIR, EXAMPLES_DIR, POSE_EXAMPLE_PARTS, pose_example_name

#: Check-batch array of each example file: the target (pose B) is the batch's ``person``.
BATCH_ARRAYS = {"person": "reference", "target": "person", "densepose": "densepose"}
#: The shipped ones: the first five test samples but the fourth, on which the demo model fails (its masked
#: L1 is the untrained model's).
DEFAULT_INDICES = (0, 1, 2, 4)


def signed_to_uint8(images: np.ndarray, name: str) -> np.ndarray:
    """(N, 3, H, W) float32 in [-1, 1] made as ``x / 127.5 - 1`` back to (N, H, W, 3) uint8, exactly.

    Raises ``ValueError`` when the values are not such 8-bit levels (then a PNG could not reproduce them).
    """
    levels = np.rint((images.astype(np.float64) + 1.0) * 127.5)
    if levels.min() < 0 or levels.max() > 255:
        raise ValueError(f"{name}: values outside [-1, 1]; is this a check batch (train/synthetic/ship.py)?")
    pixels = levels.astype(np.uint8)
    if not np.array_equal(pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0), images):
        raise ValueError(f"{name}: values are not 8-bit levels x / 127.5 - 1, so a PNG cannot hold them exactly")
    return np.moveaxis(pixels, 1, -1)


def write_pose_examples(
    batch_path: str | Path = DEMO_MODEL_DIR / "pose_transfer" / "check_batch.npz",
    out_dir: str | Path = EXAMPLES_DIR,
    indices: Sequence[int] = DEFAULT_INDICES,
) -> list[dict[str, Path]]:
    """Write the check-batch samples ``indices`` as pose examples ``0, 1, ...`` into ``out_dir``; return
    their paths per example."""
    with np.load(batch_path) as stored:
        missing = [key for key in BATCH_ARRAYS.values() if key not in stored.files]
        if missing:
            raise KeyError(f"{batch_path} lacks {missing}; rebuild it with python -m train.synthetic.ship")
        count = stored["person"].shape[0]
        if not indices or len(set(indices)) != len(indices) or not all(0 <= index < count for index in indices):
            raise ValueError(f"indices must be distinct samples in 0..{count - 1}, got {list(indices)}")
        pictures = {part: signed_to_uint8(stored[key][list(indices)], key) for part, key in BATCH_ARRAYS.items()}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for k in range(len(indices)):
        paths = {part: out_dir / pose_example_name(f"{k:02d}", part) for part in POSE_EXAMPLE_PARTS}
        for part, path in paths.items():
            Image.fromarray(pictures[part][k]).save(path)
        written.append(paths)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the app's pose-transfer examples (pose_KK_*.png)")
    parser.add_argument("--batch", default=str(DEMO_MODEL_DIR / "pose_transfer" / "check_batch.npz"))
    parser.add_argument("--out", default=str(EXAMPLES_DIR))
    parser.add_argument("--indices", type=int, nargs="+", default=list(DEFAULT_INDICES), help="check-batch samples")
    args = parser.parse_args(argv)
    for paths in write_pose_examples(args.batch, args.out, args.indices):
        print("  ".join(str(path) for path in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
