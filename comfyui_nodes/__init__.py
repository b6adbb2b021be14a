"""Leffa's ComfyUI nodes (see ``README.md`` here). ComfyUI imports this package from ``custom_nodes/`` and
reads the two mappings.

The nodes call the ``leffa`` library; when it is not installed in ComfyUI's Python (``pip install -e``), the
repository holding this folder is put at the end of ``sys.path`` so that it imports from there, behind
everything ComfyUI already has. A package missing from ComfyUI's Python is named with the command that
installs the nodes' requirements, instead of leaving the user with "missing node types".
"""

import importlib.util
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if importlib.util.find_spec("leffa") is None:
    sys.path.append(str(_HERE.parent))

try:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
except ModuleNotFoundError as error:
    raise ModuleNotFoundError(
        f"the Leffa nodes need the package {error.name!r}, which ComfyUI's Python ({sys.executable}) lacks; "
        f"install their requirements into it: {sys.executable} -m pip install -r {_HERE / 'requirements.txt'}",
        name=error.name,
    ) from error

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
