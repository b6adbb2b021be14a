"""The Leffa nodes: load a model, make the try-on mask, try on, transfer a pose, see where a pixel looked.

Each node is a thin adapter: it turns ComfyUI's tensors into the library's images (:mod:`.tensors`), calls
the actions the app and the command line run (:class:`leffa.app.callbacks.AppCallbacks`) and turns the
results back. The model travels between nodes as one object (``LEFFA_MODEL``: the library's
:class:`~leffa.app.runtime.Runtime`, whose store loads each model once, on first use); a generation travels
to the attention-map node as ``LEFFA_RUN``. Masks and DensePose renders are at the person photo's size
(ComfyUI's convention), and are framed like the photo again when they come back.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from leffa.app.callbacks import AppCallbacks, ProgressCallback, TryOnInputs
from leffa.app.inspector import TRAINED, inspector_view
from leffa.app.models import POSE_MODEL, TRYON_MODEL_TYPES
from leffa.app.runtime import DEVICES, DTYPES, Runtime, released_runtime, tiny_runtime
from leffa.app.service import Generation, PreprocessingUnavailableError
from leffa.core.memory import MEMORY_CHOICES
from leffa.core.settings import SamplingSettings
from preprocess.crop import AUTO_CROP_CHOICES
from preprocess.mask_adjust import SIDES, MaskAdjustments
from preprocess.masks import CATEGORIES

from .tensors import batch_count, checked_images, checked_masks, image_at, mask_at, to_images, to_masks

#: Where the nodes appear in ComfyUI's "Add Node" menu.
CATEGORY = "Leffa"
#: The two weight sources of the loader.
WEIGHTS = ("released", "demo")
#: The largest seed ComfyUI's seed widgets offer (the sampler takes 0 .. 2**64 - 1).
MAX_SEED = 2**64 - 1
#: Units of ComfyUI's progress bar for one node run.
_PROGRESS_UNITS = 1000


@dataclass
class LeffaRun:
    """What a generating node made, for the attention-map node: one generation per pair of its batch."""

    generations: list[Generation]


def _comfy_progress() -> ProgressCallback | None:
    """Reports to ComfyUI's progress bar and stops at its Cancel button; ``None`` outside ComfyUI."""
    try:
        import comfy.model_management
        import comfy.utils
    except ImportError:
        return None
    bar = comfy.utils.ProgressBar(_PROGRESS_UNITS)

    def report(fraction: float, _text: str) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(round(fraction * _PROGRESS_UNITS), _PROGRESS_UNITS)

    return report


def _default_ckpt_dir() -> str | None:
    """``$LEFFA_CKPT_DIR``, else ComfyUI's ``models/leffa`` folder inside ComfyUI, else ``./ckpts``."""
    if os.environ.get("LEFFA_CKPT_DIR"):
        return None
    try:
        import folder_paths
    except ImportError:
        return None
    return str(Path(folder_paths.models_dir) / "leffa")


def _sampling_inputs() -> dict[str, tuple]:
    """The sampling settings every generating node takes (``SamplingSettings``' fields)."""
    return {
        "steps": ("INT", {"default": 30, "min": 1, "max": 999, "tooltip": "denoising steps"}),
        "guidance": ("FLOAT", {"default": 2.5, "min": 0.0, "max": 10.0, "step": 0.1,
                               "tooltip": "classifier-free guidance scale on the reference (1 = none)"}),
        "seed": ("INT", {"default": 42, "min": 0, "max": MAX_SEED, "tooltip": "image i has seed + i"}),
        "num_images": ("INT", {"default": 1, "min": 1, "max": 4, "tooltip": "images per pair, one batched pass"}),
        "ref_acceleration": ("BOOLEAN", {"default": False,
                                         "tooltip": "reuse the reference features across steps (about 30 % faster)"}),
        "record_attention": ("BOOLEAN", {"default": False,
                                         "tooltip": "record attention for the Leffa attention map node"}),
    }


