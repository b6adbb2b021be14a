"""Human parsing with the released SCHP ATR and LIP ONNX models.

The person image is parsed at 384x512 by both models. The ATR map is the result; LIP only serves to
split ATR's "face" (which includes the neck) into face and neck. Pre/post-processing follows the
released demo: the image is warped into the model's square input with an aspect-preserving affine
map, the logits are upsampled and warped back, and small holes in the upper clothes are filled.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
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


def schp_affine(width: int, height: int, out_width: int, out_height: int) -> np.ndarray:
    """Affine map (2x3) from a `width`x`height` image into the `out_width`x`out_height` model input.

    SCHP's convention: the box is the whole image ([0, 0, width-1, height-1]); its centre maps to the
    input centre and its size is enlarged to the input's aspect ratio, then scaled to fit, so the
    image is never distorted and is padded on the short side.
    """
    box_width = max(width - 1.0, (height - 1.0) * out_width / out_height)
    scale = out_width / box_width
    centre_x, centre_y = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    return np.array(
        [[scale, 0.0, out_width / 2.0 - scale * centre_x], [0.0, scale, out_height / 2.0 - scale * centre_y]],
        dtype=np.float64,
    )


def upsample_align_corners(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of (C, h, w) logits to (C, height, width) with corner pixels aligned.

    Equals torch's `interpolate(mode="bilinear", align_corners=True)`, which SCHP uses.
    """
    rows = _linear_resize_axis(logits, height, axis=1)
    return _linear_resize_axis(rows, width, axis=2)


def fill_upper_clothes_holes(labels: np.ndarray, max_area: int = MAX_FILLED_HOLE_AREA) -> np.ndarray:
    """Relabel as upper clothes every hole inside upper-clothes-or-arms of at most `max_area` pixels.

    A hole is a 4-connected region outside upper clothes and arms that does not touch the image
    border. Parsers often leave logos or folds inside a shirt unlabelled; larger holes are real.
    """
    garment = np.isin(labels, (LABEL["upper_clothes"], LABEL["left_arm"], LABEL["right_arm"]))
    _, components, stats, _ = cv2.connectedComponentsWithStats((~garment).astype(np.uint8), connectivity=4)
    border = np.unique(np.concatenate([components[0], components[-1], components[:, 0], components[:, -1]]))
    small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] <= max_area)
    holes = np.setdiff1d(small[small > 0], border)
    filled = labels.copy()
    filled[np.isin(components, holes)] = LABEL["upper_clothes"]
    return filled


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
        inverse = cv2.invertAffineTransform(forward)
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


def _linear_resize_axis(array: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Linear interpolation of `array` along `axis` to `size` samples, first and last samples aligned."""
    length = array.shape[axis]
    positions = np.linspace(0.0, length - 1.0, size) if size > 1 else np.zeros(1)
    lower = np.floor(positions).astype(np.int64)
    upper = np.minimum(lower + 1, length - 1)
    weight_shape = [1] * array.ndim
    weight_shape[axis] = size
    weight = (positions - lower).astype(array.dtype).reshape(weight_shape)
    return np.take(array, lower, axis=axis) * (1 - weight) + np.take(array, upper, axis=axis) * weight
