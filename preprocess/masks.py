"""Agnostic masks: the region of the person photo the try-on model regenerates.

Two released algorithms are reproduced, one per try-on checkpoint: "viton_hd" (VITON-HD model)
and "dress_code" (DressCode model). Both work on the 384x512 parse (`preprocess.parsing`, ATR labels
plus neck) and the OpenPose keypoints in that frame. Sizes are in pixels at the 512 px frame height;
morphology uses all-ones square kernels, OpenCV's default borders (the image border neither erodes
nor dilates) and its anchor (an even kernel such as the garment's 10x10 grows 5 px down/right and
4 px up/left per pass). "Other garment" below is the garment that is not being replaced: skirt and
pants for upper_body, upper clothes and both arms for lower_body, nothing for dresses.

VITON-HD, the released algorithm step by step (equal to the release pixel for pixel on its golden
cases):

1. head = hat, sunglasses, face (not hair); fixed = shoes, hat, sunglasses, bag and the other
   garment; changeable = everything else, background included;
2. garment = the garment labels (upper clothes, dress | pants, legs, skirt | dress, upper clothes,
   skirt, pants) dilated 10x10 x5;
3. upper_body and dresses, per side: the drawn arm is a Pillow polyline 60 px wide (joint "curve")
   through shoulder, elbow and the wrist moved to elbow + 1.2 (wrist - elbow), coordinates truncated
   to uint16, right side drawn shoulder first, left side wrist first, plus a Pillow ring (full arc)
   of 30 px width in the 60 px box around the shoulder (a missing shoulder or elbow is drawn at
   [0, 0], as the release does); without a wrist it is that side's arm label instead.
   Arm-label pixels outside the drawn arm are the hand, which joins fixed. The neck label dilated
   5x5 x1 minus the head, and the drawn arms dilated 5x5 x4, join the garment;
4. fixed is eroded 5x5 x1, then the head joins it (not eroded);
5. mask = NOT((changeable AND NOT garment) OR fixed). The pixels the erosion took off fixed are
   neither, so a 2 px rim of the fixed regions is masked (of the hands only inside the garment:
   they were changeable before they joined fixed);
6. the one-pixel image frame is unmasked, then holes (unmasked regions not 4-connected to the
   frame) are filled: where a rim closes around a fixed region, all of that region is masked. This
   is why the release masks the upper clothes and arms for lower_body, and the pants or skirt for
   upper_body unless they reach the image edge;
7. of all contours (OpenCV RETR_CCOMP, TC89_L1 approximation; outer and hole contours alike) the one
   of largest absolute area is drawn filled: that is the mask.

DressCode:

1. fixed = shoes, hat, sunglasses, bag, scarf and the other garment;
2. cloth = upper clothes | pants, legs | dress, legs;
3. upper_body and dresses: the arms are one 30 px polyline (flat ends, round joints) through the
   detected keypoints left wrist, elbow, shoulder, right shoulder, elbow, wrist, dilated 5x5 x5.
   Arm-label pixels outside them are the hands, which join fixed. Head = hat, hair, sunglasses,
   face, neck; its pixels below the line through the shoulders raised by 20 px are the neck, the
   rest joins fixed (without the arms, all of the head does);
4. garment region = dilate(cloth | arms, 10x10 x5) | neck; fixed is eroded 3x3 x1;
5. mask = garment region AND NOT fixed, holes (4-connected unmasked regions not touching the
   border) filled.

From the reference for DressCode: arm width 30, garment dilation, neck raise 20. Chosen here where
it is silent, and matching the release to IoU >= 0.98 on its golden cases: arm dilation 5x5 x5,
fixed erosion 3x3 x1, 4-connected holes.

Options beyond the release, off by default: `protect_fixed=True` unmasks every fixed pixel as
labelled (before the erosion, so rims included: hands, bag, shoes, head, the other garment) after
the steps above, which e.g. keeps the shirt and arms out of the VITON-HD lower_body mask; `dilate`
grows or shrinks the final mask. Deterministic: numpy/OpenCV/scipy/Pillow only.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from preprocess.parsing import LABEL, PARSE_HEIGHT, PARSE_LABELS, PARSE_WIDTH

CATEGORIES = ("upper_body", "lower_body", "dresses")
VARIANTS = ("viton_hd", "dress_code")

GARMENT_DILATION = (np.ones((10, 10), np.uint8), 5)

# The release computes int(60 * height / 512) for its arm width; the parse is always 512 px high.
VITON_HD_ARM_WIDTH = 60
VITON_HD_WRIST_EXTENSION = 1.2
VITON_HD_FIXED_EROSION = (np.ones((5, 5), np.uint8), 1)
VITON_HD_NECK_DILATION = (np.ones((5, 5), np.uint8), 1)
VITON_HD_ARM_DILATION = (np.ones((5, 5), np.uint8), 4)

DRESS_CODE_ARM_WIDTH = 30
DRESS_CODE_ARM_DILATION = (np.ones((5, 5), np.uint8), 5)
DRESS_CODE_FIXED_EROSION = (np.ones((3, 3), np.uint8), 1)
DRESS_CODE_NECK_RAISE = 20

_R_SHOULDER, _R_ELBOW, _R_WRIST, _L_SHOULDER, _L_ELBOW, _L_WRIST = 2, 3, 4, 5, 6, 7
_SUBPIXEL_BITS = 4
_MAX_COORDINATE = 100_000.0

_OTHER_GARMENT = {
    "upper_body": ("skirt", "pants"),
    "lower_body": ("upper_clothes", "left_arm", "right_arm"),
    "dresses": (),
}
_VITON_HD_FIXED = ("left_shoe", "right_shoe", "hat", "sunglasses", "bag")
_VITON_HD_HEAD = ("hat", "sunglasses", "face")
_VITON_HD_CLOTH = {
    "upper_body": ("upper_clothes", "dress"),
    "lower_body": ("pants", "left_leg", "right_leg", "skirt"),
    "dresses": ("dress", "upper_clothes", "skirt", "pants"),
}
# DressCode's head includes the neck label: its algorithm predates the neck split (its "face" is
# ATR's, neck included) and finds the neck itself from the shoulder line.
_DRESS_CODE_FIXED = ("left_shoe", "right_shoe", "hat", "sunglasses", "bag", "scarf")
_DRESS_CODE_HEAD = ("hat", "hair", "sunglasses", "face", "neck")
_DRESS_CODE_CLOTH = {
    "upper_body": ("upper_clothes",),
    "lower_body": ("pants", "left_leg", "right_leg"),
    "dresses": ("dress", "left_leg", "right_leg"),
}


class _Arm(NamedTuple):
    """One side's keypoint indices and parse label; `wrist_first`: the release draws it wrist first."""

    shoulder: int
    elbow: int
    wrist: int
    label: str
    wrist_first: bool


