"""Synthetic pose transfer: one rendered person in two poses, with the exact flow between them.

Why: like the try-on task of :mod:`train.synthetic.people`, pose transfer has no ground-truth correspondence on
real data; here every target pixel is a sample of the source image at a known position, so attention flows
can be scored in pixels.

How: pose A is a try-on person of :func:`train.synthetic.people.make_sample` (wearing the garment). Pose B moves
its DensePose parts as an articulated body: each upper arm rotates about its shoulder, the forearm and hand
about the elbow as well, each thigh about its hip, the shin and foot about the knee, the head about the
neck, and the whole body by one similarity (scale about the hips, shift). A target pixel belongs to the
frontmost part whose inverse motion lands on a source pixel of that same part (front to back: head, hands,
forearms, upper arms, torso, feet, shins, thighs), so occlusions come out right; every other pixel is the
background, which is re-rendered from the sample's seed. Person pixels without a DensePose part (long hair,
sleeve tips beyond the arm) move with the nearest part and keep part 0 in the target's DensePose. Body pixels are bilinear samples of the source at
the flow positions, so ``grid_sample(source, flow)`` reproduces them up to rounding.

Conventions (as in :mod:`train.synthetic.people`): images uint8 ``(H, W, 3)``; ``flow`` (H, W, 2) absolute
``grid_sample`` positions in the source (x first, ``align_corners=True``), zero where ``flow_valid`` is False.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from scipy.ndimage import distance_transform_edt
from torch.utils.data import Dataset

from train.synthetic.data import SPLITS, cached_split, sample_seed, stack_split, to_batch
from train.synthetic.garments import make_garment
from train.synthetic.people import DENSEPOSE_PARTS, Size, background, check_size, make_sample, render_densepose
from train.synthetic.warping import sample_bilinear, to_flow

#: Parts in drawing order, front to back, each with the joint chain that moves it.
_FRONT_TO_BACK: tuple[str, ...] = (
    "head_right",
    "head_left",
    "hand_right",
    "hand_left",
    "lower_arm_right",
    "lower_arm_left",
    "upper_arm_right",
    "upper_arm_left",
    "torso",
    "foot_right",
    "foot_left",
    "lower_leg_right",
    "lower_leg_left",
    "upper_leg_right",
    "upper_leg_left",
)
#: Pose ranges in degrees: rotation of the upper limb about its root joint, and of the lower limb on top.
ARM_DEGREES, ELBOW_DEGREES = 50.0, 50.0
LEG_DEGREES, KNEE_DEGREES = 15.0, 20.0
HEAD_DEGREES = 10.0
#: Body scale range and shift (fractions of the body scale) of the whole-body similarity.
SCALE_RANGE, SHIFT_X, SHIFT_Y = (0.9, 1.06), 0.08, 0.04
#: Sum of channel differences from the background above which an unlabelled pixel belongs to the person.
_PERSON_THRESHOLD = 30.0


@dataclass(frozen=True)
class PoseSample:
    """One pose-transfer example; see the module docstring for the conventions."""

    source: np.ndarray  # uint8 (H, W, 3): the person in pose A (the reference)
    target: np.ndarray  # uint8 (H, W, 3): the same person in pose B (the image to generate)
    densepose: np.ndarray  # uint8 (H, W, 3): grey render of the target's parts (the model's pose input)
    flow: np.ndarray  # float32 (H, W, 2): source position shown by each target pixel
    flow_valid: np.ndarray  # bool (H, W): target pixels of the person
    source_parts: np.ndarray  # uint8 (H, W)
    target_parts: np.ndarray  # uint8 (H, W)
    seed: int


def _rotation(degrees: float, centre: np.ndarray) -> np.ndarray:
    """3x3 homogeneous rotation by ``degrees`` about ``centre`` (image coordinates, y down)."""
    theta = np.deg2rad(degrees)
    c, s = np.cos(theta), np.sin(theta)
    rotate = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    to_origin, back = np.eye(3), np.eye(3)
    to_origin[:2, 2], back[:2, 2] = -centre, centre
    return back @ rotate @ to_origin


def _joint(parts: np.ndarray, child: int, parents: tuple[int, ...], fallback: np.ndarray) -> np.ndarray:
    """Where part ``child`` meets any of ``parents``: the centroid of its pixels next to them."""
    touching = cv2.dilate(np.isin(parts, parents).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    ys, xs = np.nonzero(touching & (parts == child))
    if len(xs) == 0:
        ys, xs = np.nonzero(parts == child)
    if len(xs) == 0:
        return fallback
    return np.array([xs.mean(), ys.mean()])


def _part_motions(parts: np.ndarray, rng: np.random.Generator, b: float) -> dict[int, np.ndarray]:
    """Source -> target 3x3 motion of every DensePose part (see the module docstring)."""
    index = DENSEPOSE_PARTS
    ys, xs = np.nonzero(parts > 0)
    centre = np.array([xs.mean(), ys.mean()]) if len(xs) else np.array(parts.shape[::-1]) / 2.0
    scale = rng.uniform(*SCALE_RANGE)
    body = np.diag([scale, scale, 1.0])
    body[:2, 2] = centre * (1 - scale) + np.array([rng.uniform(-SHIFT_X, SHIFT_X), rng.uniform(-SHIFT_Y, SHIFT_Y)]) * b
    motions = {index["torso"]: body}
    neck = _joint(parts, index["head_right"], (index["torso"],), centre)
    head = body @ _rotation(rng.uniform(-HEAD_DEGREES, HEAD_DEGREES), neck)
    motions[index["head_right"]] = motions[index["head_left"]] = head
    limbs = (
        ("upper_arm", "lower_arm", ("hand",), ARM_DEGREES, ELBOW_DEGREES),
        ("upper_leg", "lower_leg", ("foot",), LEG_DEGREES, KNEE_DEGREES),
    )
    for upper, lower, ends, upper_range, lower_range in limbs:
        for side in ("right", "left"):
            u, low = index[f"{upper}_{side}"], index[f"{lower}_{side}"]
            root = _joint(parts, u, (index["torso"],), centre)
            middle = _joint(parts, low, (u,), root)
            first = body @ _rotation(rng.uniform(-upper_range, upper_range), root)
            second = first @ _rotation(rng.uniform(-lower_range, lower_range), middle)
            motions[u], motions[low] = first, second
            for end in ends:
                motions[index[f"{end}_{side}"]] = second
    return motions


def _nearest_part_labels(parts: np.ndarray, person: np.ndarray) -> np.ndarray:
    """``parts`` with every unlabelled ``person`` pixel given the part of the nearest labelled pixel."""
    labelled = parts > 0
    if not labelled.any():
        return parts.copy()
    _, (rows, cols) = distance_transform_edt(~labelled, return_indices=True)
    labels = parts.copy()
    fill = person & ~labelled
    labels[fill] = parts[rows[fill], cols[fill]]
    return labels


def _background_of(seed: int, h: int, w: int, b: float) -> np.ndarray:
    """The sample's background, re-rendered by replaying its random stream up to the background draw."""
    rng = np.random.default_rng(seed)
    make_garment(rng, h, w, b)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return background(rng, xx, yy)


