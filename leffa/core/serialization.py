"""Reading, checking and writing checkpoints in the released key format (``vae.*``, ``unet_encoder.*``, ``unet.*``).

Released ``.pth`` files are plain pickled ``dict[str, Tensor]``; they are read with
``torch.load(weights_only=True, mmap=True)`` so nothing but tensors can be unpickled and nothing is copied
into memory before it is needed. ``.safetensors`` files are read and written with the safetensors library.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

SAFETENSORS_SUFFIX = ".safetensors"
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_MAX_LISTED = 5


class CheckpointMismatchError(ValueError):
    """A checkpoint does not match the model it is loaded into (names the first differences)."""


def _torch_load_tensors(path: Path):
    """``torch.load`` restricted to tensors; memory-mapped unless the file predates the zip format."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error):
            raise
    return torch.load(path, map_location="cpu", weights_only=True)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``.pth``/``.pt``/``.bin`` (tensors only) or ``.safetensors`` state dict onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == SAFETENSORS_SUFFIX:
        return load_file(str(path), device="cpu")
    if path.suffix not in TORCH_SUFFIXES:
        raise ValueError(
            f"unsupported checkpoint type {path.suffix!r} for {path}; expected one of "
            f"{', '.join(TORCH_SUFFIXES + (SAFETENSORS_SUFFIX,))}"
        )
    try:
        state = _torch_load_tensors(path)
    except Exception as error:  # unpickling errors come in many types; all mean "not a tensor dict"
        raise ValueError(f"could not read {path} as a tensor checkpoint: {error}") from error
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a plain dict of tensors (the released checkpoint format)")
    return dict(state)


def save_state_dict(
    state: Mapping[str, torch.Tensor], path: str | os.PathLike, dtype: torch.dtype | None = None
) -> Path:
    """Write ``state`` as ``.safetensors`` or ``.pth`` (chosen by suffix), optionally cast to ``dtype``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: (t.to(dtype) if dtype is not None and t.is_floating_point() else t).detach().cpu().contiguous()
        for name, t in state.items()
    }
    if path.suffix == SAFETENSORS_SUFFIX:
        save_file(tensors, str(path))
    elif path.suffix in TORCH_SUFFIXES:
        torch.save(tensors, path)
    else:
        raise ValueError(f"unsupported output type {path.suffix!r}; use .safetensors or .pth")
    return path


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return shown + (f" (and {more} more)" if more > 0 else "")


def check_state_dict(
    expected: Mapping[str, torch.Size], state: Mapping[str, torch.Tensor], *, hint: str = ""
) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``state`` has exactly the expected names and shapes."""
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    wrong = [
        f"{name} {tuple(state[name].shape)} != {tuple(shape)}"
        for name, shape in expected.items()
        if name in state and tuple(state[name].shape) != tuple(shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} wrong shapes (checkpoint != model): {_listing(wrong)}")
    if problems:
        message = "checkpoint does not match the model: " + "; ".join(problems)
        raise CheckpointMismatchError(message + (f". {hint}" if hint else ""))
