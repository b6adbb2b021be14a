"""Leffa demo: virtual try-on, pose transfer and the attention & flow inspector (``python app.py --help``).

UI only: every action is a method of :class:`leffa.app.callbacks.AppCallbacks`; the library's errors are
shown to the user as ``gr.Error`` messages. ``build_app`` returns the Blocks so tests can launch it.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder

from app_components import MaskEditor, RawNumber, RawSlider, UploadedImage
from leffa.app.callbacks import (
    ALL, MASK_COLOR, AppCallbacks, GenerationSettings, InspectorView, MaskStep, TryOnInputs, category_note,
    editor_value, mask_from_editor, previews,
)
from leffa.app.runtime import (
    DEVICES, DTYPES, Runtime, downloads_possible, missing_weights, released_runtime, tiny_runtime,
)
from leffa.app.service import POSE_MODEL, Generation
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
INSPECTOR_HELP = (
    "Tick **Record attention for the inspector** before generating. Then click a point of the result: "
    "the heatmaps show where it looked in the reference (garment or person photo), per layer and "
    "averaged. The flow is the attention's mean displacement as a colour wheel; the warped reference is "
    "what the layer copies to each pixel."
)
RESULT_BUTTONS = ["download", "fullscreen"]


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


def _upload(label: str, elem_id: str, **options: Any) -> UploadedImage:
    """An image input that reaches the callbacks as a file path, decoded by ``preprocess.images``."""
    return UploadedImage(type="filepath", image_mode=None, label=label, elem_id=elem_id, **options)


def _reporter(progress: gr.Progress) -> Callable[[float, str], None]:
    return lambda fraction, text: progress(fraction, desc=text)


def _settings_controls(prefix: str) -> list[gr.components.Component]:
    """Sampling controls of one tab: steps, guidance, seed, reference acceleration, recording."""
    with gr.Row():
        steps = RawSlider(1, 100, value=30, step=1, label="Steps", elem_id=f"{prefix}-steps")
        guidance = RawSlider(0.0, 10.0, value=2.5, step=0.1, label="Guidance scale")
        seed = RawNumber(-1, precision=0, label="Seed (−1 = random)")
    with gr.Row():
        acceleration = gr.Checkbox(False, label="Reference acceleration (≈30% faster)")
        inspect = gr.Checkbox(False, label="Record attention for the inspector", elem_id=f"{prefix}-record")
    return [steps, guidance, seed, acceleration, inspect]


def _settings(steps, guidance, seed, acceleration, inspect, repaint=False) -> GenerationSettings:
    return GenerationSettings(steps, guidance, seed, acceleration, repaint, inspect)


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
        ui.person = _upload("Person photo", "tryon-person", height=400)
        ui.garment = _upload("Garment photo", "tryon-garment", height=400)
        with gr.Column():
            ui.model_type = gr.Radio(MODEL_TYPES, value="viton_hd", label="Model")
            ui.category = gr.Radio(
                [(CATEGORY_LABELS[c], c) for c in CATEGORIES], value="upper_body", label="Garment type",
                info="VITON-HD only knows upper-body garments",
            )
            ui.category_note = gr.Markdown(category_note("viton_hd", "upper_body"), elem_id="category-note")
            ui.resolution = gr.Radio(
                actions.resolution_choices("viton_hd"), value="full", label="Resolution (height × width)"
            )
            ui.garment_png = gr.Checkbox(False, label="Garment is a cut-out PNG (centre it on white)")
            ui.repaint = gr.Checkbox(False, label="Repaint (keep everything outside the mask)")
    for choice in (ui.model_type, ui.category):
        choice.change(
            category_note, [ui.model_type, ui.category], ui.category_note, queue=False, show_progress="hidden",
            api_visibility="private",
        )
    ui.controls = _settings_controls("tryon")
    with gr.Accordion("Your own mask / DensePose (optional)", open=runtime.tiny):
        with gr.Row():
            ui.mask = _upload("Mask (white = replace)", "tryon-mask")
            ui.densepose = _upload("DensePose render", "tryon-densepose")
    with gr.Row():
        ui.make_mask = gr.Button("1. Make mask", elem_id="make-mask")
        ui.run = gr.Button("2. Try on", variant="primary", elem_id="tryon-run")
    # The editor's canvas must have the size of the images it gets, or Gradio does not draw the mask
    # layer; so it always shows them at the model's full size (the edit is scaled back).
    ui.editor_size = runtime.store.size("viton_hd")
    brush_size = max(1, min(ui.editor_size) // 40)
    mask_colour = (f"rgb{MASK_COLOR[:3]}", MASK_COLOR[3] / 255)
    with gr.Row():
        ui.editor = MaskEditor(
            type="numpy", image_mode="RGBA", sources=[], transforms=(), layers=False, format="png",
            label="Mask: brush adds, eraser removes; then press Try on", elem_id="mask-editor", height=480,
            brush=gr.Brush(default_size=brush_size, colors=[mask_colour], color_mode="fixed"),
            eraser=gr.Eraser(default_size=brush_size), canvas_size=ui.editor_size,
        )
        with gr.Column():
            ui.result = gr.Image(
                label="Result", format="png", interactive=False, elem_id="tryon-result", height=480,
                buttons=RESULT_BUTTONS,
            )
            ui.seed = gr.Number(label="Seed used", precision=0, interactive=False)
    with gr.Accordion("Previews: parse map, keypoints, mask, DensePose", open=False):
        ui.previews = gr.Gallery(label="Previews", columns=4, height=320)
    rows = [_paths(e.person, e.garment, e.mask, e.densepose) for e in runtime.tryon_examples]
    _examples(rows, [ui.person, ui.garment, ui.mask, ui.densepose])
    return ui


def _pose_tab(actions: AppCallbacks, runtime: Runtime) -> SimpleNamespace:
    """Photos, options, the button, the result and the DensePose preview of the pose-transfer tab."""
    ui = SimpleNamespace()
    with gr.Row():
        ui.person = _upload("Person (appearance)", "pose-person", height=400)
        ui.target = _upload("Target pose", "pose-target", height=400)
        ui.result = gr.Image(
            label="Result", format="png", interactive=False, elem_id="pose-result", height=400,
            buttons=RESULT_BUTTONS,
        )
    ui.resolution = gr.Radio(
        actions.resolution_choices(POSE_MODEL), value="full", label="Resolution (height × width)"
    )
    ui.controls = _settings_controls("pose")
    with gr.Accordion("Your own DensePose of the target (optional)", open=runtime.tiny):
        ui.densepose = _upload("DensePose (IUV) of the target", "pose-densepose")
    with gr.Row():
        ui.run = gr.Button("Transfer pose", variant="primary", elem_id="pose-run")
        ui.seed = gr.Number(label="Seed used", precision=0, interactive=False)
    with gr.Accordion("Preview: DensePose", open=False):
        ui.previews = gr.Gallery(label="Previews", columns=4, height=320)
    rows = [_paths(e.person, e.target, e.densepose) for e in runtime.pose_examples]
    _examples(rows, [ui.person, ui.target, ui.densepose])
    return ui


def _inspector_tab(actions: AppCallbacks) -> SimpleNamespace:
    """The clickable result, layer and timestep selectors, heatmaps, flow, legend and warped reference."""
    ui = SimpleNamespace()
    gr.Markdown(INSPECTOR_HELP)
    with gr.Row():
        ui.image = gr.Image(
            label="Result: click a point", interactive=False, elem_id="inspect-result", height=420
        )
        ui.heatmap = gr.Image(
            label="Attention heatmap", interactive=False, elem_id="inspect-heatmap", height=420
        )
    with gr.Row():
        # Custom values are allowed so that the API may name any recorded layer; others get a clear error.
        ui.layer = gr.Dropdown([ALL], value=ALL, label="Layer", allow_custom_value=True)
        ui.timestep = gr.Dropdown([ALL], value=ALL, label="Timestep", allow_custom_value=True)
    ui.caption = gr.Markdown("No recorded result yet.", elem_id="inspect-caption")
    with gr.Row():
        ui.flow = gr.Image(label="Flow (colour wheel)", interactive=False, height=320)
        gr.Image(actions.legend(), label="Flow direction legend", interactive=False, height=160)
        ui.warped = gr.Image(label="Reference warped by the flow", interactive=False, height=320)
    ui.per_layer = gr.Gallery(label="Heatmap per layer", columns=6, height=360)
    ui.outputs = [ui.image, ui.heatmap, ui.per_layer, ui.flow, ui.warped, ui.caption]
    return ui


def build_app(runtime: Runtime) -> gr.Blocks:
    """The whole interface for one runtime (model store, examples, notice)."""
    actions = AppCallbacks(runtime.store, notice=runtime.notice)
    with gr.Blocks(title="Leffa") as demo:
        gr.Markdown(INTRO)
        if runtime.tiny:
            gr.Markdown(TINY_NOTE)
        status = gr.Markdown(actions.status(), elem_id="model-status")
        mask_state, recorded_state, point_state = gr.State(None), gr.State(None), gr.State(None)
        with gr.Tab("Virtual try-on", id="tryon"):
            tryon = _tryon_tab(actions, runtime)
        with gr.Tab("Pose transfer", id="pose"):
            pose = _pose_tab(actions, runtime)
        with gr.Tab("Attention & flow inspector", id="inspector"):
            inspector = _inspector_tab(actions)

        def shown_view(view: InspectorView) -> list[Any]:
            image = gr.skip() if view.marked_result is None else view.marked_result
            return [image, view.heatmap, view.layer_heatmaps, view.flow, view.warped_reference, view.caption]

        def after_generation(generation: Generation) -> list[Any]:
            """Outputs shared by both generating tabs; the inspector changes only for recorded runs."""
            common = [generation.image, generation.seed, previews(generation.prepared), actions.status()]
            if generation.trace is None:
                return [*common, *[gr.skip()] * (4 + len(inspector.outputs))]
            layers, steps = actions.inspector_choices(generation)
            view = actions.inspect(generation)
            return [
                *common, generation, None, gr.Dropdown(choices=layers, value=ALL),
                gr.Dropdown(choices=steps, value=ALL), generation.image, *shown_view(view)[1:],
            ]

        @_on_device
        @_shown
        def make_mask(person, garment, model_type, category, resolution, garment_png, mask, densepose,
                      progress=gr.Progress()):
            inputs = TryOnInputs(
                person, garment, model_type, category, mask, densepose, garment_png, resolution
            )
            step = actions.make_mask(inputs, _reporter(progress))
            editable = editor_value(step.prepared, tryon.editor_size)
            return step, editable, previews(step.prepared), actions.status()

        @_on_device
        @_shown
        def try_on(person, garment, model_type, category, resolution, garment_png, mask, densepose, repaint,
                   steps, guidance, seed, acceleration, inspect, mask_step, edited, progress=gr.Progress()):
            inputs = TryOnInputs(
                person, garment, model_type, category, mask, densepose, garment_png, resolution
            )
            generation = actions.try_on(
                inputs, _settings(steps, guidance, seed, acceleration, inspect, repaint), mask_step=mask_step,
                edited_mask=mask_from_editor(edited), progress=_reporter(progress),
            )
            used = MaskStep(generation.prepared, inputs.fingerprint())
            return [used, editor_value(generation.prepared, tryon.editor_size), *after_generation(generation)]

        @_on_device
        @_shown
        def pose_transfer(person, target, resolution, densepose, steps, guidance, seed, acceleration, inspect,
                          progress=gr.Progress()):
            settings = _settings(steps, guidance, seed, acceleration, inspect)
            generation = actions.pose_transfer(
                person, target, densepose=densepose, resolution=resolution, settings=settings,
                progress=_reporter(progress),
            )
            return after_generation(generation)

        @_shown
        def inspect_click(generation, layer, timestep, event: gr.SelectData):
            x, y = event.index
            return [(x, y), *shown_view(actions.inspect(generation, (x, y), layer, timestep))]

        @_shown
        def inspect_point(x: float, y: float, layer: str, timestep: str, generation):
            return [(x, y), *shown_view(actions.inspect(generation, (x, y), layer, timestep))]

        @_shown
        def change_selection(generation, point, layer, timestep):
            if generation is None:
                return [gr.skip()] * len(inspector.outputs)
            return shown_view(actions.inspect(generation, point, layer, timestep))

        tryon_inputs = [
            tryon.person, tryon.garment, tryon.model_type, tryon.category, tryon.resolution,
            tryon.garment_png, tryon.mask, tryon.densepose,
        ]
        selection = [inspector.layer, inspector.timestep]
        generation_outputs = [recorded_state, point_state, *selection, *inspector.outputs]
        tryon.make_mask.click(
            make_mask, tryon_inputs, [mask_state, tryon.editor, tryon.previews, status], api_name="make_mask",
            **DEVICE_QUEUE,
        )
        tryon.run.click(
            try_on, [*tryon_inputs, tryon.repaint, *tryon.controls, mask_state, tryon.editor],
            [mask_state, tryon.editor, tryon.result, tryon.seed, tryon.previews, status, *generation_outputs],
            api_name="try_on", **DEVICE_QUEUE,
        )
        pose.run.click(
            pose_transfer, [pose.person, pose.target, pose.resolution, pose.densepose, *pose.controls],
            [pose.result, pose.seed, pose.previews, status, *generation_outputs], api_name="pose_transfer",
            **DEVICE_QUEUE,
        )
        inspector.image.select(
            inspect_click, [recorded_state, *selection], [point_state, *inspector.outputs],
            api_visibility="private",
        )
        # Clients cannot send a click, so the API takes the point as numbers through a hidden button.
        point_x, point_y = gr.Number(visible=False), gr.Number(visible=False)
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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Leffa virtual try-on and pose transfer demo (Gradio)")
    parser.add_argument("--ckpt-dir", help="released weights (default: $LEFFA_CKPT_DIR or ./ckpts)")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="where the models run")
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: fp16 on CUDA, else fp32")
    parser.add_argument("--offload", action="store_true", help="keep Leffa models on the CPU between runs")
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
    """The released weights; the tiny model when asked, or when weights are missing and cannot be fetched."""
    if args.tiny:
        return tiny_runtime(device=args.device, dtype=args.dtype)
    if not downloads_possible(not args.no_download):
        missing = missing_weights("virtual_tryon", args.ckpt_dir)
        if missing is not None:
            notice = f"{missing}\n\nUntil then the app runs the built-in tiny demo model."
            return tiny_runtime(device=args.device, dtype=args.dtype, notice=notice)
    return released_runtime(
        args.ckpt_dir, device=args.device, dtype=args.dtype, offload=args.offload,
        download=not args.no_download,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        runtime = make_runtime(args)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, ValueError) else 1
    if runtime.notice:
        print(runtime.notice)
    demo = build_app(runtime).queue(default_concurrency_limit=1)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share)
    return 0


if __name__ == "__main__":
    sys.exit(main())
