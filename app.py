"""Leffa demo: virtual try-on, pose transfer and the attention & flow inspector (``python app.py --help``).

UI only: every action is a method of :class:`leffa.app.callbacks.AppCallbacks` (what the inspector and the
previews show: ``leffa.app.inspector``, ``leffa.app.previews``); the library's errors are shown to the user as
``gr.Error`` messages. ``build_app`` returns the Blocks, ``serve`` launches them with the page's ``CSS``.
"""

from __future__ import annotations

import argparse
import functools
import os
import errno
import re
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder

from app_components import MaskEditor, RawNumber, UploadedImage, raw_slider
from leffa.app.callbacks import (
    AppCallbacks, MaskStep, TryOnInputs, category_note, checked_flag, editor_brush_size, editor_value,
    mask_from_editor, user_painted,
)
from leffa.app.inspector import TRAINED, InspectorView, display_to_result, run_note
from leffa.app.previews import MASK_COLOR, previews
from leffa.app.runtime import (
    DEVICES, DTYPES, Runtime, downloads_possible, memory_choice, missing_weights, released_runtime, tiny_runtime,
)
from leffa.app.models import POSE_MODEL
from leffa.app.service import Generation
from leffa.core.memory import MEMORY_CHOICES
from leffa.core.settings import MAX_IMAGES, SamplingSettings
from preprocess.mask_adjust import SIDES, MaskAdjustments
from preprocess.masks import CATEGORIES

#: Errors raised by the library for bad input, missing weights or a device that ran out of memory.
USER_ERRORS = (ValueError, OSError, RuntimeError)
#: Every event that runs a model shares this queue slot: one job at a time per device.
DEVICE_QUEUE = dict(concurrency_id="device", concurrency_limit=1)
MODEL_TYPES = [("VITON-HD (upper body)", "viton_hd"), ("DressCode (upper, lower, dresses)", "dress_code")]
CATEGORY_LABELS = {"upper_body": "upper body", "lower_body": "lower body", "dresses": "dress"}
INTRO = """# Leffa: virtual try-on and pose transfer
Learning Flow Fields in Attention (CVPR 2025), a clean-room implementation. Upload photos or pick an
example; the **inspector** tab shows where each pixel of a result looked in the reference."""
TINY_NOTE = (
    "**Built-in tiny demo model**: it runs the whole chain in seconds but has only learnt synthetic "
    "people and garments. It has no preprocessing models, so use the examples (they bring their own mask "
    "and DensePose) or upload both under *Your own mask / DensePose*."
)
POSE_UNTRAINED = (
    "**Untrained for pose transfer**: the built-in demo model has learnt try-on only, so its pose-transfer "
    "output is noise, not a result to judge. A trained pose-transfer demo model replaces it when it ships "
    "(`assets/demo-model/pose_transfer/`), and the released weights do the real thing."
)
TINY_RESOLUTION = "the built-in demo model runs at the size it was trained at only"
INSPECTOR_HELP = (
    "Tick **Record attention for the inspector** before generating. Then click a point of the result: the "
    "**ring** marks where that pixel takes from in the reference (the garment, or the person photo for pose "
    "transfer): the attention's mean position, the flow the Leffa loss trains. The **heatmap** shows the "
    "whole attention: places the pixel favours are coloured, hot spots away from the ring are other places "
    "it mixes in, and **dotted outlines** mark sinks, places that draw attention from every pixel whichever "
    "one you click. The words under the selectors say how concentrated the view is. By default the view "
    "averages the layers and timesteps the Leffa loss trains; pick *all* or a single one to compare."
)
FLOW_HELP = (
    "**Reading the flow**: each pixel's colour is the direction (wheel) in which the attention's mean "
    "position in the reference lies from that pixel; pale = a short shift, white = none. Sharp, "
    "correct attention makes the warped reference look like the garment (or person) moved into place. "
    "**Near-uniform attention** looks like this: heatmaps with hardly any colour (a peak close to 1×), "
    "entropy close to 1, a flow that points every pixel at the reference's centre (the wheel's colours "
    "arranged around the middle) and a warped reference that is one flat average colour."
)
RESULT_BUTTONS = ["download", "fullscreen"]
MEMORY_LABELS = [
    ("auto (fastest that fits)", "auto"), ("none: all on the GPU", "none"),
    ("model offload: one part at a time", "model_offload"), ("group offload: block by block", "group_offload"),
    ("fp8 weights (layerwise casting)", "layerwise_fp8"), ("int8 weights (torchao)", "int8"),
]
MEMORY_INFO = "the level used shows under Model status"
AUTO_CROP_INFO = "generate on the person cut from the photo, pasted back (auto: when the person is small)"
ADJUST_HELP = (
    "Change the automatic mask (pixels of the model frame) for a garment longer, shorter or wider than the one "
    "worn; the editor shows the result at once (until you paint on it). Hands and face stay out of what the "
    "adjustments add unless unticked."
)
#: Pictures fill their box (``fill-box``); the tiny model's are enlarged with whole pixels (``pixelated``).
CSS = """
.fill-box img, .fill-box .image-frame { width: 100% !important; height: 100% !important; }
.fill-box img { object-fit: contain !important; }
.pixelated img { image-rendering: pixelated; }
.columns-2 .grid-container { grid-template-columns: repeat(2, minmax(0, 1fr)) !important; }
.columns-4 .grid-container { grid-template-columns: repeat(4, minmax(0, 1fr)) !important; }
.columns-2 .caption-label, .columns-4 .caption-label { white-space: normal; max-width: 96%; }
[data-testid="toast-text"] { white-space: pre-line; }
.colour-scale { padding: 0 4px; }
.colour-bar { height: 14px; border: 1px solid #888; border-radius: 2px; }
.colour-ticks { display: flex; justify-content: space-between; height: 1.4em; font-size: 0.85em; }
.colour-scale p { margin: 2px 0 0; font-size: 0.85em; }
"""