_VITON_HD_ARMS = (
    _Arm(_R_SHOULDER, _R_ELBOW, _R_WRIST, "right_arm", wrist_first=False),
    _Arm(_L_SHOULDER, _L_ELBOW, _L_WRIST, "left_arm", wrist_first=True),
)


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
    released behaviour. `protect_fixed` (not in the release) unmasks every fixed pixel (hands, bag,
    shoes, head, the garment not being replaced; rims included) after hole filling and region
    selection. The mask can be empty when the parse shows nothing of the category.
    """
    parse, keypoints = _validate(parse, keypoints, category, variant)
    if variant == "viton_hd":
        filled, fixed = _viton_hd_regions(parse, keypoints, category)
        mask = _largest_contour(filled)
    else:
        mask, fixed = _dress_code_mask(parse, keypoints, category)
    if protect_fixed:
        mask &= ~fixed
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


def _viton_hd_regions(
    parse: np.ndarray, keypoints: np.ndarray, category: str
) -> tuple[np.ndarray, np.ndarray]:
    """VITON-HD steps 1-6 (module docstring): the hole-filled mask before the contour step, and
    the fixed region before the erosion, head included."""
    head = _labels(parse, _VITON_HD_HEAD)
    fixed = _labels(parse, _VITON_HD_FIXED + _OTHER_GARMENT[category])
    changeable = ~fixed  # the background and every label not fixed at this point (hands stay in it)
    garment = _morph(_labels(parse, _VITON_HD_CLOTH[category]), cv2.dilate, GARMENT_DILATION)
    if category in ("upper_body", "dresses"):
        arms = np.zeros_like(fixed)
        for arm in _VITON_HD_ARMS:
            label = parse == LABEL[arm.label]
            if _present(keypoints[arm.wrist]):
                drawn = _viton_hd_arm(
                    keypoints[arm.shoulder], keypoints[arm.elbow], keypoints[arm.wrist], arm.wrist_first
                )
            else:
                drawn = label
            fixed |= label & ~drawn
            arms |= drawn
        neck = _morph(parse == LABEL["neck"], cv2.dilate, VITON_HD_NECK_DILATION) & ~head
        garment |= neck | _morph(arms, cv2.dilate, VITON_HD_ARM_DILATION)
    protected = fixed | head
    fixed = _morph(fixed, cv2.erode, VITON_HD_FIXED_EROSION) | head
    mask = ~((changeable & ~garment) | fixed)
    mask[[0, -1], :] = False
    mask[:, [0, -1]] = False
    return ndimage.binary_fill_holes(mask), protected


def _viton_hd_arm(
    shoulder: np.ndarray, elbow: np.ndarray, wrist: np.ndarray, wrist_first: bool
) -> np.ndarray:
    """One drawn arm of VITON-HD step 3, drawn with Pillow as the release does."""
    wrist = elbow + VITON_HD_WRIST_EXTENSION * (wrist - elbow)
    chain = (wrist, elbow, shoulder) if wrist_first else (shoulder, elbow, wrist)
    image = Image.new("L", (PARSE_WIDTH, PARSE_HEIGHT))
    draw = ImageDraw.Draw(image)
    draw.line(_as_uint16(np.concatenate(chain)).tolist(), fill=255, width=VITON_HD_ARM_WIDTH, joint="curve")
    half = VITON_HD_ARM_WIDTH // 2
    draw.arc(np.concatenate([shoulder - half, shoulder + half]).tolist(), 0, 360, fill=255, width=half)
    return np.asarray(image) > 0


def _as_uint16(values: np.ndarray) -> np.ndarray:
    """The release's cast to uint16, made explicit: truncated toward zero, then wrapped mod 2**16."""
    return np.mod(np.trunc(values).astype(np.int64), 1 << 16)