def _settings(runtime: Runtime, steps: int, guidance: float, seed: int, num_images: int, ref_acceleration: bool,
              record_attention: bool, repaint: bool = False) -> SamplingSettings:
    return SamplingSettings(
        num_inference_steps=steps, guidance_scale=guidance, seed=seed, num_images=num_images,
        ref_acceleration=ref_acceleration, record_attention=record_attention, repaint=repaint, memory=runtime.memory,
    )


def _checked_model(model: object) -> Runtime:
    if not isinstance(model, Runtime):
        raise ValueError(f"model must come from the 'Load Leffa model' node, got {type(model).__name__}")
    return model


@contextmanager
def _inputs_the_demo_model_needs() -> Iterator[None]:
    """The library's "cannot preprocess" error said in this node's terms."""
    try:
        yield
    except PreprocessingUnavailableError as error:
        raise PreprocessingUnavailableError(
            "the demo model cannot make a mask or DensePose from a photo (it has no parsing, OpenPose or DensePose "
            "model): connect a 'mask' and a 'densepose' to this node (pose transfer: the target's 'densepose'), as "
            "workflows/tryon_demo_api.json does with the examples', or load the 'released' weights"
        ) from error


def _each_pair(count: int, make: Callable[[int], Generation]) -> tuple[torch.Tensor, LeffaRun]:
    """``make`` for each pair; every image of every pair as one IMAGE batch, and the run."""
    with _inputs_the_demo_model_needs():
        generations = [make(index) for index in range(count)]
    images = [image for generation in generations for image in generation.images]
    sizes = {image.size for image in images}
    if len(sizes) > 1:
        raise ValueError(f"the results differ in size ({sorted(sizes)}): give the persons at one size")
    return to_images(images), LeffaRun(generations)


class LeffaModelLoader:
    """The released Leffa weights (downloaded on first use when allowed) or the built-in demo model."""

    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("LEFFA_MODEL",)
    RETURN_NAMES = ("model",)
    DESCRIPTION = (
        "Leffa's try-on and pose-transfer models. 'released': the authors' weights from ckpt_dir (default "
        "$LEFFA_CKPT_DIR or ComfyUI's models/leffa), downloaded on first use when 'download' is on; each model "
        "loads when a node first needs it. 'demo': the small model this project trained (96×128, needs its "
        "mask and DensePose given). 'memory' is the GPU memory level every run uses."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "weights": (list(WEIGHTS), {"default": "released"}),
                "device": (list(DEVICES), {"default": "auto"}),
                "dtype": (list(DTYPES), {"default": "auto", "tooltip": "auto: fp16 on CUDA, else fp32"}),
                "memory": (list(MEMORY_CHOICES), {
                    "default": "auto",
                    "tooltip": "none (fastest), model_offload, group_offload, layerwise_fp8, int8; auto: the "
                               "fastest that fits the free GPU memory",
                }),
                "download": ("BOOLEAN", {"default": True, "tooltip": "fetch missing released weights"}),
            },
            "optional": {
                "ckpt_dir": ("STRING", {"default": "", "tooltip": "folder of the released weights"}),
            },
        }

    def load(self, weights: str, device: str, dtype: str, memory: str, download: bool, ckpt_dir: str = "") -> tuple[Runtime]:
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
        if weights == "demo":
            return (tiny_runtime(device=device, dtype=dtype, memory=memory),)
        folder = ckpt_dir.strip() or _default_ckpt_dir()
        return (released_runtime(folder, device=device, dtype=dtype, download=download, memory=memory),)


