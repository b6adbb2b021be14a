"""Leffa: learning flow fields in attention for controllable person image generation.

``from leffa import LeffaModel, LeffaPipeline``; heavy modules are imported on first use so that light
submodules (``leffa.core.flow``, ``leffa.weights``) import quickly.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

__version__ = "0.1.0"


class _KnownImportNoise(logging.Filter):
    """Drops two log lines that importing torchao (pinned for the ``int8`` memory level) makes on every run,
    through diffusers, with nothing for the user to do: torch's note that an enum torchao registers needs no
    registration, and diffusers' note on torchao tensor classes it cannot find (checkpoints serialised with
    torchao, which this project never loads)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            "is an Enum subclass and is now natively supported by torch.compile" in message
            or message.startswith("Unable to import `torchao` Tensor objects")
        )


for _name in ("torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
    logging.getLogger(_name).addFilter(_KnownImportNoise())

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