def _shown(fn: Callable) -> Callable:
    """Turn the library's errors into ``gr.Error`` so the user sees the message, not a bare 'Error'.

    The message goes as plain text: API clients read it verbatim, and the page keeps its line breaks
    (``CSS``)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as error:
            raise gr.Error(user_message(error), duration=None, print_exception=False) from error

    return wrapper


def user_message(error: BaseException) -> str:
    """The error's text with Gradio's upload folders (``/tmp/gradio/<hash>/``) cut from file paths, so an
    upload is named as the user named it."""
    folder = re.escape(str(Path(get_upload_folder())))
    return re.sub(rf"{folder}/[0-9a-f]{{16,}}/", "", str(error))


def _on_device(fn: Callable) -> Callable:
    """On a Hugging Face ZeroGPU Space, ask for the GPU during the call (no-op elsewhere)."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=120)(fn)


def _upload(label: str, elem_id: str, runtime: Runtime, **options: Any) -> UploadedImage:
    """An image input that reaches the callbacks as a file path, decoded by ``preprocess.images``."""
    return UploadedImage(
        type="filepath", image_mode=None, label=label, elem_id=elem_id, elem_classes=_display_classes(runtime),
        **options,
    )


def _reporter(progress: gr.Progress) -> Callable[[float, str], None]:
    return lambda fraction, text: progress(fraction, desc=text)


def _settings_controls(prefix: str, runtime: Runtime) -> list[gr.components.Component]:
    """Sampling controls of one tab: steps, guidance, seed, reference acceleration, recording, images per
    run and the memory level (default: the runtime's, ``--memory``)."""
    with gr.Row():
        steps = raw_slider("steps", 1, 100, value=30, step=1, label="Steps", elem_id=f"{prefix}-steps")
        guidance = raw_slider("guidance", 0.0, 10.0, value=2.5, step=0.1, label="Guidance scale")
        seed = RawNumber(-1, precision=0, label="Seed (−1 = random)")
    with gr.Row():
        acceleration = gr.Checkbox(False, label="Reference acceleration (≈30% faster)")
        inspect = gr.Checkbox(False, label="Record attention for the inspector", elem_id=f"{prefix}-record")
        count = raw_slider(
            "num_images", 1, MAX_IMAGES, value=1, step=1, label="Images (seeds s, s+1, …)",
            elem_id=f"{prefix}-num-images",
        )
        memory = gr.Dropdown(
            MEMORY_LABELS, value=runtime.memory, label="GPU memory", info=MEMORY_INFO, elem_id=f"{prefix}-memory",
        )
    return [steps, guidance, seed, acceleration, inspect, count, memory]


