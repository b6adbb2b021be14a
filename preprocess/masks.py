"""Agnostic masks: the region of the person photo the try-on model regenerates.

Two released algorithms are reproduced, one per try-on checkpoint: "viton_hd" (VITON-HD model)
and "dress_code" (DressCode model). Both work on the 384x512 parse (`preprocess.parsing`, ATR labels
plus neck) and the OpenPose keypoints in that frame, and run the same steps:

1. fixed: labels always kept (shoes, hat, sunglasses, bag; DressCode also scarf) plus the garment
   that is not being replaced (pants and skirt for upper_body; upper clothes and arms for lower_body);
2. cloth: labels of the garment to replace;
3. arms (upper_body, dresses): thick lines through the arm keypoints. Arm pixels outside them are the
   hands, which join fixed;
4. head: labels of the head join fixed. DressCode cuts the neck off the head geometrically: head
   pixels below the shoulder line raised by 20 px;
5. garment region = dilate(cloth | arms), then the neck (VITON-HD: the neck label; DressCode: the
   cut-off part of the head) joins it;
6. fixed is eroded slightly, so the mask may take a thin rim off the kept regions next to it;
7. mask = garment region minus the eroded fixed region, i.e. NOT(everything outside the garment
   region OR fixed); holes are filled (this also fills in fixed regions the mask encloses, e.g. a
   hand in front of the shirt, as the release does; `protect_fixed=True` keeps them instead);
8. VITON-HD only: only the largest connected region is kept.

All sizes are in pixels at the 512 px frame height. From the reference: arm widths 60 (VITON-HD)
and 30 (DressCode), wrist extension 1.2, garment dilation 10x10 x5 (OpenCV's even kernel grows
5 px down/right and 4 px up/left per pass), neck raise 20. Chosen here where the reference is
silent: DressCode arm dilation 5x5 x5, fixed erosion 3x3 x1, holes = 4-connected unmasked regions
not touching the border, largest region by 8-connectivity. Deterministic: numpy/OpenCV/scipy only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage

from preprocess.parsing import LABEL, PARSE_HEIGHT, PARSE_LABELS, PARSE_WIDTH

CATEGORIES = ("upper_body", "lower_body", "dresses")
VARIANTS = ("viton_hd", "dress_code")

VITON_ARM_WIDTH = 60
WRIST_EXTENSION = 1.2
DRESS_CODE_ARM_WIDTH = 30
DRESS_CODE_ARM_DILATION = (np.ones((5, 5), np.uint8), 5)
GARMENT_DILATION = (np.ones((10, 10), np.uint8), 5)
FIXED_EROSION = (np.ones((3, 3), np.uint8), 1)
DRESS_CODE_NECK_RAISE = 20

_R_SHOULDER, _R_ELBOW, _R_WRIST, _L_SHOULDER, _L_ELBOW, _L_WRIST = 2, 3, 4, 5, 6, 7
_SUBPIXEL_BITS = 4
_MAX_COORDINATE = 100_000.0


@dataclass(frozen=True)
class _Rules:
    """Label names per role for one variant."""

    always_fixed: tuple[str, ...]
    head: tuple[str, ...]
    cloth: dict[str, tuple[str, ...]]


# DressCode's head includes the neck label: its algorithm predates the neck split (its "face" is
# ATR's, neck included) and finds the neck itself from the shoulder line.
_RULES = {
    "viton_hd": _Rules(
        always_fixed=("left_shoe", "right_shoe", "hat", "sunglasses", "bag"),
        head=("hat", "sunglasses", "face"),
        cloth={
            "upper_body": ("upper_clothes", "dress"),
            "lower_body": ("pants", "left_leg", "right_leg", "skirt"),
            "dresses": ("dress", "upper_clothes", "skirt", "pants"),
        },
    ),
    "dress_code": _Rules(
        always_fixed=("left_shoe", "right_shoe", "hat", "sunglasses", "bag", "scarf"),
        head=("hat", "hair", "sunglasses", "face", "neck"),
        cloth={
            "upper_body": ("upper_clothes",),
            "lower_body": ("pants", "left_leg", "right_leg"),
            "dresses": ("dress", "left_leg", "right_leg"),
        },
    ),
}
_OTHER_GARMENT = {
    "upper_body": ("skirt", "pants"),
    "lower_body": ("upper_clothes", "left_arm", "right_arm"),
    "dresses": (),
}


def agnostic_mask(
    parse: np.ndarray,
    keypoints: np.ndarray,
    category: str,
    variant: str,
    *,
    dilate: int = 0,
    protect_fixed: bool = False,
) -> np.ndarray:
    """(512, 384) bool mask, True where the try-on model regenerates the person image.

    `parse`: (512, 384) uint8 label map (`PARSE_LABELS`); `keypoints`: (18, 2) OpenPose `[x, y]` in
    the same frame, [0, 0] when missing; `category` in `CATEGORIES`; `variant` in `VARIANTS`.
    `dilate` grows (positive) or shrinks (negative) the final mask by that many pixels; 0 gives the
    released behaviour. `protect_fixed` (not in the release) unmasks the kept regions again after
    hole filling. The mask can be empty when the parse shows nothing of the category.
    """
    parse, keypoints = _validate(parse, keypoints, category, variant)
    rules = _RULES[variant]
    has_arms = category in ("upper_body", "dresses")

    fixed = _labels(parse, rules.always_fixed + _OTHER_GARMENT[category])
    cloth = _labels(parse, rules.cloth[category])
    arms = _draw_arms(keypoints, variant) if has_arms else np.zeros_like(cloth)
    if has_arms:
        fixed |= _labels(parse, ("left_arm", "right_arm")) & ~arms

    head = _labels(parse, rules.head)
    neck = _neck(parse, keypoints, head, variant) if has_arms else np.zeros_like(head)
    fixed |= head & ~neck

    garment = _morph(cloth | arms, cv2.dilate, GARMENT_DILATION) | neck
    fixed = _morph(fixed, cv2.erode, FIXED_EROSION)
    mask = ndimage.binary_fill_holes(garment & ~fixed)
    if protect_fixed:
        mask &= ~fixed
    if variant == "viton_hd":
        mask = _largest_region(mask)
    return grow(mask, dilate)


def binarize_mask(
    user_mask: Image.Image | np.ndarray, size: tuple[int, int], *, dilate: int = 0
) -> np.ndarray:
    """A user-supplied mask of any size and mode as a (height, width) bool array for `size` = (width, height).

    Grey values are taken in [0, 1] (uint8 / 255; floats as they are) and thresholded at 0.5, like
    the released pipeline; colour is converted to grey (ITU-R 601 luma, as PIL does); transparent
    pixels count as black (not masked). Resizing is nearest-neighbour. `dilate` as in `agnostic_mask`.
    """
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(f"size must be a positive (width, height), got {size}")
    binary = _grey(user_mask) >= 0.5
    resized = Image.fromarray(binary.astype(np.uint8) * 255).resize((width, height), Image.Resampling.NEAREST)
    return grow(np.asarray(resized) > 0, dilate)


def grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Dilate (pixels > 0) or erode (pixels < 0) a bool mask by a Euclidean distance of |pixels|.

    Dilation adds every pixel within that distance of the mask; erosion removes every mask pixel
    within that distance of a non-mask pixel (the image border does not erode).
    """
    if isinstance(pixels, bool) or not isinstance(pixels, (int, np.integer)):
        raise ValueError(f"dilation must be a whole number of pixels, got {pixels!r}")
    if pixels == 0:
        return mask
    radius = abs(int(pixels))
    offsets = np.arange(-radius, radius + 1)
    disc = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).astype(np.uint8)
    operation = cv2.dilate if pixels > 0 else cv2.erode
    return operation(mask.astype(np.uint8), disc, borderType=cv2.BORDER_REPLICATE) > 0


