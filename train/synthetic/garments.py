"""The synthetic garments: T-shirts with a texture family (stripes, checks, dots, glyphs, blocks) and a
chest print, with the landmarks the person renderer (:mod:`train.synthetic.people`) maps onto a body."""

from __future__ import annotations

import colorsys
import functools
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

PATTERNS: tuple[str, ...] = ("stripes", "checks", "dots", "glyphs", "blocks")
_GLYPHS = "ABCDEFGHJKLMNPRSTUVWXYZ2345789#&@%+*"
#: Garment landmarks matched with the body by the thin-plate spline ("_l" = image left).
LANDMARKS: tuple[str, ...] = (
    "collar_l",
    "collar_r",
    "collar_centre",
    "shoulder_l",
    "shoulder_r",
    "armpit_l",
    "armpit_r",
    "waist_l",
    "waist_r",
    "hem_l",
    "hem_r",
    "hem_centre",
    "chest",
)


@dataclass(frozen=True)
class Garment:
    """Garment image and the geometry the person renderer maps onto the body."""

    image: np.ndarray
    silhouette: np.ndarray  # bool
    labels: np.ndarray  # uint8: 0 outside, 1 body, 2 image-left sleeve, 3 image-right sleeve
    landmarks: np.ndarray  # (13, 2) body landmarks in the order of LANDMARKS
    sleeve_angle: float  # radians from vertical
    sleeve_end: float  # width of the sleeve opening
    armhole: float
    slope: float
    length: float
    half_width: float
    hem_half_width: float
    neck_half_width: float
    neck_depth: float
    pattern: str



# ---------------------------------------------------------------------------------------------- colours


def colour(rng: np.random.Generator, s: tuple[float, float], v: tuple[float, float]) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*s), rng.uniform(*v))
    return np.array(rgb) * 255.0


