"""The app's actions without a server: the tiny model, user-supplied masks/DensePose, fake preprocessing."""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from leffa.app.callbacks import (
    MASK_ALPHA_THRESHOLD, AppCallbacks, TryOnInputs, category_note, checked_flag,
    checked_point, editor_value, mask_from_editor, user_painted,
)
from preprocess.mask_adjust import NO_ADJUSTMENTS, MaskAdjustments
from leffa.app.inspector import (
    ALL, TRAINED, attention_row, colour_scale, display_to_model, dotted_outline, heatmap_over, layer_labels,
    mark_looked_at, marked_result, scale_top, sharpness,
)
from leffa.inspect.spread import attention_spread, sink_mask
from leffa.assets import EXAMPLE_PARTS
from leffa.app.previews import MASK_COLOR, previews
from leffa.core.settings import SamplingSettings
from leffa.app.models import RELEASED_MODELS, served_at
from leffa.core.validation import MAX_SEED
from leffa.app.demo import pose_transfer_trained
from leffa.app.examples import TryOnExample, crossed
from leffa.weights import MissingWeightsError
from leffa.app.service import ModelStore
from tests.fake_preprocessing import FakeOpenPose, FakeParser

SIZE = (48, 64)  # model size (width, height) the tests run the tiny model at
FAST = SamplingSettings(num_inference_steps=2, seed=7)