def make_pose_sample(seed: int, size: Size = (128, 96)) -> PoseSample:
    """Render the pose-transfer sample of ``seed``: same seed and size -> identical arrays."""
    h, w = check_size(size)
    first = make_sample(seed, (h, w))
    b = min(h, w * 4.0 / 3.0)
    rng = np.random.default_rng([first.seed, 1])  # the pose has its own stream, so pose A is unchanged
    motions = _part_motions(first.parts, rng, b)
    background = _background_of(first.seed, h, w, b)
    labels = _nearest_part_labels(first.parts, np.abs(first.person - background).sum(-1) > _PERSON_THRESHOLD)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    pixels = np.stack([xx.ravel(), yy.ravel(), np.ones(h * w)])
    source_xy = np.zeros((h, w, 2))
    target_labels = np.zeros((h, w), np.uint8)
    unlabelled = labels != first.parts
    hit_any = np.zeros((h, w), bool)
    for part in (DENSEPOSE_PARTS[name] for name in reversed(_FRONT_TO_BACK)):  # nearer parts overwrite
        back = (np.linalg.inv(motions[part]) @ pixels)[:2].T.reshape(h, w, 2)
        xi, yi = np.rint(back[..., 0]).astype(np.intp), np.rint(back[..., 1]).astype(np.intp)
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        xi, yi = np.clip(xi, 0, w - 1), np.clip(yi, 0, h - 1)
        hits = inside & (labels[yi, xi] == part)
        source_xy[hits] = back[hits]
        target_labels[hits] = np.where(unlabelled[yi, xi], 0, part)[hits]
        hit_any[hits] = True
    flow_valid = hit_any
    flow = np.where(flow_valid[..., None], to_flow(source_xy, h, w), 0.0).astype(np.float32)
    sampled = sample_bilinear(first.person.astype(np.float32), source_xy[..., 0], source_xy[..., 1])
    target = np.where(flow_valid[..., None], sampled, background)
    return PoseSample(
        source=first.person,
        target=np.clip(np.rint(target), 0, 255).astype(np.uint8),
        densepose=render_densepose(target_labels),
        flow=flow,
        flow_valid=flow_valid,
        source_parts=first.parts,
        target_parts=target_labels,
        seed=first.seed,
    )


