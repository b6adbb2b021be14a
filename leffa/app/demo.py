"""The built-in demo model and its example inputs, for running the app offline without the released weights.

Why: the released checkpoints are ~8 GB; a newcomer without them (or with ``--tiny``) should still see a
real try-on and a meaningful attention inspector, not noise. The demo model is a tiny Leffa model trained on
the synthetic try-on task (``train/synthetic/``; how, and what it scores: ``docs/synthetic-benchmark.md``),
shipped in ``assets/demo-model/virtual_tryon/`` in the released key format, with a pose-transfer twin in
``assets/demo-model/pose_transfer/``. It works at :data:`DEMO_IMAGE_SIZE` on the
synthetic people and garments in ``assets/examples/``; real photos are far outside what it has seen.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from PIL import Image

from leffa.assets import (
    DEMO_MODEL_DIR, DEMO_TASKS, EXAMPLE_PARTS, EXAMPLES_DIR, POSE_EXAMPLE_PARTS, pose_example_name,
)
from leffa.core.model import LeffaModel
_EXAMPLE_NAME = re.compile(r"^person_(\d+)\.png$")
_POSE_EXAMPLE_NAME = re.compile(r"^pose_(\d+)_person\.png$")


def _missing(folder: Path, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if not (folder / name).is_file()]


def load_demo_model(
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    task: str = "virtual_tryon",
    path: str | os.PathLike | None = None,
) -> LeffaModel:
    """The demo model of ``task`` (one of :data:`DEMO_TASKS`), loaded strictly (weights stored in fp16,
    placed in ``dtype``, fp32 by default).

    ``device=None`` picks CUDA, then MPS, then CPU; ``path`` defaults to ``assets/demo-model/<task>``.
    """
    if task not in DEMO_TASKS:
        raise ValueError(f"task must be one of {DEMO_TASKS}, got {task!r}")
    try:
        model = LeffaModel.from_pretrained(path if path is not None else DEMO_MODEL_DIR / task, device=device, dtype=dtype)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"{error}; restore assets/demo-model from the repository or rebuild it (docs/synthetic-benchmark.md)"
        ) from None
    return model.eval()


def demo_examples(path: str | os.PathLike | None = None) -> list[dict[str, Image.Image]]:
    """The shipped example inputs, in order: dicts with ``person``, ``garment``, ``densepose`` (RGB) and
    ``mask`` (L, 255 = region to generate), all of :data:`DEMO_IMAGE_SIZE`."""
    folder = Path(path) if path is not None else EXAMPLES_DIR
    indices = sorted(
        match.group(1) for match in (_EXAMPLE_NAME.match(p.name) for p in folder.glob("person_*.png")) if match
    )
    if not indices:
        raise FileNotFoundError(f"no example inputs (person_KK.png, ...) in {folder}; restore assets/examples")
    examples = []
    for index in indices:
        names = tuple(f"{part}_{index}.png" for part in EXAMPLE_PARTS)
        missing = _missing(folder, names)
        if missing:
            raise FileNotFoundError(f"example {index} in {folder} is incomplete: missing {', '.join(missing)}")
        example = {}
        for part, name in zip(EXAMPLE_PARTS, names, strict=True):
            with Image.open(folder / name) as image:
                example[part] = image.convert("L" if part == "mask" else "RGB")
        examples.append(example)
    return examples


def pose_example_indices(path: str | os.PathLike | None = None) -> list[str]:
    """The ``KK`` of every ``pose_KK_person.png`` in the folder, sorted, after checking each example has all
    of :data:`POSE_EXAMPLE_PARTS` (empty when there are none)."""
    folder = Path(path) if path is not None else EXAMPLES_DIR
    matches = (_POSE_EXAMPLE_NAME.match(p.name) for p in folder.glob("pose_*_person.png"))
    indices = sorted(match.group(1) for match in matches if match)
    for index in indices:
        missing = _missing(folder, tuple(pose_example_name(index, part) for part in POSE_EXAMPLE_PARTS))
        if missing:
            raise FileNotFoundError(
                f"pose example {index} in {folder} is incomplete: missing {', '.join(missing)}; "
                "restore assets/examples or rewrite them with python -m train.synthetic.pose_examples"
            )
    return indices


def demo_pose_examples(path: str | os.PathLike | None = None) -> list[dict[str, Image.Image]]:
    """The shipped pose-transfer examples, in order: dicts with ``person``, ``target`` and ``densepose``
    (RGB, :data:`DEMO_IMAGE_SIZE`); test samples of the pose demo model's check batch."""
    folder = Path(path) if path is not None else EXAMPLES_DIR
    indices = pose_example_indices(folder)
    if not indices:
        raise FileNotFoundError(f"no pose examples (pose_KK_person.png, ...) in {folder}; restore assets/examples")
    examples = []
    for index in indices:
        example = {}
        for part in POSE_EXAMPLE_PARTS:
            with Image.open(folder / pose_example_name(index, part)) as image:
                example[part] = image.convert("RGB")
        examples.append(example)
    return examples


def pose_transfer_trained(folder: str | os.PathLike = DEMO_MODEL_DIR) -> bool:
    """Whether the built-in demo has a trained pose-transfer model: ``<folder>/pose_transfer/`` with a JSON
    file (its config or metadata) that says ``"trained": true``."""
    for path in sorted((Path(folder) / "pose_transfer").glob("*.json")):
        try:
            metadata = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(metadata, dict) and metadata.get("trained") is True:
            return True
    return False
