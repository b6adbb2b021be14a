"""ComfyUI entry point: this repository cloned into ``ComfyUI/custom_nodes/`` is a node pack, whose nodes live
in ``comfyui_nodes/``. Nothing else imports this file (the library is the ``leffa`` package)."""

from .comfyui_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