def render_pose_split(
    split: str,
    count: int,
    size: Size = (128, 96),
    seed: int = 0,
    *,
    with_flow: bool = True,
    cache_dir: str | Path | None = None,
) -> dict[str, np.ndarray]:
    """Pose samples ``0..count-1`` of ``split`` stacked under the try-on split's keys, so
    :func:`train.synthetic.data.to_batch` makes model inputs of them: ``person`` = the target pose (the image
    to generate), ``garment`` = the reference (the person in the source pose), ``mask`` all ones.

    Rendering costs ~0.2 s a sample, so ``cache_dir`` keeps one ``.npz`` per split/count/size/seed.
    """

    def render(image_size: tuple[int, int]) -> dict[str, np.ndarray]:
        samples = [make_pose_sample(sample_seed(split, index, seed), image_size) for index in range(count)]
        images = {
            "person": np.stack([s.target for s in samples]),
            "garment": np.stack([s.source for s in samples]),
            "mask": np.ones((count, *image_size), bool),
        }
        return stack_split(samples, images, with_flow)

    return cached_split(f"pose_transfer-{split}", count, size, seed, with_flow, cache_dir, render)


class SyntheticPoseDataset(Dataset):
    """Pose-transfer samples with the keys of :class:`train.synthetic.data.SyntheticTryOnDataset`.

    ``image`` is the target pose, ``reference`` the source pose, ``mask`` all ones (everything is generated),
    ``densepose`` the target's parts; ``flow``/``flow_valid`` the true correspondence. The split is rendered
    once when the dataset is made (:func:`render_pose_split`, cached in ``cache_dir`` when given).
    """

    def __init__(
        self,
        split: str = "train",
        size: Size = (128, 96),
        length: int = 1000,
        seed: int = 0,
        *,
        cache_dir: str | Path | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be a positive int, got {length!r}")
        self.split, self.size, self.length, self.seed = split, check_size(size), length, seed
        self.arrays = render_pose_split(split, length, self.size, seed, cache_dir=cache_dir)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of length {self.length}")
        row = index % self.length
        item: dict[str, torch.Tensor | int] = {key: value[0] for key, value in to_batch(self.arrays, [row]).items()}
        item["seed"] = int(self.arrays["seed"][row])
        return item
