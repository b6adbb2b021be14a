"""Human parsing with the released SCHP ATR and LIP ONNX models.

The person image is parsed at 384x512 by both models. The ATR map is the result; LIP only serves to
split ATR's "face" (which includes the neck) into face and neck. Pre/post-processing reproduces the
released demo exactly (measured against its output on seeded stand-in models,
``../shared/reference/README.md`` §4b; ``tests/test_parsing.py`` checks the public cases): the image is
warped into the model's square input with the released affine map, the logits are upsampled
(``align_corners``) and warped back, and holes in the upper clothes are filled by the released rule.
Hand-written where OpenCV's and torch's own calls cannot say it, because the released numerics are the
specification here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from PIL import Image

PARSE_WIDTH, PARSE_HEIGHT = 384, 512

# The ATR label set (index = label value), then the neck label this module adds. Single source of truth.
ATR_LABELS: tuple[str, ...] = (
    "background",
    "hat",
    "hair",
    "sunglasses",
    "upper_clothes",
    "skirt",
    "pants",
    "dress",
    "belt",
    "left_shoe",
    "right_shoe",
    "face",
    "left_leg",
    "right_leg",
    "left_arm",
    "right_arm",
    "bag",
    "scarf",
)
PARSE_LABELS: tuple[str, ...] = ATR_LABELS + ("neck",)
LABEL: dict[str, int] = {name: index for index, name in enumerate(PARSE_LABELS)}

LIP_NUM_CLASSES = 20
LIP_FACE = 13
ATR_INPUT_SIZE, LIP_INPUT_SIZE = 512, 473
MAX_FILLED_HOLE_AREA = 2000

# Mean and std of the SCHP input normalisation, in the BGR channel order the models were trained with.
_BGR_MEAN = np.array([0.406, 0.456, 0.485], dtype=np.float32)
_BGR_STD = np.array([0.225, 0.224, 0.229], dtype=np.float32)

_PREVIEW_COLOURS = np.array(
    [
        (0, 0, 0),
        (128, 0, 0),
        (254, 0, 0),
        (0, 85, 0),
        (169, 0, 51),
        (254, 85, 0),
        (0, 0, 85),
        (0, 119, 220),
        (85, 85, 0),
        (0, 85, 85),
        (85, 51, 0),
        (52, 86, 128),
        (0, 128, 0),
        (0, 0, 254),
        (51, 169, 220),
        (0, 254, 254),
        (85, 254, 169),
        (169, 254, 85),
        (254, 254, 0),
    ],
    dtype=np.uint8,
)


@dataclass(frozen=True)
class ParseResult:
    """A parse of the 384x512 person: `labels[y, x]` indexes `PARSE_LABELS`."""

    labels: np.ndarray

    def preview(self) -> Image.Image:
        """The label map coloured with one fixed colour per label, for display."""
        return Image.fromarray(_PREVIEW_COLOURS[self.labels])


def schp_affine(width: int, height: int, out_width: int, out_height: int, *, inverse: bool = False) -> np.ndarray:
    """Affine map (2x3) from a ``width`` x ``height`` image into the ``out_width`` x ``out_height`` model input
    (``inverse``: back), as the released demo builds it.

    The box is the whole image, ``[0, 0, width - 1, height - 1]``, enlarged to the input's aspect ratio.
    Three points fix the map: the box centre goes to the input centre ``((out_width - 1) / 2, (out_height -
    1) / 2)``, the point half the box width above it to the point ``(out_width - 1) / 2`` above the input
    centre, and the third point is the second turned 90° about the first. The released code writes ``- 1``
    where the original SCHP does not (a scale of exactly 1 and a shift of 64 px for ATR on 384x512, not
    1.00196 and 64.125); the points are float32, as there.
    """
    box_width, box_height = width - 1.0, height - 1.0
    aspect = out_width / out_height
    if box_width > aspect * box_height:
        box_height = box_width / aspect
    else:
        box_width = box_height * aspect
    source = _triangle(((width - 1) / 2, (height - 1) / 2), box_width / 2)
    target = _triangle(((out_width - 1) / 2, (out_height - 1) / 2), (out_width - 1) / 2)
    return cv2.getAffineTransform(target, source) if inverse else cv2.getAffineTransform(source, target)


def _triangle(centre: tuple[float, float], half: float) -> np.ndarray:
    """float32 (3, 2): ``centre``, the point ``half`` above it, and that point turned 90° about the centre."""
    first = np.array(centre, np.float32)
    second = first + np.array([0, -half], np.float32)
    offset = first - second
    return np.stack([first, second, second + np.array([-offset[1], offset[0]], np.float32)])


def upsample_align_corners(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of (C, h, w) float32 logits to (C, height, width), corner pixels aligned: torch's own
    ``interpolate``, which the released demo calls (its rounding decides ties of the argmax)."""
    resized = F.interpolate(torch.from_numpy(np.ascontiguousarray(logits))[None], size=(height, width),
                            mode="bilinear", align_corners=True)
    return resized[0].numpy()