def _photo(width=96, height=128, colour=(200, 120, 90)) -> Image.Image:
    """A photo with twice the model's size per side (photos must be at least 64 pixels a side)."""
    image = Image.new("RGB", (width, height), (255, 255, 255))
    image.paste(Image.new("RGB", (width // 2, height // 2), colour), (width // 4, height // 4))
    return image


def _mask(width=96, height=128, box=(24, 32, 72, 96)) -> Image.Image:
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, box)
    return mask


@pytest.fixture()
def actions(tiny_model, tmp_path):
    loaded = {key: tiny_model for key in RELEASED_MODELS}
    store = ModelStore(tmp_path, device="cpu", loaded=loaded, models=served_at(RELEASED_MODELS, SIZE, "tiny"))
    return AppCallbacks(store, notice="weights are missing")


def _inputs(person=None, garment=None, **options) -> TryOnInputs:
    """Try-on inputs with an uploaded mask and DensePose (the tiny model has no preprocessing models)."""
    uploads = dict(mask=_mask(), densepose=_photo(colour=(10, 200, 30)))
    return TryOnInputs(person or _photo(), garment or _photo(), **{**uploads, **options})


# ------------------------------------------------------------------------------------------ settings
def test_settings_accept_whole_floats_from_number_widgets():
    settings = SamplingSettings(
        num_inference_steps=30.0, guidance_scale=2, seed=-1.0, ref_acceleration=True, record_attention=True
    )
    assert settings == SamplingSettings(
        num_inference_steps=30, guidance_scale=2.0, seed=-1, ref_acceleration=True, repaint=False,
        record_attention=True,
    )
    assert isinstance(settings.num_inference_steps, int) and isinstance(settings.seed, int)
    assert isinstance(settings.guidance_scale, float)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (dict(num_inference_steps=0), "steps (num_inference_steps) must be between 1 and 200"),
        (dict(num_inference_steps=2.5), "steps (num_inference_steps) must be a whole number"),
        (dict(num_inference_steps=None), "steps (num_inference_steps) must be a number, got None"),
        (dict(guidance_scale=-0.5), "guidance (guidance_scale) must be between 0 and 50, got -0.5"),
        (dict(seed=-2), "seed must be -1"),
        (dict(seed=0.5), "seed must be a whole number"),
        (dict(seed=True), "seed must be a number, got True"),
        (dict(seed=2**70), f"seed must be -1 (random) or a whole number from 0 to 2**64 - 1, got {2**70}"),
        (dict(guidance_scale=10**400), "guidance (guidance_scale) must be between 0 and 50"),
        (dict(num_inference_steps="30"), "steps (num_inference_steps) must be a number, got '30'"),
        (dict(seed="lucky"), "seed must be a number, got 'lucky'"),
        (dict(guidance_scale=None), "guidance (guidance_scale) must be a number, got None"),
        (dict(guidance_scale=float("nan")), "guidance (guidance_scale) must be a finite number, got nan"),
        (dict(repaint="no"), "repaint must be true or false, got 'no'"),
        (dict(record_attention=1), "record_attention must be true or false, got 1"),
    ],
)
def test_settings_reject_bad_values_when_made(values, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SamplingSettings(**values)


def test_the_largest_seed_stays_exact():
    assert SamplingSettings(seed=MAX_SEED).seed == MAX_SEED == 2**64 - 1


# ------------------------------------------------------------------------------------- mask editor
def test_editor_round_trip_and_painting(actions):
    step = actions.make_mask(_inputs())
    value = editor_value(step.prepared)
    assert value["background"].shape == (64, 48, 3) and value["composite"] is None
    layer = value["layers"][0]
    assert layer.shape == (64, 48, 4) and layer.dtype == np.uint8
    original = np.asarray(step.prepared.mask) > 127
    assert np.array_equal(mask_from_editor(value), original)
    assert layer[original][0].tolist() == list(MASK_COLOR) and not layer[~original].any()
    painted = layer.copy()
    painted[0:4, 0:4] = (255, 0, 0, MASK_ALPHA_THRESHOLD)  # faint brush edge still counts
    painted[20:24, 20:24, 3] = 0  # erased
    painted[30, 30, 3] = MASK_ALPHA_THRESHOLD - 1  # fainter than the threshold: not masked
    expected = original.copy()
    expected[0:4, 0:4] = True
    expected[20:24, 20:24] = False
    expected[30, 30] = False
    assert np.array_equal(mask_from_editor({**value, "layers": [painted]}), expected)


def test_editor_layers_may_be_files_read_by_the_project_loader(tmp_path):
    layer = np.zeros((4, 3, 4), np.uint8)
    layer[1, 2, 3] = 255
    Image.fromarray(layer).save(tmp_path / "layer.png")
    Image.fromarray(layer[..., :3]).save(tmp_path / "rgb.png")
    (tmp_path / "notes.png").write_text("not an image")
    painted = mask_from_editor({"layers": [str(tmp_path / "layer.png")]})
    assert painted.sum() == 1 and painted[1, 2]
    with pytest.raises(ValueError, match="notes.png is not an image file PIL can read"):
        mask_from_editor({"layers": [str(tmp_path / "notes.png")]})
    with pytest.raises(ValueError, match=re.escape("must be RGBA images, got shape (4, 3, 3)")):
        mask_from_editor({"layers": [str(tmp_path / "rgb.png")]})
    with pytest.raises(ValueError, match="must be a dict with a list of RGBA 'layers'"):
        mask_from_editor({"layers": "layer.png"})


def test_editor_union_of_layers_and_errors():
    first = np.zeros((4, 3, 4), np.uint8)
    second = np.zeros((4, 3, 4), np.uint8)
    first[0, 0, 3] = 255
    second[3, 2, 3] = 200
    union = mask_from_editor({"background": None, "layers": [first, second], "composite": None})
    assert union.sum() == 2 and union[0, 0] and union[3, 2]
    assert mask_from_editor(None) is None and mask_from_editor({"layers": []}) is None
    with pytest.raises(ValueError, match="must be RGBA"):
        mask_from_editor({"layers": [np.zeros((4, 3, 3), np.uint8)]})
    with pytest.raises(ValueError, match="differ in size"):
        mask_from_editor({"layers": [first, np.zeros((5, 3, 4), np.uint8)]})


# -------------------------------------------------------------------------------------- try-on
def test_make_mask_uses_the_uploads_at_the_chosen_resolution(actions):
    step = actions.make_mask(_inputs(_photo(120, 200)))
    prepared = step.prepared
    assert prepared.person.size == SIZE and prepared.mask.size == SIZE and prepared.densepose.size == SIZE
    assert [caption for _, caption in previews(prepared)] == ["mask", "DensePose"]
    half = actions.make_mask(_inputs(_photo(120, 200), resolution="half")).prepared
    assert half.person.size == (24, 32)
    assert actions.resolution_choices("viton_hd") == [("64×48", "full"), ("32×24", "half")]
    with pytest.raises(ValueError, match="unknown resolution"):
        actions.make_mask(_inputs(resolution="4k"))


def test_try_on_uses_the_edited_mask_only_for_the_same_inputs(actions):
    step = actions.make_mask(_inputs())
    edited = np.zeros((64, 48), bool)
    edited[30:40, 10:20] = True
    result = actions.try_on(_inputs(), FAST, mask_step=step, edited_mask=edited)
    assert np.array_equal(np.asarray(result.prepared.mask) > 127, edited)
    assert result.image.size == (96, 128) and result.seed == 7
    other_garment = _photo(colour=(0, 0, 255))
    fresh = actions.try_on(_inputs(garment=other_garment), FAST, mask_step=step, edited_mask=edited)
    assert np.array_equal(np.asarray(fresh.prepared.mask), np.asarray(step.prepared.mask))
    assert not np.array_equal(np.asarray(fresh.prepared.reference), np.asarray(step.prepared.reference))


def test_adjustments_apply_live_to_the_made_mask_and_a_painted_mask_is_noticed(actions):
    step = actions.make_mask(_inputs())
    base = np.asarray(step.prepared.mask) > 127
    longer = actions.adjust(step, MaskAdjustments(extend_down=10))
    mask = np.asarray(longer.prepared.mask) > 127
    assert longer.fingerprint == step.fingerprint and mask.sum() > base.sum() and not (base & ~mask).any()
    assert np.array_equal(np.asarray(actions.adjust(longer, NO_ADJUSTMENTS).prepared.mask) > 127, base)  # undone
    shown = mask_from_editor(editor_value(longer.prepared, (96, 128)))
    assert not user_painted(longer, shown)
    lagging = mask_from_editor(editor_value(step.prepared, (96, 128)))  # the editor before the adjustment arrived
    assert not user_painted(longer, lagging) and user_painted(step, shown)
    shown[0:4, 0:4] = True
    assert user_painted(longer, shown) and not user_painted(longer, None)
    # Without an editor (the HTTP API, the command line), try-on applies the inputs' adjustments itself.
    result = actions.try_on(_inputs(adjustments=MaskAdjustments(extend_down=10)), FAST, mask_step=step)
    assert np.array_equal(np.asarray(result.prepared.mask) > 127, mask)
    assert _inputs(adjustments=MaskAdjustments(grow=5)).fingerprint() == _inputs().fingerprint()
    assert _inputs(auto_crop="off").fingerprint() != _inputs().fingerprint()


def test_try_on_in_one_click_reports_progress_and_reproduces_with_its_seed(actions):
    reports = []
    first = actions.try_on(_inputs(_photo(120, 200)), FAST, progress=lambda *report: reports.append(report))
    fractions = [fraction for fraction, _ in reports]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    texts = [text for _, text in reports]
    assert "denoising step 1/2" in texts and "denoising step 2/2" in texts and texts[-1] == "done (seed 7)"
    # the percentage beside a step count is that count's: step 1 of 2 is 50 %
    assert reports[texts.index("denoising step 1/2")][0] == 0.5
    assert all(fraction == 0.0 for fraction, text in reports if text.startswith(("preprocessing", "inputs")))
    assert first.image.size == (120, 200) and first.raw.size == SIZE
    again = actions.try_on(_inputs(_photo(120, 200)), FAST)
    assert np.array_equal(np.asarray(first.raw), np.asarray(again.raw))


def test_try_on_bad_inputs_are_clear_errors(actions):
    with pytest.raises(ValueError, match="no person photo"):
        actions.try_on(TryOnInputs(None, _photo()))
    with pytest.raises(ValueError, match="no garment photo"):
        actions.make_mask(TryOnInputs(_photo(), None))
    with pytest.raises(ValueError, match="unknown model type"):
        actions.make_mask(_inputs(model_type="idm"))
    with pytest.raises(ValueError, match="unknown garment category"):
        actions.make_mask(_inputs(category="hat"))
    with pytest.raises(ValueError, match="at least 64 pixels"):
        actions.make_mask(_inputs(_photo(20, 20)))
    step = actions.make_mask(_inputs())
    with pytest.raises(ValueError, match="the mask is empty"):
        actions.try_on(_inputs(), mask_step=step, edited_mask=np.zeros((64, 48), bool))
    with pytest.raises(ValueError, match="the mask is empty"):
        actions.make_mask(_inputs(mask=Image.new("L", (96, 128), 0)))


def test_uploads_are_checked_from_their_header_before_decoding(actions, tmp_path, monkeypatch):
    huge = tmp_path / "huge.png"
    Image.new("1", (9000, 5000)).save(huge)  # 45 MP, 1 bit per pixel: small to write
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda image: decoded.append(image.size))
    with pytest.raises(ValueError, match="45.0 megapixels, more than the limit of 40.0"):
        actions.make_mask(_inputs(str(huge)))
    assert decoded == []