def _largest_contour(mask: np.ndarray) -> np.ndarray:
    """VITON-HD step 7: the contour of largest absolute area (the first on ties), drawn filled.

    The approximation matters: on the golden cases TC89_L1 gives the release exactly, while
    CHAIN_APPROX_NONE or _SIMPLE differ by 130-490 pixels per case (IoU down to 0.990).
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_TC89_L1)
    filled = np.zeros(mask.shape, np.uint8)
    if contours:
        largest = int(np.argmax([cv2.contourArea(contour) for contour in contours]))
        cv2.drawContours(filled, contours, largest, 1, thickness=cv2.FILLED)
    return filled > 0


def _dress_code_mask(
    parse: np.ndarray, keypoints: np.ndarray, category: str
) -> tuple[np.ndarray, np.ndarray]:
    """DressCode (module docstring, steps 1-5); also the fixed region before the erosion."""
    has_arms = category in ("upper_body", "dresses")
    fixed = _labels(parse, _DRESS_CODE_FIXED + _OTHER_GARMENT[category])
    cloth = _labels(parse, _DRESS_CODE_CLOTH[category])
    head = _labels(parse, _DRESS_CODE_HEAD)
    if has_arms:
        arms = _dress_code_arms(keypoints)
        fixed |= _labels(parse, ("left_arm", "right_arm")) & ~arms
        neck = head & _below_shoulder_line(keypoints)
    else:
        arms = neck = np.zeros_like(head)
    fixed |= head & ~neck
    garment = _morph(cloth | arms, cv2.dilate, GARMENT_DILATION) | neck
    eroded = _morph(fixed, cv2.erode, DRESS_CODE_FIXED_EROSION)
    return ndimage.binary_fill_holes(garment & ~eroded), fixed


def _dress_code_arms(keypoints: np.ndarray) -> np.ndarray:
    """DressCode step 3: one polyline through the arm keypoints that were detected, dilated."""
    canvas = np.zeros((PARSE_HEIGHT, PARSE_WIDTH), np.uint8)
    chain = [_L_WRIST, _L_ELBOW, _L_SHOULDER, _R_SHOULDER, _R_ELBOW, _R_WRIST]
    _draw_polyline(canvas, [keypoints[i] for i in chain if _present(keypoints[i])], DRESS_CODE_ARM_WIDTH)
    return _morph(canvas > 0, cv2.dilate, DRESS_CODE_ARM_DILATION)


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