def _settings(
    steps, guidance, seed, ref_acceleration, record_attention, num_images=1, memory="auto", repaint=False
) -> SamplingSettings:
    """The page's and the API's sampling controls (public names ``steps``, ``guidance``) as the settings
    object (an API client that leaves out ``num_images`` or ``memory`` gets one image at ``auto``)."""
    return SamplingSettings(
        num_inference_steps=steps, guidance_scale=guidance, seed=seed, ref_acceleration=ref_acceleration,
        repaint=repaint, record_attention=record_attention, num_images=1 if num_images is None else num_images,
        memory=memory or "auto",
    )


def _several(generation: Generation) -> gr.Gallery:
    """Every image of a run with its seed, shown when there are several."""
    pictures = [(image, f"seed {seed}") for image, seed in zip(generation.images, generation.seeds)]
    return gr.Gallery(pictures if len(pictures) > 1 else None, visible=len(pictures) > 1)


def _display_classes(runtime: Runtime) -> list[str]:
    return ["fill-box", "pixelated"] if runtime.tiny else ["fill-box"]


def _picture(label: str, runtime: Runtime, **options: Any) -> gr.Image:
    """An output picture that fills its box (see ``CSS``)."""
    return gr.Image(label=label, format="png", interactive=False, elem_classes=_display_classes(runtime), **options)


def _seed_used(elem_id: str) -> gr.Textbox:
    """Empty until a run reports the seed it used (a number field would show 0)."""
    return gr.Textbox("", label="Seed used", interactive=False, elem_id=elem_id, buttons=["copy"])


def _gallery(label: str, runtime: Runtime, columns: int, **options: Any) -> gr.Gallery:
    """Pictures side by side, ``columns`` to a row whatever their number (Gradio would widen a lone one to
    the full page), each whole (``contain``), lossless, enlarged with whole pixels for the tiny model."""
    classes = [f"columns-{columns}", *(["pixelated"] if runtime.tiny else [])]
    return gr.Gallery(
        label=label, columns=columns, object_fit="contain", format="png", elem_classes=classes, **options
    )


def _results_gallery(runtime: Runtime, elem_id: str) -> gr.Gallery:
    """All images of a run of several (hidden until there are)."""
    return _gallery("All images of the run", runtime, MAX_IMAGES, height="auto", elem_id=elem_id, visible=False)


def _paths(*paths: Path | None) -> list[str | None]:
    """An example row; a missing mask or DensePose stays empty, so picking the row clears a stale one."""
    return [None if path is None else str(path) for path in paths]


def _examples(rows: list[list[str | None]], inputs: list[gr.components.Component]) -> None:
    if rows:
        gr.Examples(rows, inputs, cache_examples=False, examples_per_page=6)


