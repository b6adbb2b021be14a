"""Leffa: learning flow fields in attention for controllable person image generation.

``from leffa import LeffaModel, LeffaPipeline``; heavy modules are imported on first use so that light
submodules (``leffa.core.flow``, ``leffa.weights``) import quickly.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "LeffaModel": "leffa.core.model",
    "LeffaPipeline": "leffa.core.pipeline",
    "LeffaOutput": "leffa.core.pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'leffa' has no attribute {name!r}")