def _validate(
    parse: np.ndarray, keypoints: np.ndarray, category: str, variant: str
) -> tuple[np.ndarray, np.ndarray]:
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {', '.join(CATEGORIES)}, got {category!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if (
        not isinstance(parse, np.ndarray)
        or parse.shape != (PARSE_HEIGHT, PARSE_WIDTH)
        or parse.dtype != np.uint8
    ):
        described = f"{parse.shape} {parse.dtype}" if isinstance(parse, np.ndarray) else type(parse).__name__
        raise ValueError(
            f"parse must be a ({PARSE_HEIGHT}, {PARSE_WIDTH}) uint8 label map (the 384x512 parse), "
            f"got {described}"
        )
    if parse.max() >= len(PARSE_LABELS):
        raise ValueError(f"parse labels must be 0..{len(PARSE_LABELS) - 1}, found {parse.max()}")
    points = np.asarray(keypoints, dtype=np.float64)
    if points.shape != (18, 2) or not np.isfinite(points).all() or np.abs(points).max() > _MAX_COORDINATE:
        raise ValueError(
            f"keypoints must be an (18, 2) array of finite [x, y] pixel positions in the "
            f"{PARSE_WIDTH}x{PARSE_HEIGHT} frame, got shape {points.shape}"
        )
    return parse, points


def _labels(parse: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    return np.isin(parse, [LABEL[name] for name in names])


def _present(point: np.ndarray) -> bool:
    """Missing keypoints are [0, 0]; like the release, anything within the first pixel counts as missing."""
    return not (point[0] <= 1.0 and point[1] <= 1.0)


def _draw_arms(keypoints: np.ndarray, variant: str) -> np.ndarray:
    """The arm region of step 3, drawn from the arm keypoints that were detected."""
    canvas = np.zeros((PARSE_HEIGHT, PARSE_WIDTH), np.uint8)
    if variant == "dress_code":
        chain = [_L_WRIST, _L_ELBOW, _L_SHOULDER, _R_SHOULDER, _R_ELBOW, _R_WRIST]
        _draw_polyline(canvas, [keypoints[i] for i in chain if _present(keypoints[i])], DRESS_CODE_ARM_WIDTH)
        return _morph(canvas > 0, cv2.dilate, DRESS_CODE_ARM_DILATION)
    for shoulder, elbow, wrist in ((_R_SHOULDER, _R_ELBOW, _R_WRIST), (_L_SHOULDER, _L_ELBOW, _L_WRIST)):
        _draw_viton_arm(canvas, keypoints[shoulder], keypoints[elbow], keypoints[wrist])
    return canvas > 0


def _draw_viton_arm(canvas: np.ndarray, shoulder: np.ndarray, elbow: np.ndarray, wrist: np.ndarray) -> None:
    """Shoulder -> elbow -> wrist pushed 20% further from the elbow (covers the cuff); round shoulder cap."""
    if _present(elbow) and _present(wrist):
        wrist = elbow + WRIST_EXTENSION * (wrist - elbow)
    points = [point for point in (shoulder, elbow, wrist) if _present(point)]
    _draw_polyline(canvas, points, VITON_ARM_WIDTH)
    if _present(shoulder):
        _draw_disc(canvas, shoulder, VITON_ARM_WIDTH / 2.0)


def _draw_polyline(canvas: np.ndarray, points: list[np.ndarray], width: float) -> None:
    """A `width`-thick polyline with flat ends and round joints (as PIL's "curve" joint draws it)."""
    for start, end in pairwise(points):
        direction = end - start
        length = float(np.hypot(*direction))
        if length == 0.0:
            continue
        offset = np.array([-direction[1], direction[0]]) / length * (width / 2.0)
        corners = np.array([start + offset, end + offset, end - offset, start - offset])
        cv2.fillConvexPoly(canvas, _fixed_point(corners), 1, cv2.LINE_8, _SUBPIXEL_BITS)
    for joint in points[1:-1]:
        _draw_disc(canvas, joint, width / 2.0)


def _draw_disc(canvas: np.ndarray, centre: np.ndarray, radius: float) -> None:
    cv2.circle(
        canvas,
        tuple(_fixed_point(centre)),
        round(radius * (1 << _SUBPIXEL_BITS)),
        1,
        -1,
        cv2.LINE_8,
        _SUBPIXEL_BITS,
    )


def _fixed_point(points: np.ndarray) -> np.ndarray:
    """Coordinates in OpenCV's fixed-point format (`shift` fractional bits) for sub-pixel drawing."""
    return np.round(np.asarray(points) * (1 << _SUBPIXEL_BITS)).astype(np.int32)


def _neck(parse: np.ndarray, keypoints: np.ndarray, head: np.ndarray, variant: str) -> np.ndarray:
    """The neck region that joins the garment (step 5): VITON-HD's neck label, DressCode's cut-off head."""
    if variant == "viton_hd":
        return parse == LABEL["neck"]
    return head & _below_shoulder_line(keypoints)


def _below_shoulder_line(keypoints: np.ndarray) -> np.ndarray:
    """Pixels below the line through both shoulders raised by 20 px (DressCode's neck cut, step 4).

    Empty when a shoulder is missing or the shoulders are vertically aligned (no line to fit).
    """
    right, left = keypoints[_R_SHOULDER], keypoints[_L_SHOULDER]
    below = np.zeros((PARSE_HEIGHT, PARSE_WIDTH), dtype=bool)
    if not (_present(right) and _present(left)) or abs(left[0] - right[0]) < 1.0:
        return below
    slope = (left[1] - right[1]) / (left[0] - right[0])
    columns = np.arange(PARSE_WIDTH, dtype=np.float64)
    line = right[1] + slope * (columns - right[0]) - DRESS_CODE_NECK_RAISE
    rows = np.arange(PARSE_HEIGHT, dtype=np.float64)[:, None]
    return rows >= np.floor(line)[None, :]


def _morph(
    mask: np.ndarray, operation: Callable[..., np.ndarray], kernel_and_iterations: tuple[np.ndarray, int]
) -> np.ndarray:
    kernel, iterations = kernel_and_iterations
    return operation(mask.astype(np.uint8), kernel, iterations=iterations) > 0


def _largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected region of `mask` (the lowest-numbered one on ties)."""
    count, regions, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return mask
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return regions == largest


def _grey(user_mask: Image.Image | np.ndarray) -> np.ndarray:
    """User mask as a float (H, W) array in [0, 1]; transparency multiplies the grey value."""
    if isinstance(user_mask, Image.Image):
        mode = "L" if user_mask.mode in ("1", "L") else "LA" if user_mask.mode == "LA" else "RGBA"
        channels = np.asarray(user_mask.convert(mode), dtype=np.float64) / 255.0
        channels = channels.reshape(channels.shape[:2] + (-1,))
    elif isinstance(user_mask, np.ndarray):
        channels = _array_channels(user_mask)
    else:
        raise ValueError(f"mask must be a PIL image or numpy array, got {type(user_mask).__name__}")
    has_alpha = channels.shape[2] in (2, 4)
    colour = channels[:, :, :-1] if has_alpha else channels
    grey = colour[:, :, 0] if colour.shape[2] == 1 else colour @ np.array([0.299, 0.587, 0.114])
    return grey * channels[:, :, -1] if has_alpha else grey


def _array_channels(array: np.ndarray) -> np.ndarray:
    """(H, W[, 1|3|4]) bool, uint8 or float-in-[0, 1] array -> float (H, W, C) in [0, 1]."""
    if array.dtype == np.bool_:
        values = array.astype(np.float64)
    elif array.dtype == np.uint8:
        values = array.astype(np.float64) / 255.0
    elif np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float64)
        if values.size and (not np.isfinite(values).all() or values.min() < 0.0 or values.max() > 1.0):
            raise ValueError("float masks must lie in [0, 1]; divide 0..255 masks by 255")
    else:
        raise ValueError(f"mask arrays must be bool, uint8 or float in [0, 1], got {array.dtype}")
    if values.ndim == 2:
        values = values[:, :, None]
    if values.ndim != 3 or values.shape[2] not in (1, 3, 4) or min(values.shape[:2]) < 1:
        raise ValueError(
            f"mask arrays must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {array.shape}"
        )
    return values