def _tryon_tab(actions: AppCallbacks, runtime: Runtime) -> SimpleNamespace:
    """Photos, options, the two buttons, the mask editor, the result and previews of the try-on tab."""
    ui = SimpleNamespace()
    with gr.Row():
        ui.person = _upload("Person photo", "tryon-person", runtime, height=400)
        ui.garment = _upload("Garment photo", "tryon-garment", runtime, height=400)
        with gr.Column():
            ui.model_type = gr.Radio(MODEL_TYPES, value="viton_hd", label="Model")
            ui.category = gr.Radio(
                [(CATEGORY_LABELS[c], c) for c in CATEGORIES], value="upper_body", label="Garment type",
                info="VITON-HD only knows upper-body garments",
            )
            ui.category_note = gr.Markdown(category_note("viton_hd", "upper_body"), elem_id="category-note")
            ui.resolution = _resolution(actions, runtime, "viton_hd")
            ui.auto_crop = _auto_crop("tryon")
            ui.garment_png = gr.Checkbox(False, label="Garment is a cut-out PNG (centre it on white)")
            # The tiny model redraws the whole mask region coarsely; repaint keeps the rest of the photo.
            ui.repaint = gr.Checkbox(runtime.tiny, label="Repaint (keep everything outside the mask)")
    for choice in (ui.model_type, ui.category):
        choice.change(
            category_note, [ui.model_type, ui.category], ui.category_note, queue=False, show_progress="hidden",
            api_visibility="private",
        )
    ui.controls = _settings_controls("tryon", runtime)
    ui.adjustments = _mask_adjustments()
    with gr.Accordion("Your own mask / DensePose (optional)", open=runtime.tiny):
        with gr.Row():
            ui.mask = _upload("Mask (white = replace)", "tryon-mask", runtime)
            ui.densepose = _upload("DensePose render", "tryon-densepose", runtime)
    with gr.Row():
        ui.make_mask = gr.Button("1. Make mask", elem_id="make-mask")
        ui.run = gr.Button("2. Try on", variant="primary", elem_id="tryon-run")
    # The editor's canvas must have the size of the images it gets, or Gradio does not draw the mask
    # layer; so it always shows them at the model's full size (the edit is scaled back).
    ui.editor_size = runtime.store.size("viton_hd")
    brush_size = editor_brush_size(ui.editor_size)
    mask_colour = (f"rgb{MASK_COLOR[:3]}", MASK_COLOR[3] / 255)
    with gr.Row():
        ui.editor = MaskEditor(
            type="numpy", image_mode="RGBA", sources=[], transforms=(), layers=False, format="png",
            label="Mask editor: brush adds, eraser removes; then press Try on", elem_id="mask-editor",
            height=480, brush=gr.Brush(default_size=brush_size, colors=[mask_colour], color_mode="fixed"),
            eraser=gr.Eraser(default_size=brush_size), canvas_size=ui.editor_size,
        )
        with gr.Column():
            ui.result = _picture("Result", runtime, elem_id="tryon-result", height=480, buttons=RESULT_BUTTONS)
            ui.seed = _seed_used("tryon-seed")
            ui.notes = gr.Markdown("", label="Notes", elem_id="tryon-notes")
    ui.gallery = _results_gallery(runtime, "tryon-images")
    with gr.Accordion("Previews: parse map, keypoints, mask, DensePose", open=False):
        ui.previews = _gallery("Previews", runtime, 2, height="auto", elem_id="tryon-previews")
    rows = [_paths(e.person, e.garment, e.mask, e.densepose) for e in runtime.tryon_examples]
    _examples(rows, [ui.person, ui.garment, ui.mask, ui.densepose])
    _forget_on_new_inputs(
        [ui.person, ui.garment, ui.mask, ui.densepose], [ui.editor, ui.result, ui.previews, ui.gallery], ui.seed
    )
    return ui


def _forget_on_new_inputs(inputs: list[gr.components.Component], pictures: list[gr.components.Component],
                          seed: gr.Textbox) -> None:
    """New photos (uploaded or an example) clear the tab's result, seed, mask and previews: they belonged to
    the photos before."""
    def forget() -> list[Any]:
        return [None] * len(pictures) + [""]

    for component in inputs:
        component.change(forget, None, [*pictures, seed], queue=False, show_progress="hidden", api_visibility="private")


def _auto_crop(prefix: str) -> gr.Radio:
    return gr.Radio(
        [("auto", "auto"), ("on", "on"), ("off", "off")], value="auto", label="Auto-crop around the person",
        info=AUTO_CROP_INFO, elem_id=f"{prefix}-auto-crop",
    )


def _mask_adjustments() -> list[gr.components.Component]:
    """Grow/shrink, extend to each side, keep hands and face, cover legs: applied to the automatic mask,
    live on the mask editor (``MaskAdjustments``' fields, in its order)."""
    with gr.Accordion("Adjust the mask", open=False, elem_id="mask-adjustments"):
        gr.Markdown(ADJUST_HELP)
        with gr.Row():
            grow = raw_slider("grow", -200, 200, value=0, step=1, label="Grow (−: shrink), px", elem_id="adjust-grow")
            sides = [
                raw_slider(f"extend_{side}", 0, 1024, value=0, step=1, label=f"Extend {side}, px",
                           elem_id=f"adjust-{side}")
                for side in SIDES
            ]
        with gr.Row():
            hands = gr.Checkbox(True, label="Keep hands", elem_id="adjust-hands")
            face = gr.Checkbox(True, label="Keep face and hair", elem_id="adjust-face")
            legs = gr.Checkbox(False, label="Cover the legs to the ankles (long lower garments, dresses)",
                               elem_id="adjust-legs")
    return [grow, *sides, hands, face, legs]