def fill_upper_clothes_holes(labels: np.ndarray, max_area: int = MAX_FILLED_HOLE_AREA) -> np.ndarray:
    """The released demo's hole filling: holes inside upper clothes and arms become upper clothes, unless
    their outline encloses more than ``max_area`` pixels.

    Step by step, on the map padded by one pixel of background: every background region that upper
    clothes and arms enclose (not reached from the image corner) is filled, arms included, with upper
    clothes. A filled hole (not upper clothes or arm before) is restored to its old labels when its outline
    encloses more than ``max_area``: OpenCV traces it as a 32-bit label image, with the outline through the
    pixels around the hole, so it encloses about the hole's pixels plus half its perimeter (holes of about
    1,915-2,000 px are kept, not filled). The restored region is that filled outline, and where it covers an
    arm pixel the released uint8 sum of the two masks wraps to 0: those arm pixels stay upper clothes.
    (The released output fills every enclosed hole first, whatever the sizes of the garment's parts.)
    """
    upper, arms = LABEL["upper_clothes"], (LABEL["left_arm"], LABEL["right_arm"])
    padded = np.pad(labels, 1)
    arm = np.isin(padded, arms).astype(np.uint8)
    garment = ((padded == upper) | (arm == 1)).astype(np.uint8) * 255
    closed = _fill_enclosed(garment)
    filled = np.where(closed == 255, upper, padded).astype(np.uint8)
    holes = ((closed == 255) & (garment == 0)).astype(np.int32) * 255
    contours, _ = cv2.findContours(holes, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_TC89_L1)
    restored = np.zeros_like(padded)
    for index, contour in enumerate(contours):
        if abs(cv2.contourArea(contour, True)) > max_area:
            cv2.drawContours(restored, contours, index, color=255, thickness=-1)
    keep = restored + arm  # uint8: 255 + 1 wraps to 0, as released
    return np.where(keep != 0, padded, filled)[1:-1, 1:-1].astype(np.uint8)


def _fill_enclosed(mask: np.ndarray) -> np.ndarray:
    """``mask`` (uint8 0/255, its border background) with every background region not connected to the
    top-left corner set to 255: flood fill from the corner, then the unreached background added."""
    reached = mask.copy()
    cv2.floodFill(reached, np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), np.uint8), (0, 0), 255)
    return mask | cv2.bitwise_not(reached)


def add_neck(atr_labels: np.ndarray, lip_labels: np.ndarray) -> np.ndarray:
    """Label as neck (18) the pixels ATR calls face but LIP does not (LIP's face excludes the neck)."""
    neck = (atr_labels == LABEL["face"]) & (lip_labels != LIP_FACE)
    return np.where(neck, LABEL["neck"], atr_labels).astype(np.uint8)


