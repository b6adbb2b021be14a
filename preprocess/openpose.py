"""OpenPose body keypoints of the person, in the 384x512 frame the agnostic masks are drawn in.

The network and its peak/limb grouping are controlnet_aux's body estimator, loaded from the local
`openpose/body_pose_model.pth` (never from the hub). This module turns its output into the released
convention (18 COCO keypoints `[x, y]`, missing = [0, 0]) for one person: when several are found,
the one whose keypoints span the largest box. A deliberate difference: the released demo takes the first
person found (`subset[0]`) and re-indexes the candidates in a way that, with two people or stray peaks
ahead of the person's own, mixes people; for one person the two agree exactly (tested against the released
output in `tests/test_preprocess_parity.py`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from leffa.common import NoPersonError
from preprocess.parsing import PARSE_HEIGHT, PARSE_WIDTH

NUM_KEYPOINTS = 18
KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "neck",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_eye",
    "left_eye",
    "right_ear",
    "left_ear",
)
LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2),
    (1, 5),
    (2, 3),
    (3, 4),
    (5, 6),
    (6, 7),
    (1, 8),
    (8, 9),
    (9, 10),
    (1, 11),
    (11, 12),
    (12, 13),
    (1, 0),
    (0, 14),
    (14, 16),
    (0, 15),
    (15, 17),
)

# Estimator: BGR uint8 image -> (candidate, subset) in controlnet_aux's format (see `select_person`).
BodyEstimator = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Pose:
    """One person's keypoints: `keypoints[i] = [x, y]` (pixels, 384x512 frame; [0, 0] when missing)."""

    keypoints: np.ndarray
    confidences: np.ndarray

    @property
    def present(self) -> np.ndarray:
        """(18,) bool: which keypoints were detected."""
        return np.any(self.keypoints != 0, axis=1)


def select_person(candidate: np.ndarray, subset: np.ndarray, width: int, height: int) -> Pose:
    """Pick one person from controlnet_aux's body output and convert it to the released convention.

    `candidate` rows are detected peaks `[x, y, score, id]`; `subset` rows are people: columns 0..17
    index `candidate` (-1 = missing), column 18 is the total score, 19 the part count. The person with
    the largest keypoint bounding box wins; equal boxes go to the one nearest the image centre.
    """
    subset = _as_table(subset, NUM_KEYPOINTS + 2, "subset")
    candidate = _as_table(candidate, 4, "candidate")
    poses = [pose for pose in (_pose_of(row, candidate) for row in subset) if pose.present.any()]
    if not poses:
        raise NoPersonError("no person found in the image; use a photo showing one person's body")
    centre = np.array([width / 2.0, height / 2.0])
    return min(poses, key=lambda pose: (-_box_area(pose), _box_centre_distance(pose, centre)))


def draw_keypoints(
    image: Image.Image, keypoints: np.ndarray, frame: tuple[int, int] = (PARSE_WIDTH, PARSE_HEIGHT)
) -> Image.Image:
    """Skeleton preview: limbs and keypoints (given in a `frame`-sized image) drawn over `image`."""
    points = np.asarray(keypoints, dtype=np.float64)
    if points.shape != (NUM_KEYPOINTS, 2):
        raise ValueError(f"keypoints must have shape ({NUM_KEYPOINTS}, 2), got {points.shape}")
    present = np.any(points != 0, axis=1)
    scaled = points * (np.array(image.size, dtype=np.float64) / np.array(frame, dtype=np.float64))
    canvas = np.array(image.convert("RGB"))
    thickness = max(1, round(min(image.size) / 128))
    for index, (start, end) in enumerate(LIMBS):
        if present[start] and present[end]:
            colour = _limb_colour(index)
            cv2.line(canvas, _pixel(scaled[start]), _pixel(scaled[end]), colour, thickness, cv2.LINE_AA)
    for point in scaled[present]:
        cv2.circle(canvas, _pixel(point), thickness + 2, (255, 255, 255), -1, cv2.LINE_AA)
    return Image.fromarray(canvas)


class OpenPoseDetector:
    """Body keypoints of the main person in a photo."""

    def __init__(self, model_path: str | Path, device: str = "cpu"):
        self.estimator = _load_body_estimator(Path(model_path), device)

    def __call__(self, person: Image.Image) -> Pose:
        """Keypoints of the main person in `person` (any size; resized to 384x512 like the released demo)."""
        resized = person.convert("RGB").resize((PARSE_WIDTH, PARSE_HEIGHT), Image.Resampling.BICUBIC)
        bgr = np.ascontiguousarray(np.asarray(resized)[:, :, ::-1])
        candidate, subset = self.estimator(bgr)
        return select_person(candidate, subset, PARSE_WIDTH, PARSE_HEIGHT)


def _load_body_estimator(path: Path, device: str) -> BodyEstimator:
    """controlnet_aux's `Body` built from a local weights file.

    Imported here because importing controlnet_aux loads every annotator it ships (seconds, and a
    burst of third-party deprecation warnings) while only the body estimator is needed.
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"OpenPose weights not found: {path}; download them with "
            "`python -m leffa download preprocess --ckpt-dir <dir>`"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from controlnet_aux.open_pose.body import Body
    try:
        body = Body(str(path))
    except (RuntimeError, KeyError, EOFError, OSError) as error:
        raise ValueError(
            f"{path} is not a usable OpenPose body model ({error}); download it again"
        ) from error
    return body.to(device)


def _as_table(values: np.ndarray, columns: int, name: str) -> np.ndarray:
    table = np.asarray(values, dtype=np.float64)
    if table.size == 0:
        return table.reshape(0, columns)
    if table.ndim != 2 or table.shape[1] != columns:
        raise ValueError(f"{name} must have shape (n, {columns}), got {table.shape}")
    return table


def _pose_of(row: np.ndarray, candidate: np.ndarray) -> Pose:
    indices = row[:NUM_KEYPOINTS].astype(np.int64)
    found = indices >= 0
    keypoints = np.zeros((NUM_KEYPOINTS, 2), dtype=np.float32)
    confidences = np.zeros(NUM_KEYPOINTS, dtype=np.float32)
    keypoints[found] = candidate[indices[found], :2]
    confidences[found] = candidate[indices[found], 2]
    return Pose(keypoints=keypoints, confidences=confidences)


def _box_area(pose: Pose) -> float:
    points = pose.keypoints[pose.present]
    extent = points.max(axis=0) - points.min(axis=0)
    return float(extent[0] * extent[1])


def _box_centre_distance(pose: Pose, centre: np.ndarray) -> float:
    points = pose.keypoints[pose.present]
    box_centre = (points.max(axis=0) + points.min(axis=0)) / 2.0
    return float(np.linalg.norm(box_centre - centre))


def _pixel(point: np.ndarray) -> tuple[int, int]:
    return round(float(point[0])), round(float(point[1]))


def _limb_colour(index: int) -> tuple[int, int, int]:
    """Distinct colours around the hue circle, one per limb."""
    hue = np.uint8(round(180 * index / len(LIMBS)))
    rgb = cv2.cvtColor(np.array([[[hue, 255, 255]]], dtype=np.uint8), cv2.COLOR_HSV2RGB)[0, 0]
    return int(rgb[0]), int(rgb[1]), int(rgb[2])