def _adjustments(grow=None, up=None, down=None, left=None, right=None, hands=None, face=None, legs=None) -> MaskAdjustments:
    """The page's and the API's adjustment controls (left out: unchanged) as ``MaskAdjustments``."""
    given = dict(grow=grow, extend_up=up, extend_down=down, extend_left=left, extend_right=right,
                 keep_hands=hands, keep_face=face, cover_legs=legs)
    return MaskAdjustments(**{name: value for name, value in given.items() if value is not None})


def _notes(prepared) -> str:
    return "\n".join(f"- {note}" for note in prepared.notes)


def _resolution(actions: AppCallbacks, runtime: Runtime, key: str) -> gr.Radio:
    """The model's own size, or half of it per side; the tiny model (trained at one size) gets its own only."""
    if runtime.tiny:
        choices = actions.resolution_choices(key, ("full",))
        return gr.Radio(choices, value="full", label="Resolution (height × width)", info=TINY_RESOLUTION)
    return gr.Radio(actions.resolution_choices(key), value="full", label="Resolution (height × width)")


def _pose_tab(actions: AppCallbacks, runtime: Runtime) -> SimpleNamespace:
    """Photos, options, the button, the result and the DensePose preview of the pose-transfer tab."""
    ui = SimpleNamespace()
    untrained = POSE_MODEL in runtime.untrained
    if untrained:
        gr.Markdown(POSE_UNTRAINED, elem_id="pose-untrained")
    with gr.Row():
        ui.person = _upload("Person (appearance)", "pose-person", runtime, height=400)
        ui.target = _upload("Target pose", "pose-target", runtime, height=400)
        label = "Result (untrained model: noise)" if untrained else "Result"
        ui.result = _picture(label, runtime, elem_id="pose-result", height=400, buttons=RESULT_BUTTONS)
    with gr.Row():
        ui.resolution = _resolution(actions, runtime, POSE_MODEL)
        ui.auto_crop = _auto_crop("pose")
    ui.controls = _settings_controls("pose", runtime)
    with gr.Accordion("Your own DensePose of the target (optional)", open=runtime.tiny):
        ui.densepose = _upload("DensePose (IUV) of the target", "pose-densepose", runtime)
    with gr.Row():
        ui.run = gr.Button("Transfer pose", variant="primary", elem_id="pose-run")
        ui.seed = _seed_used("pose-seed")
    ui.notes = gr.Markdown("", label="Notes", elem_id="pose-notes")
    ui.gallery = _results_gallery(runtime, "pose-images")
    with gr.Accordion("Preview: DensePose", open=False):
        ui.previews = _gallery("Previews", runtime, 2, height="auto", elem_id="pose-previews")
    rows = [_paths(e.person, e.target, e.densepose) for e in runtime.pose_examples]
    _examples(rows, [ui.person, ui.target, ui.densepose])
    _forget_on_new_inputs([ui.person, ui.target, ui.densepose], [ui.result, ui.previews, ui.gallery], ui.seed)
    return ui


def _inspector_tab(actions: AppCallbacks, runtime: Runtime) -> SimpleNamespace:
    """Which run is shown, the clickable result, heatmap and colour scale, selectors, flow and warped
    reference with how to read them, and the heatmap of every layer with its sharpness."""
    ui = SimpleNamespace()
    ui.run = gr.Markdown(run_note(None), label="Inspected run", elem_id="inspect-run")
    gr.Markdown(INSPECTOR_HELP)
    with gr.Row():
        ui.image = gr.Image(
            label="Result: click a point", format="png", interactive=False, elem_id="inspect-result",
            height=440, elem_classes=["fill-box"],
        )
        with gr.Column():
            ui.heatmap = _picture(
                "Attention heatmap (ring: where the pixel takes from; dotted: sinks)", runtime,
                elem_id="inspect-heatmap", height=400,
            )
            ui.scale = gr.HTML("", label="Heatmap colour scale", elem_id="inspect-scale")
    with gr.Row():
        # Custom values are allowed so that the API may name any recorded layer; others get a clear error.
        ui.layer = gr.Dropdown(
            [("layers the Leffa loss trains (average)", TRAINED)], value=TRAINED, label="Layer",
            allow_custom_value=True,
        )
        ui.timestep = gr.Dropdown(
            [("timesteps the Leffa loss trains (average)", TRAINED)], value=TRAINED, label="Timestep",
            allow_custom_value=True,
        )
    ui.caption = gr.Markdown("", label="What is shown", elem_id="inspect-caption")
    with gr.Row():
        ui.flow = _picture("Flow (colour wheel)", runtime, elem_id="inspect-flow", height=320)
        with gr.Column():
            gr.Image(actions.legend(), label="Flow direction legend", interactive=False, height=160)
            gr.Markdown(FLOW_HELP, elem_id="flow-help")
        ui.warped = _picture("Reference warped by the flow", runtime, elem_id="inspect-warped", height=320)
    ui.per_layer = _gallery(
        "Heatmap per layer (ring: that layer's point): peak (× uniform) and entropy (1 = uniform) tell sharp "
        "layers from diffuse", runtime,
        4, height=640, elem_id="inspect-layers",
    )
    ui.outputs = [ui.image, ui.heatmap, ui.scale, ui.per_layer, ui.flow, ui.warped, ui.caption]
    return ui


