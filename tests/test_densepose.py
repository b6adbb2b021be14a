"""DensePose R50-FPN on torch: checkpoint format, each stage against a naive computation, renders, end to end.

All weights are random (seeded); nothing is downloaded.
"""

from __future__ import annotations

import math
import os
import pickle
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F
from torchvision.ops import FrozenBatchNorm2d, roi_align

from leffa.common import CheckpointMismatchError, NoPersonError, check_state_dict
from preprocess.densepose import (
    CHECKPOINT_FILE,
    DensePoseModel,
    DensePoseRCNN,
    DensePoseResult,
    DensePoseSettings,
    PersonChart,
    UnsafePickleError,
    parula_lut,
    read_detectron2_checkpoint,
    render_dresscode,
    render_iuv,
    render_segmentation,
    write_detectron2_checkpoint,
)
from preprocess.densepose.backbone import Bottleneck
from preprocess.densepose.boxes import (
    apply_deltas,
    assign_levels,
    cell_anchors,
    grid_anchors,
    multilevel_roi_align,
)
from preprocess.densepose.chart import chart_to_person
from preprocess.densepose.checkpoint import load_weights
from preprocess.densepose.inputs import prepare_image, resized_shape, to_rgb_array
from preprocess.densepose.layers import Conv2dFrozenBN
from preprocess.densepose.model import resolve_checkpoint
from preprocess.densepose.rpn import RPNHead

KEY_LIST = (
    Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "densepose_r50_fpn_s1x_keys.tsv"
)
SMALL = DensePoseSettings(shortest_edge=128, max_size=192, detections_per_image=2)


@pytest.fixture(scope="module")
def network() -> DensePoseRCNN:
    """Seeded random-weight network; tests that change weights restore them (see ``person_logits``)."""
    torch.manual_seed(0)
    return DensePoseRCNN().eval()


