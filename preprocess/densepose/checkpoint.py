"""Safe reading/writing of detectron2 ``.pkl`` checkpoints and strict loading into a module.

The file is a pickle of ``{"model": {name: numpy array}, ...}``. A plain ``pickle.load`` would run any
code the file names, so the unpickler below only resolves the few globals numpy arrays and plain
containers need and refuses everything else.
"""

from __future__ import annotations

import builtins
import codecs
import collections
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from leffa.common import check_state_dict

MODEL_KEY = "model"
_SHOWN_NAMES = 5


def _numpy_reconstructors() -> dict[tuple[str, str], Any]:
    """Array/scalar rebuilders under both their numpy 1 and numpy 2 module names."""
    reconstruct = np.ndarray((0,)).__reduce__()[0]
    from_buffer = np.ndarray((0,)).__reduce_ex__(5)[0]
    scalar = np.float32(0).__reduce__()[0]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = from_buffer
    return allowed


_CONTAINER_BUILTINS = (
    "dict",
    "list",
    "tuple",
    "set",
    "frozenset",
    "bytes",
    "bytearray",
    "str",
    "int",
    "float",
    "complex",
    "bool",
)
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **_numpy_reconstructors(),
    **{("builtins", name): getattr(builtins, name) for name in _CONTAINER_BUILTINS},
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): codecs.encode,
}


class UnsafePickleError(pickle.UnpicklingError):
    """The checkpoint names a global outside the numpy/container allow-list."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to unpickle {module}.{name}: a detectron2 checkpoint may only contain numpy "
                "arrays and plain containers; this file is not a genuine checkpoint or was tampered with"
            ) from None


def read_detectron2_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """Return the ``model`` mapping of a detectron2 pickle, refusing any non-numpy content."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with path.open("rb") as handle:
        try:
            content = _NumpyOnlyUnpickler(handle, encoding="latin1").load()
        except UnsafePickleError as error:
            raise UnsafePickleError(f"{path}: {error}") from None
        except Exception as error:
            raise ValueError(f"{path} is not a readable detectron2 checkpoint pickle: {error}") from error
    if not isinstance(content, Mapping) or not isinstance(content.get(MODEL_KEY), Mapping):
        raise ValueError(
            f'{path} is not a detectron2 checkpoint: expected a dict with a "{MODEL_KEY}" mapping'
        )
    weights = content[MODEL_KEY]
    bad = [
        str(name)
        for name, value in weights.items()
        if not isinstance(name, str) or not isinstance(value, np.ndarray)
    ]
    if bad:
        raise ValueError(
            f"{path}: entries of '{MODEL_KEY}' must be numpy arrays keyed by name; bad: {bad[:_SHOWN_NAMES]}"
        )
    return dict(weights)


def write_detectron2_checkpoint(
    state: Mapping[str, torch.Tensor], path: str | Path, protocol: int = pickle.DEFAULT_PROTOCOL
) -> None:
    """Write a state dict in detectron2's pickle layout (used for tests and conversions)."""
    weights = {name: tensor.detach().cpu().numpy() for name, tensor in state.items()}
    with Path(path).open("wb") as handle:
        pickle.dump({MODEL_KEY: weights, "__author__": "leffa-preprocess"}, handle, protocol=protocol)


def load_weights(module: nn.Module, weights: Mapping[str, np.ndarray]) -> nn.Module:
    """Strictly load numpy weights as float32 (works on meta-device modules) and freeze them."""
    check_state_dict(module.state_dict(), weights, what="DensePose R50-FPN")
    tensors = {name: torch.tensor(np.asarray(array), dtype=torch.float32) for name, array in weights.items()}
    module.load_state_dict(tensors, strict=True, assign=True)
    module.requires_grad_(False)
    return module
