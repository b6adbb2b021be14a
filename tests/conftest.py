"""Shared fixtures: tiny models built from config dicts (a few MB, CPU, seconds); small shared helpers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

# Tiny models are overhead-bound: one thread is faster than two fighting over the cores.
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_REFERENCE = REPO_ROOT.parent / "shared" / "reference"


def write_block_image(path: Path, size=(96, 128), colour=(200, 120, 90), mode="RGB") -> Path:
    """Write a white (``mode="L"``: black) image with a coloured (white) centre block; parents are created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new(mode, size, "white" if mode == "RGB" else 0)
    width, height = size
    image.paste(colour if mode == "RGB" else 255, (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    image.save(path)
    return path


def requirement_pins(path: Path) -> dict[str, str]:
    """``{package: version}`` of a requirements file's ``name==version`` lines (comments left out)."""
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return dict(line.split("==") for line in lines if "==" in line)


def read_run_log(out: Path) -> list[dict]:
    """The records of a command-line run's ``log.jsonl`` in ``out``, in order."""
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def tiny_model():
    """A randomly initialised tiny Leffa model (seeded). Tests must not modify its weights."""
    from leffa.core.model import LeffaModel

    torch.manual_seed(0)
    model = LeffaModel.from_base("tiny")
    model.eval()
    return model


@pytest.fixture()
def tiny_inputs():
    """A 64×48 batch of one: src, ref, mask and densepose in the released normalisation."""
    gen = torch.Generator().manual_seed(123)
    src = torch.rand(1, 3, 64, 48, generator=gen) * 2 - 1
    ref = torch.rand(1, 3, 64, 48, generator=gen) * 2 - 1
    mask = torch.zeros(1, 1, 64, 48)
    mask[..., 16:48, 8:40] = 1
    densepose = torch.rand(1, 3, 64, 48, generator=gen) * 2 - 1
    return src, ref, mask, densepose


@pytest.fixture()
def fresh_accelerate():
    """One torch thread during the test, and a fresh accelerate state after it (trainer and evaluation tests
    build several Accelerators in one process)."""
    from accelerate.state import AcceleratorState, GradientState

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
