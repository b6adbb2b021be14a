"""OpenPose: person selection on controlnet_aux-format arrays, and the estimator built from a local file."""

from __future__ import annotations

import socket
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from preprocess import openpose
from preprocess.openpose import NoPersonError, OpenPoseDetector, draw_keypoints, select_person

W, H = 384, 512


def _person(candidate: list, keypoints: dict[int, tuple[float, float]], score: float = 0.9) -> np.ndarray:
    """Append a person's peaks to `candidate` and return its subset row (controlnet_aux's layout)."""
    row = -np.ones(20)
    for part, (x, y) in keypoints.items():
        row[part] = len(candidate)
        candidate.append([x, y, score, len(candidate)])
    row[18], row[19] = score * len(keypoints), len(keypoints)
    return row


def test_largest_person_wins_over_the_first():
    candidate: list = []
    small = _person(candidate, {0: (20, 20), 1: (20, 40), 2: (10, 40), 5: (30, 40), 8: (15, 80)})
    large = _person(
        candidate, {1: (200, 100), 2: (150, 110), 5: (250, 110), 8: (170, 300), 11: (230, 300)}, 0.7
    )
    pose = select_person(np.array(candidate), np.stack([small, large]), W, H)
    expected = np.zeros((18, 2), np.float32)
    expected[[1, 2, 5, 8, 11]] = [(200, 100), (150, 110), (250, 110), (170, 300), (230, 300)]
    np.testing.assert_array_equal(pose.keypoints, expected)
    np.testing.assert_allclose(pose.confidences[[1, 2, 5, 8, 11]], 0.7)
    assert (pose.confidences[[0, 3, 4, 6, 7, 9, 10, 12, 13, 14, 15, 16, 17]] == 0).all()
    assert pose.keypoints.dtype == np.float32 and pose.confidences.shape == (18,)
    assert pose.present.tolist() == [i in (1, 2, 5, 8, 11) for i in range(18)]


def test_equal_sizes_go_to_the_most_central_person():
    candidate: list = []
    shape = {1: (0, 0), 2: (-40, 10), 5: (40, 10), 8: (-20, 150), 11: (20, 150)}
    edge = _person(candidate, {k: (x + 60, y + 100) for k, (x, y) in shape.items()})
    centre = _person(candidate, {k: (x + 190, y + 180) for k, (x, y) in shape.items()})
    for subset in (np.stack([edge, centre]), np.stack([centre, edge])):
        pose = select_person(np.array(candidate), subset, W, H)
        assert tuple(pose.keypoints[1]) == (190, 180)


@pytest.mark.parametrize("subset", [np.zeros((0, 20)), -np.ones((1, 20))])
def test_nobody_raises_no_person_found(subset):
    with pytest.raises(NoPersonError, match="no person found"):
        select_person(np.zeros((0, 4)), subset, W, H)


def test_malformed_estimator_output_is_reported():
    with pytest.raises(ValueError, match=r"subset must have shape \(n, 20\)"):
        select_person(np.zeros((3, 4)), np.zeros((2, 18)), W, H)


def test_detector_feeds_the_estimator_bgr_at_384x512(monkeypatch):
    seen = []
    candidate: list = []
    row = _person(candidate, {1: (192, 100), 2: (150, 110), 5: (230, 110), 8: (170, 300)})

    def fake_estimator(bgr):
        seen.append(bgr)
        return np.array(candidate), row[None]

    monkeypatch.setattr(openpose, "_load_body_estimator", lambda path, device: fake_estimator)
    rgb = np.zeros((1024, 768, 3), np.uint8)
    rgb[:, :, 0] = 200
    rgb[:, :, 2] = np.linspace(0, 255, 768, dtype=np.uint8)[None]
    pose = OpenPoseDetector("unused.pth")(Image.fromarray(rgb))
    expected = np.asarray(Image.fromarray(rgb).resize((W, H), Image.Resampling.BICUBIC))[:, :, ::-1]
    np.testing.assert_array_equal(seen[0], expected)
    assert seen[0].flags.c_contiguous
    assert tuple(pose.keypoints[2]) == (150, 110)


