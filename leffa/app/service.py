"""Photo in, image out: the preprocessing → generation chain behind the app and the command line.

:class:`ModelStore` loads every model lazily, once, and only when a task needs it. :class:`TryOn` and
:class:`PoseTransfer` split the work into ``prepare`` (letterbox, parse, keypoints, mask, DensePose; any of
the mask or DensePose can be supplied by the user instead) and ``generate`` (sampling, optional attention
trace, crop back to the photo's framing), so a user can edit the mask in between.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from leffa.weights import MissingWeightsError, download_command, ensure_files
from leffa.app.models import POSE_MODEL, RELEASED_MODELS, TRYON_MODEL_TYPES, ModelSpec, model_spec
from leffa.common import resolve_device
from leffa.core.model import LeffaModel, resolve_dtype
from leffa.core.pipeline import LeffaPipeline, StepCallback
from leffa.core.settings import DEFAULT_SAMPLING, SamplingSettings
from leffa.core.speed import SpeedOptions, apply_speed_options
from leffa.inspect.trace import Trace, trace
from leffa.core.transforms import Letterbox, crop_back, letterbox
from preprocess.garment import prepare_garment
from preprocess.images import ImageSource, load_image, open_image
from preprocess.masks import CATEGORIES, agnostic_mask, binarize_mask

#: Reports loading progress to the caller (e.g. the app's progress bar).
StatusCallback = Callable[[str], None]


class PreprocessingUnavailableError(MissingWeightsError):
    """The model in use has no preprocessing models (the built-in demo model), so a photo needs its own mask
    and DensePose."""


def no_preprocessing_message(ckpt_dir: str | Path = "ckpts") -> str:
    """What is true when the built-in demo model is asked to preprocess a photo, and the two ways on."""
    return (
        "the built-in demo model cannot preprocess photos: it has no human parsing, OpenPose or DensePose "
        "model to make a mask and DensePose from a photo.\n"
        "Give it your own: under 'Your own mask / DensePose' on the page (try-on: both; pose transfer: the "
        "target's DensePose), or --mask and --densepose on the command line; the examples bring theirs.\n"
        "Or use the released models, which include the preprocessing ones (try-on: about 8 GB):\n"
        f"  {download_command('virtual_tryon', ckpt_dir)}\n"
        "and start without --tiny."
    )


class ModelStore:
    """Lazily loaded models shared by the services; each is loaded at most once.

    ``models`` is the registry of servable models (:mod:`leffa.app.models`; default the released ones);
    ``loaded`` pre-seeds Leffa models by model type (the built-in demo models, test models), others load
    from their entry's weights in ``ckpt_dir`` (downloaded there on first use when ``download`` is true).
    ``offload`` keeps the Leffa models on the CPU between calls and moves the one in use to ``device`` for
    the length of a generation (for devices short of memory). ``speed`` is applied to each Leffa model loaded
    from ``ckpt_dir`` (:mod:`leffa.core.speed`). ``preprocessing=False`` (the built-in demo model) has no
    parsing, OpenPose or DensePose models: asking for one raises :class:`PreprocessingUnavailableError`
    instead of looking for weights.
    """

    def __init__(
        self,
        ckpt_dir: str | Path | None = None,
        *,
        models: Mapping[str, ModelSpec] = RELEASED_MODELS,
        device: str | None = "auto",
        dtype: str | None = None,
        download: bool = False,
        loaded: Mapping[str, LeffaModel] | None = None,
        offload: bool = False,
        speed: SpeedOptions | None = None,
        preprocessing: bool = True,
    ) -> None:
        self.ckpt_dir = ckpt_dir
        self.models = dict(models)
        self.preprocessing = preprocessing
        self.speed = speed
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.download = download
        self.offload = offload
        self._loaded: dict[str, Any] = {f"leffa:{key}": LeffaPipeline(model) for key, model in (loaded or {}).items()}
        self._lock = threading.Lock()

    def _preprocessor(self, key: str, build: Callable[[], Any], status: StatusCallback | None) -> Any:
        if not self.preprocessing:
            raise PreprocessingUnavailableError(no_preprocessing_message())
        return self._get(key, build, status)

    def _get(self, key: str, build: Callable[[], Any], status: StatusCallback | None) -> Any:
        with self._lock:
            if key not in self._loaded:
                if status is not None:
                    status(f"loading {key} on {self.device}")
                self._loaded[key] = build()
            return self._loaded[key]

    def spec(self, model_type: str) -> ModelSpec:
        """The registry entry of ``model_type`` (a ``ValueError`` naming the choices for an unknown one)."""
        return model_spec(self.models, model_type)

    def size(self, model_type: str) -> tuple[int, int]:
        """The frame (width, height) of ``model_type``."""
        return self.spec(model_type).size

    def pipeline(self, model_type: str, status: StatusCallback | None = None) -> LeffaPipeline:
        """The loaded pipeline of ``model_type`` (loading it from its entry's weights on first use)."""
        spec = self.spec(model_type)

        def build() -> LeffaPipeline:
            if isinstance(spec.weights, Path):
                path = spec.weights
            else:
                path = ensure_files(spec.weights, self.ckpt_dir, download=self.download)[spec.weights]
            device = torch.device("cpu") if self.offload else self.device
            model = LeffaModel.from_pretrained(path, device=device, dtype=self.dtype)
            if self.speed is not None:
                apply_speed_options(model, self.speed, device=self.device)
            return LeffaPipeline(model)

        return self._get(f"leffa:{model_type}", build, status)

    @contextmanager
    def placed(self, pipe: LeffaPipeline) -> Iterator[LeffaPipeline]:
        """The pipeline with its model on ``device``; with ``offload`` it goes back to the CPU afterwards."""
        if not self.offload:
            yield pipe
            return
        pipe.model.to(self.device)
        try:
            yield pipe
        finally:
            pipe.model.to("cpu")
            pipe.clear_cache()

    def parser(self, status: StatusCallback | None = None):
        from preprocess.parsing import HumanParser

        def build():
            files = ensure_files("parsing", self.ckpt_dir, download=self.download)
            device = "cuda" if self.device.type == "cuda" else "cpu"
            return HumanParser(files["parsing_atr"], files["parsing_lip"], device=device)

        return self._preprocessor("human parsing", build, status)

    def openpose(self, status: StatusCallback | None = None):
        from preprocess.openpose import OpenPoseDetector

        def build():
            files = ensure_files("openpose", self.ckpt_dir, download=self.download)
            return OpenPoseDetector(files["openpose"], device=str(self.device))

        return self._preprocessor("openpose", build, status)

    def densepose(self, status: StatusCallback | None = None):
        from preprocess.densepose import DensePoseModel

        def build():
            files = ensure_files("densepose", self.ckpt_dir, download=self.download)
            return DensePoseModel.from_checkpoint(files["densepose_weights"], device=self.device)

        return self._preprocessor("densepose", build, status)

    def describe(self) -> str:
        """Which models are loaded, and where (for the app's status note)."""
        names = sorted(self._loaded)
        loaded = ", ".join(names) if names else "none yet (models load on first use)"
        offload = " (Leffa models wait on the CPU between runs)" if self.offload else ""
        return f"device {self.device}{offload}, {str(self.dtype).removeprefix('torch.')}; loaded: {loaded}"


@dataclass
class Prepared:
    """Model-size inputs of one generation plus what the user may want to see or edit."""

    person: Image.Image
    reference: Image.Image
    mask: Image.Image
    densepose: Image.Image
    box: Letterbox
    model_type: str
    parse: np.ndarray | None = None
    keypoints: np.ndarray | None = None
    previews: dict[str, Image.Image] = field(default_factory=dict)

    def with_mask(self, mask: ImageSource) -> Prepared:
        """The same inputs with a user-edited mask (any size/mode, binarised at 0.5)."""
        array = binarize_mask(_as_mask_input(mask), self.person.size)
        edited = Image.fromarray(array.astype(np.uint8) * 255)
        return Prepared(**{**self.__dict__, "mask": edited, "previews": {**self.previews, "mask": edited}})


@dataclass
class Generation:
    """A result cropped back to the photo's framing, the raw model-size image, and how to reproduce it.

    ``made_at`` (local time) tells the user which run the inspector shows."""

    image: Image.Image
    raw: Image.Image
    seed: int
    prepared: Prepared
    trace: Trace | None = None
    made_at: datetime = field(default_factory=datetime.now)


def _as_mask_input(mask: ImageSource) -> Image.Image | np.ndarray:
    if isinstance(mask, (str, Path)):
        return open_image(mask, min_side=1)
    return mask


def _resize_to(image: Image.Image, size: tuple[int, int], resample=Image.Resampling.NEAREST) -> Image.Image:
    return image if image.size == size else image.resize(size, resample)


class _Generator:
    """Shared sampling step of both services."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store

    def generate(
        self,
        prepared: Prepared,
        settings: SamplingSettings = DEFAULT_SAMPLING,
        *,
        callback: StepCallback | None = None,
        status: StatusCallback | None = None,
    ) -> Generation:
        """Sample an image with ``settings``; ``settings.record_attention`` also records attention and flows
        for the inspector."""
        pipe = self.store.pipeline(prepared.model_type, status)
        inputs = (prepared.person, prepared.reference, prepared.mask, prepared.densepose)
        recorded = None
        with self.store.placed(pipe):
            if settings.record_attention:
                recorded = trace(pipe, *inputs, settings, callback=callback, output_type="pil")
                output = recorded.output
            else:
                output = pipe.sample(*inputs, settings, callback=callback, output_type="pil")
        raw = output[0]
        return Generation(crop_back(raw, prepared.box), raw, output.seed, prepared, recorded)


class TryOn(_Generator):
    """Virtual try-on: person photo + garment photo → the person wearing the garment."""

    def prepare(
        self,
        person: ImageSource,
        garment: ImageSource,
        *,
        model_type: str = "viton_hd",
        category: str = "upper_body",
        mask: ImageSource | None = None,
        densepose: ImageSource | None = None,
        prepare_garment_png: bool = False,
        mask_dilate: int = 0,
        size: tuple[int, int] | None = None,
        status: StatusCallback | None = None,
    ) -> Prepared:
        """Letterbox both photos to the model size (or ``size``, width × height) and make the mask and
        DensePose (unless supplied)."""
        spec = model_spec(self.store.models, model_type, TRYON_MODEL_TYPES)
        if category not in CATEGORIES:
            raise ValueError(f"unknown garment category {category!r}; choose one of {', '.join(CATEGORIES)}")
        variant, render = spec.mask_variant, spec.densepose_render
        size = size or self.store.size(model_type)
        person_image, box = letterbox(load_image(person), size)
        garment_source = open_image(garment)
        if prepare_garment_png:
            garment_source = prepare_garment(garment_source, size)
        garment_image, _ = letterbox(load_image(garment_source), size)
        previews: dict[str, Image.Image] = {}
        parse = keypoints = None
        if mask is None:
            parse, keypoints, previews = self._parse_and_pose(person_image, status)
            region = agnostic_mask(parse, keypoints, category, variant, dilate=mask_dilate)
            mask_image = _resize_to(Image.fromarray(region.astype(np.uint8) * 255), size)
        else:
            mask_image = Image.fromarray(binarize_mask(_as_mask_input(mask), size, dilate=mask_dilate).astype(np.uint8) * 255)
        if densepose is None:
            dense_image = self._densepose(person_image, render, status)
        else:
            dense_image = _resize_to(load_image(densepose, min_side=1), size)
        previews.update(mask=mask_image, densepose=dense_image)
        return Prepared(person_image, garment_image, mask_image, dense_image, box, model_type, parse, keypoints, previews)

    def _parse_and_pose(self, person: Image.Image, status: StatusCallback | None):
        from preprocess.openpose import draw_keypoints

        parse = self.store.parser(status)(person)
        pose = self.store.openpose(status)(person)
        previews = {"parse": parse.preview(), "keypoints": draw_keypoints(person, pose.keypoints)}
        return parse.labels, pose.keypoints, previews

    def _densepose(self, person: Image.Image, render: str, status: StatusCallback | None) -> Image.Image:
        from preprocess.densepose import render_dresscode, render_segmentation

        result = self.store.densepose(status).predict(person).require_person()
        renderer = render_segmentation if render == "segmentation" else render_dresscode
        return Image.fromarray(renderer(result))

    def __call__(self, person: ImageSource, garment: ImageSource, **options) -> Generation:
        """``prepare`` then ``generate`` in one call (options are split between the two)."""
        prepare_keys = {
            "model_type", "category", "mask", "densepose", "prepare_garment_png", "mask_dilate", "size",
            "status",
        }
        prepared = self.prepare(person, garment, **{k: v for k, v in options.items() if k in prepare_keys})
        status = options.get("status")
        rest = {k: v for k, v in options.items() if k not in prepare_keys}
        return self.generate(prepared, status=status, **rest)


class PoseTransfer(_Generator):
    """Pose transfer: person photo (appearance) + target-pose photo → the person in the target pose."""

    def prepare(
        self,
        person: ImageSource,
        target_pose: ImageSource,
        *,
        densepose: ImageSource | None = None,
        size: tuple[int, int] | None = None,
        status: StatusCallback | None = None,
    ) -> Prepared:
        """Letterbox both photos (to the model size or ``size``, width × height); DensePose IUV of the target
        pose's top-scoring person (unless supplied)."""
        from preprocess.densepose import render_iuv

        size = size or self.store.size(POSE_MODEL)
        reference, _ = letterbox(load_image(person), size)
        target, box = letterbox(load_image(target_pose), size)
        if densepose is None:
            result = self.store.densepose(status).predict(target).require_person()
            dense_image = Image.fromarray(render_iuv(result))
        else:
            dense_image = _resize_to(load_image(densepose, min_side=1), size)
        mask = Image.new("L", size, 255)
        return Prepared(target, reference, mask, dense_image, box, POSE_MODEL, previews={"densepose": dense_image})

    def __call__(self, person: ImageSource, target_pose: ImageSource, **options) -> Generation:
        prepare_keys = {"densepose", "size", "status"}
        prepared = self.prepare(person, target_pose, **{k: v for k, v in options.items() if k in prepare_keys})
        rest = {k: v for k, v in options.items() if k not in prepare_keys}
        return self.generate(prepared, status=options.get("status"), **rest)
