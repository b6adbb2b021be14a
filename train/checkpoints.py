"""Training checkpoints on disk: finding them, reading their weights, exporting the released format."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from leffa.core.serialization import save_state_dict

CHECKPOINT_PREFIX = "step-"
STATE_FILE = "training_state.json"
WEIGHTS_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"


def checkpoint_step(path: Path) -> int | None:
    match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", path.name)
    return int(match.group(1)) if match and (path / STATE_FILE).is_file() else None


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints under ``<run_dir>/checkpoints``, oldest first."""
    root = Path(run_dir) / "checkpoints"
    found = (
        [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None] if root.is_dir() else []
    )
    return sorted(found, key=checkpoint_step)


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory itself, or the latest complete checkpoint of a run directory."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    found = list_checkpoints(path)
    if not found:
        raise FileNotFoundError(
            f"{path} is neither a training checkpoint (no {STATE_FILE}) nor a run directory with "
            "checkpoints/step-* in it"
        )
    return found[-1]


def read_checkpoint_weights(checkpoint: str | Path, *, ema: bool = False) -> dict[str, Tensor]:
    """Released-format weights of a training checkpoint (with the EMA weights laid over them on request)."""
    checkpoint = Path(checkpoint)
    path = checkpoint / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{checkpoint} has no {WEIGHTS_FILE}; pass a checkpoint written by train/train.py"
        )
    weights = {}
    for name, tensor in load_file(str(path)).items():
        name = name.removeprefix("module.")  # DDP-wrapped module state
        if name.startswith("model."):
            weights[name.removeprefix("model.")] = tensor
    if not weights:
        raise ValueError(f"{path} holds no model.* weights; it was not written by train/train.py")
    if ema:
        ema_path = checkpoint / EMA_FILE
        if not ema_path.is_file():
            raise FileNotFoundError(
                f"{checkpoint} has no EMA weights ({EMA_FILE}); train with train.ema.enabled: true"
            )
        weights.update(load_file(str(ema_path)))
    return weights


def export_checkpoint(
    checkpoint: str | Path, output: str | Path, *, ema: bool = False, dtype: torch.dtype | None = None
) -> Path:
    """Write a checkpoint's weights in the released key format (``.safetensors`` or ``.pth`` by suffix).

    The file loads with ``LeffaModel.from_pretrained(output)`` (shipped bases) and in the released code.
    """
    return save_state_dict(read_checkpoint_weights(find_checkpoint(checkpoint), ema=ema), output, dtype)

