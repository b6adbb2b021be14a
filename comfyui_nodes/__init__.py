"""Leffa's ComfyUI nodes (see ``README.md`` here). ComfyUI imports this package from ``custom_nodes/`` and
reads the two mappings.

The nodes call the ``leffa`` library; when it is not installed in ComfyUI's Python (``pip install -e``), the
repository holding this folder is put at the end of ``sys.path`` so that it imports from there, behind
everything ComfyUI already has.
"""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("leffa") is None:
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