def test_inputs_from_files_are_fingerprinted_by_content_changes(tmp_path):
    photo = tmp_path / "person.png"
    _photo().save(photo)
    before = TryOnInputs(str(photo), str(photo)).fingerprint()
    assert TryOnInputs(str(photo), str(photo)).fingerprint() == before
    _photo(colour=(0, 0, 0)).save(photo)
    os.utime(photo, ns=(1, 1))
    assert TryOnInputs(str(photo), str(photo)).fingerprint() != before


def test_missing_preprocessing_weights_name_the_download(actions, tmp_path):
    with pytest.raises(MissingWeightsError, match="python -m leffa download parsing"):
        actions.make_mask(TryOnInputs(_photo(), _photo()))
    with pytest.raises(MissingWeightsError, match="python -m leffa download densepose"):
        actions.make_mask(TryOnInputs(_photo(), _photo(), mask=_mask()))


def test_automatic_mask_comes_with_parse_and_keypoint_previews(actions, monkeypatch):
    monkeypatch.setattr(actions.store, "parser", lambda status=None: FakeParser())
    monkeypatch.setattr(actions.store, "openpose", lambda status=None: FakeOpenPose())
    step = actions.make_mask(TryOnInputs(_photo(), _photo(), densepose=_photo()))
    assert [caption for _, caption in previews(step.prepared)] == ["parse map", "keypoints", "mask", "DensePose"]
    mask = np.asarray(step.prepared.mask) > 127
    assert 0.05 < mask.mean() < 0.9