def _adjustment_inputs() -> dict[str, tuple]:
    """``MaskAdjustments``' fields as inputs (pixels of the model frame; the defaults change nothing)."""
    sides = {
        f"extend_{side}": ("INT", {"default": 0, "min": 0, "max": 1024, "tooltip": f"stretch the mask {side}, px"})
        for side in SIDES
    }
    return {
        "grow": ("INT", {"default": 0, "min": -200, "max": 200, "tooltip": "grow (negative: shrink) all round, px"}),
        **sides,
        "keep_hands": ("BOOLEAN", {"default": True, "tooltip": "what the adjustments add never covers the hands"}),
        "keep_face": ("BOOLEAN", {"default": True, "tooltip": "... nor the face and hair"}),
        "cover_legs": ("BOOLEAN", {"default": False,
                                   "tooltip": "legs to the ankles join the mask (long lower garments, dresses)"}),
    }


def _tryon_inputs(person: torch.Tensor, garment: torch.Tensor, index: int, model_type: str,
                  category: str, auto_crop: str, mask: torch.Tensor | None, densepose: torch.Tensor | None,
                  adjustments: MaskAdjustments, prepare_garment_png: bool = False) -> TryOnInputs:
    return TryOnInputs(
        image_at(person, index), image_at(garment, index), model_type, category,
        None if mask is None else mask_at(mask, index), None if densepose is None else image_at(densepose, index),
        prepare_garment_png, "full", auto_crop, adjustments,
    )


class LeffaMakeMask:
    """The try-on mask of each person (the released agnostic mask, adjusted) and their DensePose render."""

    CATEGORY = CATEGORY
    FUNCTION = "make_mask"
    RETURN_TYPES = ("MASK", "IMAGE", "STRING")
    RETURN_NAMES = ("mask", "densepose", "notes")
    DESCRIPTION = (
        "The region the garment replaces (white), made from the person photo by human parsing and OpenPose as "
        "the released demo makes it, then adjusted; and the DensePose render the try-on model needs. Both at "
        "the photo's size. A mask or DensePose given here is used instead (the demo model needs both): the "
        "adjustments still grow and extend a given mask."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("LEFFA_MODEL",),
                "person": ("IMAGE",),
                "model_type": (list(TRYON_MODEL_TYPES), {"default": TRYON_MODEL_TYPES[0]}),
                "category": (list(CATEGORIES), {"default": CATEGORIES[0]}),
                "auto_crop": (list(AUTO_CROP_CHOICES), {"default": "auto",
                                                        "tooltip": "cut a small person out of a wide photo first"}),
                **_adjustment_inputs(),
            },
            "optional": {"mask": ("MASK",), "densepose": ("IMAGE",)},
        }

    def make_mask(self, model: Runtime, person: torch.Tensor, model_type: str, category: str, auto_crop: str,
                  grow: int, extend_up: int, extend_down: int, extend_left: int, extend_right: int,
                  keep_hands: bool, keep_face: bool, cover_legs: bool, mask: torch.Tensor | None = None,
                  densepose: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
        actions = AppCallbacks(_checked_model(model).store)
        person = checked_images(person, "person")
        mask = None if mask is None else checked_masks(mask, "mask")
        densepose = None if densepose is None else checked_images(densepose, "densepose")
        adjustments = MaskAdjustments(
            grow=grow, extend_up=extend_up, extend_down=extend_down, extend_left=extend_left,
            extend_right=extend_right, keep_hands=keep_hands, keep_face=keep_face, cover_legs=cover_legs,
        )
        masks, renders, notes = [], [], []
        for index in range(batch_count((person, "person"), (mask, "mask"), (densepose, "densepose"))):
            # The mask does not depend on the garment; the person stands in for it.
            inputs = _tryon_inputs(person, person, index, model_type, category, auto_crop, mask, densepose,
                                   adjustments)
            with _inputs_the_demo_model_needs():
                prepared = actions.make_mask(inputs, _comfy_progress()).prepared
            masks.append(prepared.framing.to_photo(prepared.mask))
            renders.append(prepared.framing.to_photo(prepared.densepose))
            notes.extend(prepared.notes)
        return to_masks(masks), to_images(renders), "\n".join(dict.fromkeys(notes))


class LeffaTryOn:
    """The person wearing the garment."""

    CATEGORY = CATEGORY
    FUNCTION = "try_on"
    RETURN_TYPES = ("IMAGE", "LEFFA_RUN")
    RETURN_NAMES = ("images", "run")
    DESCRIPTION = (
        "Virtual try-on: each person photo wearing the garment (a batch of one goes with every item of the "
        "other). Without a mask or DensePose they are made as by 'Leffa try-on mask' with no adjustments. "
        "Results are at the person photo's size; 'num_images' images per pair, seeds seed, seed + 1, ..."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("LEFFA_MODEL",),
                "person": ("IMAGE",),
                "garment": ("IMAGE",),
                "model_type": (list(TRYON_MODEL_TYPES), {"default": TRYON_MODEL_TYPES[0]}),
                "category": (list(CATEGORIES), {"default": CATEGORIES[0]}),
                **_sampling_inputs(),
            },
            "optional": {
                "mask": ("MASK",),
                "densepose": ("IMAGE",),
                "auto_crop": (list(AUTO_CROP_CHOICES), {"default": "auto"}),
                "repaint": ("BOOLEAN", {"default": False, "tooltip": "keep the photo's pixels outside the mask"}),
                "prepare_garment_png": ("BOOLEAN", {"default": False,
                                                    "tooltip": "the garment is a cut-out on transparency"}),
            },
        }

    def try_on(self, model: Runtime, person: torch.Tensor, garment: torch.Tensor, model_type: str, category: str,
               steps: int, guidance: float, seed: int, num_images: int, ref_acceleration: bool,
               record_attention: bool, mask: torch.Tensor | None = None, densepose: torch.Tensor | None = None,
               auto_crop: str = "auto", repaint: bool = False,
               prepare_garment_png: bool = False) -> tuple[torch.Tensor, LeffaRun]:
        runtime = _checked_model(model)
        actions = AppCallbacks(runtime.store)
        person, garment = checked_images(person, "person"), checked_images(garment, "garment")
        mask = None if mask is None else checked_masks(mask, "mask")
        densepose = None if densepose is None else checked_images(densepose, "densepose")
        count = batch_count((person, "person"), (garment, "garment"), (mask, "mask"), (densepose, "densepose"))
        settings = _settings(runtime, steps, guidance, seed, num_images, ref_acceleration, record_attention, repaint)

        def pair(index: int) -> Generation:
            inputs = _tryon_inputs(person, garment, index, model_type, category, auto_crop, mask, densepose,
                                   MaskAdjustments(), prepare_garment_png)
            return actions.try_on(inputs, settings, progress=_comfy_progress())

        return _each_pair(count, pair)


