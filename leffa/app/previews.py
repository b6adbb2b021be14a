"""The pictures under *Previews*: what preprocessing made of the photos, in a form a user can check.

The parse map comes with a legend of the labels it contains, the mask is drawn over the person (as in the
mask editor), keypoints and DensePose are shown as made.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from leffa.app.service import Prepared
from preprocess.parsing import PARSE_LABELS, ParseResult

#: Colour and opacity (RGBA) of the mask drawn over the person (also the mask editor's brush).
MASK_COLOR: tuple[int, int, int, int] = (255, 40, 40, 128)
#: (preview key, caption) in the order they are shown.
PREVIEWS = (
    ("crop", "auto-crop"), ("parse", "parse map"), ("keypoints", "keypoints"), ("mask", "mask"),
    ("densepose", "DensePose"),
)


def label_colours() -> np.ndarray:
    """The parse map's colour of each label (uint8, one row per entry of ``PARSE_LABELS``)."""
    every_label = np.arange(len(PARSE_LABELS), dtype=np.uint8)[None]
    return np.asarray(ParseResult(labels=every_label).preview().convert("RGB"))[0]


def parse_with_legend(labels: np.ndarray) -> Image.Image:
    """The coloured parse map with, on its right, a swatch and the name of every label it contains."""
    coloured = ParseResult(labels=labels).preview().convert("RGB")
    present = [index for index in np.unique(labels).tolist() if index != 0]  # 0 is the background
    font_size = max(12, coloured.height // 30)
    font = ImageFont.load_default(size=font_size)
    line = round(font_size * 1.5)
    names = [PARSE_LABELS[index].replace("_", " ") for index in present]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = max((measure.textlength(name, font=font) for name in names), default=0)
    legend_width = round(line * 1.6 + text_width) + font_size
    canvas = Image.new("RGB", (coloured.width + legend_width, max(coloured.height, line * (len(names) + 1))), "white")
    canvas.paste(coloured, (0, 0))
    draw = ImageDraw.Draw(canvas)
    colours = label_colours()
    for row, (index, name) in enumerate(zip(present, names, strict=True)):
        top = font_size // 2 + row * line
        left = coloured.width + font_size // 2
        swatch = (left, top, left + line - 4, top + line - 4)
        draw.rectangle(swatch, fill=tuple(colours[index].tolist()), outline="black")
        draw.text((left + line + 2, top + (line - 4) / 2), name, fill="black", font=font, anchor="lm")
    return canvas


def mask_layer(mask: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """The mask (white = region to generate) at ``size`` (width, height) as a translucent red RGBA layer."""
    inside = np.asarray(mask.convert("L").resize(size, Image.Resampling.NEAREST)) > 127
    overlay = np.zeros((size[1], size[0], 4), np.uint8)
    overlay[inside] = MASK_COLOR
    return overlay


def mask_over(person: Image.Image, mask: Image.Image) -> Image.Image:
    """The person with the mask (white = region to generate) as a translucent red layer."""
    base = person.convert("RGBA")
    return Image.alpha_composite(base, Image.fromarray(mask_layer(mask, base.size))).convert("RGB")


def previews(prepared: Prepared) -> list[tuple[Image.Image, str]]:
    """The auto-crop (the photo with the cut outlined), parse map (with legend), keypoints, mask (over the
    person) and DensePose, those that were made."""
    shown = dict(prepared.previews)
    if prepared.parse is not None:
        shown["parse"] = parse_with_legend(prepared.parse)
    if "mask" in shown:
        shown["mask"] = mask_over(prepared.person, shown["mask"])
    return [(shown[key], caption) for key, caption in PREVIEWS if key in shown]
