"""What the attention & flow inspector shows for a recorded generation, in terms a user can read.

:func:`inspector_view` builds the whole view for a clicked point: the ring on where that pixel takes from
in the reference (the flow there, ``Trace.flow_at``: the attention's mean position, which the Leffa loss
trains; the attention's maximum is a poor guide, see ``docs/inspector-accuracy.md``), the heatmap of the
full attention with sinks dotted, how concentrated it is in words, and one heatmap per layer on a shared
scale. Also readable layer names ("down 1 · 16×12"), which run is on screen, and the enlargement that lets
a small result fill its box and still map a click to the right pixel. No Gradio here (``app.py`` lays it
out); the attention maths is ``leffa.inspect``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

from leffa.app.models import POSE_MODEL
from leffa.app.service import Generation
from leffa.core.flow import attention_entropy
from leffa.inspect.spread import Spread, attention_spread, sink_mask
from leffa.inspect.trace import LayerChoice, StepChoice, Trace
from leffa.inspect.visualize import jet

#: Value of the layer and timestep selectors that averages over all recorded ones.
ALL = "all"
#: Value of the selectors (and their default) for the layers / timesteps the Leffa loss supervises.
TRAINED = "trained"
#: Height of the per-layer heatmaps in the inspector's gallery.
THUMBNAIL_HEIGHT = 256
#: The clickable result is enlarged (whole pixels, nearest neighbour) to at least this height, so that it
#: fills its box: Gradio maps a click on a picture shown larger than its pixel size to no pixel at all.
DISPLAY_HEIGHT = 512
#: Heatmap colour scales reach at least this (× uniform), so that near-uniform attention stays faint.
SCALE_FLOOR = 2.0
#: Opacity of the heatmap colour at the top of its scale; it falls to 0 at uniform attention, so the reference
#: shows in its own colours wherever the pixel looks no more than uniformly.
HEAT_OPACITY = 0.85
_UNET_LAYER = re.compile(
    r"^(?:(?P<side>down|up)_blocks\.(?P<block>\d+)|mid_block)\.attentions\.(?P<attention>\d+)"
    r"\.transformer_blocks\.(?P<transformer>\d+)\."
)


@dataclass
class InspectorView:
    """What the inspector shows for one clicked point (heatmaps are ``None`` before the first click)."""

    marked_result: np.ndarray | None
    heatmap: np.ndarray | None
    colour_scale: str
    layer_heatmaps: list[tuple[np.ndarray, str]]
    flow: np.ndarray
    warped_reference: np.ndarray
    caption: str
    looked_at: tuple[float, float] | None = None
    spread: Spread | None = None


@dataclass(frozen=True)
class Sharpness:
    """How concentrated one attention row is: ``peak`` is its largest probability times the number of keys
    (1 = uniform), ``entropy`` its entropy over log(number of keys) (1 = uniform, 0 = a single key)."""

    peak: float
    entropy: float

    def __str__(self) -> str:
        return f"peak {self.peak:.1f}× uniform, entropy {self.entropy:.2f}"


# ------------------------------------------------------------------------------------------- layers
def layer_labels(layers: Sequence[str], token_sizes: dict[str, tuple[int, int]]) -> dict[str, str]:
    """Short unique names, e.g. "down 1 · 16×12", "up 1.2 · 32×24" (attention 2 of up block 1).

    The attention and transformer indices are shown only where a block has several of them recorded;
    names that are not UNet attention layers are kept as they are.
    """
    parsed = {name: _UNET_LAYER.match(name) for name in layers}
    blocks = {name: _block(match) for name, match in parsed.items() if match}
    labels = {}
    for name in layers:
        match = parsed[name]
        if match is None:
            labels[name] = name
            continue
        block, attention, transformer = blocks[name], match["attention"], match["transformer"]
        same_block = [other for other in blocks if blocks[other] == block]
        label = block
        if len({parsed[other]["attention"] for other in same_block}) > 1:
            label += f".{attention}"
        same_attention = [other for other in same_block if parsed[other]["attention"] == attention]
        if len({parsed[other]["transformer"] for other in same_attention}) > 1:
            label += f" t{transformer}"
        height, width = token_sizes.get(name, (0, 0))
        labels[name] = f"{label} · {height}×{width}" if height else label
    if len(set(labels.values())) < len(labels):
        return {name: name for name in layers}
    return labels


def _block(match: re.Match) -> str:
    return "mid" if match["side"] is None else f"{match['side']} {match['block']}"


def layer_choices(recorded: Trace) -> list[tuple[str, str]]:
    """(label, value) pairs for the layer selector: the trained layers (the default), all, then each."""
    labels = layer_labels(recorded.layers, recorded.token_sizes)
    trained = len(recorded.default_view.layers)
    return [
        (f"layers the Leffa loss trains ({trained} of {len(recorded.layers)}, average)", TRAINED),
        ("all layers (average)", ALL),
        *((labels[name], name) for name in recorded.layers),
    ]


def timestep_choices(recorded: Trace) -> list[tuple[str, str]]:
    """(label, value) pairs for the timestep selector: the trained timesteps (the default), all, then each."""
    trained = ", ".join(str(t) for t in recorded.default_view.timesteps)
    return [
        (f"timesteps the Leffa loss trains (t = {trained}, average)", TRAINED),
        ("all timesteps (average)", ALL),
        *((f"t = {t}", str(t)) for t in recorded.timesteps),
    ]


def chosen_view(recorded: Trace, layer: object = TRAINED, timestep: object = TRAINED) -> tuple[LayerChoice, StepChoice, str]:
    """The selectors' values as ``Trace`` choices, and the view in words (bold, for the caption).

    ``TRAINED`` (or ``None``) is :attr:`Trace.default_view`, ``ALL`` every recorded one."""
    labels = layer_labels(recorded.layers, recorded.token_sizes)
    if layer is None or layer == TRAINED:
        layers, layer_text = recorded.default_view.layers, "layers the Leffa loss trains"
    elif layer == ALL:
        layers, layer_text = None, "all layers"
    else:
        layers = str(layer)
        layer_text = labels.get(layers, layers)
    if timestep is None or timestep == TRAINED:
        steps = recorded.default_view.timesteps
        step_text = f"t = {', '.join(str(t) for t in steps)}"
    elif timestep == ALL:
        steps, step_text = None, "all timesteps"
    else:
        try:
            steps = int(timestep)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"timestep must be '{TRAINED}', '{ALL}' or one of {recorded.timesteps}, got {timestep!r}"
            ) from error
        step_text = f"t = {steps}"
    return layers, steps, f"**{layer_text}**, **{step_text}**"


# ---------------------------------------------------------------------------------------- sharpness
def attention_row(recorded: Trace, point: tuple[float, float], layer: str, timestep: StepChoice = None) -> np.ndarray:
    """The recorded attention probabilities (over the layer's stored key cells) of the query under model
    pixel ``point``, averaged over the chosen timesteps (``None``: all recorded); float64, sums to 1."""
    keys = recorded.keys(layer, timestep)
    return np.mean([recorded.row(point, layer, step).double().numpy() for step, _ in keys], axis=0)


def sharpness(row: np.ndarray) -> Sharpness:
    """:class:`Sharpness` of an attention row (probabilities; normalised here in case of rounding)."""
    probabilities = np.asarray(row, np.float64).ravel()
    probabilities = probabilities / probabilities.sum()
    count = probabilities.size
    nats = float(attention_entropy(torch.from_numpy(probabilities)[None]))
    entropy = nats / math.log(count) if count > 1 else 0.0
    return Sharpness(float(probabilities.max() * count), entropy)


# ------------------------------------------------------------------------------------ colour scale
def scale_top(*peaks: float) -> float:
    """The top of a heatmap colour scale: the highest peak, but at least :data:`SCALE_FLOOR` × uniform."""
    return max(SCALE_FLOOR, *peaks)


def heatmap_over(density: np.ndarray, reference: np.ndarray, top: float) -> np.ndarray:
    """Attention density (1 = uniform) over the reference (uint8 H × W × 3): from uniform up to ``top`` the
    colour runs through jet and grows opaque (to :data:`HEAT_OPACITY`); at or below uniform the reference
    shows untouched, so it stays readable and only places the pixel favours are coloured."""
    level = np.clip((density - 1.0) / (top - 1.0), 0.0, 1.0)[..., None]
    alpha = HEAT_OPACITY * level
    blended = (1 - alpha) * reference / 255 + alpha * jet(level[..., 0])
    return np.round(255 * blended).astype(np.uint8)


def colour_scale(top: float, peak: float) -> str:
    """HTML for the heatmap's colour bar: jet from 1× (uniform, transparent) to ``top`` × uniform, and the
    clicked point's ``peak``."""
    stops = ", ".join(
        f"rgba({r}, {g}, {b}, {HEAT_OPACITY * value:.2f}) {100 * value:.1f}%"
        for value in np.linspace(0, 1, 9)
        for r, g, b in [np.round(255 * jet(np.array(value))).astype(int).tolist()]
    )
    return (
        '<div class="colour-scale">'
        f'<div class="colour-bar" style="background: linear-gradient(to right, {stops})"></div>'
        f'<div class="colour-ticks"><span>1× = uniform</span><span>{top:.1f}× uniform</span></div>'
        "<p>Heatmap colour: how much more than evenly this pixel attends to each place of the reference; "
        f"places at or below uniform are left uncoloured. This view's peak is {peak:.1f}×.</p></div>"
    )


# ------------------------------------------------------------------------------------------ markers
def mark_point(image: Image.Image, point: tuple[float, float]) -> np.ndarray:
    """The image with a crosshair on ``point``, so the user sees which pixel the heatmaps are for."""
    marked = image.convert("RGB")
    draw = ImageDraw.Draw(marked)
    x, y = point
    arm, line = max(4, min(marked.size) // 10), max(1, min(marked.size) // 160)
    for colour, width in (("white", 3 * line), ("black", line)):
        draw.line((x - arm, y, x + arm, y), fill=colour, width=width)
        draw.line((x, y - arm, x, y + arm), fill=colour, width=width)
    return np.asarray(marked)


def ring_size(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Radius, line width and the margin that keeps a whole ring on a picture of ``shape`` (H, W, ...)."""
    radius, line = max(3, min(shape[:2]) // 12), max(1, min(shape[:2]) // 96)
    return radius, line, radius + 2 * line + 1


def with_margin(picture: np.ndarray, margin: int) -> np.ndarray:
    """The picture inside a white frame ``margin`` pixels wide (room for rings at its edges)."""
    return np.pad(picture, ((margin, margin), (margin, margin), (0, 0)), constant_values=255)


def mark_looked_at(picture: np.ndarray, point: tuple[float, float]) -> np.ndarray:
    """The picture framed by :func:`with_margin` with a ring around ``point`` (pixels of the unframed
    picture), so the ring is never cut at the picture's edge; the centre stays visible."""
    radius, line, margin = ring_size(picture.shape)
    marked = Image.fromarray(with_margin(picture, margin))
    x, y = point[0] + margin, point[1] + margin
    draw = ImageDraw.Draw(marked)
    for colour, width in (("white", 3 * line), ("black", line)):
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=colour, width=width)
    return np.asarray(marked)


def dotted_outline(picture: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The picture with the border of ``region`` (bool, same H × W) drawn dotted black and white."""
    rows, columns = np.nonzero(region & ~ndimage.binary_erosion(region, border_value=0))
    marked = picture.copy()
    dark = ((rows + columns) // 2) % 2 == 0
    marked[rows[dark], columns[dark]] = 0
    marked[rows[~dark], columns[~dark]] = 255
    return marked


def thumbnail(image: np.ndarray, height: int = THUMBNAIL_HEIGHT) -> np.ndarray:
    """At most ``height`` pixels tall: SDXL has 70 layers; full-size heatmaps of all are slow to send."""
    if image.shape[0] <= height:
        return image
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


# ------------------------------------------------------------------------------------- coordinates
def display_factor(size: tuple[int, int], min_height: int = DISPLAY_HEIGHT) -> int:
    """Whole-pixel enlargement of an image of ``size`` (width, height) to at least ``min_height`` tall."""
    return max(1, math.ceil(min_height / size[1]))


def enlarge(image: Image.Image, factor: int) -> Image.Image:
    """Each pixel becomes a ``factor`` × ``factor`` block (nearest neighbour: small results stay crisp)."""
    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def display_to_result(index: tuple[int, int], generation: Generation) -> tuple[int, int]:
    """The result pixel ``(x, y)`` under pixel ``index`` of the enlarged picture of the result."""
    factor = display_factor(generation.image.size)
    x, y = index
    return int(x) // factor, int(y) // factor


def display_to_model(point: tuple[float, float], generation: Generation) -> tuple[float, float]:
    """A pixel ``(x, y)`` of the shown result (cropped back, or the photo with the result pasted in after an
    auto-crop) in the model-size image the trace refers to."""
    framing = generation.prepared.framing
    canvas_x, canvas_y = framing.to_frame(point, generation.image.size)
    canvas_w, canvas_h = framing.box.canvas_size
    image_h, image_w = generation.trace.image_size if generation.trace is not None else (canvas_h, canvas_w)
    model_x = min(max(canvas_x * image_w / canvas_w - 0.5, 0.0), image_w - 1.0)
    model_y = min(max(canvas_y * image_h / canvas_h - 0.5, 0.0), image_h - 1.0)
    return model_x, model_y


def marked_result(generation: Generation, point: tuple[float, float] | None) -> np.ndarray:
    """The result enlarged for display (:func:`display_factor`), with a crosshair on ``point`` if given."""
    factor = display_factor(generation.image.size)
    shown = enlarge(generation.image.convert("RGB"), factor)
    if point is None:
        return np.asarray(shown)
    return mark_point(shown, tuple((value + 0.5) * factor - 0.5 for value in point))


# ------------------------------------------------------------------------------------------ the view
def inspector_view(
    generation: Generation, point: tuple[float, float] | None = None, layer: object = TRAINED,
    timestep: object = TRAINED,
) -> InspectorView:
    """Everything the inspector shows for ``point`` (a pixel of the shown result; ``None`` before a click)
    in the view the selectors chose (:func:`chosen_view`). The result comes enlarged for display
    (:func:`marked_result`), the heatmaps at the model's size inside a frame that keeps rings whole."""
    recorded = generation.trace
    layers, steps, where = chosen_view(recorded, layer, timestep)
    flow = recorded.flow_color(layers, steps)
    warped = recorded.warped_reference(layers, steps)
    if point is None:
        hint = f"{where}: click the result to see where that pixel looked in the reference."
        return InspectorView(marked_result(generation, None), None, "", [], flow, warped, hint)
    model_point = display_to_model(point, generation)
    density = recorded.attention(model_point, layers, steps)
    looked_at = recorded.flow_at(model_point, layers, steps)
    sinks = sink_mask(recorded.everywhere(layers, steps))
    peak = float(density.max())
    heatmap = heatmap_over(density, recorded.reference, scale_top(peak))
    heatmap = mark_looked_at(dotted_outline(heatmap, sinks), looked_at)
    spread = attention_spread(density, sinks)
    caption = (
        f"{where}; point ({point[0]:.0f}, {point[1]:.0f}) of the result takes from ({looked_at[0]:.0f}, "
        f"{looked_at[1]:.0f}) of the reference (ring): {spread}."
    )
    if isinstance(layers, str):
        caption += f" This layer: {sharpness(attention_row(recorded, model_point, layers, steps))}."
    per_layer, top = _layer_heatmaps(recorded, model_point, steps)
    caption += (
        f" The per-layer heatmaps below share one colour scale, 1× to {top:.1f}× uniform; each ring is that "
        "layer's own point."
    )
    return InspectorView(
        marked_result(generation, point), heatmap, colour_scale(scale_top(peak), peak), per_layer, flow, warped,
        caption, looked_at, spread,
    )


def _layer_heatmaps(
    recorded: Trace, point: tuple[float, float], steps: StepChoice
) -> tuple[list[tuple[np.ndarray, str]], float]:
    """Each recorded layer's heatmap (a thumbnail, ringed at its own flow) with its sharpness, on one colour
    scale whose top covers every layer's peak as the captions state it; and that top."""
    labels = layer_labels(recorded.layers, recorded.token_sizes)
    densities = {name: recorded.attention(point, name, steps) for name in recorded.layers}
    sharp = {name: sharpness(attention_row(recorded, point, name, steps)) for name in recorded.layers}
    top = scale_top(*(max(sharp[name].peak, float(densities[name].max())) for name in recorded.layers))
    pictures = []
    for name, density in densities.items():
        small = thumbnail(heatmap_over(density, recorded.reference, top))
        factor = small.shape[0] / density.shape[0]
        x, y = recorded.flow_at(point, name, steps)
        pictures.append(
            (mark_looked_at(small, ((x + 0.5) * factor - 0.5, (y + 0.5) * factor - 0.5)), f"{labels[name]}: {sharp[name]}")
        )
    return pictures, top


# ----------------------------------------------------------------------------------------- the runs
def run_summary(generation: Generation) -> str:
    """E.g. "try-on result of 14:03:12 (seed 7)"."""
    task = "pose-transfer" if generation.prepared.model_type == POSE_MODEL else "try-on"
    return f"{task} result of {generation.made_at:%H:%M:%S} (seed {generation.seed})"


def run_note(shown: Generation | None, latest: Generation | None = None) -> str:
    """Which run the inspector shows, and whether a newer result was made without recording attention."""
    if shown is None:
        note = "No recorded result yet: tick **Record attention for the inspector** and generate."
    else:
        note = f"Showing the {run_summary(shown)}."
    if latest is not None and latest is not shown and latest.trace is None:
        note += (
            f" The latest result ({run_summary(latest)}) was generated without recording attention: "
            "tick **Record attention for the inspector** and generate again to inspect it."
        )
    return note