def palette(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` garment colours, each at least 120 (sum of channel differences) from the previous ones."""
    colours: list[np.ndarray] = []
    while len(colours) < n:
        c = colour(rng, (0.2, 1.0), (0.25, 1.0))
        if all(np.abs(c - o).sum() >= 120 for o in colours):
            colours.append(c)
    return np.stack(colours).astype(np.float32)



# ---------------------------------------------------------------------------------------------- garment


def rotated(xx: np.ndarray, yy: np.ndarray, theta: float) -> tuple[np.ndarray, np.ndarray]:
    return xx * np.cos(theta) + yy * np.sin(theta), -xx * np.sin(theta) + yy * np.cos(theta)


def _stripes(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, b: float) -> np.ndarray:
    theta = np.deg2rad(rng.choice([0, 30, 45, 60, 90, 120, 135, 150]) + rng.uniform(-5, 5))
    t = rotated(xx, yy, theta)[0] / (rng.uniform(0.035, 0.1) * b) + rng.uniform()
    colours = palette(rng, int(rng.integers(2, 4)))
    if len(colours) == 2:
        return colours[(t % 1.0 < rng.uniform(0.3, 0.7)).astype(np.intp)]
    return colours[np.floor(t).astype(np.intp) % len(colours)]


def _checks(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, b: float) -> np.ndarray:
    u, v = rotated(xx, yy, np.deg2rad(rng.choice([0, 45]) + rng.uniform(-5, 5)))
    period = rng.uniform(0.05, 0.12) * b
    a = np.floor(u / period + rng.uniform()).astype(np.intp) % 2
    c = np.floor(v / (period * rng.uniform(0.8, 1.25)) + rng.uniform()).astype(np.intp) % 2
    if rng.uniform() < 0.5:
        return palette(rng, 2)[a ^ c]
    return palette(rng, 3)[a + c]  # gingham: base, single and double crossings


def _dots(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, b: float) -> np.ndarray:
    u, v = rotated(xx, yy, np.deg2rad(rng.uniform(-20, 20)))
    spacing = rng.uniform(0.06, 0.11) * b
    radius = spacing * rng.uniform(0.18, 0.32)
    row = np.floor(v / spacing)
    u = u / spacing + 0.5 * (row % 2) * (rng.uniform() < 0.5)
    du = (u - np.round(u)) * spacing
    dv = (v / spacing - row - 0.5) * spacing
    return palette(rng, 2)[(du**2 + dv**2 <= radius**2).astype(np.intp)]


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _glyph_mask(h: int, w: int, items: list[tuple[float, float, str, int]]) -> np.ndarray:
    """Bool mask of characters ``(x, y, text, font size)`` centred at ``(x, y)``."""
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for x, y, text, size in items:
        draw.text((x, y), text, fill=255, font=_font(size), anchor="mm")
    return np.asarray(canvas) >= 128


def _glyphs(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, b: float) -> np.ndarray:
    h, w = xx.shape
    spacing = rng.uniform(0.09, 0.15) * b
    size = max(6, int(round(spacing * rng.uniform(0.6, 0.85))))
    motif = [str(c) for c in rng.choice(list(_GLYPHS), int(rng.integers(1, 4)))]
    items = []
    for r, y in enumerate(np.arange(rng.uniform(0, spacing), h + spacing, spacing)):
        for c, x in enumerate(
            np.arange(rng.uniform(0, spacing) - 0.5 * spacing * (r % 2), w + spacing, spacing)
        ):
            items.append((float(x), float(y), motif[(r + c) % len(motif)], size))
    return palette(rng, 2)[_glyph_mask(h, w, items).astype(np.intp)]


def _blocks(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, b: float) -> np.ndarray:
    theta = np.deg2rad(rng.choice([0, 90, 30, 150]))
    t = rotated(xx, yy, theta)[1]
    n = int(rng.integers(2, 5))
    lo, span = t.min(), np.ptp(t)
    cuts = np.sort(rng.uniform(lo + 0.3 * span, lo + 0.7 * span, n - 1))  # inside the garment, not the margin
    colours = palette(rng, n + 1)
    image = colours[np.searchsorted(cuts, t)]
    seam = np.min(np.abs(t[..., None] - cuts), axis=-1) < rng.uniform(0.006, 0.02) * b
    image[seam] = colours[n]
    return image


#: Each pattern fills the whole canvas with a float RGB texture; the silhouette cuts the garment out of it.
_PATTERN_FUNCTIONS = {
    "stripes": _stripes,
    "checks": _checks,
    "dots": _dots,
    "glyphs": _glyphs,
    "blocks": _blocks,
}


def _chest_print(
    rng: np.random.Generator, texture: np.ndarray, centre: tuple[float, float], b: float
) -> None:
    """Print 1-3 large characters, optionally on a badge, on the chest (in place)."""
    h, w = texture.shape[:2]
    colours = palette(rng, 2)
    size = max(8, int(round(rng.uniform(0.09, 0.15) * b)))
    text = "".join(rng.choice(list(_GLYPHS), int(rng.integers(1, 4))))
    if rng.uniform() < 0.5:
        yy, xx = np.mgrid[0:h, 0:w]
        radius = size * (0.45 + 0.3 * len(text))
        badge = ((xx - centre[0]) / radius) ** 2 + ((yy - centre[1]) / (0.8 * size)) ** 2 <= 1.0
        texture[badge] = colours[1]
    texture[_glyph_mask(h, w, [(centre[0], centre[1], text, size)])] = colours[0]


def polygon_mask(shape: tuple[int, int], points: np.ndarray) -> np.ndarray:
    """Bool mask of a polygon given in pixel-centre coordinates (sub-pixel vertices)."""
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(np.asarray(points) * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    return mask.astype(bool)


def sleeve_axes(angle: float, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors along a sleeve/arm (down and outward) and across it (towards the body)."""
    along = np.array([side * np.sin(angle), np.cos(angle)])
    across = np.array([-side * np.cos(angle), np.sin(angle)])
    return along, across


def make_garment(rng: np.random.Generator, h: int, w: int, b: float) -> Garment:
    cx = (w - 1) / 2 + rng.uniform(-0.015, 0.015) * b
    top = rng.uniform(0.14, 0.19) * b
    half = rng.uniform(0.17, 0.21) * b
    slope = rng.uniform(0.02, 0.04) * b
    neck_half = half * rng.uniform(0.32, 0.42)
    neck_depth = rng.uniform(0.04, 0.09) * b
    armhole = rng.uniform(0.10, 0.13) * b
    length = rng.uniform(0.50, 0.60) * b
    hem_half = half * rng.uniform(0.92, 1.04)
    angle = np.deg2rad(rng.uniform(35, 50))
    sleeve_length = rng.uniform(0.09, 0.13) * b  # along the outer edge
    sleeve_end = armhole * rng.uniform(0.7, 0.85)

    arc = np.linspace(0.0, np.pi, 9)
    neckline = np.stack([cx - neck_half * np.cos(arc), top + neck_depth * np.sin(arc)], axis=1)
    shoulder = {s: np.array([cx + s * half, top + slope]) for s in (-1, 1)}
    armpit = {s: shoulder[s] + [0.0, armhole] for s in (-1, 1)}
    hem = {s: np.array([cx + s * hem_half, top + length]) for s in (-1, 1)}
    body = np.vstack([neckline, shoulder[1], armpit[1], hem[1], hem[-1], armpit[-1], shoulder[-1]])

    labels = np.zeros((h, w), np.uint8)
    labels[polygon_mask((h, w), body)] = 1
    for s, value in ((-1, 2), (1, 3)):
        along, across = sleeve_axes(angle, s)
        end_top = shoulder[s] + sleeve_length * along
        quad = np.stack([shoulder[s], end_top, end_top + sleeve_end * across, armpit[s]])
        labels[polygon_mask((h, w), quad) & (labels == 0)] = value
    silhouette = labels > 0

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    pattern = str(rng.choice(PATTERNS))
    texture = _PATTERN_FUNCTIONS[pattern](rng, xx, yy, b)
    if rng.uniform() < 0.5:
        _chest_print(rng, texture, (cx, top + length * rng.uniform(0.25, 0.45)), b)
    image = np.where(silhouette[..., None], np.clip(np.rint(texture), 0, 255), 255).astype(np.uint8)

    landmarks = np.stack(
        [
            [cx - neck_half, top],
            [cx + neck_half, top],
            [cx, top + neck_depth],
            shoulder[-1],
            shoulder[1],
            armpit[-1],
            armpit[1],
            (armpit[-1] + hem[-1]) / 2,
            (armpit[1] + hem[1]) / 2,
            hem[-1],
            hem[1],
            [cx, top + length],
            [cx, top + 0.35 * length],
        ]
    )
    return Garment(
        image=image,
        silhouette=silhouette,
        labels=labels,
        landmarks=landmarks,
        sleeve_angle=angle,
        sleeve_end=sleeve_end,
        armhole=armhole,
        slope=slope,
        length=length,
        half_width=half,
        hem_half_width=hem_half,
        neck_half_width=neck_half,
        neck_depth=neck_depth,
        pattern=pattern,
    )
