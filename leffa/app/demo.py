"""The built-in demo model and its example inputs, for running the app offline without the released weights.

Why: the released checkpoints are ~8 GB; a newcomer without them (or with ``--tiny``) should still see a
real try-on and a meaningful attention inspector, not noise. The demo model is a tiny Leffa model trained on
the synthetic try-on task (``train/synthetic.py``; how, and what it scores: ``docs/synthetic-benchmark.md``),
shipped in ``assets/demo-model/`` in the released key format. It works at :data:`DEMO_IMAGE_SIZE` on the
synthetic people and garments in ``assets/examples/``; real photos are far outside what it has seen.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from PIL import Image

from leffa.core.model import LeffaModel, resolve_device
from leffa.core.serialization import read_state_dict

ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"
DEMO_MODEL_DIR = ASSETS_DIR / "demo-model"
EXAMPLES_DIR = ASSETS_DIR / "examples"
#: (height, width) the demo model was trained at; its examples have this size.
DEMO_IMAGE_SIZE: tuple[int, int] = (128, 96)
#: The config files of a model folder (``<name>.json``), besides its ``model.safetensors``.
MODEL_CONFIG_NAMES = ("unet", "vae", "scheduler")
DEMO_FILES = (*(f"{name}.json" for name in MODEL_CONFIG_NAMES), "model.safetensors")
EXAMPLE_PARTS = ("person", "garment", "mask", "densepose")
_EXAMPLE_NAME = re.compile(r"^person_(\d+)\.png$")


def _missing(folder: Path, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if not (folder / name).is_file()]


def load_demo_model(
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    path: str | os.PathLike | None = None,
) -> LeffaModel:
    """The demo model, loaded strictly (weights stored in fp16, placed in ``dtype``, fp32 by default).

    ``device=None`` picks CUDA, then MPS, then CPU; ``path`` defaults to ``assets/demo-model``.
    """
    return load_model_folder(
        path if path is not None else DEMO_MODEL_DIR,
        device,
        dtype,
        base="demo",
        hint="restore assets/demo-model from the repository or rebuild it (docs/synthetic-benchmark.md)",
    )


def read_model_configs(folder: str | os.PathLike) -> dict[str, dict]:
    """The ``unet``, ``vae`` and ``scheduler`` config dicts of a model folder."""
    return {name: json.loads((Path(folder) / f"{name}.json").read_text()) for name in MODEL_CONFIG_NAMES}


def load_model_folder(
    folder: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    base: str,
    hint: str,
) -> LeffaModel:
    """A model folder (configs + ``model.safetensors`` in the released key format), built on the meta device
    and loaded strictly; ``base`` labels the model, ``hint`` ends the error that names missing files."""
    folder = Path(folder)
    missing = _missing(folder, DEMO_FILES)
    if missing:
        raise FileNotFoundError(f"model incomplete in {folder}: missing {', '.join(missing)}; {hint}")
    configs = read_model_configs(folder)
    model = LeffaModel.from_config(configs["unet"], configs["vae"], configs["scheduler"], base=base, device="meta")
    model.load_state_dict(read_state_dict(folder / "model.safetensors"), assign=True)
    return model.place(resolve_device(device), dtype).eval()


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