class LeffaPoseTransfer:
    """The person of one photo in the pose of another."""

    CATEGORY = CATEGORY
    FUNCTION = "pose_transfer"
    RETURN_TYPES = ("IMAGE", "LEFFA_RUN")
    RETURN_NAMES = ("images", "run")
    DESCRIPTION = (
        "Pose transfer: the person of 'person' in the pose of 'target' (DensePose of the target made unless "
        "given at the target's size). Results are at the target photo's size, or its cut around the person "
        "when auto-crop cuts it."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("LEFFA_MODEL",),
                "person": ("IMAGE",),
                "target": ("IMAGE",),
                **_sampling_inputs(),
            },
            "optional": {
                "densepose": ("IMAGE",),
                "auto_crop": (list(AUTO_CROP_CHOICES), {"default": "auto"}),
            },
        }

    def pose_transfer(self, model: Runtime, person: torch.Tensor, target: torch.Tensor, steps: int, guidance: float,
                      seed: int, num_images: int, ref_acceleration: bool, record_attention: bool,
                      densepose: torch.Tensor | None = None, auto_crop: str = "auto") -> tuple[torch.Tensor, LeffaRun]:
        runtime = _checked_model(model)
        if POSE_MODEL in runtime.untrained:
            raise ValueError("this model has not been trained for pose transfer: load the released weights")
        actions = AppCallbacks(runtime.store)
        person, target = checked_images(person, "person"), checked_images(target, "target")
        densepose = None if densepose is None else checked_images(densepose, "densepose")
        count = batch_count((person, "person"), (target, "target"), (densepose, "densepose"))
        settings = _settings(runtime, steps, guidance, seed, num_images, ref_acceleration, record_attention)

        def pair(index: int) -> Generation:
            return actions.pose_transfer(
                image_at(person, index), image_at(target, index),
                densepose=None if densepose is None else image_at(densepose, index), auto_crop=auto_crop,
                settings=settings, progress=_comfy_progress(),
            )

        return _each_pair(count, pair)