@pytest.fixture(scope="module")
def checkpoint_dir(network: DensePoseRCNN, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ckpts")
    (root / "densepose").mkdir()
    write_detectron2_checkpoint(network.state_dict(), root / CHECKPOINT_FILE)
    return root


@contextmanager
def person_logits(network: DensePoseRCNN, person: float, background: float):
    """Make every proposal score softmax([person, background]) and keep boxes = proposals."""
    predictor = network.roi_heads.box_predictor
    saved = {name: tensor.clone() for name, tensor in predictor.state_dict().items()}
    with torch.no_grad():
        predictor.cls_score.weight.zero_()
        predictor.cls_score.bias.copy_(torch.tensor([person, background]))
        predictor.bbox_pred.weight.zero_()
        predictor.bbox_pred.bias.zero_()
    try:
        yield
    finally:
        predictor.load_state_dict(saved)


def _meta_network() -> DensePoseRCNN:
    with torch.device("meta"):
        return DensePoseRCNN()


def _distinct_weights(network: DensePoseRCNN) -> dict[str, np.ndarray]:
    """One constant per tensor (cheap to make, and tells tensors apart)."""
    return {
        name: np.full(tuple(tensor.shape), 0.01 * index, np.float32)
        for index, (name, tensor) in enumerate(network.state_dict().items())
    }


# --- checkpoint format -------------------------------------------------------------------------------


def test_module_names_and_shapes_equal_released_key_list():
    if not KEY_LIST.is_file():
        pytest.skip(f"{KEY_LIST} not available")
    rows = [line.rstrip("\n").split("\t") for line in KEY_LIST.read_text().splitlines()[1:]]
    expected = {name: tuple(int(n) for n in shape.split("x")) for name, shape in rows}
    actual = {name: tuple(t.shape) for name, t in _meta_network().state_dict().items()}
    assert len(expected) == 335
    assert actual == expected


def test_random_checkpoint_round_trips_and_loads_strictly(network, checkpoint_dir):
    path = checkpoint_dir / CHECKPOINT_FILE
    assert resolve_checkpoint(checkpoint_dir) == path and resolve_checkpoint(path) == path
    weights = read_detectron2_checkpoint(path)
    state = network.state_dict()
    assert set(weights) == set(state)
    assert all(isinstance(array, np.ndarray) for array in weights.values())
    loaded = DensePoseModel.from_checkpoint(checkpoint_dir).network.state_dict()
    assert all(torch.equal(loaded[name], state[name]) for name in state)
    assert all(tensor.dtype == torch.float32 and tensor.device.type == "cpu" for tensor in loaded.values())


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_reader_accepts_numpy_pickles_of_any_protocol_with_extra_keys(tmp_path, protocol):
    weights = OrderedDict(a=np.arange(6, dtype=np.float32).reshape(2, 3), b=np.float64([1.5]))
    path = tmp_path / "model.pkl"
    with path.open("wb") as handle:
        pickle.dump(
            {"model": weights, "__author__": "someone", "matching_heuristics": True}, handle, protocol
        )
    loaded = read_detectron2_checkpoint(path)
    assert list(loaded) == ["a", "b"]
    np.testing.assert_array_equal(loaded["a"], weights["a"])
    np.testing.assert_array_equal(loaded["b"], weights["b"])


def test_missing_checkpoint_names_file_and_hub_repo(tmp_path):
    with pytest.raises(FileNotFoundError, match="densepose/model_final_162be9.pkl") as info:
        DensePoseModel.from_checkpoint(tmp_path)
    assert "franciszzj/Leffa" in str(info.value)
    with pytest.raises(FileNotFoundError, match="franciszzj/Leffa"):
        DensePoseModel.from_checkpoint(tmp_path / "nothing.pkl")


def test_broken_checkpoints_give_one_error_naming_the_tensors():
    network = _meta_network()
    good = _distinct_weights(network)
    check_state_dict(network.state_dict(), good, what="DensePose R50-FPN")

    missing = dict(good)
    del missing["roi_heads.decoder.p5.4.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"DensePose R50-FPN: 1 missing keys: roi_heads.decoder.p5.4.weight"):
        load_weights(network, missing)

    extra = dict(good, **{"roi_heads.mask_head.weight": np.zeros(3, np.float32)})
    with pytest.raises(CheckpointMismatchError, match=r"1 unexpected keys: roi_heads.mask_head.weight"):
        load_weights(network, extra)

    wrong = dict(good, **{"roi_heads.box_predictor.cls_score.weight": np.zeros((81, 1024), np.float32)})
    with pytest.raises(CheckpointMismatchError, match=r"cls_score.weight \(81, 1024\) != \(2, 1024\)"):
        load_weights(network, wrong)


def test_load_weights_materialises_a_meta_network():
    network = _meta_network()
    weights = _distinct_weights(network)
    load_weights(network, weights)
    state = network.state_dict()
    assert all(t.device.type == "cpu" and not t.requires_grad for t in state.values())
    for name in (
        "backbone.bottom_up.stem.conv1.norm.running_var",
        "roi_heads.densepose_predictor.v_lowres.bias",
    ):
        np.testing.assert_array_equal(state[name].numpy(), weights[name])


def test_files_that_are_not_checkpoints_are_rejected_clearly(tmp_path):
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="not a readable detectron2 checkpoint"):
        read_detectron2_checkpoint(garbage)
    no_model = tmp_path / "no_model.pkl"
    no_model.write_bytes(pickle.dumps({"weights": {}}))
    with pytest.raises(ValueError, match='"model" mapping'):
        read_detectron2_checkpoint(no_model)
    not_array = tmp_path / "not_array.pkl"
    not_array.write_bytes(pickle.dumps({"model": {"a": [1.0, 2.0]}}))
    with pytest.raises(ValueError, match="must be numpy arrays"):
        read_detectron2_checkpoint(not_array)


class _RunsShellCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _CallsEval:
    def __reduce__(self):
        return eval, ("1 + 1",)


@pytest.mark.parametrize("payload_kind", ["os.system", "builtins.eval"])
def test_pickle_that_runs_code_is_refused(tmp_path, payload_kind):
    marker = tmp_path / "pwned"
    payload = _RunsShellCommand(f"touch {marker}") if payload_kind == "os.system" else _CallsEval()
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"backbone.x": payload}}))
    with pytest.raises(UnsafePickleError, match="refusing to unpickle") as info:
        read_detectron2_checkpoint(path)
    assert ("system" if payload_kind == "os.system" else "builtins.eval") in str(info.value)
    assert not marker.exists()


