"""Procedural virtual try-on data whose ground-truth correspondence is known exactly.

Why: the Leffa loss claims to make attention point at the right reference pixels, but real try-on data has no
ground truth for that. Here every person image is rendered by sampling the garment image through a known
map, so the true flow (person pixel -> garment pixel it shows) is exact and attention flows can be scored.

Conventions
- Images are uint8 RGB ``(H, W, 3)``; the garment image has the person's size, as in VITON-HD.
- ``flow``: for every person pixel the garment position it shows, in ``grid_sample`` coordinates with
  ``align_corners=True`` (x first; -1 is the centre of the first column/row, +1 of the last), zero where
  ``flow_valid`` is False. The person's garment pixels are the bilinear samples of the garment image at
  exactly these positions (zero padding), rounded to uint8, so ``grid_sample(garment, flow)`` reproduces them
  up to half a grey level. The garment is not shaded, which keeps the correspondence exact.
- The garment is a T-shirt: its body is mapped onto the torso by a thin-plate spline through matching
  landmarks (collar, shoulders, armpits, waist, hem, chest; some jittered so the map bends), each sleeve by
  a rotation and scaling about its shoulder point onto the upper arm. Forearms, hands and the head are drawn
  in front of the garment and are therefore not ``flow_valid``.
- ``parts`` holds DensePose part indices (0 background, 1..24); the person faces the camera, so the
  person's right side is on the image's left. ``densepose`` renders them as grey ``round(I * 255 / 24)`` in
  all three channels (a stand-in for the Parula render of the released VITON-HD model).
"""

from __future__ import annotations

import colorsys
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from scipy.interpolate import RBFInterpolator
from torch.utils.data import Dataset

from train.datasets import check_size as check_image_size

Size = tuple[int, int]

#: DensePose part indices used by the renderer (person's right = image left).
DENSEPOSE_PARTS: dict[str, int] = {
    "torso": 2,
    "hand_right": 3,
    "hand_left": 4,
    "foot_left": 5,
    "foot_right": 6,
    "upper_leg_right": 9,
    "upper_leg_left": 10,
    "lower_leg_right": 13,
    "lower_leg_left": 14,
    "upper_arm_left": 15,
    "upper_arm_right": 16,
    "lower_arm_left": 19,
    "lower_arm_right": 20,
    "head_right": 23,
    "head_left": 24,
}
#: Grey level that replaces the masked region in the agnostic image (as in VITON-HD's agnostic images).
AGNOSTIC_GREY = 128
PATTERNS: tuple[str, ...] = ("stripes", "checks", "dots", "glyphs", "blocks")
SPLITS: tuple[str, ...] = ("train", "test")
_SPLIT_SPAN = 2**31
_GLYPHS = "ABCDEFGHJKLMNPRSTUVWXYZ2345789#&@%+*"
_SKIN = ((255, 224, 196), (241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 58, 40))
_HAIR = ((20, 20, 20), (60, 40, 25), (110, 75, 40), (200, 170, 100), (150, 60, 30), (120, 120, 120))
_PANTS = ((40, 60, 110), (30, 30, 35), (190, 170, 130), (90, 90, 95), (60, 80, 50), (120, 40, 40))
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
_SHOULDER = {-1: LANDMARKS.index("shoulder_l"), 1: LANDMARKS.index("shoulder_r")}


@dataclass(frozen=True)
class SyntheticSample:
    """One rendered try-on example; see the module docstring for the conventions."""

    person: np.ndarray  # uint8 (H, W, 3): the target image, person wearing the garment
    garment: np.ndarray  # uint8 (H, W, 3): the garment on white
    mask: np.ndarray  # bool (H, W): agnostic (inpainting) mask, True = to be generated
    densepose: np.ndarray  # uint8 (H, W, 3): grey render of ``parts``
    flow: np.ndarray  # float32 (H, W, 2): garment position shown by each person pixel
    flow_valid: np.ndarray  # bool (H, W): person pixels that show the garment
    seed: int
    cloth_mask: np.ndarray  # bool (H, W): garment silhouette in the garment image
    agnostic: np.ndarray  # uint8 (H, W, 3): person with the mask region grey
    parts: np.ndarray  # uint8 (H, W): DensePose part index per pixel
    pattern: str  # texture family of the garment, one of PATTERNS


@dataclass(frozen=True)
class _Garment:
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


#: Smallest image side the renderer draws a recognisable person at.
MIN_SIDE = 32


def check_size(size: Size) -> Size:
    """``size`` as ``(height, width)`` ints (:func:`train.datasets.check_size`, sides at least :data:`MIN_SIDE`)."""
    return check_image_size(size, MIN_SIDE)


def _check_seed(seed: int, name: str = "seed") -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"{name} must be a non-negative int, got {seed!r}")
    return int(seed)