def _shown_view(view: InspectorView) -> list[Any]:
    return [
        view.marked_result, view.heatmap, view.colour_scale, view.layer_heatmaps, view.flow,
        view.warped_reference, view.caption,
    ]


def build_app(runtime: Runtime) -> gr.Blocks:
    """The whole interface for one runtime (model store, examples, notice); launch it with ``CSS``."""
    actions = AppCallbacks(runtime.store, notice=runtime.notice)
    with gr.Blocks(title="Leffa") as demo:
        gr.Markdown(INTRO)
        if runtime.tiny:
            gr.Markdown(TINY_NOTE)
        status = gr.Markdown(actions.status(), label="Model status", elem_id="model-status")
        mask_state, recorded_state, point_state = gr.State(None), gr.State(None), gr.State(None)
        with gr.Tab("Virtual try-on", id="tryon"):
            tryon = _tryon_tab(actions, runtime)
        with gr.Tab("Pose transfer", id="pose"):
            pose = _pose_tab(actions, runtime)
        with gr.Tab("Attention & flow inspector", id="inspector"):
            inspector = _inspector_tab(actions, runtime)

        def after_generation(generation: Generation, recorded: Generation | None) -> list[Any]:
            """Outputs shared by both generating tabs. The inspector moves to a recorded run; after a run
            without recording it keeps the last recorded one and says so."""
            common = [
                generation.image, ", ".join(map(str, generation.seeds)), previews(generation.prepared),
                actions.status(),
            ]
            if generation.trace is None:
                skipped = [gr.skip()] * (4 + len(inspector.outputs))
                return [*common, *skipped[:4], run_note(recorded, generation), *skipped[4:]]
            layers, steps = actions.inspector_choices(generation)
            return [
                *common, generation, None, gr.Dropdown(choices=layers, value=TRAINED),
                gr.Dropdown(choices=steps, value=TRAINED), run_note(generation),
                *_shown_view(actions.inspect(generation)),
            ]

        @_on_device
        @_shown
        # Every input defaults to None, so API clients may leave out what they do not use (None is what
        # the page sends for an empty field; the callbacks name what is missing).
        def make_mask(person=None, garment=None, model_type=None, category=None, resolution=None,
                      garment_png=None, mask=None, densepose=None, auto_crop=None, grow=None, extend_up=None,
                      extend_down=None, extend_left=None, extend_right=None, keep_hands=None, keep_face=None,
                      cover_legs=None, progress=gr.Progress()):
            adjustments = _adjustments(grow, extend_up, extend_down, extend_left, extend_right, keep_hands, keep_face,
                                       cover_legs)
            inputs = TryOnInputs(
                person, garment, model_type, category, mask, densepose, checked_flag(garment_png, "garment_png"),
                resolution, auto_crop or "auto", adjustments,
            )
            step = actions.make_mask(inputs, _reporter(progress))
            editable = editor_value(step.prepared, tryon.editor_size)
            return step, editable, previews(step.prepared), actions.status(), _notes(step.prepared)

        @_shown
        def adjust_live(step, editor, *controls):
            """The adjusted mask on the editor, unless the user has painted on it (their strokes are kept)."""
            if step is None:
                return [gr.skip()] * 4
            if user_painted(step, mask_from_editor(editor)):
                gr.Warning("The mask has your brush strokes, so the adjustments did not replace it: press "
                           "'1. Make mask' to start again from the automatic mask with these adjustments.")
                return [gr.skip()] * 4
            step = actions.adjust(step, _adjustments(*controls))
            return step, editor_value(step.prepared, tryon.editor_size), previews(step.prepared), _notes(step.prepared)

        @_on_device
        @_shown
        def try_on(person=None, garment=None, model_type=None, category=None, resolution=None,
                   garment_png=None, mask=None, densepose=None, auto_crop=None, grow=None, extend_up=None,
                   extend_down=None, extend_left=None, extend_right=None, keep_hands=None, keep_face=None,
                   cover_legs=None, repaint=None, steps=None, guidance=None, seed=None, ref_acceleration=None,
                   record_attention=None, num_images=None, memory=None, mask_step=None, edited_mask=None,
                   recorded=None, progress=gr.Progress()):
            adjustments = _adjustments(grow, extend_up, extend_down, extend_left, extend_right, keep_hands, keep_face,
                                       cover_legs)
            inputs = TryOnInputs(
                person, garment, model_type, category, mask, densepose, checked_flag(garment_png, "garment_png"),
                resolution, auto_crop or "auto", adjustments,
            )
            settings = _settings(steps, guidance, seed, ref_acceleration, record_attention, num_images, memory, repaint)
            generation = actions.try_on(
                inputs, settings, mask_step=mask_step, edited_mask=mask_from_editor(edited_mask),
                progress=_reporter(progress),
            )
            used = MaskStep(generation.prepared, inputs.fingerprint())
            editable = editor_value(generation.prepared, tryon.editor_size)
            return [used, editable, *after_generation(generation, recorded), _several(generation),
                    _notes(generation.prepared)]

        @_on_device
        @_shown
        def pose_transfer(person=None, target=None, resolution=None, densepose=None, auto_crop=None, steps=None,
                          guidance=None, seed=None, ref_acceleration=None, record_attention=None, num_images=None,
                          memory=None, recorded=None, progress=gr.Progress()):
            settings = _settings(steps, guidance, seed, ref_acceleration, record_attention, num_images, memory)
            generation = actions.pose_transfer(
                person, target, densepose=densepose, resolution=resolution, auto_crop=auto_crop or "auto",
                settings=settings, progress=_reporter(progress),
            )
            return [*after_generation(generation, recorded), _several(generation), _notes(generation.prepared)]

        @_shown
        def inspect_click(generation, layer, timestep, event: gr.SelectData):
            if generation is None:
                return [gr.skip()] * (1 + len(inspector.outputs))
            point = display_to_result(event.index, generation)
            return [point, *_shown_view(actions.inspect(generation, point, layer, timestep))]

        @_shown
        def inspect_point(x: float, y: float, layer: str, timestep: str, generation):
            return [(x, y), *_shown_view(actions.inspect(generation, (x, y), layer, timestep))]

        @_shown
        def change_selection(generation, point, layer, timestep):
            if generation is None:
                return [gr.skip()] * len(inspector.outputs)
            return _shown_view(actions.inspect(generation, point, layer, timestep))

        tryon_inputs = [
            tryon.person, tryon.garment, tryon.model_type, tryon.category, tryon.resolution,
            tryon.garment_png, tryon.mask, tryon.densepose, tryon.auto_crop, *tryon.adjustments,
        ]
        selection = [inspector.layer, inspector.timestep]
        generation_outputs = [recorded_state, point_state, *selection, inspector.run, *inspector.outputs]
        tryon.make_mask.click(
            make_mask, tryon_inputs, [mask_state, tryon.editor, tryon.previews, status, tryon.notes],
            api_name="make_mask", **DEVICE_QUEUE,
        )
        for control in tryon.adjustments:
            control.input(
                adjust_live, [mask_state, tryon.editor, *tryon.adjustments],
                [mask_state, tryon.editor, tryon.previews, tryon.notes], api_visibility="private",
                trigger_mode="always_last", show_progress="hidden",
            )
        # Progress shows on the result only: the editor keeps the mask visible while the model runs.
        tryon.run.click(
            try_on, [*tryon_inputs, tryon.repaint, *tryon.controls, mask_state, tryon.editor, recorded_state],
            [
                mask_state, tryon.editor, tryon.result, tryon.seed, tryon.previews, status, *generation_outputs,
                tryon.gallery, tryon.notes,
            ],
            api_name="try_on", show_progress_on=[tryon.result], **DEVICE_QUEUE,
        )
        pose.run.click(
            pose_transfer,
            [pose.person, pose.target, pose.resolution, pose.densepose, pose.auto_crop, *pose.controls, recorded_state],
            [pose.result, pose.seed, pose.previews, status, *generation_outputs, pose.gallery, pose.notes],
            api_name="pose_transfer",
            show_progress_on=[pose.result], **DEVICE_QUEUE,
        )
        inspector.image.select(
            inspect_click, [recorded_state, *selection], [point_state, *inspector.outputs],
            api_visibility="private",
        )
        # Clients cannot send a click, so the API takes the point (result pixels) through a hidden button.
        point_x, point_y = RawNumber(visible=False), RawNumber(visible=False)
        gr.Button(visible=False).click(
            inspect_point, [point_x, point_y, *selection, recorded_state], [point_state, *inspector.outputs],
            api_name="inspect",
        )
        for selector in selection:
            selector.input(
                change_selection, [recorded_state, point_state, *selection], inspector.outputs,
                api_visibility="private",
            )
    return demo


