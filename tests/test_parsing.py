"""Human parsing: tiny ONNX models with the released input/output signature, built here with torch."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from preprocess.parsing import (
    ATR_LABELS,
    LABEL,
    PARSE_LABELS,
    HumanParser,
    ParseResult,
    SchpModel,
    add_neck,
    fill_upper_clothes_holes,
    schp_affine,
    upsample_align_corners,
)

ATR, LIP = 512, 473


class ColourParser(torch.nn.Module):
    """Logits = 1x1 conv of the normalised BGR input, at half resolution (like SCHP's stride-4 output)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, weight.shape[0], 1)
        with torch.no_grad():
            self.conv.weight.copy_(weight[:, :, None, None])
            self.conv.bias.copy_(bias)

    def forward(self, x):
        logits = torch.nn.functional.avg_pool2d(self.conv(x), 2)
        return logits.mean(dim=1, keepdim=True), logits


def _export(model: torch.nn.Module, side: int, path, dynamic: bool = False) -> str:
    axes = {"input.1": {2: "height", 3: "width"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated but needs no extras
        torch.onnx.export(
            model.eval(),
            (torch.zeros(1, 3, side, side),),
            str(path),
            input_names=["input.1"],
            dynamic_axes=axes,
            dynamo=False,
        )
    return str(path)


def _colour_model(classes: int, rules: dict[int, tuple[float, float, float]], side: int, path) -> str:
    """Class c scores weight . (B, G, R) normalised; class 0 scores 0; unlisted classes never win."""
    weight = torch.zeros(classes, 3)
    bias = torch.full((classes,), -100.0)
    bias[0] = 0.0
    for label, bgr_weight in rules.items():
        weight[label] = torch.tensor(bgr_weight)
        bias[label] = 0.0
    return _export(ColourParser(weight, bias), side, path)


@pytest.fixture(scope="module")
def colour_parser(tmp_path_factory):
    """ATR: bright red = face, bright blue = upper clothes; LIP: bright green = face (13)."""
    folder = tmp_path_factory.mktemp("parsing")
    atr = _colour_model(
        18, {LABEL["face"]: (0, 0, 1), LABEL["upper_clothes"]: (1, 0, 0)}, ATR, folder / "atr.onnx"
    )
    lip = _colour_model(20, {13: (0, 1, 0)}, LIP, folder / "lip.onnx")
    return HumanParser(atr, lip, num_threads=1)


@pytest.fixture(scope="module")
def random_atr(tmp_path_factory):
    torch.manual_seed(0)
    path = _export(
        ColourParser(torch.randn(18, 3), torch.randn(18)), ATR, tmp_path_factory.mktemp("rnd") / "a.onnx"
    )
    return SchpModel(path, 18, ATR, ["CPUExecutionProvider"], ort.SessionOptions())


def _released_triangles(width: int, height: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The released demo's three points for a square input: the box centre, the point half the box above
    it, and that point turned about the centre; on the input side the same with ``side - 1``."""
    centre = np.array([(width - 1) * 0.5, (height - 1) * 0.5], dtype=np.float32)
    box = max(width - 1, height - 1)
    src = np.float32([centre, centre + [0, -box * 0.5], centre + [-box * 0.5, -box * 0.5]])
    half = (side - 1) * 0.5
    dst = np.float32([[half, half], [half, 0], [0, 0]])
    return src, dst


def _naive_schp_logits(session: ort.InferenceSession, bgr: np.ndarray, side: int) -> np.ndarray:
    """The released recipe spelt out: centre/scale box, three-point affine, torch upsampling, inverse warp."""
    height, width = bgr.shape[:2]
    src, dst = _released_triangles(width, height, side)
    forward = cv2.getAffineTransform(src, dst)
    inverse = cv2.getAffineTransform(dst, src)
    warped = cv2.warpAffine(bgr, forward, (side, side), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    x = (warped / 255.0 - [0.406, 0.456, 0.485]) / [0.225, 0.224, 0.229]
    out = session.run(None, {"input.1": x.transpose(2, 0, 1)[None].astype(np.float32)})[1]
    up = torch.nn.functional.interpolate(
        torch.from_numpy(out), size=(side, side), mode="bilinear", align_corners=True
    )
    return np.stack(
        [
            cv2.warpAffine(channel, inverse, (width, height), flags=cv2.INTER_LINEAR, borderValue=0)
            for channel in up[0].numpy()
        ]
    )


def test_label_names_are_atr_plus_neck():
    assert len(ATR_LABELS) == 18 and PARSE_LABELS[:18] == ATR_LABELS
    assert PARSE_LABELS[18] == "neck"
    assert (LABEL["upper_clothes"], LABEL["face"], LABEL["left_arm"], LABEL["right_arm"]) == (4, 11, 14, 15)
    assert (LABEL["left_shoe"], LABEL["right_shoe"], LABEL["bag"], LABEL["scarf"]) == (9, 10, 16, 17)


def test_affine_is_the_released_three_point_construction():
    for width, height in [(384, 512), (512, 300), (100, 100)]:
        for side in (ATR, LIP):
            src, dst = _released_triangles(width, height, side)
            assert np.array_equal(schp_affine(width, height, side, side), cv2.getAffineTransform(src, dst))
            assert np.array_equal(
                schp_affine(width, height, side, side, inverse=True), cv2.getAffineTransform(dst, src)
            )
    # ATR on the 384x512 parse frame: scale exactly 1 and a shift of 64 px (the original SCHP: 1.00196, 64.125)
    np.testing.assert_allclose(schp_affine(384, 512, ATR, ATR), [[1, 0, 64], [0, 1, 0]], atol=1e-12)


def test_affine_round_trip_is_identity_on_a_non_square_image():
    rng = np.random.default_rng(0)
    coarse = rng.uniform(0.1, 1.0, (16, 12, 3)).astype(np.float32)
    smooth = cv2.resize(coarse, (384, 512), interpolation=cv2.INTER_LINEAR)
    forward = schp_affine(384, 512, ATR, ATR)
    square = cv2.warpAffine(smooth, forward, (ATR, ATR), flags=cv2.INTER_LINEAR)
    back = cv2.warpAffine(square, schp_affine(384, 512, ATR, ATR, inverse=True), (384, 512), flags=cv2.INTER_LINEAR)
    inner = (slice(4, -4), slice(4, -4))
    np.testing.assert_allclose(back[inner], smooth[inner], atol=0.02)
    # The person fills the square's height; the sides are padding.
    assert square[:, :60].max() == 0 and square[:, -60:].max() == 0 and square[:, 70:-70].min() > 0


def test_upsample_align_corners_matches_torch():
    logits = np.random.default_rng(1).standard_normal((5, 7, 9)).astype(np.float32)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(logits)[None], size=(31, 20), mode="bilinear", align_corners=True
    )[0].numpy()
    assert np.array_equal(upsample_align_corners(logits, 31, 20), expected)  # torch's own rounding


def test_model_logits_match_the_naive_recipe(random_atr):
    rng = np.random.default_rng(2)
    bgr = cv2.resize(
        rng.integers(0, 256, (32, 24, 3), dtype=np.uint8), (384, 512), interpolation=cv2.INTER_CUBIC
    )
    ours = random_atr.logits(bgr)
    naive = _naive_schp_logits(random_atr.session, bgr, ATR)
    assert ours.shape == (18, 512, 384) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, naive, atol=1e-4)


def test_hole_filling_fills_small_holes_only():
    labels = np.zeros((512, 384), np.uint8)
    labels[100:400, 50:330] = LABEL["upper_clothes"]
    labels[150:350, 300:330] = LABEL["left_arm"]
    labels[120:130, 100:110] = 0  # 100 px hole
    labels[200:240, 150:190] = LABEL["belt"]  # 1600 px hole of another label
    labels[300:350, 100:150] = 0  # 2500 px hole: too big, stays
    labels[100:105, 200:210] = 0  # notch open to the outside: not a hole
    filled = fill_upper_clothes_holes(labels)
    assert (filled[120:130, 100:110] == LABEL["upper_clothes"]).all()
    assert (filled[200:240, 150:190] == LABEL["upper_clothes"]).all()
    assert (filled[300:350, 100:150] == 0).all()
    assert (filled[100:105, 200:210] == 0).all()
    changed = filled != labels
    assert changed.sum() == 100 + 1600
    assert (filled[150:350, 300:330] == LABEL["left_arm"]).all()


def _disk(radius: float, centre: tuple[int, int]) -> np.ndarray:
    rows, columns = np.mgrid[:512, :384]
    return (rows - centre[1]) ** 2 + (columns - centre[0]) ** 2 <= radius**2


def test_the_size_limit_is_on_the_holes_outline_not_its_pixels():
    """OpenCV traces a hole's outline around its pixels (as the released code has it trace a 32-bit image):
    a round hole of 1,925 px has an outline of 2,008 and is kept; one of 1,885 px (outline 1,975) is filled."""
    labels = np.full((512, 384), LABEL["upper_clothes"], np.uint8)
    kept, filled_disk = _disk(24.75, (100, 100)), _disk(24.5, (250, 300))
    assert (kept.sum(), filled_disk.sum()) == (1925, 1885)
    labels[kept] = LABEL["hat"]
    labels[filled_disk] = 0
    labels[400:443, 10:54] = 0  # 43 x 44 = 1,892 px: filled
    labels[440:485, 200:245] = 0  # 45 x 45 = 2,025 px: kept
    result = fill_upper_clothes_holes(labels)
    assert (result[kept] == LABEL["hat"]).all() and (result[440:485, 200:245] == 0).all()
    assert (result[filled_disk] == LABEL["upper_clothes"]).all()
    assert (result[400:443, 10:54] == LABEL["upper_clothes"]).all()
    assert (result != labels).sum() == 1885 + 1892


def test_enclosed_regions_are_filled_whatever_the_garment_parts_sizes():
    """A small arm-labelled ring (a marker on the face) closes over what it encloses, as released."""
    labels = np.zeros((512, 384), np.uint8)
    labels[300:330, 100:130] = LABEL["upper_clothes"]  # a small garment part only
    labels[90:110, 190:210] = LABEL["left_arm"]
    labels[93:107, 193:207] = LABEL["hat"]  # enclosed by the ring: becomes upper clothes
    filled = fill_upper_clothes_holes(labels)
    assert (filled[93:107, 193:207] == LABEL["upper_clothes"]).all()


def test_arm_pixels_under_a_kept_holes_outline_become_upper_clothes():
    """The released keep-mask is the uint8 sum of the kept outline (255) and the arm mask (1): where both
    are set it wraps to 0, so the arm pixels the hole's drawn outline covers are taken from the filled map
    (a plain union would keep them arms)."""
    labels = np.full((512, 384), LABEL["upper_clothes"], np.uint8)
    labels[99:151, 99:151] = LABEL["left_arm"]  # an arm ring around ...
    labels[100:150, 100:150] = 0  # ... a 2500 px hole: kept
    filled = fill_upper_clothes_holes(labels)
    assert (filled[100:150, 100:150] == 0).all()
    # OpenCV's outline polygon (CHAIN_APPROX_TC89_L1) covers the ring's top row, not its right column
    assert (filled[99, 100:150] == LABEL["upper_clothes"]).all()
    assert (filled[99:151, 150] == LABEL["left_arm"]).all()


def test_neck_is_atr_face_outside_lip_face():
    atr = np.array([[11, 11, 11, 4]], np.uint8)
    lip = np.array([[13, 0, 2, 13]], np.uint8)
    assert add_neck(atr, lip).tolist() == [[11, 18, 18, 4]]


def _person_image() -> Image.Image:
    """384x512 regions: red head (ATR face), yellow face top (LIP face too), blue shirt with two holes."""
    rgb = np.zeros((512, 384, 3), np.uint8)
    rgb[40:200, 120:264] = (255, 0, 0)
    rgb[40:120, 120:264] = (255, 255, 0)
    rgb[220:480, 60:324] = (0, 0, 255)
    rgb[300:330, 150:180] = 0  # 900 px hole
    rgb[360:420, 200:260] = 0  # 3600 px hole
    return Image.fromarray(rgb)


def test_parser_applies_neck_rule_and_hole_filling(colour_parser):
    result = colour_parser(_person_image())
    assert isinstance(result, ParseResult)
    labels = result.labels
    assert labels.shape == (512, 384) and labels.dtype == np.uint8
    assert (labels[50:110, 130:254] == LABEL["face"]).all()
    assert (labels[130:190, 130:254] == LABEL["neck"]).all()
    shirt = np.zeros((512, 384), bool)
    shirt[230:470, 70:314] = True
    shirt[354:426, 194:266] = False  # the large hole and its blurred rim
    assert (labels[shirt] == LABEL["upper_clothes"]).all()
    assert (labels[300:330, 150:180] == LABEL["upper_clothes"]).all()
    assert (labels[370:410, 210:250] == 0).all()
    assert (labels[:30] == 0).all() and (labels[:, :50] == 0).all()


def test_parser_resizes_any_input_to_the_parse_frame(colour_parser):
    result = colour_parser(_person_image().resize((768, 1024)))
    assert result.labels.shape == (512, 384)
    assert (result.labels[130:190, 130:254] == LABEL["neck"]).all()


def test_preview_colours_each_label():
    labels = np.arange(19, dtype=np.uint8).repeat(20)[None].repeat(4, axis=0)
    preview = ParseResult(labels=labels).preview()
    assert preview.mode == "RGB" and preview.size == (380, 4)
    colours = np.asarray(preview)[0, ::20]
    assert len({tuple(colour) for colour in colours}) == 19
    assert tuple(colours[0]) == (0, 0, 0)


def test_missing_model_file_is_named(tmp_path, colour_parser):
    with pytest.raises(FileNotFoundError, match=r"missing_lip\.onnx"):
        HumanParser(colour_parser.atr.path, tmp_path / "missing_lip.onnx")


def test_input_side_comes_from_the_model_or_the_default(tmp_path):
    fixed = _colour_model(20, {}, 64, tmp_path / "fixed.onnx")
    dynamic = _export(
        ColourParser(torch.zeros(20, 3), torch.zeros(20)), 64, tmp_path / "dyn.onnx", dynamic=True
    )
    options = ort.SessionOptions()
    assert SchpModel(fixed, 20, LIP, ["CPUExecutionProvider"], options).input_width == 64
    model = SchpModel(dynamic, 20, LIP, ["CPUExecutionProvider"], options)
    assert (model.input_height, model.input_width) == (LIP, LIP)
    assert model.logits(np.zeros((512, 384, 3), np.uint8)).shape == (20, 512, 384)


def test_wrong_class_count_is_reported(tmp_path):
    lip_shaped = _colour_model(20, {}, ATR, tmp_path / "lip_as_atr.onnx")
    model = SchpModel(lip_shaped, 18, ATR, ["CPUExecutionProvider"], ort.SessionOptions())
    with pytest.raises(ValueError, match=r"\(1, 18, h, w\) logits"):
        model.labels(np.zeros((512, 384, 3), np.uint8))


def test_bad_device_and_threads_are_rejected(colour_parser):
    path = colour_parser.atr.path
    with pytest.raises(ValueError, match="device must be"):
        HumanParser(path, path, device="tpu")
    with pytest.raises(ValueError, match="num_threads"):
        HumanParser(path, path, num_threads=0)