class LeffaAttentionMap:
    """Where a pixel of a result looked in the reference: the inspector of the app, for one point."""

    CATEGORY = CATEGORY
    FUNCTION = "attention_map"
    RETURN_TYPES = ("IMAGE", "IMAGE", "IMAGE", "IMAGE", "IMAGE", "STRING")
    RETURN_NAMES = ("heatmap", "marked_result", "flow", "warped_reference", "layer_heatmaps", "caption")
    DESCRIPTION = (
        "For pixel (x, y) of a result made with 'record_attention' on: the attention over the reference as a "
        "heatmap, ringed where the pixel takes from (the flow at the point); the result with the point marked; "
        "the flow field as colours; the reference warped by it; one heatmap per layer (a batch, on one colour "
        "scale, each ringed at its own point); and the same in words. 'layer' and 'timestep': "
        "'trained' (the layers and timesteps the Leffa loss trains), 'all', or one recorded layer or timestep."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "run": ("LEFFA_RUN",),
                "x": ("INT", {"default": 0, "min": 0, "max": 16384, "tooltip": "pixel of the result, from the left"}),
                "y": ("INT", {"default": 0, "min": 0, "max": 16384, "tooltip": "pixel of the result, from the top"}),
            },
            "optional": {
                "layer": ("STRING", {"default": TRAINED}),
                "timestep": ("STRING", {"default": TRAINED}),
                "pair": ("INT", {"default": 0, "min": 0, "max": 4096,
                                 "tooltip": "which pair of the run's batch (its first image is the recorded one)"}),
            },
        }

    def attention_map(self, run: LeffaRun, x: int, y: int, layer: str = TRAINED, timestep: str = TRAINED,
                      pair: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]:
        if not isinstance(run, LeffaRun):
            raise ValueError(f"run must come from a Leffa try-on or pose-transfer node, got {type(run).__name__}")
        if not 0 <= pair < len(run.generations):
            raise ValueError(f"pair {pair} is not in the run, which made {len(run.generations)} (0 to "
                             f"{len(run.generations) - 1})")
        generation = run.generations[pair]
        if generation.trace is None:
            raise ValueError("this run was made without recording attention: turn 'record_attention' on in the "
                             "try-on or pose-transfer node and run it again")
        view = inspector_view(generation, (float(x), float(y)), layer.strip() or TRAINED, timestep.strip() or TRAINED)
        pictures = (view.heatmap, view.marked_result, view.flow, view.warped_reference)
        layers = to_images([picture for picture, _label in view.layer_heatmaps])
        caption = view.caption.replace("**", "").replace("heatmaps below", "heatmaps (layer_heatmaps)")
        return (*(to_images([picture]) for picture in pictures), layers, caption)


NODE_CLASS_MAPPINGS = {
    "LeffaModelLoader": LeffaModelLoader,
    "LeffaMakeMask": LeffaMakeMask,
    "LeffaTryOn": LeffaTryOn,
    "LeffaPoseTransfer": LeffaPoseTransfer,
    "LeffaAttentionMap": LeffaAttentionMap,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LeffaModelLoader": "Load Leffa model",
    "LeffaMakeMask": "Leffa try-on mask",
    "LeffaTryOn": "Leffa virtual try-on",
    "LeffaPoseTransfer": "Leffa pose transfer",
    "LeffaAttentionMap": "Leffa attention map",
}
