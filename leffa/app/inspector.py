"""What the attention & flow inspector shows for a recorded generation, in terms a user can read.

Readable layer names ("down 1 · 16×12"), how sharp each layer's attention is (peak over uniform and
normalised entropy), a colour scale for the heatmaps, markers on the clicked point and on the attention's
peak, which run is on screen, and the enlargement that lets a small result fill its box and still map a
click to the right pixel. No Gradio here (``app.py`` lays it out); the attention maths is ``leffa.inspect``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from leffa.app.service import POSE_MODEL, Generation
from leffa.core.flow import attention_entropy
from leffa.inspect.trace import Trace
from leffa.inspect.visualize import jet, query_token_index

#: Value of the layer and timestep selectors that averages over all recorded ones.
ALL = "all"
#: Height of the per-layer heatmaps in the inspector's gallery.
THUMBNAIL_HEIGHT = 256
#: The clickable result is enlarged (whole pixels, nearest neighbour) to at least this height, so that it
#: fills its box: Gradio maps a click on a picture shown larger than its pixel size to no pixel at all.
DISPLAY_HEIGHT = 512
#: Heatmap colour scales reach at least this (× uniform), so that uniform attention shows mid-scale
#: (cyan-green), not as the hottest red.
SCALE_FLOOR = 2.0
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
    """(label, layer name) pairs for the layer selector, the average over all layers first."""
    labels = layer_labels(recorded.layers, recorded.token_sizes)
    return [("all layers (average)", ALL), *((labels[name], name) for name in recorded.layers)]


def timestep_choices(recorded: Trace) -> list[tuple[str, str]]:
    """(label, timestep) pairs for the timestep selector, the average over all timesteps first."""
    return [("all timesteps (average)", ALL), *((f"t = {t}", str(t)) for t in recorded.timesteps)]


# ---------------------------------------------------------------------------------------- sharpness
def attention_row(
    recorded: Trace, point: tuple[float, float], layer: str, timestep: int | None = None
) -> np.ndarray:
    """The recorded attention probabilities (over the layer's pooled keys) of the query under model pixel
    ``point``, averaged over the recorded timesteps unless one is given; float64, sums to 1."""
    steps = recorded.timesteps if timestep is None else [timestep]
    index = query_token_index(point, recorded.map_sizes[layer], recorded.image_size)
    rows = [recorded.maps[(step, layer)][index].double().numpy() for step in steps]
    return np.mean(rows, axis=0)


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
    """Attention density (1 = uniform) coloured with jet from 0 to ``top`` and blended half over the
    reference image (uint8 H × W × 3)."""
    colours = jet(np.clip(density / top, 0.0, 1.0))
    return np.round(255 * (0.5 * reference / 255 + 0.5 * colours)).astype(np.uint8)


def colour_scale(top: float, peak: float) -> str:
    """HTML for the heatmap's colour bar: jet from 0 to ``top`` × uniform with uniform attention (1×)
    marked, and the clicked point's ``peak``."""
    stops = ", ".join(
        f"rgb({r}, {g}, {b}) {100 * value:.1f}%"
        for value in np.linspace(0, 1, 9)
        for r, g, b in [np.round(255 * jet(np.array(value))).astype(int).tolist()]
    )
    uniform = 100 / top
    label_at = min(max(uniform, 8.0), 85.0)  # the label stays inside the bar's width
    return (
        '<div class="colour-scale">'
        f'<div class="colour-bar" style="background: linear-gradient(to right, {stops})">'
        f'<span class="uniform-mark" style="left: {uniform:.1f}%"></span></div>'
        f'<div class="colour-ticks"><span>0</span><span>{top:.1f}× uniform</span></div>'
        f'<div class="colour-ticks"><span style="left: {label_at:.1f}%">▲ 1× = uniform</span></div>'
        "<p>Heatmap colour: attention probability relative to spreading evenly over the reference (blended "
        f"half over it); this point's peak is {peak:.1f}×.</p></div>"
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


def mark_peak(heatmap: np.ndarray, density: np.ndarray) -> np.ndarray:
    """The heatmap with a ring around the attention's highest point (the first, if there are several)."""
    y, x = np.unravel_index(int(np.argmax(density)), density.shape)
    marked = Image.fromarray(heatmap)
    radius, line = max(3, min(marked.size) // 12), max(1, min(marked.size) // 96)
    draw = ImageDraw.Draw(marked)
    for colour, width in (("white", 3 * line), ("black", line)):
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=colour, width=width)
    return np.asarray(marked)


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
    """A pixel ``(x, y)`` of the shown (cropped back) result in the model-size image the trace refers to."""
    box = generation.prepared.box
    width, height = box.original_size
    x, y = point
    if not (0 <= x < width and 0 <= y < height):
        raise ValueError(f"point ({x}, {y}) lies outside the result image of {width}x{height} pixels")
    left, top, right, bottom = box.box
    canvas_w, canvas_h = box.canvas_size
    image_h, image_w = generation.trace.image_size if generation.trace is not None else (canvas_h, canvas_w)
    canvas_x = left + (x + 0.5) * (right - left) / width
    canvas_y = top + (y + 0.5) * (bottom - top) / height
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


# ----------------------------------------------------------------------------------------- the runs
def run_summary(generation: Generation) -> str:
    """E.g. "try-on result of 14:03:12 (seed 7)"."""
    task = "pose-transfer" if generation.prepared.model_key == POSE_MODEL else "try-on"
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