def test_draw_keypoints_scales_to_the_image_and_skips_missing_points():
    keypoints = np.zeros((18, 2), np.float32)
    keypoints[1] = (100, 100)
    keypoints[2] = (100, 300)
    image = Image.new("RGB", (768, 1024))
    drawn = np.asarray(draw_keypoints(image, keypoints))
    assert drawn.shape == (1024, 768, 3)
    assert (drawn[200, 200] == 255).all() and (drawn[600, 200] == 255).all()
    assert drawn[400, 200].any()  # the neck-shoulder limb, scaled 2x
    assert not drawn[:, 400:].any() and not drawn[:150].any()
    with pytest.raises(ValueError, match=r"\(18, 2\)"):
        draw_keypoints(image, keypoints[:17])


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.pth"):
        OpenPoseDetector(tmp_path / "nothing.pth")


# --- controlnet_aux's real Body, loaded from a local file of random weights ---------------------------


@pytest.fixture(scope="module")
def body_weights(tmp_path_factory):
    """A random state dict in the released file's layout (layer names without the block prefix)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # importing controlnet_aux imports all of its annotators
        from controlnet_aux.open_pose.model import bodypose_model

    torch.manual_seed(0)
    state = {".".join(key.split(".")[1:]): value for key, value in bodypose_model().state_dict().items()}
    path = tmp_path_factory.mktemp("openpose") / "body_pose_model.pth"
    torch.save(state, path)
    return path, state


class _SyntheticNetwork(torch.nn.Module):
    """Stands in for the CNN: one Gaussian peak per keypoint, part affinity fields all equal to +1.

    Every PAF then points down-right, so each limb drawn going down (more than sideways) scores well
    and controlnet_aux's own grouping assembles the person.
    """

    def __init__(self, keypoints: dict[int, tuple[float, float]], image_height: int):
        super().__init__()
        self.keypoints = keypoints
        self.image_height = image_height
        self.device_marker = torch.nn.Parameter(torch.zeros(1))  # Body reads the device from a parameter

    def forward(self, data):
        height, width = data.shape[2] // 8, data.shape[3] // 8  # the network's stride is 8
        scale = data.shape[2] / self.image_height / 8  # exact: the resized height is a multiple of 8
        rows, columns = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        heatmaps = torch.zeros(1, 19, height, width)
        for part, (x, y) in self.keypoints.items():
            cx, cy = x * scale - 0.5, y * scale - 0.5
            heatmaps[0, part] = torch.exp(-((columns - cx) ** 2 + (rows - cy) ** 2) / 2.0)
        return torch.ones(1, 38, height, width), heatmaps


@pytest.mark.slow
def test_body_loads_from_the_local_file_without_network(body_weights, monkeypatch):
    path, state = body_weights

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    detector = OpenPoseDetector(path)
    loaded = {
        ".".join(key.split(".")[1:]): value for key, value in detector.estimator.model.state_dict().items()
    }
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[key], state[key]) for key in state)
    assert next(detector.estimator.model.parameters()).device.type == "cpu"


@pytest.mark.slow
def test_controlnet_aux_grouping_of_synthetic_maps_gives_the_keypoints(body_weights):
    person = {
        1: (190, 120),
        2: (170, 150),
        5: (230, 150),
        3: (175, 220),
        6: (250, 220),
        4: (180, 290),
        7: (270, 290),
        8: (190, 300),
        11: (230, 300),
        9: (195, 390),
        12: (240, 390),
    }
    detector = OpenPoseDetector(body_weights[0])
    detector.estimator.model = _SyntheticNetwork(person, H)
    pose = detector(Image.new("RGB", (W, H)))
    assert sorted(np.flatnonzero(pose.present)) == sorted(person)
    for part, point in person.items():
        np.testing.assert_allclose(pose.keypoints[part], point, atol=2)
    assert (pose.confidences[list(person)] > 0.5).all()


@pytest.mark.slow
def test_blank_maps_mean_no_person(body_weights):
    detector = OpenPoseDetector(body_weights[0])
    detector.estimator.model = _SyntheticNetwork({}, H)
    with pytest.raises(NoPersonError, match="no person found"):
        detector(Image.new("RGB", (W, H)))


@pytest.mark.slow
def test_corrupt_weights_file_is_reported(tmp_path):
    path = tmp_path / "body_pose_model.pth"
    torch.save({"conv1_1.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not a usable OpenPose body model"):
        OpenPoseDetector(path)