class SchpModel:
    """One SCHP ONNX parser: BGR image in, per-pixel logits out.

    The square input side is read from the model; `input_side` is used when the model leaves it open.
    """

    def __init__(
        self,
        path: str | Path,
        num_classes: int,
        input_side: int,
        providers: list,
        options: ort.SessionOptions,
    ):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"human parsing model not found: {path}; download it with "
                "`python -m leffa download preprocess --ckpt-dir <dir>`"
            )
        self.path = path
        self.num_classes = num_classes
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        shape = self.session.get_inputs()[0].shape
        if len(shape) != 4:
            raise ValueError(f"{path}: expected an NCHW image input, got shape {shape}")
        fixed = all(isinstance(side, int) for side in shape[2:])
        self.input_height, self.input_width = (shape[2], shape[3]) if fixed else (input_side, input_side)

    def logits(self, bgr: np.ndarray) -> np.ndarray:
        """(C, H, W) float32 logits for a uint8 BGR image of shape (H, W, 3), in the image's frame."""
        height, width = bgr.shape[:2]
        forward = schp_affine(width, height, self.input_width, self.input_height)
        inverse = schp_affine(width, height, self.input_width, self.input_height, inverse=True)
        warped = cv2.warpAffine(
            bgr,
            forward,
            (self.input_width, self.input_height),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(0, 0, 0),
        )
        normalised = (warped.astype(np.float32) / 255.0 - _BGR_MEAN) / _BGR_STD
        batch = np.ascontiguousarray(normalised.transpose(2, 0, 1)[None])
        raw = np.asarray(self.session.run(None, {self.input_name: batch})[1][0], dtype=np.float32)
        if raw.ndim != 3 or raw.shape[0] != self.num_classes:
            raise ValueError(
                f"parsing model output 1 should hold (1, {self.num_classes}, h, w) logits, got {raw.shape}"
            )
        upsampled = upsample_align_corners(raw, self.input_height, self.input_width)
        return np.stack(
            [
                cv2.warpAffine(
                    channel,
                    inverse,
                    (width, height),
                    flags=cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_CONSTANT,
                    borderValue=0,
                )
                for channel in upsampled
            ]
        )

    def labels(self, bgr: np.ndarray) -> np.ndarray:
        """(H, W) uint8 argmax labels for a uint8 BGR image."""
        return self.logits(bgr).argmax(axis=0).astype(np.uint8)


class HumanParser:
    """ATR + LIP parsing of a person photo into the 19-label map used by the agnostic masks."""

    def __init__(
        self, atr_path: str | Path, lip_path: str | Path, device: str = "cpu", num_threads: int | None = None
    ):
        providers = _providers(device)
        options = ort.SessionOptions()
        if num_threads is not None:
            if num_threads < 1:
                raise ValueError(f"num_threads must be at least 1, got {num_threads}")
            options.intra_op_num_threads = num_threads
        self.atr = SchpModel(atr_path, len(ATR_LABELS), ATR_INPUT_SIZE, providers, options)
        self.lip = SchpModel(lip_path, LIP_NUM_CLASSES, LIP_INPUT_SIZE, providers, options)

    def __call__(self, person: Image.Image) -> ParseResult:
        """Parse `person` (any size; resized to 384x512 like the released demo)."""
        resized = person.convert("RGB").resize((PARSE_WIDTH, PARSE_HEIGHT), Image.Resampling.BICUBIC)
        bgr = np.ascontiguousarray(np.asarray(resized)[:, :, ::-1])
        atr = fill_upper_clothes_holes(self.atr.labels(bgr))
        return ParseResult(labels=add_neck(atr, self.lip.labels(bgr)))


def _providers(device: str) -> list:
    """onnxruntime providers for "cpu", "cuda" or "cuda:N" (CPU with a warning when CUDA is unavailable)."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    kind, _, index = device.partition(":")
    if kind != "cuda" or not (index == "" or index.isdigit()):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        warnings.warn("onnxruntime has no CUDA provider here; human parsing runs on the CPU", stacklevel=3)
        return ["CPUExecutionProvider"]
    return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]
