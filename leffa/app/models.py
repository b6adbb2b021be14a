"""The models the app and the command line serve: one named entry (:class:`ModelSpec`) each.

An entry says what a model is for and how to feed it: its task, the weights it loads (a download task of
:mod:`leffa.weights`, or a model folder for the demo models), the agnostic-mask variant and DensePose
render its inputs need, its frame size and its base. ``ModelStore`` reads these entries; the page, the HTTP
API and the command line name an entry by its ``model_type`` (``--model-type``, ``model_type``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from leffa.core.transforms import DEFAULT_SIZE

#: Resolution choices: the model's own frame, or half of it per side for speed.
RESOLUTIONS: tuple[str, ...] = ("full", "half")
#: The two tasks (also the demo models' folder names and download task names).
TRYON_TASK, POSE_TASK = "virtual_tryon", "pose_transfer"
#: The model type of pose transfer (there is one).
POSE_MODEL = "pose_transfer"


@dataclass(frozen=True)
class ModelSpec:
    """One servable model.

    ``weights`` is the download task whose checkpoint it loads (``ckpts/<file>``), or a model folder
    (``assets/demo-model/<task>``); ``mask_variant`` is ``preprocess.masks``' agnostic-mask variant
    (``None``: the whole image is generated); ``densepose_render`` is how ``preprocess.densepose`` draws its
    DensePose input; ``size`` is its frame (width, height).
    """

    model_type: str
    task: str
    weights: str | Path
    mask_variant: str | None
    densepose_render: str
    size: tuple[int, int]
    base: str


#: The released models (``franciszzj/Leffa``).
RELEASED_MODELS: dict[str, ModelSpec] = {
    spec.model_type: spec
    for spec in (
        ModelSpec("viton_hd", TRYON_TASK, "virtual_tryon", "viton_hd", "segmentation", DEFAULT_SIZE, "sd15-inpainting"),
        ModelSpec("dress_code", TRYON_TASK, "virtual_tryon_dc", "dress_code", "dresscode", DEFAULT_SIZE, "sd15-inpainting"),
        ModelSpec(POSE_MODEL, POSE_TASK, "pose_transfer", None, "iuv", DEFAULT_SIZE, "sdxl-inpainting"),
    )
}
#: The try-on model types, in the order the page offers them.
TRYON_MODEL_TYPES: tuple[str, ...] = tuple(key for key, spec in RELEASED_MODELS.items() if spec.task == TRYON_TASK)


def served_at(models: Mapping[str, ModelSpec], size: tuple[int, int], base: str, weights: Mapping[str, str | Path] | None = None) -> dict[str, ModelSpec]:
    """The same entries for models of another kind (the demo models, test models): every one at ``size``
    (width, height) on ``base``, with ``weights`` per task where given."""
    weights = weights or {}
    return {key: replace(spec, size=size, base=base, weights=weights.get(spec.task, spec.weights)) for key, spec in models.items()}


def model_spec(models: Mapping[str, ModelSpec], model_type: str, among: Iterable[str] | None = None) -> ModelSpec:
    """The entry of ``model_type``, or a ``ValueError`` naming the choices (``among``, default all)."""
    choices = list(among if among is not None else models)
    if model_type not in choices or model_type not in models:
        raise ValueError(f"unknown model type {model_type!r}; choose one of {', '.join(choices)}")
    return models[model_type]


def frame_size(spec: ModelSpec, resolution: str) -> tuple[int, int]:
    """The input size (width, height) of a model at a resolution choice: its own frame (``full``) or half of
    it per side (``half``)."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"unknown resolution {resolution!r}; choose one of {', '.join(RESOLUTIONS)}")
    width, height = spec.size
    return (width // 2, height // 2) if resolution == "half" else (width, height)
