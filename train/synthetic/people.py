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

from dataclasses import dataclass

import cv2
import numpy as np

from train.datasets import check_size as check_image_size
from train.synthetic.garments import LANDMARKS, Garment, colour, make_garment, polygon_mask, rotated, sleeve_axes
from train.synthetic.warping import sample_at_flow, thin_plate_spline, to_flow

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
_SKIN = ((255, 224, 196), (241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 58, 40))
_HAIR = ((20, 20, 20), (60, 40, 25), (110, 75, 40), (200, 170, 100), (150, 60, 30), (120, 120, 120))
_PANTS = ((40, 60, 110), (30, 30, 35), (190, 170, 130), (90, 90, 95), (60, 80, 50), (120, 40, 40))
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



#: Smallest image side the renderer draws a recognisable person at.
MIN_SIDE = 32


def check_size(size: Size) -> Size:
    """``size`` as ``(height, width)`` ints (:func:`train.datasets.check_size`, sides at least :data:`MIN_SIDE`)."""
    return check_image_size(size, MIN_SIDE)


def check_seed(seed: int, name: str = "seed") -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"{name} must be a non-negative int, got {seed!r}")
    return int(seed)


def _jitter(rng: np.random.Generator, base: tuple[int, int, int], amount: float = 10.0) -> np.ndarray:
    return np.clip(np.array(base, dtype=np.float64) + rng.uniform(-amount, amount, 3), 0, 255)



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
    targets: np.ndarray  # (13, 2), same order as Garment.landmarks


def _fit_garment(rng: np.random.Generator, garment: Garment, body: _Body, b: float) -> _Fit:
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


def background(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    first = colour(rng, (0.0, 0.35), (0.55, 1.0))
    if rng.uniform() < 0.4:
        return np.broadcast_to(first, xx.shape + (3,)).copy()
    second = colour(rng, (0.0, 0.35), (0.55, 1.0))
    t = rotated(xx, yy, rng.uniform(0, 2 * np.pi))[0]
    t = ((t - t.min()) / max(float(np.ptp(t)), 1e-9))[..., None]
    return first * (1 - t) + second * t


@dataclass(frozen=True)
class _Layer:
    """One garment piece as seen on the person: where it shows and the garment position each pixel shows."""

    shows: np.ndarray
    flow: np.ndarray


def _garment_layer(garment: Garment, g: np.ndarray, label: int, gate: np.ndarray) -> _Layer:
    """Show the garment piece ``label`` through the person->garment pixel map ``g`` (H, W, 2).

    The piece's labels are dilated by one pixel so that neighbouring pieces overlap at their seam
    instead of leaving a gap.
    """
    h, w = garment.silhouette.shape
    flow = to_flow(g, h, w)
    alpha = sample_at_flow(garment.silhouette, flow)
    piece = sample_at_flow(_dilate(garment.labels == label, 1), flow, mode="nearest")
    return _Layer(gate & (alpha >= 0.5) & (piece > 0), flow)


def _body_layer(canvas: _Canvas, garment: Garment, fit: _Fit) -> _Layer:
    """Garment body through the thin-plate spline, limited to near the landmarks (the spline's far field
    could fold back onto the garment)."""
    b = canvas.b
    hull = cv2.convexHull(np.round(fit.targets * 16).astype(np.int32))[:, 0] / 16.0
    gate = _dilate(polygon_mask(canvas.shape, hull), 0.04 * b)
    pixels = np.stack([canvas.xx[gate], canvas.yy[gate]], axis=1)
    g = np.zeros(canvas.shape + (2,))
    g[gate] = thin_plate_spline(fit.targets / b, garment.landmarks / b)(pixels / b) * b
    return _garment_layer(garment, g, 1, gate)


_SIDE = {-1: "right", 1: "left"}  # image left is the person's right


def _draw_legs(rng: np.random.Generator, canvas: _Canvas, body: _Body) -> None:
    xx, yy = canvas.xx, canvas.yy
    pants_top = body.shoulder_y + 0.8 * body.torso
    pants = polygon_mask(
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
    region = polygon_mask(canvas.shape, right_side + left_side)
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


def _draw_arms(rng: np.random.Generator, canvas: _Canvas, body: _Body, garment: Garment, fit: _Fit) -> _Arms:
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
        along, across = sleeve_axes(angle, s)
        g_along, g_across = sleeve_axes(garment.sleeve_angle, s)
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


def _render(rng: np.random.Generator, garment: Garment, h: int, w: int, b: float) -> dict[str, np.ndarray]:
    """Draw a person wearing ``garment``, back to front; returns person, flow, flow_valid, parts and mask."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    canvas = _Canvas(xx, yy, background(rng, xx, yy), np.zeros((h, w), np.uint8), b)
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
    seed = check_seed(seed)
    h, w = check_size(size)
    b = min(h, w * 4.0 / 3.0)  # body scale: the height of a 4:3 portrait frame that fits
    rng = np.random.default_rng(seed)
    garment = make_garment(rng, h, w, b)
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