# ------------------------------------------------------------------------------------ pose transfer
def test_pose_transfer_with_uploaded_densepose(actions):
    dense = _photo(colour=(5, 5, 5))
    result = actions.pose_transfer(_photo(), _photo(90, 150), densepose=dense, settings=FAST)
    assert result.image.size == (90, 150) and result.trace is None
    assert np.asarray(result.prepared.mask).min() == 255
    with pytest.raises(ValueError, match="no target-pose photo"):
        actions.pose_transfer(_photo(), None, settings=FAST)


# -------------------------------------------------------------------------------------- inspector
def test_display_to_model_matches_the_letterbox(actions):
    result = actions.try_on(_inputs(_photo(120, 200)), FAST)
    box = result.prepared.box
    left, top, right, bottom = box.box  # 120x200 scaled by 0.32 into 48x64: 38x64, centred
    assert (left, top, right, bottom) == (5, 0, 43, 64)
    scale_x, scale_y = (right - left) / 120, (bottom - top) / 200  # the resize's own (rounded) scales
    for x, y in [(0, 0), (119, 199), (60, 100), (30.0, 150.0)]:
        expected = (left + (x + 0.5) * scale_x - 0.5, top + (y + 0.5) * scale_y - 0.5)
        got = display_to_model((x, y), result)
        assert got == pytest.approx((min(max(expected[0], 0), 47), min(max(expected[1], 0), 63)), abs=1e-9)
    with pytest.raises(ValueError, match="outside the result image of 120x200"):
        display_to_model((120, 5), result)


