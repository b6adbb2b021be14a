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
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from leffa.weights import MissingWeightsError, download_command, ensure_files
from leffa.app.framing import Framing
from leffa.app.models import POSE_MODEL, RELEASED_MODELS, TRYON_MODEL_TYPES, ModelSpec, model_spec
from leffa.common import resolve_device
from leffa.core.model import LeffaModel, resolve_dtype
from leffa.core.pipeline import LeffaPipeline, StepCallback
from leffa.core.memory import LASTING_LEVELS, OFFLOADING_LEVELS, apply_memory_level, choose_memory_level
from leffa.core.settings import DEFAULT_SAMPLING, SamplingSettings
from leffa.core.speed import SpeedOptions, apply_speed_options
from leffa.inspect.trace import Trace, trace
from leffa.core.transforms import Letterbox, letterbox
from preprocess.garment import prepare_garment
from preprocess.images import ImageSource, load_image, open_image
from preprocess.crop import Crop, check_auto_crop, choose_crop, crop_preview
from preprocess.mask_adjust import NO_ADJUSTMENTS, MaskAdjustments, MaskRegions, adjust_mask, mask_regions
from preprocess.masks import CATEGORIES, agnostic_mask, binarize_mask

#: DensePose renders are black where there is no person (channel values at most this).
_DENSEPOSE_BACKGROUND = 8
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
    Each call asks for a memory level (:mod:`leffa.core.memory`, ``SamplingSettings.memory``); the store puts
    the model at it, loading the weights again to leave a level that changed them, and never while a call
    runs on the model. ``speed`` is applied to each Leffa model loaded from ``ckpt_dir``
    (:mod:`leffa.core.speed`). ``preprocessing=False`` (the built-in demo model) has no parsing, OpenPose or
    DensePose models: asking for one raises :class:`PreprocessingUnavailableError` instead of looking for
    weights.
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
        self._loaded: dict[str, Any] = {f"leffa:{key}": LeffaPipeline(model) for key, model in (loaded or {}).items()}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_use: dict[int, int] = {}

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

    def _load(self, spec: ModelSpec) -> LeffaPipeline:
        """The model of ``spec`` from its weights, on the CPU (a memory level places it)."""
        if isinstance(spec.weights, Path):
            path = spec.weights
        else:
            path = ensure_files(spec.weights, self.ckpt_dir, download=self.download)[spec.weights]
        model = LeffaModel.from_pretrained(path, device="cpu", dtype=self.dtype)
        if self.speed is not None:
            apply_speed_options(model, self.speed, device=self.device)
        return LeffaPipeline(model)

    def pipeline(
        self, model_type: str, status: StatusCallback | None = None, *, memory: str = "none",
        image_size: tuple[int, int] | None = None, batch: int = 1,
    ) -> LeffaPipeline:
        """The pipeline of ``model_type`` at memory level ``memory`` on the store's device (``auto``: chosen
        for ``batch`` images of ``image_size``, width × height, default the model's frame), loading the model
        from its entry's weights on first use. It waits for calls running on the model to end before it
        changes the level (a call holds the model through :meth:`serving`)."""
        spec = self.spec(model_type)
        key = f"leffa:{model_type}"
        self._get(key, lambda: self._load(spec), status)
        with self._idle:
            return self._at_level(key, spec, status, memory, image_size, batch)

    @contextmanager
    def serving(
        self, model_type: str, status: StatusCallback | None = None, *, memory: str = "none",
        image_size: tuple[int, int] | None = None, batch: int = 1,
    ) -> Iterator[LeffaPipeline]:
        """One call's use of :meth:`pipeline`: the model is put at ``memory`` and kept there until the call
        ends (other calls asking for another level wait; calls at the same level share the model)."""
        spec = self.spec(model_type)
        key = f"leffa:{model_type}"
        self._get(key, lambda: self._load(spec), status)
        with self._idle:
            pipe = self._at_level(key, spec, status, memory, image_size, batch)
            self._in_use[id(pipe.model)] = self._in_use.get(id(pipe.model), 0) + 1
        try:
            yield pipe
        finally:
            with self._idle:
                self._in_use[id(pipe.model)] -= 1
                self._idle.notify_all()

    def _at_level(
        self, key: str, spec: ModelSpec, status: StatusCallback | None, memory: str,
        image_size: tuple[int, int] | None, batch: int,
    ) -> LeffaPipeline:
        """Under the store's lock: the pipeline of ``key`` at ``memory`` (resolving ``auto``)."""
        pipe = self._loaded[key]
        if memory == "auto":
            width, height = image_size or spec.size
            factor = pipe.model.vae_scale_factor
            memory = choose_memory_level(pipe.model, self.device, (height // factor) * (width // factor), 2 * batch)
        if pipe.model.memory_level == memory and (memory in OFFLOADING_LEVELS or pipe.model.device == self.device):
            return pipe
        self._idle.wait_for(lambda: not self._in_use.get(id(self._loaded[key].model), 0))
        pipe = self._loaded[key]
        if pipe.model.memory_level in LASTING_LEVELS and pipe.model.memory_level != memory:
            if status is not None:
                status(f"loading {key} again to leave memory level {pipe.model.memory_level}")
            pipe = self._loaded[key] = self._load(spec)
        apply_memory_level(pipe.model, memory, self.device)
        return pipe

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
        """Which models are loaded, and where (for the app's status note), with each Leffa model's memory
        level (so ``auto``'s choice shows)."""
        names = [
            f"{name} (memory: {item.model.memory_level})" if isinstance(item, LeffaPipeline) else name
            for name, item in sorted(self._loaded.items())
        ]
        loaded = ", ".join(names) if names else "none yet (models load on first use)"
        return f"device {self.device}, {str(self.dtype).removeprefix('torch.')}; loaded: {loaded}"


@dataclass
class Prepared:
    """Model-size inputs of one generation plus what the user may want to see or edit.

    ``framing`` says how the photo became the frame (auto-crop, letterbox) and takes results back;
    ``base_mask`` is the mask before ``adjustments`` (:mod:`preprocess.mask_adjust`), with the ``regions``
    its keep and cover options need (from the parse; ``None`` for a supplied mask); ``notes`` tell the user
    what was clipped, cropped or could not be done."""

    person: Image.Image
    reference: Image.Image
    mask: Image.Image
    densepose: Image.Image
    framing: Framing
    model_type: str
    parse: np.ndarray | None = None
    keypoints: np.ndarray | None = None
    previews: dict[str, Image.Image] = field(default_factory=dict)
    category: str = "upper_body"
    base_mask: np.ndarray | None = None
    regions: MaskRegions | None = None
    adjustments: MaskAdjustments = NO_ADJUSTMENTS
    notes: list[str] = field(default_factory=list)
    crop_note: str = ""

    @property
    def box(self) -> Letterbox:
        return self.framing.box

    def with_mask(self, mask: ImageSource) -> Prepared:
        """The same inputs with a user-edited mask (any size/mode, binarised at 0.5)."""
        array = binarize_mask(_as_mask_input(mask), self.person.size)
        edited = Image.fromarray(array.astype(np.uint8) * 255)
        return replace(self, mask=edited, previews={**self.previews, "mask": edited})

    def adjusted(self, adjustments: MaskAdjustments) -> Prepared:
        """The same inputs with the mask made from ``base_mask`` by ``adjustments`` (notes replaced by the
        adjustment's)."""
        if self.base_mask is None:
            raise ValueError("this input has no mask to adjust (pose transfer generates the whole image)")
        mask, notes = adjust_mask(self.base_mask, adjustments, self.regions, self.category)
        image = Image.fromarray(mask.astype(np.uint8) * 255)
        crop = [self.crop_note] if self.crop_note else []
        return replace(self, mask=image, adjustments=adjustments, notes=crop + notes + _cut_note(self.framing, image),
                       previews={**self.previews, "mask": image})

    def back(self, raw: Image.Image) -> Image.Image:
        """A model-size result in the photo's framing (pasted into the photo after an auto-crop)."""
        return self.framing.back(raw, self.mask if self.base_mask is not None else None)


@dataclass
class Generation:
    """Results cropped back to the photo's framing (``images``; one per ``num_images``), the raw model-size
    images, each one's seed and how to reproduce them; ``image``, ``raw`` and ``seed`` are the first's.

    ``made_at`` (local time) tells the user which run the inspector shows; ``memory_level`` is the level it
    ran at (what ``auto`` chose)."""

    images: list[Image.Image]
    raws: list[Image.Image]
    seeds: list[int]
    prepared: Prepared
    trace: Trace | None = None
    made_at: datetime = field(default_factory=datetime.now)
    memory_level: str = "none"

    @property
    def image(self) -> Image.Image:
        return self.images[0]

    @property
    def raw(self) -> Image.Image:
        return self.raws[0]

    @property
    def seed(self) -> int:
        return self.seeds[0]


def _as_mask_input(mask: ImageSource) -> Image.Image | np.ndarray:
    if isinstance(mask, (str, Path)):
        return open_image(mask, min_side=1)
    return mask


def _cut_note(framing: Framing, mask: Image.Image) -> list[str]:
    if not framing.cut_through(mask):
        return []
    return ["auto-crop: the mask reaches the edge of the cut, where the result ends in a straight line; shrink "
            "the mask there or turn auto-crop off"]


def _mask_image(mask: ImageSource) -> Image.Image:
    """A supplied mask (file, image or array) as a black-and-white image of its own size."""
    source = _as_mask_input(mask)
    size = source.size if isinstance(source, Image.Image) else (source.shape[1], source.shape[0])
    return Image.fromarray(binarize_mask(source, size).astype(np.uint8) * 255)


def _person_pixels(densepose: Image.Image) -> np.ndarray:
    """Where a DensePose render shows a person (its background is black)."""
    return np.asarray(densepose.convert("RGB")).max(axis=2) > _DENSEPOSE_BACKGROUND


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
        """Sample ``settings.num_images`` images with ``settings``; ``settings.record_attention`` also records
        attention and flows of the first for the inspector (the others follow in one batched pass)."""
        inputs = (prepared.person, prepared.reference, prepared.mask, prepared.densepose)
        recorded = None
        with self.store.serving(
            prepared.model_type, status, memory=settings.memory, image_size=prepared.person.size,
            batch=settings.num_images,
        ) as pipe:
            if settings.record_attention:
                recorded = trace(pipe, *inputs, replace(settings, num_images=1), callback=callback, output_type="pil")
                raws, seeds = list(recorded.output.images), list(recorded.output.seeds)
                if settings.num_images > 1:
                    rest = replace(settings, num_images=settings.num_images - 1, seed=seeds[0] + 1)
                    output = pipe.sample(*inputs, rest, callback=callback, output_type="pil")
                    raws, seeds = raws + list(output.images), seeds + list(output.seeds)
            else:
                output = pipe.sample(*inputs, settings, callback=callback, output_type="pil")
                raws, seeds = list(output.images), list(output.seeds)
        return Generation(
            [prepared.back(raw) for raw in raws], raws, seeds, prepared, recorded,
            memory_level=pipe.model.memory_level,
        )


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
        adjustments: MaskAdjustments = NO_ADJUSTMENTS,
        auto_crop: str = "auto",
        size: tuple[int, int] | None = None,
        status: StatusCallback | None = None,
    ) -> Prepared:
        """Letterbox both photos to the model size (or ``size``, width × height), cut the person photo to the
        person first when ``auto_crop`` says so (:mod:`preprocess.crop`), make the mask (adjusted by
        ``adjustments``) and DensePose (unless supplied; a supplied one of the photo's size is framed like
        the photo)."""
        spec = model_spec(self.store.models, model_type, TRYON_MODEL_TYPES)
        if category not in CATEGORIES:
            raise ValueError(f"unknown garment category {category!r}; choose one of {', '.join(CATEGORIES)}")
        check_auto_crop(auto_crop)
        size = size or self.store.size(model_type)
        photo = load_image(person)
        garment_source = open_image(garment)
        if prepare_garment_png:
            garment_source = prepare_garment(garment_source, size)
        garment_image, _ = letterbox(load_image(garment_source), size)
        supplied_mask = None if mask is None else _mask_image(mask)
        supplied_dense = None if densepose is None else load_image(densepose, min_side=1)
        whole = self._frame(photo, None, garment_image, spec, category, supplied_mask, supplied_dense, status)
        crop, note = self._crop(whole, photo, size, auto_crop, supplied_mask, supplied_dense)
        prepared = whole
        if crop is not None:
            prepared = self._frame(photo, crop, garment_image, spec, category, supplied_mask, supplied_dense, status)
            prepared.previews["crop"] = crop_preview(photo, crop)
        prepared.crop_note = note
        prepared.notes = ([note] if note else []) + _cut_note(prepared.framing, prepared.mask)
        return prepared if adjustments.changes_nothing else prepared.adjusted(adjustments)

    def _frame(
        self, photo: Image.Image, crop: Crop | None, garment: Image.Image, spec: ModelSpec, category: str,
        mask: Image.Image | None, densepose: Image.Image | None, status: StatusCallback | None,
    ) -> Prepared:
        """The inputs of ``photo`` (cut to ``crop``) in the model frame: mask and DensePose made or framed."""
        person_image, framing = Framing.make(photo, garment.size, crop)
        previews: dict[str, Image.Image] = {}
        parse = keypoints = regions = None
        if mask is None:
            parse, keypoints, previews = self._parse_and_pose(person_image, status)
            region = agnostic_mask(parse, keypoints, category, spec.mask_variant)
            base = np.asarray(_resize_to(Image.fromarray(region.astype(np.uint8) * 255), garment.size)) > 127
            regions = mask_regions(parse, keypoints, garment.size)
        else:
            base = binarize_mask(framing.supplied(mask), garment.size)
        if densepose is None:
            dense_image = self._densepose(person_image, spec.densepose_render, status)
        else:
            dense_image = framing.supplied(densepose)
        mask_image = Image.fromarray(base.astype(np.uint8) * 255)
        previews.update(mask=mask_image, densepose=dense_image)
        return Prepared(
            person_image, garment, mask_image, dense_image, framing, spec.model_type, parse, keypoints, previews,
            category, base, regions,
        )

    @staticmethod
    def _crop(
        whole: Prepared, photo: Image.Image, size: tuple[int, int], mode: str, mask: Image.Image | None,
        densepose: Image.Image | None,
    ) -> tuple[Crop | None, str]:
        """The crop around the person of the whole photo's preparation (its parse, else its DensePose)."""
        if mode == "off":
            return None, ""
        supplied = [image for image in (mask, densepose) if image is not None]
        if not all(whole.framing.in_photo_frame(image) for image in supplied):
            note = "auto-crop: off, because the supplied mask or DensePose is not of the photo's size"
            return None, note if mode == "on" else ""
        if whole.parse is not None:
            person = _resize_to(Image.fromarray((whole.parse > 0).astype(np.uint8) * 255), size)
            return choose_crop(whole.framing.photo_box(np.asarray(person) > 127), photo.size, size, mode)
        return choose_crop(whole.framing.photo_box(_person_pixels(whole.densepose)), photo.size, size, mode)

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
            "model_type", "category", "mask", "densepose", "prepare_garment_png", "adjustments", "auto_crop",
            "size", "status",
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
        auto_crop: str = "auto",
        size: tuple[int, int] | None = None,
        status: StatusCallback | None = None,
    ) -> Prepared:
        """Letterbox both photos (to the model size or ``size``, width × height), the target cut to its person
        first when ``auto_crop`` says so (the result is then that cut); DensePose IUV of the target pose's
        top-scoring person (unless supplied; one of the target photo's size is framed like it)."""
        check_auto_crop(auto_crop)
        size = size or self.store.size(POSE_MODEL)
        reference, _ = letterbox(load_image(person), size)
        photo = load_image(target_pose)
        supplied = None if densepose is None else load_image(densepose, min_side=1)
        target, framing = Framing.make(photo, size)
        dense_image = self._target_densepose(target, framing, supplied, status)
        crop, note = None, ""
        if auto_crop != "off":
            if supplied is not None and not framing.in_photo_frame(supplied):
                note = "auto-crop: off, because the supplied DensePose is not of the target photo's size" if auto_crop == "on" else ""
            else:
                crop, note = choose_crop(framing.photo_box(_person_pixels(dense_image)), photo.size, size, auto_crop)
        previews: dict[str, Image.Image] = {}
        if crop is not None:
            target, framing = Framing.make(photo, size, crop)
            dense_image = self._target_densepose(target, framing, supplied, status)
            previews["crop"] = crop_preview(photo, crop)
            note = note.replace("pasted back into the photo", "the result is that cut of the target photo")
        previews["densepose"] = dense_image
        mask = Image.new("L", size, 255)
        return Prepared(target, reference, mask, dense_image, framing, POSE_MODEL, previews=previews,
                        notes=[note] if note else [])

    def _target_densepose(
        self, target: Image.Image, framing: Framing, supplied: Image.Image | None, status: StatusCallback | None
    ) -> Image.Image:
        from preprocess.densepose import render_iuv

        if supplied is not None:
            return framing.supplied(supplied)
        result = self.store.densepose(status).predict(target).require_person()
        return Image.fromarray(render_iuv(result))

    def __call__(self, person: ImageSource, target_pose: ImageSource, **options) -> Generation:
        prepare_keys = {"densepose", "auto_crop", "size", "status"}
        prepared = self.prepare(person, target_pose, **{k: v for k, v in options.items() if k in prepare_keys})
        rest = {k: v for k, v in options.items() if k not in prepare_keys}
        return self.generate(prepared, status=options.get("status"), **rest)