def sample_seed(split: str, index: int, base_seed: int = 0) -> int:
    """Seed of sample ``index`` of ``split``; the train and test ranges of every base seed are disjoint."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    index = _check_seed(index, "index")
    if index >= _SPLIT_SPAN:
        raise ValueError(f"index must be below {_SPLIT_SPAN}, got {index}")
    return _check_seed(base_seed, "base_seed") * 2 * _SPLIT_SPAN + SPLITS.index(split) * _SPLIT_SPAN + index


# ---------------------------------------------------------------------------------------------- colours


def _colour(rng: np.random.Generator, s: tuple[float, float], v: tuple[float, float]) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*s), rng.uniform(*v))
    return np.array(rgb) * 255.0


def _palette(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` garment colours, each at least 120 (sum of channel differences) from the previous ones."""
    colours: list[np.ndarray] = []
    while len(colours) < n:
        c = _colour(rng, (0.2, 1.0), (0.25, 1.0))
        if all(np.abs(c - o).sum() >= 120 for o in colours):
            colours.append(c)
    return np.stack(colours).astype(np.float32)


def _jitter(rng: np.random.Generator, base: tuple[int, int, int], amount: float = 10.0) -> np.ndarray:
    return np.clip(np.array(base, dtype=np.float64) + rng.uniform(-amount, amount, 3), 0, 255)


# ---------------------------------------------------------------------------------------------- garment


def _rotated(xx: np.ndarray, yy: np.ndarray, theta: float) -> tuple[np.ndarray, np.ndarray]:
    return xx * np.cos(theta) + yy * np.sin(theta), -xx * np.sin(theta) + yy * np.cos(theta)


def _stripes(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, b: float) -> np.ndarray:
    theta = np.deg2rad(rng.choice([0, 30, 45, 60, 90, 120, 135, 150]) + rng.uniform(-5, 5))
    t = _rotated(xx, yy, theta)[0] / (rng.uniform(0.035, 0.1) * b) + rng.uniform()
    colours = _palette(rng, int(rng.integers(2, 4)))
    if len(colours) == 2:
        return colours[(t % 1.0 < rng.uniform(0.3, 0.7)).astype(np.intp)]
    return colours[np.floor(t).astype(np.intp) % len(colours)]


def _checks(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, b: float) -> np.ndarray:
    u, v = _rotated(xx, yy, np.deg2rad(rng.choice([0, 45]) + rng.uniform(-5, 5)))
    period = rng.uniform(0.05, 0.12) * b
    a = np.floor(u / period + rng.uniform()).astype(np.intp) % 2
    c = np.floor(v / (period * rng.uniform(0.8, 1.25)) + rng.uniform()).astype(np.intp) % 2
    if rng.uniform() < 0.5:
        return _palette(rng, 2)[a ^ c]
    return _palette(rng, 3)[a + c]  # gingham: base, single and double crossings


def _dots(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, b: float) -> np.ndarray:
    u, v = _rotated(xx, yy, np.deg2rad(rng.uniform(-20, 20)))
    spacing = rng.uniform(0.06, 0.11) * b
    radius = spacing * rng.uniform(0.18, 0.32)
    row = np.floor(v / spacing)
    u = u / spacing + 0.5 * (row % 2) * (rng.uniform() < 0.5)
    du = (u - np.round(u)) * spacing
    dv = (v / spacing - row - 0.5) * spacing
    return _palette(rng, 2)[(du**2 + dv**2 <= radius**2).astype(np.intp)]


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
    return _palette(rng, 2)[_glyph_mask(h, w, items).astype(np.intp)]


def _blocks(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, b: float) -> np.ndarray:
    theta = np.deg2rad(rng.choice([0, 90, 30, 150]))
    t = _rotated(xx, yy, theta)[1]
    n = int(rng.integers(2, 5))
    lo, span = t.min(), np.ptp(t)
    cuts = np.sort(rng.uniform(lo + 0.3 * span, lo + 0.7 * span, n - 1))  # inside the garment, not the margin
    colours = _palette(rng, n + 1)
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
    colours = _palette(rng, 2)
    size = max(8, int(round(rng.uniform(0.09, 0.15) * b)))
    text = "".join(rng.choice(list(_GLYPHS), int(rng.integers(1, 4))))
    if rng.uniform() < 0.5:
        yy, xx = np.mgrid[0:h, 0:w]
        radius = size * (0.45 + 0.3 * len(text))
        badge = ((xx - centre[0]) / radius) ** 2 + ((yy - centre[1]) / (0.8 * size)) ** 2 <= 1.0
        texture[badge] = colours[1]
    texture[_glyph_mask(h, w, [(centre[0], centre[1], text, size)])] = colours[0]