def serve(runtime: Runtime, **launch_options: Any) -> gr.Blocks:
    """Build the app, queue it (one model run at a time) and launch it with the page's ``CSS``."""
    demo = build_app(runtime).queue(default_concurrency_limit=1)
    demo.launch(css=CSS, **launch_options)
    return demo


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Leffa virtual try-on and pose transfer demo (Gradio)")
    parser.add_argument("--ckpt-dir", help="released weights (default: $LEFFA_CKPT_DIR or ./ckpts)")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="where the models run")
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: fp16 on CUDA, else fp32")
    parser.add_argument(
        "--memory", default="auto", choices=MEMORY_CHOICES,
        help="the page's default GPU memory level (default auto: the fastest that fits the free memory)",
    )
    parser.add_argument("--offload", action="store_true", help="same as --memory model_offload")
    parser.add_argument(
        "--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="address to listen on (default: 127.0.0.1, or $GRADIO_SERVER_NAME as Spaces set it)",
    )
    parser.add_argument("--port", type=int, help="port (default: 7860 or $GRADIO_SERVER_PORT)")
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    parser.add_argument("--no-download", action="store_true", help="never download weights")
    parser.add_argument("--tiny", action="store_true", help="use the built-in tiny demo model (no weights)")
    return parser.parse_args(argv)