# --- backbone -------------------------------------------------------------------------------------------


def _frozen_bn_formula(x: torch.Tensor, bn: FrozenBatchNorm2d) -> torch.Tensor:
    x64 = x.double()
    view = (1, -1, 1, 1)
    mean, var = bn.running_mean.double().view(view), bn.running_var.double().view(view)
    weight, bias = bn.weight.double().view(view), bn.bias.double().view(view)
    return ((x64 - mean) / torch.sqrt(var + 1e-5) * weight + bias).float()


def _randomise_norm(bn: FrozenBatchNorm2d, gen: torch.Generator) -> None:
    n = bn.weight.numel()
    bn.weight.copy_(torch.randn(n, generator=gen))
    bn.bias.copy_(torch.randn(n, generator=gen))
    bn.running_mean.copy_(torch.randn(n, generator=gen))
    bn.running_var.copy_(torch.rand(n, generator=gen) * 2 + 1e-3)


def test_frozen_batchnorm_matches_formula():
    gen = torch.Generator().manual_seed(1)
    bn = FrozenBatchNorm2d(8)
    _randomise_norm(bn, gen)
    x = torch.randn(2, 8, 5, 7, generator=gen)
    torch.testing.assert_close(bn(x), _frozen_bn_formula(x, bn), rtol=1e-5, atol=1e-5)
    assert bn.eps == 1e-5
    assert sorted(name for name, _ in bn.named_buffers()) == ["bias", "running_mean", "running_var", "weight"]