def _polygon_mask(shape: tuple[int, int], points: np.ndarray) -> np.ndarray:
    """Bool mask of a polygon given in pixel-centre coordinates (sub-pixel vertices)."""
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(np.asarray(points) * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _sleeve_axes(angle: float, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors along a sleeve/arm (down and outward) and across it (towards the body)."""
    along = np.array([side * np.sin(angle), np.cos(angle)])
    across = np.array([-side * np.cos(angle), np.sin(angle)])
    return along, across


def _make_garment(rng: np.random.Generator, h: int, w: int, b: float) -> _Garment:
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
    labels[_polygon_mask((h, w), body)] = 1
    for s, value in ((-1, 2), (1, 3)):
        along, across = _sleeve_axes(angle, s)
        end_top = shoulder[s] + sleeve_length * along
        quad = np.stack([shoulder[s], end_top, end_top + sleeve_end * across, armpit[s]])
        labels[_polygon_mask((h, w), quad) & (labels == 0)] = value
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
    return _Garment(
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


# ---------------------------------------------------------------------------------------------- mapping


def thin_plate_spline(src: np.ndarray, dst: np.ndarray) -> RBFInterpolator:
    """The 2-D thin-plate spline through the control points: maps ``src`` (n, 2) exactly onto ``dst``."""
    return RBFInterpolator(np.asarray(src, np.float64), np.asarray(dst, np.float64), kernel="thin_plate_spline")


def _to_flow(g: np.ndarray, h: int, w: int) -> np.ndarray:
    """Garment pixel coordinates (..., 2) -> float32 grid_sample coordinates (align_corners=True)."""
    return (g * (2.0 / np.array([w - 1, h - 1])) - 1.0).astype(np.float32)


def sample_at_flow(image: np.ndarray, flow: np.ndarray, mode: str = "bilinear") -> np.ndarray:
    """``image`` (H, W) or (H, W, C) read at the positions of ``flow`` (h, w, 2) by ``grid_sample``
    (``align_corners=True``, zero outside), as float32 (h, w) or (h, w, C).

    The generator renders with this very call, so ``grid_sample(garment, flow)`` gives the person's
    garment pixels back exactly (before their rounding to uint8).
    """
    planes = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    channels_last = planes.ndim == 3
    planes = planes.permute(2, 0, 1) if channels_last else planes[None]
    grid = torch.from_numpy(np.ascontiguousarray(flow, dtype=np.float32))[None]
    out = F.grid_sample(planes[None], grid, mode=mode, padding_mode="zeros", align_corners=True)[0]
    return (out.permute(1, 2, 0) if channels_last else out[0]).numpy()


def _sample_bilinear(image: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """:func:`sample_at_flow` at pixel coordinates ``gx``, ``gy`` (the image's own size)."""
    h, w = image.shape[:2]
    return sample_at_flow(image, _to_flow(np.stack([gx, gy], axis=-1), h, w))


# ---------------------------------------------------------------------------------------------- person


def _ellipse(xx: np.ndarray, yy: np.ndarray, centre: np.ndarray, rx: float, ry: float) -> np.ndarray:
    return ((xx - centre[0]) / rx) ** 2 + ((yy - centre[1]) / ry) ** 2 <= 1.0


def _capsule(
    xx: np.ndarray, yy: np.ndarray, p0: np.ndarray, p1: np.ndarray, r0: float, r1: float
) -> np.ndarray:
    """Segment ``p0 -> p1`` thickened to radius ``r0`` at ``p0`` and ``r1`` at ``p1``, round ends."""
    d = p1 - p0
    t = np.clip(((xx - p0[0]) * d[0] + (yy - p0[1]) * d[1]) / max(float(d @ d), 1e-9), 0.0, 1.0)
    return (xx - p0[0] - t * d[0]) ** 2 + (yy - p0[1] - t * d[1]) ** 2 <= (r0 + (r1 - r0) * t) ** 2


def _disk(radius: float) -> np.ndarray:
    r = max(1, int(round(radius)))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), _disk(radius)).astype(bool)


@dataclass
class _Canvas:
    """The person image being drawn (float RGB), its DensePose part map and the pixel-centre grids."""

    xx: np.ndarray
    yy: np.ndarray
    image: np.ndarray
    parts: np.ndarray
    b: float  # body scale in pixels (see make_sample)

    @property
    def shape(self) -> tuple[int, int]:
        return self.xx.shape


@dataclass(frozen=True)
class _Body:
    """Pose and proportions of the person, in pixels."""

    cx_hip: float
    cx_shoulder: float
    shoulder_y: float
    torso: float  # shoulder line to hip line
    half: float  # half shoulder width
    hip_half: float
    waist_half: float
    neck_half: float
    head_centre: np.ndarray
    head_rx: float
    head_ry: float
    skin: np.ndarray
    hair: np.ndarray
    pants: np.ndarray

    @property
    def hip_y(self) -> float:
        return self.shoulder_y + self.torso

    def centre_x(self, y: float) -> float:
        """Body midline at height ``y`` (the torso may lean)."""
        return self.cx_shoulder + (self.cx_hip - self.cx_shoulder) * (y - self.shoulder_y) / self.torso


def _make_body(rng: np.random.Generator, w: int, b: float) -> _Body:
    cx_hip = (w - 1) / 2 + rng.uniform(-0.05, 0.05) * b
    cx_shoulder = cx_hip + rng.uniform(-0.03, 0.03) * b
    shoulder_y = rng.uniform(0.23, 0.29) * b
    half = rng.uniform(0.16, 0.20) * b
    hip_half = half * rng.uniform(0.8, 0.92)
    head_rx = half * rng.uniform(0.42, 0.5)
    head_ry = head_rx * rng.uniform(1.2, 1.35)
    neck_height = rng.uniform(0.035, 0.05) * b
    return _Body(
        cx_hip=cx_hip,
        cx_shoulder=cx_shoulder,
        shoulder_y=shoulder_y,
        torso=rng.uniform(0.36, 0.42) * b,
        half=half,
        hip_half=hip_half,
        waist_half=hip_half * rng.uniform(0.88, 0.98),
        neck_half=half * rng.uniform(0.25, 0.32),
        head_centre=np.array(
            [cx_shoulder + rng.uniform(-0.01, 0.01) * b, shoulder_y - neck_height - 0.8 * head_ry]
        ),
        head_rx=head_rx,
        head_ry=head_ry,
        skin=_jitter(rng, _SKIN[rng.integers(len(_SKIN))]),
        hair=_jitter(rng, _HAIR[rng.integers(len(_HAIR))]),
        pants=_jitter(rng, _PANTS[rng.integers(len(_PANTS))], 20),
    )


@dataclass(frozen=True)
class _Fit:
    """How the garment sits on the body: scales and the person-side positions of the garment landmarks."""

    kx: float
    ky: float
    collar_y: float
    collar_half: float
    armpit_y: float
    waist_y: float
    targets: np.ndarray  # (13, 2), same order as _Garment.landmarks


def _fit_garment(rng: np.random.Generator, garment: _Garment, body: _Body, b: float) -> _Fit:
    """Place the garment landmarks on the body; jittered waist, hem and chest points make the map bend."""
    kx = body.half * rng.uniform(1.02, 1.1) / garment.half_width
    hem_y = body.shoulder_y + body.torso * rng.uniform(0.9, 1.08)
    ky = (hem_y - body.shoulder_y) / (garment.length - garment.slope)
    collar_y = body.shoulder_y - garment.slope * ky
    collar_half = garment.neck_half_width * kx * rng.uniform(0.95, 1.1)
    armpit_y = body.shoulder_y + garment.armhole * ky
    waist_y = (armpit_y + hem_y) / 2
    waist_half = (garment.half_width + garment.hem_half_width) / 2 * kx
    chest_y = collar_y + 0.35 * garment.length * ky
    targets = [[body.cx_shoulder + s * collar_half, collar_y] for s in (-1, 1)]
    targets.append([body.cx_shoulder, collar_y + garment.neck_depth * ky * rng.uniform(0.85, 1.15)])
    targets += [[body.cx_shoulder + s * garment.half_width * kx, body.shoulder_y] for s in (-1, 1)]
    for y, half, spread in (
        (armpit_y, garment.half_width * kx, (0.96, 1.0)),
        (waist_y, waist_half, (0.9, 1.05)),
    ):
        targets += [[body.centre_x(y) + s * half * rng.uniform(*spread), y] for s in (-1, 1)]
    targets += [
        [
            body.cx_hip + s * garment.hem_half_width * kx * rng.uniform(0.95, 1.05),
            hem_y + rng.uniform(-0.015, 0.015) * b,
        ]
        for s in (-1, 1)
    ]
    targets.append([body.cx_hip + rng.uniform(-0.01, 0.01) * b, hem_y + rng.uniform(-0.01, 0.02) * b])
    targets.append(
        [body.centre_x(chest_y) + rng.uniform(-0.02, 0.02) * b, chest_y + rng.uniform(-0.02, 0.02) * b]
    )
    return _Fit(kx, ky, collar_y, collar_half, armpit_y, waist_y, np.array(targets))


def _background(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    first = _colour(rng, (0.0, 0.35), (0.55, 1.0))
    if rng.uniform() < 0.4:
        return np.broadcast_to(first, xx.shape + (3,)).copy()
    second = _colour(rng, (0.0, 0.35), (0.55, 1.0))
    t = _rotated(xx, yy, rng.uniform(0, 2 * np.pi))[0]
    t = ((t - t.min()) / max(float(np.ptp(t)), 1e-9))[..., None]
    return first * (1 - t) + second * t


@dataclass(frozen=True)
class _Layer:
    """One garment piece as seen on the person: where it shows and the garment position each pixel shows."""

    shows: np.ndarray
    flow: np.ndarray


def _garment_layer(garment: _Garment, g: np.ndarray, label: int, gate: np.ndarray) -> _Layer:
    """Show the garment piece ``label`` through the person->garment pixel map ``g`` (H, W, 2).

    The piece's labels are dilated by one pixel so that neighbouring pieces overlap at their seam
    instead of leaving a gap.
    """
    h, w = garment.silhouette.shape
    flow = _to_flow(g, h, w)
    alpha = sample_at_flow(garment.silhouette, flow)
    piece = sample_at_flow(_dilate(garment.labels == label, 1), flow, mode="nearest")
    return _Layer(gate & (alpha >= 0.5) & (piece > 0), flow)


def _body_layer(canvas: _Canvas, garment: _Garment, fit: _Fit) -> _Layer:
    """Garment body through the thin-plate spline, limited to near the landmarks (the spline's far field
    could fold back onto the garment)."""
    b = canvas.b
    hull = cv2.convexHull(np.round(fit.targets * 16).astype(np.int32))[:, 0] / 16.0
    gate = _dilate(_polygon_mask(canvas.shape, hull), 0.04 * b)
    pixels = np.stack([canvas.xx[gate], canvas.yy[gate]], axis=1)
    g = np.zeros(canvas.shape + (2,))
    g[gate] = thin_plate_spline(fit.targets / b, garment.landmarks / b)(pixels / b) * b
    return _garment_layer(garment, g, 1, gate)


_SIDE = {-1: "right", 1: "left"}  # image left is the person's right


def _draw_legs(rng: np.random.Generator, canvas: _Canvas, body: _Body) -> None:
    xx, yy = canvas.xx, canvas.yy
    pants_top = body.shoulder_y + 0.8 * body.torso
    pants = _polygon_mask(
        canvas.shape,
        [
            [body.cx_hip - body.waist_half, pants_top],
            [body.cx_hip + body.waist_half, pants_top],
            [body.cx_hip + body.hip_half, body.hip_y],
            [body.cx_hip - body.hip_half, body.hip_y],
        ],
    )
    radius = 0.5 * body.hip_half
    upper, lower = body.torso * rng.uniform(1.0, 1.15), body.torso * rng.uniform(0.95, 1.05)
    for s in (-1, 1):
        spread = np.deg2rad(rng.uniform(0, 6))
        hip = np.array([body.cx_hip + s * 0.5 * body.hip_half, body.hip_y])
        knee = hip + upper * np.array([s * np.sin(spread), np.cos(spread)])
        ankle = knee + lower * np.array([s * np.sin(spread) * 0.5, 1.0])
        thigh = _capsule(xx, yy, hip, knee, radius, 0.8 * radius)
        shin = _capsule(xx, yy, knee, ankle, 0.8 * radius, 0.6 * radius)
        foot = _ellipse(xx, yy, ankle + [s * 0.3 * radius, 0.5 * radius], 1.1 * radius, 0.6 * radius)
        pants |= thigh | shin
        canvas.parts[thigh] = DENSEPOSE_PARTS[f"upper_leg_{_SIDE[s]}"]
        canvas.parts[shin & ~thigh] = DENSEPOSE_PARTS[f"lower_leg_{_SIDE[s]}"]
        canvas.parts[foot] = DENSEPOSE_PARTS[f"foot_{_SIDE[s]}"]
        canvas.image[foot] = body.pants * 0.35
    canvas.image[pants] = body.pants
    canvas.parts[pants & (yy < body.hip_y + 0.2 * body.torso)] = DENSEPOSE_PARTS["torso"]


def _draw_torso(canvas: _Canvas, body: _Body, fit: _Fit) -> np.ndarray:
    """Skin of neck and torso (under the garment); returns its region."""
    b, cx = canvas.b, body.cx_shoulder
    pants_top = body.shoulder_y + 0.8 * body.torso + 0.02 * b
    right_side = [
        [cx + body.neck_half, fit.collar_y],
        [cx + fit.collar_half, fit.collar_y + 0.01 * b],
        [cx + 0.95 * body.half, body.shoulder_y + 0.02 * b],
        [body.centre_x(fit.armpit_y) + 0.97 * body.half, fit.armpit_y],
        [body.centre_x(fit.waist_y) + body.waist_half, fit.waist_y],
        [body.cx_hip + body.hip_half, pants_top],
    ]
    left_side = [[2 * body.centre_x(y) - x, y] for x, y in reversed(right_side)]
    region = _polygon_mask(canvas.shape, right_side + left_side)
    region |= (
        (np.abs(canvas.xx - cx) <= body.neck_half)
        & (canvas.yy >= body.head_centre[1])
        & (canvas.yy <= body.shoulder_y)
    )
    canvas.image[region] = body.skin
    canvas.parts[region] = DENSEPOSE_PARTS["torso"]
    return region


@dataclass(frozen=True)
class _Arms:
    upper: np.ndarray  # upper arms (drawn under the garment)
    front: np.ndarray  # forearms and hands (drawn over it)
    hands: np.ndarray
    sleeves: list[_Layer]


def _draw_arms(rng: np.random.Generator, canvas: _Canvas, body: _Body, garment: _Garment, fit: _Fit) -> _Arms:
    """Draw both upper arms and map each sleeve onto its arm by a rotation and scaling about the shoulder.

    Forearms and hands are only returned (and labelled as parts): they are painted over the garment later.
    """
    xx, yy = canvas.xx, canvas.yy
    pixels = np.stack([xx.ravel(), yy.ravel()], axis=1)
    upper_arms, front, hands = (np.zeros(canvas.shape, bool) for _ in range(3))
    sleeves: list[_Layer] = []
    stretch = rng.uniform(0.9, 1.15)
    for s, label in ((-1, 2), (1, 3)):
        angle = np.deg2rad(rng.uniform(10, 40))
        along, across = _sleeve_axes(angle, s)
        g_along, g_across = _sleeve_axes(garment.sleeve_angle, s)
        shoulder = fit.targets[_SHOULDER[s]]
        offset = pixels - shoulder
        g = (
            garment.landmarks[_SHOULDER[s]]
            + np.outer(offset @ along / (fit.kx * stretch), g_along)
            + np.outer(offset @ across / fit.kx, g_across)
        ).reshape(canvas.shape + (2,))
        sleeves.append(_garment_layer(garment, g, label, np.ones(canvas.shape, bool)))

        thickness = garment.sleeve_end * fit.kx * rng.uniform(0.75, 0.85)
        joint = shoulder + 0.5 * garment.sleeve_end * fit.kx * across + 0.5 * thickness * along
        length = body.torso * rng.uniform(0.68, 0.78)
        elbow = joint + length * along
        bent = angle + np.deg2rad(rng.uniform(-45, 20))
        wrist = elbow + length * rng.uniform(0.85, 0.95) * np.array([s * np.sin(bent), np.cos(bent)])
        upper = _capsule(xx, yy, joint, elbow, thickness / 2, 0.42 * thickness)
        forearm = _capsule(xx, yy, elbow, wrist, 0.42 * thickness, 0.35 * thickness)
        direction = (wrist - elbow) / np.linalg.norm(wrist - elbow)
        hand = _ellipse(xx, yy, wrist + 0.35 * thickness * direction, 0.45 * thickness, 0.5 * thickness)
        canvas.image[upper] = body.skin
        canvas.parts[upper] = DENSEPOSE_PARTS[f"upper_arm_{_SIDE[s]}"]
        canvas.parts[forearm] = DENSEPOSE_PARTS[f"lower_arm_{_SIDE[s]}"]
        canvas.parts[hand] = DENSEPOSE_PARTS[f"hand_{_SIDE[s]}"]
        upper_arms |= upper
        front |= forearm | hand
        hands |= hand
    return _Arms(upper_arms, front, hands, sleeves)


def _draw_head(rng: np.random.Generator, canvas: _Canvas, body: _Body) -> np.ndarray:
    """Face and hair cap (in front of everything); returns the head region."""
    xx, yy, c = canvas.xx, canvas.yy, body.head_centre
    face = _ellipse(xx, yy, c, body.head_rx, body.head_ry)
    cap = _ellipse(xx, yy, c - [0, 0.05 * body.head_ry], 1.1 * body.head_rx, 1.05 * body.head_ry)
    cap &= yy < c[1] - rng.uniform(0.2, 0.45) * body.head_ry
    head = face | cap
    canvas.image[face] = body.skin
    canvas.image[cap] = body.hair
    canvas.parts[head] = np.where(
        xx[head] < c[0], DENSEPOSE_PARTS["head_right"], DENSEPOSE_PARTS["head_left"]
    )
    return head


def _render(rng: np.random.Generator, garment: _Garment, h: int, w: int, b: float) -> dict[str, np.ndarray]:
    """Draw a person wearing ``garment``, back to front; returns person, flow, flow_valid, parts and mask."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    canvas = _Canvas(xx, yy, _background(rng, xx, yy), np.zeros((h, w), np.uint8), b)
    body = _make_body(rng, w, b)
    fit = _fit_garment(rng, garment, body, b)
    if rng.uniform() < 0.4:
        long_hair = _ellipse(
            xx, yy, body.head_centre + [0, 0.6 * body.head_ry], 1.25 * body.head_rx, 1.5 * body.head_ry
        )
        canvas.image[long_hair] = body.hair
    _draw_legs(rng, canvas, body)
    torso = _draw_torso(canvas, body, fit)
    arms = _draw_arms(rng, canvas, body, garment, fit)

    flow = np.zeros((h, w, 2), np.float32)
    shows = np.zeros((h, w), bool)
    for layer in [_body_layer(canvas, garment, fit), *arms.sleeves]:
        flow[layer.shows] = layer.flow[layer.shows]
        shows |= layer.shows
    canvas.image[shows] = sample_at_flow(garment.image, flow)[shows]
    canvas.image[arms.front] = body.skin
    head = _draw_head(rng, canvas, body)

    flow_valid = shows & ~(arms.front | head)
    flow[~flow_valid] = 0.0
    region = torso | arms.upper | arms.front | shows
    mask = _dilate(region, 0.03 * b) & ~(head | arms.hands) | flow_valid
    return {
        "person": np.clip(np.rint(canvas.image), 0, 255).astype(np.uint8),
        "flow": flow,
        "flow_valid": flow_valid,
        "parts": canvas.parts,
        "mask": mask,
    }


def render_densepose(parts: np.ndarray) -> np.ndarray:
    """Grey 3-channel render ``round(I * 255 / 24)`` of a DensePose part-index map (H, W).

    The one place that turns part indices into the model's densepose image, so a colormap (the released
    VITON-HD model saw Parula) can be swapped in here.
    """
    parts = np.asarray(parts)
    if parts.ndim != 2 or parts.min(initial=0) < 0 or parts.max(initial=0) > 24:
        raise ValueError(f"parts must be an (H, W) map of indices 0..24, got shape {parts.shape}")
    grey = np.rint(parts.astype(np.float64) * 255.0 / 24.0).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def make_sample(seed: int, size: Size = (128, 96)) -> SyntheticSample:
    """Render the sample of ``seed``: same seed and size -> identical arrays."""
    seed = _check_seed(seed)
    h, w = check_size(size)
    b = min(h, w * 4.0 / 3.0)  # body scale: the height of a 4:3 portrait frame that fits
    rng = np.random.default_rng(seed)
    garment = _make_garment(rng, h, w, b)
    drawn = _render(rng, garment, h, w, b)
    agnostic = drawn["person"].copy()
    agnostic[drawn["mask"]] = AGNOSTIC_GREY
    return SyntheticSample(
        person=drawn["person"],
        garment=garment.image,
        mask=drawn["mask"],
        densepose=render_densepose(drawn["parts"]),
        flow=drawn["flow"],
        flow_valid=drawn["flow_valid"],
        seed=seed,
        cloth_mask=garment.silhouette,
        agnostic=agnostic,
        parts=drawn["parts"],
        pattern=garment.pattern,
    )


# ---------------------------------------------------------------------------------------------- torch / files


def stack_split(samples: Sequence, images: dict[str, np.ndarray], with_flow: bool) -> dict[str, np.ndarray]:
    """A split's arrays under the keys :func:`to_batch` reads: ``images`` (``person``, ``garment``, ``mask``),
    then the samples' ``densepose`` and ``seed`` and, ``with_flow``, their ``flow`` and ``flow_valid``.

    Why ``samples`` of any type with those fields: the try-on and pose-transfer samples share them.
    """
    arrays = {
        **images,
        "densepose": np.stack([s.densepose for s in samples]),
        "seed": np.array([s.seed for s in samples], dtype=np.int64),
    }
    if with_flow:
        arrays["flow"] = np.stack([s.flow for s in samples])
        arrays["flow_valid"] = np.stack([s.flow_valid for s in samples])
    return arrays


def _stack(samples: list[SyntheticSample], with_flow: bool) -> dict[str, np.ndarray]:
    images = {
        "person": np.stack([s.person for s in samples]),
        "garment": np.stack([s.garment for s in samples]),
        "mask": np.stack([s.mask for s in samples]),
    }
    return stack_split(samples, images, with_flow)


def cached_split(
    name: str,
    count: int,
    size: Size,
    seed: int,
    with_flow: bool,
    cache_dir: str | Path | None,
    render: Callable[[tuple[int, int]], dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """``render((height, width))`` of ``count`` samples, or its copy in ``cache_dir`` (written on first use).

    One ``.npz`` per ``name`` (the split; other tasks than try-on prefix it)/count/size/seed/flows.
    """
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"count must be a positive int, got {count!r}")
    height, width = check_size(size)
    path = None
    if cache_dir is not None:
        flows = "-flow" if with_flow else ""
        path = Path(cache_dir) / f"{name}-{height}x{width}-n{count}-s{seed}{flows}.npz"
        if path.is_file():
            with np.load(path) as stored:
                return {key: stored[key] for key in stored.files}
    arrays = render((height, width))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **arrays)
    return arrays


def render_split(
    split: str,
    count: int,
    size: Size = (128, 96),
    seed: int = 0,
    *,
    with_flow: bool = True,
    cache_dir: str | Path | None = None,
) -> dict[str, np.ndarray]:
    """Samples ``0..count-1`` of ``split`` (as ``SyntheticTryOnDataset`` numbers them), stacked as arrays.

    Rendering costs ~25 ms a sample, so training runs cache the uint8 arrays in ``cache_dir`` (one ``.npz``
    per split/count/size/seed) instead of re-rendering them every epoch.
    """

    def render(image_size: tuple[int, int]) -> dict[str, np.ndarray]:
        samples = [make_sample(sample_seed(split, index, seed), image_size) for index in range(count)]
        return _stack(samples, with_flow)

    return cached_split(split, count, size, seed, with_flow, cache_dir, render)


def _signed(images: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, C) -> float32 (..., C, H, W) in [-1, 1], the released normalisation."""
    return torch.from_numpy(images).movedim(-1, -3).float() / 127.5 - 1.0


def to_batch(split: dict[str, np.ndarray], indices: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
    """Tensors of the chosen samples in the released normalisation (the keys ``training_losses`` takes).

    ``image``/``reference``/``densepose`` (B, 3, H, W) in [-1, 1], ``mask`` (B, 1, H, W) in {0, 1}; with
    flows also ``flow`` (B, H, W, 2) and ``flow_valid`` (B, 1, H, W).
    """
    index = np.asarray(indices, dtype=np.int64)
    batch = {
        "image": _signed(split["person"][index]),
        "reference": _signed(split["garment"][index]),
        "mask": torch.from_numpy(split["mask"][index]).float()[:, None],
        "densepose": _signed(split["densepose"][index]),
    }
    if "flow" in split:
        batch["flow"] = torch.from_numpy(split["flow"][index])
        batch["flow_valid"] = torch.from_numpy(split["flow_valid"][index]).float()[:, None]
    return batch


class SyntheticTryOnDataset(Dataset):
    """Samples rendered on the fly; index ``i`` of a split always gives the same sample.

    Items: ``image`` (person) and ``reference`` (garment) (3, H, W) in [-1, 1]; ``mask`` and ``flow_valid``
    (1, H, W) float {0, 1}; ``densepose`` (3, H, W) in [-1, 1]; ``flow`` (H, W, 2) float32; ``seed`` int.
    With ``cache_dir`` the whole split is rendered once (:func:`render_split`, stored in that folder and
    read back by later runs) and kept in memory without flows: items then have no ``flow``/``flow_valid``
    unless ``with_flow`` (training needs them only for the flow-supervision term or the garment-pixel mask).
    """

    def __init__(
        self,
        split: str = "train",
        size: Size = (128, 96),
        length: int = 1000,
        seed: int = 0,
        *,
        cache_dir: str | Path | None = None,
        with_flow: bool = False,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if (
            not isinstance(length, (int, np.integer))
            or isinstance(length, bool)
            or not 0 < length <= _SPLIT_SPAN
        ):
            raise ValueError(f"length must be an int in 1..{_SPLIT_SPAN}, got {length!r}")
        self.split, self.size, self.length, self.seed = (
            split,
            check_size(size),
            int(length),
            _check_seed(seed),
        )
        self.cached = (
            None
            if cache_dir is None
            else render_split(split, self.length, self.size, self.seed, with_flow=with_flow, cache_dir=cache_dir)
        )

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of length {self.length}")
        index %= self.length
        if self.cached is not None:
            arrays, row = self.cached, index
        else:
            arrays, row = _stack([make_sample(sample_seed(self.split, index, self.seed), self.size)], True), 0
        item: dict[str, torch.Tensor | int] = {key: value[0] for key, value in to_batch(arrays, [row]).items()}
        item["seed"] = int(arrays["seed"][row])
        return item


def _save_jpeg(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image).save(path, quality=95, subsampling=0)


def _save_mask(mask: np.ndarray, path: Path) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255).save(
        path, **({"quality": 95} if path.suffix == ".jpg" else {})
    )


_LAYOUT_DIRS = ("image", "cloth", "cloth-mask", "agnostic-mask", "agnostic-v3.2", "image-densepose", "flow")


def write_vitonhd_layout(
    root: str | Path, n_train: int, n_test: int, size: Size = (128, 96), seed: int = 0
) -> Path:
    """Write a VITON-HD style folder of synthetic samples and return its root.

    Per split: ``image/``, ``cloth/``, ``agnostic-v3.2/``, ``image-densepose/`` and ``cloth-mask/`` as
    ``NNNNN_00.jpg`` (quality 95 without chroma subsampling, so fine textures survive),
    ``agnostic-mask/NNNNN_00_mask.png`` and ``flow/NNNNN_00.npy`` (float32 (H, W, 3): x, y, valid);
    ``train_pairs.txt`` / ``test_pairs.txt`` hold paired lines. Names run on across splits (test starts at
    ``n_train``) so no name appears in both.
    """
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    size, seed, root = check_size(size), _check_seed(seed), Path(root)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"layout root {root} exists and is not a folder; pick another path")
    offset = 0
    for split, count in (("train", int(n_train)), ("test", int(n_test))):
        folders = {name: root / split / name for name in _LAYOUT_DIRS}
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for index in range(count):
            sample = make_sample(sample_seed(split, index, seed), size)
            stem = f"{offset + index:05d}_00"
            _save_jpeg(sample.person, folders["image"] / f"{stem}.jpg")
            _save_jpeg(sample.garment, folders["cloth"] / f"{stem}.jpg")
            _save_jpeg(sample.agnostic, folders["agnostic-v3.2"] / f"{stem}.jpg")
            _save_jpeg(sample.densepose, folders["image-densepose"] / f"{stem}.jpg")
            _save_mask(sample.cloth_mask, folders["cloth-mask"] / f"{stem}.jpg")
            _save_mask(sample.mask, folders["agnostic-mask"] / f"{stem}_mask.png")
            flow = np.concatenate([sample.flow, sample.flow_valid[..., None].astype(np.float32)], axis=-1)
            np.save(folders["flow"] / f"{stem}.npy", flow)
            lines.append(f"{stem}.jpg {stem}.jpg\n")
        (root / f"{split}_pairs.txt").write_text("".join(lines))
        offset += count
    return root


def make_examples(
    out_dir: str | Path, n: int = 4, size: Size = (256, 192), seed: int = 0
) -> list[dict[str, Path]]:
    """Write ``n`` held-out (test-split) examples for the app demo as PNGs; return their paths per example.

    Files: ``person_KK.png``, ``garment_KK.png``, ``mask_KK.png`` (0/255) and ``densepose_KK.png``.
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    size, seed, out_dir = check_size(size), _check_seed(seed), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for k in range(int(n)):
        sample = make_sample(sample_seed("test", k, seed), size)
        images = {
            "person": sample.person,
            "garment": sample.garment,
            "mask": sample.mask.astype(np.uint8) * 255,
            "densepose": sample.densepose,
        }
        paths = {name: out_dir / f"{name}_{k:02d}.png" for name in images}
        for name, image in images.items():
            Image.fromarray(image).save(paths[name])
        written.append(paths)
    return written