def test_inspector_views(actions):
    with pytest.raises(ValueError, match="generate a result first"):
        actions.inspect(None, (1, 1))
    plain = actions.try_on(_inputs(), FAST)
    with pytest.raises(ValueError, match="Record attention for the inspector"):
        actions.inspect(plain, (1, 1))
    traced = actions.try_on(_inputs(), SamplingSettings(num_inference_steps=2, seed=3, record_attention=True))
    recorded = traced.trace
    default = recorded.default_view
    labels = layer_labels(recorded.layers, recorded.token_sizes)
    layers, steps = actions.inspector_choices(traced)
    assert [value for _, value in layers] == [TRAINED, ALL, *recorded.layers]
    assert [label for label, _ in layers][2:] == [labels[name] for name in recorded.layers]
    assert layers[0][0] == f"layers the Leffa loss trains ({len(default.layers)} of {len(recorded.layers)}, average)"
    assert [value for _, value in steps] == [TRAINED, ALL, *(str(t) for t in recorded.timesteps)]
    assert steps[0][0] == f"timesteps the Leffa loss trains (t = {', '.join(map(str, default.timesteps))}, average)"
    assert actions.inspector_choices(plain) == ([], [])

    overview = actions.inspect(traced)
    assert overview.heatmap is None and overview.layer_heatmaps == [] and overview.colour_scale == ""
    assert np.array_equal(overview.marked_result, marked_result(traced, None))
    assert np.array_equal(overview.flow, recorded.flow_color(*default))
    assert "click the result" in overview.caption

    # The photo has twice the model's size, so a result pixel (x, y) is model pixel (x + 0.5) / 2 - 0.5.
    point, model_point = (21, 41), (10.25, 20.25)
    assert display_to_model(point, traced) == model_point
    layer, timestep = recorded.layers[1], recorded.timesteps[0]
    view = actions.inspect(traced, point, layer, str(timestep))
    density = recorded.attention(model_point, layer, timestep)
    top = scale_top(float(density.max()))
    looked_at = recorded.flow_at(model_point, layer, timestep)
    assert view.looked_at == looked_at
    sinks = sink_mask(recorded.everywhere(layer, timestep))
    expected = mark_looked_at(dotted_outline(heatmap_over(density, recorded.reference, top), sinks), looked_at)
    assert np.array_equal(view.heatmap, expected)
    assert view.spread == attention_spread(density, sinks)
    assert view.colour_scale == colour_scale(top, float(density.max()))
    assert np.array_equal(view.flow, recorded.flow_color(layer, timestep))
    assert np.array_equal(view.warped_reference, recorded.warped_reference(layer, timestep))
    peaks = [sharpness(attention_row(recorded, model_point, name, timestep)) for name in recorded.layers]
    assert [caption for _, caption in view.layer_heatmaps] == [
        f"{labels[name]}: {shown}" for name, shown in zip(recorded.layers, peaks)
    ]
    common = float(re.search(r"share one colour scale, 1× to ([\d.]+)× uniform", view.caption)[1])
    assert common >= max(round(shown.peak, 1) for shown in peaks)  # covers every layer's stated peak
    assert view.marked_result.shape == (512, 384, 3)  # 96x128 enlarged 4 times to fill its box
    assert np.array_equal(view.marked_result, marked_result(traced, point))
    x, y = looked_at
    assert f"**{labels[layer]}**, **t = {timestep}**; point (21, 41) of the result takes from ({x:.0f}, {y:.0f})" in view.caption
    assert "This layer: peak" in view.caption and "entropy" in view.caption

    by_default = actions.inspect(traced, point)
    assert by_default.looked_at == recorded.flow_at(model_point, *default)
    assert "**layers the Leffa loss trains**, **t = " in by_default.caption
    assert np.array_equal(actions.inspect(traced, point, TRAINED, TRAINED).heatmap, by_default.heatmap)
    everything = actions.inspect(traced, point, ALL, ALL)
    assert everything.looked_at == recorded.flow_at(model_point)
    assert "**all layers**, **all timesteps**" in everything.caption
    with pytest.raises(ValueError, match="was not recorded"):
        actions.inspect(traced, (10, 20), "no.such.layer")
    with pytest.raises(ValueError, match="timestep must be 'trained', 'all' or one of"):
        actions.inspect(traced, (10, 20), ALL, "late")