@torch.no_grad()
def test_conv_with_frozen_bn_equals_conv_then_formula():
    gen = torch.Generator().manual_seed(2)
    layer = Conv2dFrozenBN(4, 6, 3, stride=2)
    _randomise_norm(layer.norm, gen)
    x = torch.randn(1, 4, 9, 11, generator=gen)
    naive = _frozen_bn_formula(F.conv2d(x, layer.weight, None, stride=2, padding=1), layer.norm)
    torch.testing.assert_close(layer(x), naive, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_bottleneck_puts_stride_in_first_1x1_conv():
    gen = torch.Generator().manual_seed(3)
    block = Bottleneck(16, 8, 32, stride=2)
    for module in block.modules():
        if isinstance(module, FrozenBatchNorm2d):
            _randomise_norm(module, gen)
    x = torch.randn(1, 16, 12, 10, generator=gen)

    def conv_bn(layer: Conv2dFrozenBN, y: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
        return _frozen_bn_formula(F.conv2d(y, layer.weight, stride=stride, padding=padding), layer.norm)

    out = F.relu(conv_bn(block.conv1, x, 2, 0))
    out = F.relu(conv_bn(block.conv2, out, 1, 1))
    out = conv_bn(block.conv3, out, 1, 0)
    naive = F.relu(out + conv_bn(block.shortcut, x, 2, 0))
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1) and block.shortcut.stride == (2, 2)
    torch.testing.assert_close(block(x), naive, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_fpn_levels_shapes_and_top_down_sum(network):
    backbone = network.backbone
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(4))
    features = backbone(x)
    assert {name: tuple(f.shape[2:]) for name, f in features.items()} == {
        "p2": (16, 24),
        "p3": (8, 12),
        "p4": (4, 6),
        "p5": (2, 3),
        "p6": (1, 2),
    }
    res = backbone.bottom_up(x)
    merged5 = backbone.fpn_lateral5(res[3])
    merged4 = backbone.fpn_lateral4(res[2]) + merged5.repeat_interleave(2, 2).repeat_interleave(2, 3)
    torch.testing.assert_close(features["p5"], backbone.fpn_output5(merged5))
    torch.testing.assert_close(features["p4"], backbone.fpn_output4(merged4), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(features["p6"], features["p5"][:, :, ::2, ::2])


# --- anchors, RPN, box decoding, level assignment --------------------------------------------------------


def test_cell_anchors_and_grid_order():
    cells = cell_anchors(32, (0.5, 1.0, 2.0))
    w_half = math.sqrt(32 * 32 / 0.5) / 2
    torch.testing.assert_close(cells[0], torch.tensor([-w_half, -w_half / 2, w_half, w_half / 2]))
    torch.testing.assert_close(cells[1], torch.tensor([-16.0, -16.0, 16.0, 16.0]))
    anchors = grid_anchors(cells, stride=4, height=2, width=3)
    assert anchors.shape == (2 * 3 * 3, 4)
    y, x, a = 1, 2, 2
    torch.testing.assert_close(anchors[(y * 3 + x) * 3 + a], cells[a] + torch.tensor([8.0, 4.0, 8.0, 4.0]))


@torch.no_grad()
def test_rpn_head_flattens_outputs_in_anchor_order():
    torch.manual_seed(5)
    head = RPNHead()
    feature = torch.randn(1, 256, 3, 4)
    logits, deltas = head(feature)
    hidden = F.relu(head.conv(feature))
    raw_logits, raw_deltas = head.objectness_logits(hidden)[0], head.anchor_deltas(hidden)[0]
    y, x, a = 2, 1, 1
    index = (y * 4 + x) * 3 + a
    torch.testing.assert_close(logits[index], raw_logits[a, y, x])
    torch.testing.assert_close(deltas[index], raw_deltas[a * 4 : (a + 1) * 4, y, x])


def test_box_decoding_matches_hand_computation():
    box = torch.tensor([[10.0, 20.0, 50.0, 100.0]])
    deltas = torch.tensor([[1.0, 2.0, 5 * math.log(2.0), 0.0]])
    torch.testing.assert_close(
        apply_deltas(deltas, box, (10.0, 10.0, 5.0, 5.0)), torch.tensor([[-6.0, 36.0, 74.0, 116.0]])
    )
    huge = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    decoded = apply_deltas(huge, box, (1.0, 1.0, 1.0, 1.0))
    width = decoded[0, 2] - decoded[0, 0]
    torch.testing.assert_close(width, torch.tensor(40.0 * 1000 / 16))


def test_box_decoding_matches_torchvision_box_coder():
    from torchvision.models.detection._utils import BoxCoder

    gen = torch.Generator().manual_seed(9)
    corners = torch.rand(50, 2, generator=gen) * 500
    boxes = torch.cat([corners, corners + 1 + torch.rand(50, 2, generator=gen) * 300], dim=1)
    deltas = torch.randn(50, 4, generator=gen) * 3
    weights = (10.0, 10.0, 5.0, 5.0)
    expected = BoxCoder(weights, bbox_xform_clip=math.log(1000.0 / 16)).decode_single(deltas, boxes)
    torch.testing.assert_close(apply_deltas(deltas, boxes, weights), expected, rtol=1e-5, atol=1e-3)


def test_level_assignment_is_canonical():
    sizes = torch.tensor([10.0, 56.0, 111.9, 112.0, 223.9, 224.0, 448.0, 2000.0])
    boxes = torch.stack([torch.zeros_like(sizes), torch.zeros_like(sizes), sizes, sizes], dim=1)
    expected = [2, 2, 2, 3, 3, 4, 5, 5]
    assert (assign_levels(boxes, 2, 5) + 2).tolist() == expected
    naive = [min(max(math.floor(4 + math.log2(s / 224)), 2), 5) for s in sizes.tolist()]
    assert naive == expected


def test_multilevel_roi_align_uses_each_boxs_level():
    gen = torch.Generator().manual_seed(6)
    strides = [4, 8, 16, 32]
    features = [torch.randn(1, 2, 512 // s, 512 // s, generator=gen) for s in strides]
    boxes = torch.tensor(
        [
            [3.0, 4.0, 60.0, 70.0],
            [0.0, 0.0, 30.0, 30.0],
            [10.0, 5.0, 260.0, 255.0],
            [10.0, 5.0, 130.0, 125.0],
            [0.0, 1.0, 500.0, 490.0],
        ]
    )
    pooled = multilevel_roi_align(features, boxes, strides, 7, 2)
    for i, level in enumerate([0, 0, 2, 1, 3]):
        rois = torch.cat([torch.zeros(1, 1), boxes[i : i + 1]], dim=1)
        expected = roi_align(features[level], rois, 7, 1.0 / strides[level], 2, aligned=False)
        torch.testing.assert_close(pooled[i : i + 1], expected)


@torch.no_grad()
def test_box_head_scores_decodes_clips_and_thresholds(network):
    gen = torch.Generator().manual_seed(7)
    features = {
        name: torch.randn(1, 256, 64 // s, 64 // s, generator=gen)
        for name, s in (("p2", 4), ("p3", 8), ("p4", 16), ("p5", 32))
    }
    proposals = torch.tensor([[4.0, 4.0, 24.0, 44.0], [30.0, 2.0, 60.0, 30.0]])
    with person_logits(network, 0.2, 0.0):
        network.roi_heads.box_predictor.bbox_pred.bias.copy_(torch.tensor([10 * 0.5, 0.0, 0.0, 0.0]))
        boxes, scores = network.roi_heads.detect(features, proposals, (48, 64), DensePoseSettings())
        expected_score = 1 / (1 + math.exp(-0.2))
        torch.testing.assert_close(scores, torch.full((2,), expected_score))
        expected = torch.tensor([[14.0, 4.0, 34.0, 44.0], [45.0, 2.0, 64.0, 30.0]])
        assert sorted(boxes.tolist()) == sorted(expected.tolist())
        none, _ = network.roi_heads.detect(
            features, proposals, (48, 64), DensePoseSettings(score_threshold=0.6)
        )
        assert none.shape == (0, 4)


# --- chart post-processing and pasting -------------------------------------------------------------------


def test_chart_post_processing_on_hand_made_logits():
    size = 112
    coarse = torch.zeros(2, size, size)
    coarse[1, :, : size // 2] = 5.0
    fine = torch.zeros(25, size, size)
    fine[0] = 1.0
    fine[3, : size // 2] = 4.0
    fine[7, size // 2 :] = 4.0
    fine[0, size // 2 :, 84:] = 9.0
    u = torch.full((25, size, size), 0.9)
    u[3], u[7] = 0.25, 1.5
    v = torch.full((25, size, size), -0.3)
    v[3], v[7] = 0.5, -2.0
    box = torch.tensor([10.7, 20.2, 10.7 + 56.9, 20.2 + 112.4])
    person = chart_to_person(coarse, fine, u, v, box)
    assert person.box_xywh == (10, 20, 56, 112)
    expected = np.zeros((112, 56), np.uint8)
    expected[:56, :28] = 3
    expected[56:, :28] = 7
    np.testing.assert_array_equal(person.labels, expected)
    expected_u = np.where(expected == 3, 0.25, np.where(expected == 7, 1.0, 0.0))
    expected_v = np.where(expected == 3, 0.5, 0.0)
    np.testing.assert_allclose(person.uv[0], expected_u, atol=1e-6)
    np.testing.assert_allclose(person.uv[1], expected_v, atol=1e-6)


def test_chart_label_needs_coarse_foreground_and_fine_argmax():
    gen = torch.Generator().manual_seed(8)
    coarse, fine = torch.randn(2, 112, 112, generator=gen), torch.randn(25, 112, 112, generator=gen)
    u, v = torch.rand(25, 112, 112, generator=gen), torch.rand(25, 112, 112, generator=gen)
    person = chart_to_person(coarse, fine, u, v, torch.tensor([0.0, 0.0, 112.0, 112.0]))
    naive = (fine.argmax(0) * (coarse.argmax(0) > 0)).numpy()
    np.testing.assert_array_equal(person.labels, naive)
    labels = torch.from_numpy(naive).long()
    for y, x in [(3, 5), (50, 60), (100, 7), (111, 111)]:
        part = int(labels[y, x])
        assert person.uv[0, y, x] == pytest.approx(float(u[part, y, x]) if part else 0.0)
        assert person.uv[1, y, x] == pytest.approx(float(v[part, y, x]) if part else 0.0)


def _person(x: int, y: int, labels: np.ndarray, u: float, v: float) -> PersonChart:
    uv = np.stack([np.where(labels > 0, u, 0.0), np.where(labels > 0, v, 0.0)]).astype(np.float32)
    return PersonChart(box_xywh=(x, y, labels.shape[1], labels.shape[0]), labels=labels, uv=uv)


def _two_people() -> DensePoseResult:
    first = np.full((4, 4), 24, np.uint8)
    first[0, 0] = 0
    second = np.zeros((3, 5), np.uint8)
    second[:, 1:] = 1
    people = [_person(1, 1, first, 0.5, 1.0), _person(3, 2, second, 0.2, 0.0)]
    boxes = np.array([[1, 1, 5, 5], [3, 2, 8, 5]], np.float32)
    return DensePoseResult(
        boxes=boxes, scores=np.array([0.9, 0.8], np.float32), people=people, image_size=(6, 7)
    )


def test_pasting_overlaps_and_crops_to_the_image():
    result = _two_people()
    index_map = result.part_index_map()
    expected = np.zeros((6, 7), np.uint8)
    expected[1:5, 1:5] = 24
    expected[1, 1] = 0
    expected[2:5, 4:7] = 1
    assert index_map.shape == (6, 7)
    np.testing.assert_array_equal(index_map, expected)
    iuv = result.person_iuv(1)
    np.testing.assert_array_equal(iuv[:, :, 0], np.where(expected == 1, 1, 0))
    np.testing.assert_allclose(iuv[:, :, 1], np.where(expected == 1, 0.2, 0.0), atol=1e-7)
    with pytest.raises(IndexError, match="person index 2 out of range"):
        result.person_iuv(2)


# --- renders ---------------------------------------------------------------------------------------------


def test_parula_table_is_rgb_with_known_values():
    """OpenCV's Parula (MATLAB's parula(64) control colours), in RGB order: dark blue to yellow."""
    lut = parula_lut()
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    assert lut[0].tolist() == [53, 42, 135] and lut[32].tolist() == [3, 99, 225]
    assert lut[255].tolist() == [249, 251, 14]


def test_segmentation_render_colours_and_black_background():
    result = _two_people()
    image = render_segmentation(result)
    lut = parula_lut()
    assert image.shape == (6, 7, 3) and image.dtype == np.uint8
    assert image[2, 2].tolist() == lut[255].tolist()
    assert image[3, 6].tolist() == lut[10].tolist()
    assert image[1, 1].tolist() == [0, 0, 0] and image[0, 0].tolist() == [0, 0, 0]
    np.testing.assert_array_equal(image.any(axis=2), result.part_index_map() > 0)


def test_iuv_and_dresscode_renders_use_top_person_and_channel_order():
    result = _two_people()
    iuv = render_iuv(result)
    assert iuv.dtype == np.uint8 and iuv.shape == (6, 7, 3)
    assert iuv[2, 2].tolist() == [int(0.5 * 255), 255, 24]
    assert iuv[1, 1].tolist() == [0, 0, 0]
    assert iuv[3, 6].tolist() == [0, 0, 0]
    dresscode = render_dresscode(result)
    assert dresscode[2, 2].tolist() == [24, 24, 24]
    np.testing.assert_array_equal(dresscode[:, :, 0], iuv[:, :, 2])
    np.testing.assert_array_equal(dresscode[:, :, 1], dresscode[:, :, 2])


def test_no_person_is_reported_clearly():
    empty = DensePoseResult(
        boxes=np.zeros((0, 4), np.float32), scores=np.zeros(0, np.float32), image_size=(5, 9)
    )
    with pytest.raises(NoPersonError, match="no person found"):
        empty.require_person()
    for render in (render_segmentation, render_dresscode, render_iuv):
        with pytest.raises(NoPersonError, match="no person found"):
            render(empty)
    assert empty.part_index_map().shape == (5, 9)


# --- input handling -------------------------------------------------------------------------------------


def test_resize_rule_matches_resize_shortest_edge():
    assert resized_shape(1024, 768, 800, 1333) == (1067, 800)
    assert resized_shape(480, 640, 800, 1333) == (800, 1067)
    assert resized_shape(100, 1000, 800, 1333) == (133, 1333)
    assert resized_shape(1, 5000, 800, 1333) == (1, 1333)


def test_prepare_image_is_bgr_mean_subtracted_and_zero_padded():
    rgb = np.zeros((40, 50, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[..., 2] = 10
    settings = DensePoseSettings(shortest_edge=40, max_size=1333)
    batch, size = prepare_image(rgb, settings, torch.device("cpu"), torch.float32)
    assert size == (40, 50) and batch.shape == (1, 3, 64, 64)
    torch.testing.assert_close(batch[0, :, 5, 7], torch.tensor([10 - 103.53, 0 - 116.28, 200 - 123.675]))
    assert batch[0, :, 40:].abs().max() == 0 and batch[0, :, :, 50:].abs().max() == 0


def test_input_validation_messages():
    assert to_rgb_array(np.full((3, 4), 7, np.uint8)).shape == (3, 4, 3)
    assert to_rgb_array(Image.new("RGBA", (4, 3), (1, 2, 3, 0)))[0, 0].tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="uint8"):
        to_rgb_array(np.zeros((3, 4, 3), np.float32))
    with pytest.raises(ValueError, match="image array"):
        to_rgb_array(np.zeros((3, 4, 2), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        to_rgb_array(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(TypeError, match="PIL image or a numpy"):
        to_rgb_array([[0, 1]])
    with pytest.raises(ValueError, match="score_threshold"):
        DensePoseSettings(score_threshold=1.5)


# --- end to end with random weights -----------------------------------------------------------------------


def _check_result(result: DensePoseResult, height: int, width: int) -> None:
    assert result.image_size == (height, width)
    assert result.boxes.shape == (result.num_people, 4) and result.scores.shape == (result.num_people,)
    assert np.all(result.boxes[:, [0, 1]] >= 0) and np.all(result.boxes[:, 2] <= width)
    assert np.all(result.boxes[:, 3] <= height)
    assert np.all(np.diff(result.scores) <= 0) and np.all(result.scores > 0.5)
    for person in result.people:
        x, y, w, h = person.box_xywh
        assert person.labels.shape == (h, w) and person.uv.shape == (2, h, w)
        assert person.labels.max() <= 24 and 0.0 <= person.uv.min() and person.uv.max() <= 1.0
        assert np.all(person.uv[:, person.labels == 0] == 0)


@pytest.mark.parametrize("height,width", [(37, 301), (300, 41), (97, 97)])
def test_unusual_sizes_end_to_end(network, height, width):
    model = DensePoseModel(network, SMALL)
    image = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    with person_logits(network, 4.0, 0.0):
        result = model.predict(image)
    _check_result(result, height, width)
    assert result.num_people == 2
    for render in (render_segmentation, render_dresscode, render_iuv):
        assert render(result).shape == (height, width, 3)
    np.testing.assert_array_equal(render_segmentation(result).any(axis=2), result.part_index_map() > 0)


def test_boxes_are_mapped_back_to_the_original_frame(network):
    model = DensePoseModel(network, SMALL)
    image = np.random.default_rng(1).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    with person_logits(network, 4.0, 0.0):
        result = model.predict(image)
        batch, resized = prepare_image(image, SMALL, torch.device("cpu"), torch.float32)
        raw = network(batch, resized, SMALL)
    assert resized == (171, 128)
    scale = np.array([90 / 128, 120 / 171, 90 / 128, 120 / 171], np.float32)
    expected = np.minimum(raw.boxes.numpy() * scale, [90, 120, 90, 120])
    np.testing.assert_allclose(result.boxes, expected, rtol=1e-6, atol=1e-4)


def test_no_person_end_to_end(network):
    model = DensePoseModel(network, SMALL)
    with person_logits(network, -4.0, 0.0):
        result = model.predict(Image.new("L", (64, 200), 128))
    assert result.num_people == 0 and result.boxes.shape == (0, 4)
    with pytest.raises(NoPersonError, match="no person found"):
        result.require_person()


def test_device_and_dtype_follow_to(network):
    model = DensePoseModel(network)
    assert model.device.type == "cpu" and model.dtype == torch.float32
    assert model.memory_format == torch.channels_last
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            model.to("cuda")
        assert model.device.type == "cpu"
