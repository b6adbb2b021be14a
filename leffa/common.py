"""What both :mod:`preprocess` and every part of :mod:`leffa` need, written once.

This module sits below both: it imports neither :mod:`preprocess` nor any other ``leffa`` module, so
importing it is cheap. It holds the device resolution, the one list of image file suffixes, the one
"nobody in the photo" error, the strict name-and-shape check for checkpoints, and the size checks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

#: Image files the app, the command line, evaluation and data preparation accept (lower case).
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

_MAX_LISTED = 5


class NoPersonError(ValueError):
    """A preprocessing model (OpenPose, DensePose) found nobody in the photo."""


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensor names or shapes differ from the network it is loaded into."""


def check_device(device: torch.device) -> torch.device:
    """Return ``device``, or raise a clear error when this machine does not have it."""
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available; use device 'cpu' or 'auto'")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"device {str(device)!r} requested but Apple MPS is not available; use device 'cpu' or 'auto'"
        )
    return device


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` picks CUDA, then Apple MPS, then CPU; an unavailable device is a clear error."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return check_device(torch.device(device))


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return shown + (f" (and {more} more)" if more > 0 else "")


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def check_state_dict(
    expected: Mapping[str, Any], state: Mapping[str, Any], *, what: str = "the model", hint: str = ""
) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``state`` has exactly the expected names and shapes.

    Values on either side may be tensors, numpy arrays or shapes; the message names the first missing,
    unexpected and wrongly shaped entries.
    """
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    wrong = [
        f"{name} {_shape(state[name])} != {_shape(shape)}"
        for name, shape in expected.items()
        if name in state and _shape(state[name]) != _shape(shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} wrong shapes (checkpoint != model): {_listing(wrong)}")
    if problems:
        message = f"checkpoint does not match {what}: " + "; ".join(problems)
        raise CheckpointMismatchError(message + (f". {hint}" if hint else ""))


def check_grid_size(size: Sequence[int], name: str) -> tuple[int, int]:
    """A (height, width) pair of positive ints, as token grids and output sizes must be."""
    if len(size) != 2 or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in size):
        raise ValueError(f"{name} must be a pair of positive ints (height, width), got {size!r}")
    return int(size[0]), int(size[1])