def test_generations_say_when_they_were_made(actions):
    before = datetime.now()
    generation = actions.try_on(_inputs(), FAST)
    assert before <= generation.made_at <= datetime.now()


def test_status_names_the_device_and_the_notice(actions):
    assert "device cpu" in actions.status() and "weights are missing" in actions.status()
    assert actions.legend(32).shape == (32, 32, 3)


def test_category_note_only_for_viton_hd_with_lower_body_or_dresses():
    for category in ("lower_body", "dresses"):
        note = category_note("viton_hd", category)
        assert note.startswith("Note: the VITON-HD model was trained on upper-body garments only")
        assert "\n" not in note
    assert category_note("viton_hd", "upper_body") == ""
    for category in ("upper_body", "lower_body", "dresses"):
        assert category_note("dress_code", category) == ""


# ------------------------------------------------------------------------------------------ examples
def test_examples_cross_each_person_with_other_garments():
    examples = [TryOnExample(*(Path(f"{part}_{index}.png") for part in EXAMPLE_PARTS)) for index in range(3)]
    pairs = crossed(examples)
    persons = [int(pair.person.stem[-1]) for pair in pairs]
    garments = [int(pair.garment.stem[-1]) for pair in pairs]
    assert list(zip(persons, garments)) == [(0, 1), (1, 2), (2, 0), (0, 2), (1, 0), (2, 1)]
    assert all(pair.mask.stem == f"mask_{p}" and pair.densepose.stem == f"densepose_{p}" for pair, p in zip(pairs, persons))
    assert crossed(examples[:1]) == examples[:1]


def test_pose_transfer_counts_as_trained_only_when_its_metadata_says_so(tmp_path):
    assert not pose_transfer_trained(tmp_path)
    folder = tmp_path / "pose_transfer"
    folder.mkdir()
    (folder / "unet.json").write_text('{"sample_size": 16}')
    (folder / "notes.json").write_text("not json")
    (folder / "metadata.json").write_text('{"trained": false}')
    assert not pose_transfer_trained(tmp_path)
    (folder / "metadata.json").write_text('{"task": "pose_transfer", "trained": true}')
    assert pose_transfer_trained(tmp_path)


def test_the_tiny_model_offers_only_the_size_it_was_trained_at(actions):
    assert actions.resolution_choices("pose_transfer", ("full",)) == [("64×48", "full")]


def test_flags_and_points_are_checked_by_type_and_named(actions):
    with pytest.raises(ValueError, match="^prepare_garment_png must be true or false, got 'false'$"):
        actions.make_mask(_inputs(prepare_garment_png="false"))
    assert checked_flag(False, "garment_png") is False
    for value in ("false", "x", None, 0, [1]):
        with pytest.raises(ValueError, match=f"^garment_png must be true or false, got {re.escape(repr(value))}$"):
            checked_flag(value, "garment_png")
    assert checked_point((3, 4.5)) == (3.0, 4.5)
    for point, message in [
        ((None, 1), "^x must be a number, got None$"), ((1, "abc"), "^y must be a number, got 'abc'$"),
        ((1, float("inf")), "^y must be a finite number, got inf$"), (5, "^a point must be a pair of numbers"),
    ]:
        with pytest.raises(ValueError, match=message):
            checked_point(point)
