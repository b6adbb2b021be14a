"""Adjusting a mask: grow or shrink it, extend it to a side, keep hands and face out, cover the legs.

The automatic mask (`preprocess.masks`) is wrong when the new garment is longer, shorter or wider than the
one worn. :class:`MaskAdjustments` says how to change it and :func:`adjust_mask` applies it, in the pixels
of the frame the mask is in (the model's frame):

1. ``cover_legs`` (lower-body garments and dresses): the legs and the space between them, from the hips
   down to the ankles (shoes kept), join the mask: for a long garment replacing a short one;
2. ``grow`` px more all round (negative: shrink), a Euclidean distance as `preprocess.masks.grow`;
3. ``extend_up`` / ``extend_down`` / ``extend_left`` / ``extend_right`` px: the mask stretched that far
   towards that side (a one-sided dilation), e.g. down for a longer top, left and right for a wider cut;
4. ``keep_hands`` / ``keep_face`` (face, hair, hat, sunglasses; both on by default): what steps 1-3 add
   never covers them. The automatic mask itself stays the released one, so the defaults change nothing
   (bit for bit).

Hands, face and legs come from the parse map and keypoints (:func:`mask_regions`); a supplied mask has
neither, so only steps 2-3 apply to it (with a note when a keep option could not be honoured). Values out of
range are clipped with a note, never an error; a mask the adjustments empty is refused with the project's
"the mask is empty" message.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import cv2
import numpy as np
from PIL import Image

from preprocess.masks import GARMENT_DILATION, grow
from preprocess.parsing import LABEL, PARSE_HEIGHT, PARSE_WIDTH

SIDES = ("up", "down", "left", "right")
_HANDS = ((3, 4), (6, 7))  # (elbow, wrist) OpenPose indices, right then left
_HIPS, _ANKLES = (8, 11), (10, 13)
_FACE = ("hat", "hair", "sunglasses", "face")
_LOWER = ("pants", "skirt", "dress", "left_leg", "right_leg")
_SHOES = ("left_shoe", "right_shoe")
#: Around a wrist with no elbow, the hand is the arm label within this many parse pixels.
_HAND_RADIUS = 30
#: The hand starts this share of the forearm's length before the wrist (the wrist itself is kept too).
_WRIST_MARGIN = 0.15


@dataclass(frozen=True)
class MaskAdjustments:
    """How to change a mask (module docstring); the defaults change nothing. Whole numbers may come as
    floats with whole values (a slider's ``20.0``); they are stored as ints, and flags as bools."""

    grow: int = 0
    extend_up: int = 0
    extend_down: int = 0
    extend_left: int = 0
    extend_right: int = 0
    keep_hands: bool = True
    keep_face: bool = True
    cover_legs: bool = False

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            checked = _flag(value, item.name) if item.type in (bool, "bool") else _whole(value, item.name)
            object.__setattr__(self, item.name, checked)

    @property
    def changes_nothing(self) -> bool:
        return self == NO_ADJUSTMENTS

    def extend(self, side: str) -> int:
        return getattr(self, f"extend_{side}")


def _whole(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a whole number of pixels, got {value!r}")
    if not np.isfinite(value) or float(value) != int(value):
        raise ValueError(f"{name} must be a whole number of pixels, got {value!r}")
    return int(value)


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return bool(value)


#: The adjustments that change nothing (the default).
NO_ADJUSTMENTS = MaskAdjustments()


class MaskRegions(NamedTuple):
    """What the keep and cover options need, as bool maps in the mask's frame."""

    hands: np.ndarray
    face: np.ndarray
    legs: np.ndarray
    shoes: np.ndarray


class AdjustedMask(NamedTuple):
    mask: np.ndarray
    notes: list[str]


def mask_regions(parse: np.ndarray, keypoints: np.ndarray, size: tuple[int, int]) -> MaskRegions:
    """Hands, face (with hair, hat, sunglasses), legs from hips to ankles and shoes from the (512, 384)
    parse and its keypoints, scaled (nearest) to ``size`` = (width, height)."""
    regions = (_hands(parse, keypoints), _labels(parse, _FACE), _legs(parse, keypoints), _labels(parse, _SHOES))
    return MaskRegions(*(_scaled(region, size) for region in regions))


def adjust_mask(
    mask: np.ndarray, adjustments: MaskAdjustments, regions: MaskRegions | None = None, category: str = "upper_body"
) -> AdjustedMask:
    """``mask`` (bool, H×W) changed as ``adjustments`` say (module docstring), and notes on what was
    clipped or could not be done. ``regions`` (from :func:`mask_regions`, same frame) enable the keep and
    cover options."""
    if adjustments.changes_nothing:
        return AdjustedMask(mask, [])
    height, width = mask.shape
    notes: list[str] = []
    adjusted = mask.copy()
    if adjustments.cover_legs:
        if category == "upper_body":
            notes.append("cover legs is for lower-body garments and dresses; ignored for an upper-body garment")
        elif regions is None:
            notes.append("cover legs needs the parse map of the photo; ignored for a supplied mask")
        elif not regions.legs.any():
            notes.append("cover legs: no legs or lower garment found in the photo; nothing added")
        else:
            adjusted |= regions.legs & ~regions.shoes
    limit = max(height, width)
    amount = _clipped(adjustments.grow, -limit, limit, "grow", notes)
    adjusted = grow(adjusted, amount)
    for side in SIDES:
        extent = height if side in ("up", "down") else width
        adjusted = _extend(adjusted, side, _clipped(adjustments.extend(side), 0, extent, f"extend {side}", notes))
    kept = [name for name, on in (("hands", adjustments.keep_hands), ("face and hair", adjustments.keep_face)) if on]
    added = adjusted & ~mask
    if added.any() and kept:
        if regions is None:
            notes.append(f"keeping {' and '.join(kept)} needs the parse map of the photo; not done for a supplied mask")
        else:
            protected = (regions.hands if adjustments.keep_hands else False) | (regions.face if adjustments.keep_face else False)
            adjusted &= ~(added & protected)
    if not adjusted.any():
        raise ValueError(
            "the mask is empty after the adjustments (shrunk away): grow less, or paint the region the garment "
            "should cover"
        )
    return AdjustedMask(adjusted, notes)


def _clipped(value: int, low: int, high: int, name: str, notes: list[str]) -> int:
    clipped = min(max(value, low), high)
    if clipped != value:
        notes.append(f"{name} {value} px is outside {low}..{high} for this {'image' if high > 0 else 'mask'}; "
                     f"{clipped} px used")
    return clipped


def _extend(mask: np.ndarray, side: str, pixels: int) -> np.ndarray:
    """The mask stretched ``pixels`` towards ``side`` (what lies past the image edge is cut)."""
    if pixels == 0:
        return mask
    vertical = side in ("up", "down")
    kernel = np.ones((pixels + 1, 1) if vertical else (1, pixels + 1), np.uint8)
    # The anchor is the kernel cell that lands on the output pixel: at the far end, the mask reaches back
    # towards it, so it grows away from the anchor's side.
    anchor = (0, pixels) if side == "down" else (pixels, 0) if side == "right" else (0, 0)
    return cv2.dilate(mask.astype(np.uint8), kernel, anchor=anchor, borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0


def _labels(parse: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    return np.isin(parse, [LABEL[name] for name in names])


def _present(point: np.ndarray) -> bool:
    return not (point[0] <= 1.0 and point[1] <= 1.0)


def _hands(parse: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """Arm-label pixels past each detected wrist (from a little before it): across the line through the
    wrist square to the forearm, within a forearm's length; without an elbow, within a radius."""
    arms = _labels(parse, ("left_arm", "right_arm"))
    rows, columns = np.mgrid[0:PARSE_HEIGHT, 0:PARSE_WIDTH].astype(np.float64)
    hands = np.zeros_like(arms)
    for elbow_index, wrist_index in _HANDS:
        wrist, elbow = keypoints[wrist_index], keypoints[elbow_index]
        if not _present(wrist):
            continue
        dx, dy = columns - wrist[0], rows - wrist[1]
        distance = np.hypot(dx, dy)
        if _present(elbow) and np.hypot(*(wrist - elbow)) >= 1.0:
            forearm = wrist - elbow
            length = float(np.hypot(*forearm))
            along = (dx * forearm[0] + dy * forearm[1]) / length
            near = (along >= -_WRIST_MARGIN * length) & (distance <= max(length, _HAND_RADIUS))
        else:
            near = distance <= _HAND_RADIUS
        hands |= arms & near
    return hands


def _legs(parse: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """The convex hull of the legs and lower garment with the hips and ankles, from the hips down to the
    ankles, grown as the released masks grow garments."""
    lower = _labels(parse, _LOWER)
    if not lower.any():
        return np.zeros_like(lower)
    ys, xs = np.nonzero(lower)
    points = [np.stack([xs, ys], axis=1)]
    hips = [keypoints[i] for i in _HIPS if _present(keypoints[i])]
    ankles = [keypoints[i] for i in _ANKLES if _present(keypoints[i])]
    points += [np.array(hips + ankles, dtype=np.int64).reshape(-1, 2)]
    top = int(min(point[1] for point in hips)) if hips else int(ys.min())
    bottom = int(max(point[1] for point in ankles)) if ankles else int(ys.max())
    hull = cv2.convexHull(np.concatenate(points).astype(np.int32))
    canvas = np.zeros(lower.shape, np.uint8)
    cv2.fillConvexPoly(canvas, hull, 1)
    canvas[: max(top, 0)] = 0
    canvas[bottom + 1 :] = 0
    kernel, iterations = GARMENT_DILATION
    return cv2.dilate(canvas, kernel, iterations=iterations) > 0


def _scaled(region: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (region.shape[1], region.shape[0]) == tuple(size):
        return region
    image = Image.fromarray(region.astype(np.uint8) * 255).resize(tuple(size), Image.Resampling.NEAREST)
    return np.asarray(image) > 0