def make_runtime(args: argparse.Namespace) -> Runtime:
    """The released weights; the tiny model when asked, or when weights are missing and cannot be fetched.
    ``--memory`` (or ``--offload``) becomes the page's default memory level."""
    options = dict(device=args.device, dtype=args.dtype, memory=memory_choice(args.memory, args.offload))
    if args.tiny:
        return tiny_runtime(**options)
    if not downloads_possible(not args.no_download):
        missing = missing_weights("virtual_tryon", args.ckpt_dir)
        if missing is not None:
            return tiny_runtime(**options, notice=f"{missing}\n\nUntil then the app runs the built-in tiny demo model.")
    return released_runtime(args.ckpt_dir, **options, download=not args.no_download)


def listen_problem(host: str, port: int) -> str | None:
    """Why the app cannot listen on ``host:port`` (the port is taken, or the address is not this machine's),
    with what to do; ``None`` when it can."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return (
                    f"port {port} on {host} is taken: another program, perhaps an earlier python app.py, is "
                    f"listening there. Stop it, or choose another port: python app.py --port "
                    f"{port + 1 if port < 65535 else 7861} (or set GRADIO_SERVER_PORT)"
                )
            return (
                f"cannot listen on {host}:{port} ({error.strerror or error}); give --host an address of this "
                "machine (127.0.0.1 for this machine only) and --port a free port from 1024 to 65535"
            )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.port is not None:
        problem = listen_problem(args.host, args.port)
        if problem is not None:  # said before any model loads
            print(f"error: {problem}", file=sys.stderr)
            return 2
    try:
        runtime = make_runtime(args)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, ValueError) else 1
    if runtime.notice:
        print(runtime.notice)
    try:
        serve(runtime, server_name=args.host, server_port=args.port, share=args.share)
    except OSError:  # taken between the check and the launch
        problem = None if args.port is None else listen_problem(args.host, args.port)
        if problem is None:
            raise
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
