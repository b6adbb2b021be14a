"""Gradio components that hand the library what the user sent: uploads as file paths, numbers as they came.

Gradio's own preprocessing decodes every upload with PIL before the callback runs (no size check first, so
a small PNG of 10000×10000 pixels costs a gigabyte; a non-image file ends in a bare "Error") and compares
numbers with their bounds (a string for *steps* is a ``TypeError``). These subclasses pass the upload's
path and the raw value on, so that ``preprocess.images`` and the callbacks' checks give the project's own
messages. Used by ``app.py`` only (``leffa/`` never imports Gradio).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import gradio as gr
from gradio.components.image_editor import EditorData
from gradio.data_classes import FileData
from gradio.processing_utils import save_bytes_to_cache
from pydantic import ValidationError


def _saved(data: bytes | None, cache_dir: str, name: str) -> str | None:
    return None if data is None else save_bytes_to_cache(data, name, cache_dir)


class UploadedImage(gr.Image):
    """An image upload passed to the callback as a file path (whatever ``type`` says), never decoded here."""

    is_template = True  # drawn by the frontend's "image" component

    def preprocess(self, payload: FileData | None) -> str | None:
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):
            try:
                data = base64.b64decode(payload.url.partition(",")[2], validate=True)
            except binascii.Error as error:
                raise gr.Error(f"the uploaded image is not valid base64 data ({error})") from error
            return _saved(data, self.GRADIO_CACHE, "upload.png")
        return None if payload.path is None else str(payload.path)


class CheckedEditorData(EditorData):
    """The editor's value as Gradio models it, but anything that is not such a value (an API client's
    string, number or list) gets the project's message instead of Gradio's generic error."""

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> CheckedEditorData:
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError:
            raise gr.Error(
                "edited_mask must be the mask editor's value, a dict with 'background', 'layers' (image files) "
                f"and 'composite', or None for no edit; got {obj!r:.80}",
                print_exception=False,
            ) from None


class MaskEditor(gr.ImageEditor):
    """The mask editor; its painted layers reach the callback as file paths (decoded by the library).

    The background and the composite are not needed (the mask is read from the layers), so they are
    dropped unread.
    """

    is_template = True
    data_model = CheckedEditorData

    def preprocess(self, payload: EditorData | None) -> dict[str, Any] | None:
        if payload is None:
            return None
        if payload.id is not None:
            cached = self.blob_storage.pop(payload.id, None)
            blobs = [] if cached is None else cached.layers
            layers = [_saved(blob, self.GRADIO_CACHE, "layer.png") for blob in blobs]
        else:
            layers = [None if layer.path is None else str(layer.path) for layer in payload.layers]
        return {"background": None, "layers": [layer for layer in layers if layer is not None], "composite": None}


def _not_a_number(payload: Any) -> bool:
    return isinstance(payload, bool) or not isinstance(payload, (int, float))


class RawSlider(gr.Slider):
    """A slider that checks numbers against its bounds under the API parameter's name (``parameter``; Gradio's
    own message names no parameter) and leaves anything else for the callback to reject clearly."""

    is_template = True
    parameter = "value"  # set per slider by :func:`raw_slider` (Gradio builds its config from __init__'s signature)

    def preprocess(self, payload: Any) -> Any:
        if _not_a_number(payload):
            return payload
        if not self.minimum <= payload <= self.maximum:
            raise gr.Error(
                f"{self.parameter} must be between {self.minimum:g} and {self.maximum:g}, got {payload!r}",
                print_exception=False,
            )
        return super().preprocess(payload)


def raw_slider(parameter: str, *args: Any, **kwargs: Any) -> RawSlider:
    """A :class:`RawSlider` whose bound errors name the API parameter ``parameter``."""
    slider = RawSlider(*args, **kwargs)
    slider.parameter = parameter
    return slider


class RawNumber(gr.Number):
    """A number field that leaves non-numeric API values for the callback to reject with a clear message."""

    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return payload if _not_a_number(payload) else super().preprocess(payload)
