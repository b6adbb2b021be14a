"""What the app's buttons do, on plain images and numbers. No Gradio here, so it is tested without a server;
the command line (``python -m leffa``) runs the same actions.

Errors are the library's own (``ValueError`` and its subclasses for bad input, ``MissingWeightsError`` for
absent weights); ``app.py`` shows their messages to the user.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from leffa.app.models import POSE_MODEL, RESOLUTIONS, TRYON_MODEL_TYPES, frame_size, model_spec
from leffa.app.service import Generation, ModelStore, PoseTransfer, Prepared, TryOn
from leffa.app.inspector import TRAINED, InspectorView, inspector_view, layer_choices, timestep_choices
from leffa.app.previews import mask_layer
from leffa.core.settings import DEFAULT_SAMPLING, SamplingSettings, checked_flag, checked_number
from leffa.inspect.visualize import color_wheel_legend
from preprocess.images import ImageSource, open_image
from preprocess.mask_adjust import NO_ADJUSTMENTS, MaskAdjustments

#: Reports progress: (fraction done in [0, 1], what is happening).
ProgressCallback = Callable[[float, str], None]
#: Editor layer pixels at least this opaque count as masked (brush edges are anti-aliased).
MASK_ALPHA_THRESHOLD = 32
_NO_TRACE = (
    "this result was generated without recording attention; tick 'Record attention for the inspector' "
    "and generate again"
)


@dataclass(frozen=True)
class TryOnInputs:
    """Everything the try-on preparation depends on: photos, optional uploads and options; ``adjustments``
    change the mask made from them (live on the page, so they are not part of the fingerprint)."""

    person: ImageSource | None
    garment: ImageSource | None
    model_type: str = "viton_hd"
    category: str = "upper_body"
    mask: ImageSource | None = None
    densepose: ImageSource | None = None
    prepare_garment_png: bool = False
    resolution: str = "full"
    auto_crop: str = "auto"
    adjustments: MaskAdjustments = NO_ADJUSTMENTS

    def fingerprint(self) -> str:
        """A digest of all but the adjustments, to tell whether a prepared mask still belongs to these inputs."""
        return _fingerprint(*(getattr(self, item.name) for item in fields(self) if item.name != "adjustments"))


@dataclass(frozen=True)
class MaskStep:
    """Inputs prepared by "Make mask", with a fingerprint of what they were made from, and digests of the
    masks shown for them so far (the automatic one and each adjustment of it), to tell the user's strokes
    from an editor that has not caught up with the latest adjustment yet."""

    prepared: Prepared
    fingerprint: str
    shown: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "shown", (*self.shown, _mask_digest(np.asarray(self.prepared.mask) > 127))[-16:])


def checked_point(point: Any, names: tuple[str, str] = ("x", "y")) -> tuple[float, float]:
    """A clicked point as two finite numbers; a ``ValueError`` naming the coordinate (``x``/``y``) else."""
    if not isinstance(point, (tuple, list)) or len(point) != 2:
        raise ValueError(f"a point must be a pair of numbers ({', '.join(names)}), got {point!r}")
    return tuple(float(checked_number(value, name)) for value, name in zip(point, names))


def _require(image: ImageSource | None, what: str) -> ImageSource:
    if image is None:
        raise ValueError(f"no {what}: upload one (or pick an example)")
    return image


def _fingerprint(*parts: Any) -> str:
    """A digest of images (by their pixels), image files (by path, size and modification time) and other
    values (by their repr)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, (str, Path)) and Path(part).is_file():
            stat = Path(part).stat()
            part = (str(part), stat.st_size, stat.st_mtime_ns)
        elif isinstance(part, Image.Image):
            part = np.asarray(part)
        if isinstance(part, np.ndarray):
            digest.update(f"{part.shape}{part.dtype}".encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(repr(part).encode())
        digest.update(b"|")
    return digest.hexdigest()


class _Progress:
    """One progress bar: preprocessing reports what it does at 0 %, then the bar follows the denoising
    steps (step 10 of 30 is 33 %), so the percentage and the step count shown beside it agree."""

    def __init__(self, report: ProgressCallback | None) -> None:
        self.report = report
        self.fraction = 0.0

    def __call__(self, fraction: float, text: str) -> None:
        self.fraction = fraction
        if self.report is not None:
            self.report(fraction, text)

    def status(self, text: str) -> None:
        self(self.fraction, text)

    def step(self, index: int, total: int, _timestep: int) -> None:
        self(index / total, f"denoising step {index}/{total}")


def editor_value(prepared: Prepared, size: tuple[int, int] | None = None) -> dict[str, Any]:
    """The mask editor's value: the person with the mask as a translucent layer to paint on.

    ``size`` (width, height) scales both for display (the edited mask is scaled back by ``with_mask``).
    """
    size = size or prepared.person.size
    person = np.asarray(prepared.person.convert("RGB").resize(size, Image.Resampling.BICUBIC))
    return {"background": person, "layers": [mask_layer(prepared.mask, size)], "composite": None}


def user_painted(step: MaskStep, edited: np.ndarray | None) -> bool:
    """Whether the editor's mask (``edited``) is none of the masks shown for ``step``: the user has painted."""
    if edited is None:
        return False
    mask = Image.fromarray(edited.astype(np.uint8) * 255).resize(step.prepared.mask.size, Image.Resampling.NEAREST)
    return _mask_digest(np.asarray(mask) > 127) not in step.shown


def _mask_digest(mask: np.ndarray) -> str:
    return hashlib.sha256(np.packbits(mask).tobytes() + str(mask.shape).encode()).hexdigest()


def editor_brush_size(size: tuple[int, int]) -> int:
    """The mask editor's default brush (and eraser) width in mask pixels for an editor of ``size`` (width,
    height): a sixteenth of the short side (48 px at 768×1024, 6 at the demo model's 96×128), wide enough to
    cover a sleeve in a few strokes; at least 4."""
    return max(4, min(size) // 16)


def mask_from_editor(value: Mapping[str, Any] | None) -> np.ndarray | None:
    """The painted mask (bool, H × W) from an editor value: every layer pixel that is opaque enough.

    Layers are RGBA arrays or image files (read by ``preprocess.images``, which names a bad file);
    ``None`` when there is nothing to read (no editor value or no layers).
    """
    if not value:
        return None
    if not isinstance(value, Mapping) or not isinstance(value.get("layers", []), (list, tuple)):
        raise ValueError(
            "the mask editor value must be a dict with a list of RGBA 'layers'; "
            f"got {type(value).__name__}: {value!r:.80}"
        )
    if not value.get("layers"):
        return None
    masks = []
    for layer in value["layers"]:
        array = np.asarray(open_image(layer, min_side=1) if isinstance(layer, (str, Path)) else layer)
        if array.ndim != 3 or array.shape[2] != 4:
            raise ValueError(f"mask editor layers must be RGBA images, got shape {array.shape}")
        masks.append(array[..., 3] >= MASK_ALPHA_THRESHOLD)
    shapes = {mask.shape for mask in masks}
    if len(shapes) != 1:
        raise ValueError(f"mask editor layers differ in size: {sorted(shapes)}")
    return np.logical_or.reduce(masks)


def category_note(model_type: str, category: str) -> str:
    """A one-line note for the try-on tab: empty unless the VITON-HD model gets a lower-body garment or dress.

    The choice stays allowed (the mask and the model handle every category); the note only says what the
    model was trained on.
    """
    if model_type == "viton_hd" and category != "upper_body":
        return (
            "Note: the VITON-HD model was trained on upper-body garments only "
            "(the DressCode model also on lower-body garments and dresses)."
        )
    return ""


class AppCallbacks:
    """The app's actions on one :class:`ModelStore` (models load lazily, on the first action needing them)."""

    def __init__(self, store: ModelStore, *, notice: str = "") -> None:
        self.store = store
        self.notice = notice
        self.tryon = TryOn(store)
        self.poses = PoseTransfer(store)

    def resolution_choices(self, key: str, names: Sequence[str] = RESOLUTIONS) -> list[tuple[str, str]]:
        """(label, value) pairs naming the real pixel sizes, e.g. ("1024×768", "full")."""
        return [(f"{h}×{w}", name) for name in names for w, h in [frame_size(self.store.spec(key), name)]]

    def status(self) -> str:
        """Which models are loaded and where, plus any notice about missing weights."""
        note = f"**Models**: {self.store.describe()}"
        return f"{note}\n\n```\n{self.notice}\n```" if self.notice else note

    # ------------------------------------------------------------------------------------ try-on
    def make_mask(self, inputs: TryOnInputs, progress: ProgressCallback | None = None) -> MaskStep:
        """Letterbox the photos and make (or take) the mask and DensePose, ready for editing."""
        person = _require(inputs.person, "person photo")
        garment = _require(inputs.garment, "garment photo")
        checked_flag(inputs.prepare_garment_png, "prepare_garment_png")
        model_spec(self.store.models, inputs.model_type, TRYON_MODEL_TYPES)
        tracker = _Progress(progress)
        tracker(0.0, "preprocessing: mask and DensePose")
        prepared = self.tryon.prepare(
            person, garment, model_type=inputs.model_type, category=inputs.category, mask=inputs.mask,
            densepose=inputs.densepose, prepare_garment_png=inputs.prepare_garment_png,
            adjustments=inputs.adjustments, auto_crop=inputs.auto_crop,
            size=frame_size(self.store.spec(inputs.model_type), inputs.resolution), status=tracker.status,
        )
        _require_masked(prepared.mask)
        tracker(0.0, "inputs ready")
        return MaskStep(prepared, inputs.fingerprint())

    @staticmethod
    def adjust(step: MaskStep, adjustments: MaskAdjustments) -> MaskStep:
        """The prepared mask made again from its automatic one with ``adjustments`` (no model runs)."""
        return MaskStep(step.prepared.adjusted(adjustments), step.fingerprint, step.shown)

    def try_on(
        self,
        inputs: TryOnInputs,
        settings: SamplingSettings = DEFAULT_SAMPLING,
        *,
        mask_step: MaskStep | None = None,
        edited_mask: np.ndarray | None = None,
        progress: ProgressCallback | None = None,
    ) -> Generation:
        """Generate the try-on result, with the edited mask when ``mask_step`` was made from these inputs.

        Otherwise (first click, or inputs changed since) the inputs are prepared afresh and the edit is
        ignored, since it belongs to other inputs.
        """
        if mask_step is not None and mask_step.fingerprint == inputs.fingerprint():
            prepared = mask_step.prepared
            if edited_mask is not None:
                _require_masked(edited_mask)
                prepared = prepared.with_mask(edited_mask)
            elif prepared.adjustments != inputs.adjustments:
                prepared = prepared.adjusted(inputs.adjustments)
        else:
            prepared = self.make_mask(inputs, progress).prepared
        return self._generate(prepared, settings, _Progress(progress))

    # ---------------------------------------------------------------------------------- pose transfer
    def pose_transfer(
        self,
        person: ImageSource | None,
        target: ImageSource | None,
        *,
        densepose: ImageSource | None = None,
        resolution: str = "full",
        auto_crop: str = "auto",
        settings: SamplingSettings = DEFAULT_SAMPLING,
        progress: ProgressCallback | None = None,
    ) -> Generation:
        """Generate the person of the first photo in the pose of the second (the second cut to its person
        when ``auto_crop`` says so)."""
        person = _require(person, "person photo")
        target = _require(target, "target-pose photo")
        tracker = _Progress(progress)
        tracker(0.0, "preprocessing: DensePose of the target pose")
        prepared = self.poses.prepare(
            person, target, densepose=densepose, auto_crop=auto_crop,
            size=frame_size(self.store.spec(POSE_MODEL), resolution), status=tracker.status,
        )
        return self._generate(prepared, settings, tracker)

    def _generate(self, prepared: Prepared, settings: SamplingSettings, tracker: _Progress) -> Generation:
        tracker(0.0, "denoising")
        service = self.poses if prepared.model_type == POSE_MODEL else self.tryon
        generation = service.generate(prepared, settings, callback=tracker.step, status=tracker.status)
        tracker(1.0, f"done (seed {generation.seed})")
        return generation

    # ---------------------------------------------------------------------------------- inspector
    @staticmethod
    def inspector_choices(generation: Generation | None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(label, value) choices of the layer and timestep selectors (``TRAINED`` first); empty without a trace."""
        if generation is None or generation.trace is None:
            return [], []
        return layer_choices(generation.trace), timestep_choices(generation.trace)

    @staticmethod
    def legend(size: int = 128) -> np.ndarray:
        """The flow colour wheel: the colour of each displacement direction."""
        return color_wheel_legend(size)

    def inspect(
        self,
        generation: Generation | None,
        point: tuple[float, float] | None = None,
        layer: str | None = TRAINED,
        timestep: int | str | None = TRAINED,
    ) -> InspectorView:
        """Where ``point`` (pixel of the shown result) takes from in the reference, its heatmaps and the flows
        (``leffa.app.inspector.inspector_view``). ``layer``/``timestep``: ``TRAINED`` (the default: those the
        Leffa loss supervises), ``ALL``, or one recorded layer / timestep."""
        if generation is None:
            raise ValueError("nothing to inspect yet: generate a result first (try-on or pose transfer tab)")
        if generation.trace is None:
            raise ValueError(_NO_TRACE)
        return inspector_view(generation, None if point is None else checked_point(point), layer, timestep)


def _require_masked(mask: Image.Image | np.ndarray) -> None:
    if not np.asarray(mask).any():
        raise ValueError(
            "the mask is empty: paint the region the garment should cover, or make the mask again"
        )

