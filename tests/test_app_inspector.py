"""The inspector's presentation (``leffa.app.inspector``) and the previews (``leffa.app.previews``), checked
against naive references, without a model."""

from __future__ import annotations

import math
from datetime import datetime
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from leffa.app.inspector import (
    DISPLAY_HEIGHT, HEAT_OPACITY, SCALE_FLOOR, Sharpness, colour_scale, display_factor, display_to_result,
    dotted_outline, enlarge, heatmap_over, layer_labels, mark_looked_at, mark_point, marked_result, ring_size,
    run_note, scale_top, sharpness, thumbnail,
)
from leffa.app.previews import MASK_COLOR, label_colours, mask_over, parse_with_legend
from leffa.inspect.visualize import jet
from preprocess.parsing import LABEL, PARSE_LABELS

SD15_LAYERS = [
    f"{side}_blocks.{block}.attentions.{attention}.transformer_blocks.0.attn1"
    for side, blocks in (("down", (0, 1, 2)), ("up", (1, 2, 3)))
    for block in blocks
    for attention in range(2 if side == "down" else 3)
] + ["mid_block.attentions.0.transformer_blocks.0.attn1"]


def test_layer_labels_name_the_block_and_the_token_grid():
    tiny = [
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1",
        "mid_block.attentions.0.transformer_blocks.0.attn1",
        "up_blocks.0.attentions.0.transformer_blocks.0.attn1",
        "up_blocks.0.attentions.1.transformer_blocks.0.attn1",
    ]
    sizes = dict(zip(tiny, [(16, 12), (8, 6), (8, 6), (8, 6)]))
    assert list(layer_labels(tiny, sizes).values()) == ["down 1 · 16×12", "mid · 8×6", "up 0.0 · 8×6", "up 0.1 · 8×6"]
    sd15 = layer_labels(SD15_LAYERS, {name: (64, 48) for name in SD15_LAYERS})
    assert sd15["up_blocks.3.attentions.2.transformer_blocks.0.attn1"] == "up 3.2 · 64×48"
    assert len(set(sd15.values())) == len(SD15_LAYERS)
    sdxl = [f"down_blocks.2.attentions.1.transformer_blocks.{index}.attn1" for index in range(10)]
    assert layer_labels(sdxl, {})[sdxl[3]] == "down 2 t3"
    assert layer_labels(["my.layer"], {}) == {"my.layer": "my.layer"}


def _naive_sharpness(row: np.ndarray) -> tuple[float, float]:
    probabilities = [value / sum(row) for value in row]
    entropy = -sum(p * math.log(p) for p in probabilities if p > 0)
    return max(probabilities) * len(row), entropy / math.log(len(row))


def test_sharpness_matches_a_naive_entropy_and_peak():
    generator = np.random.default_rng(0)
    for row in (generator.random(48), generator.random(192) ** 8, np.ones(30)):
        got = sharpness(row)
        assert (got.peak, got.entropy) == pytest.approx(_naive_sharpness(row), abs=1e-5)
    assert sharpness(np.ones(30)) == Sharpness(pytest.approx(1.0), pytest.approx(1.0))
    one_key = np.zeros(30)
    one_key[4] = 1
    assert sharpness(one_key) == Sharpness(30.0, 0.0)
    assert str(Sharpness(3.14159, 0.5)) == "peak 3.1× uniform, entropy 0.50"


def test_colour_scale_runs_from_uniform_to_its_top_growing_opaque():
    html = colour_scale(4.0, 3.0)
    for value in (0.0, 0.5, 1.0):
        r, g, b = np.round(255 * jet(np.array(value))).astype(int).tolist()
        assert f"rgba({r}, {g}, {b}, {HEAT_OPACITY * value:.2f}) {100 * value:.1f}%" in html
    assert "<span>1× = uniform</span><span>4.0× uniform</span>" in html and "This view's peak is 3.0×" in html
    assert scale_top(1.1, 1.3) == SCALE_FLOOR and scale_top(1.1, 6.5) == 6.5


def test_heatmap_leaves_the_reference_untouched_up_to_uniform_and_colours_above():
    generator = np.random.default_rng(2)
    reference = generator.integers(0, 255, (12, 9, 3), dtype=np.uint8)
    density = generator.random((12, 9)) * 5
    top = 4.0
    shown = heatmap_over(density, reference, top)
    at_most_uniform = density <= 1
    assert at_most_uniform.any() and np.array_equal(shown[at_most_uniform], reference[at_most_uniform])
    level = np.clip((density - 1) / (top - 1), 0, 1)
    alpha = HEAT_OPACITY * level[..., None]
    expected = np.round(255 * ((1 - alpha) * reference / 255 + alpha * jet(level))).astype(np.uint8)
    assert np.array_equal(shown, expected)
    hottest = np.unravel_index(np.argmax(density), density.shape)
    assert density[hottest] >= top  # drawn at full strength: 85 % dark red over 15 % of the reference
    assert np.allclose(shown[hottest], np.round(255 * HEAT_OPACITY * jet(np.array(1.0)) + 0.15 * reference[hottest]), atol=1)


def test_ring_marks_the_point_and_stays_whole_at_the_picture_edges():
    picture = np.full((96, 72, 3), 100, np.uint8)
    radius, line, margin = ring_size(picture.shape)
    assert (radius, line) == (6, 1) and margin == radius + 2 * line + 1
    for x, y in [(30, 40), (0, 0), (71, 95), (71, 0)]:
        marked = mark_looked_at(picture, (x, y))
        assert marked.shape == (96 + 2 * margin, 72 + 2 * margin, 3)
        framed = np.pad(picture, ((margin, margin), (margin, margin), (0, 0)), constant_values=255)
        changed = np.any(marked != framed, axis=2)
        rows, columns = np.nonzero(changed)
        distance = np.hypot(rows - (y + margin), columns - (x + margin))
        assert not changed[y + margin, x + margin]  # a ring: the point itself stays visible
        assert distance.max() <= radius + 3 and distance.min() >= radius - 3
        # whole: the ring reaches its radius on all four sides, none of it falls off the picture
        for dy, dx in [(0, radius), (0, -radius), (radius, 0), (-radius, 0)]:
            assert changed[y + margin + dy, x + margin + dx]


def test_dotted_outline_draws_only_the_border_of_a_region():
    picture = np.full((20, 20, 3), 100, np.uint8)
    region = np.zeros((20, 20), bool)
    region[5:15, 0:8] = True
    marked = dotted_outline(picture, region)
    changed = np.any(marked != picture, axis=2)
    assert not changed[~region].any() and not changed[7:13, 1:7].any()  # nothing outside, inside untouched
    border = region.copy()
    border[6:14, 1:7] = False  # the region's edge pixels, the image edge included
    assert np.array_equal(changed, border)
    assert {tuple(colour) for colour in marked[changed]} == {(0, 0, 0), (255, 255, 255)}


def test_mark_point_draws_a_crosshair_only_near_the_point():
    image = Image.new("RGB", (50, 50), (0, 128, 0))
    marked = mark_point(image, (25, 25))
    changed = np.any(marked != np.asarray(image), axis=2)
    assert changed[25, 25] and changed[25, 22] and changed[22, 25] and changed[25, 28]
    assert changed.sum() < 70 and not changed[:18].any() and not changed[:, :18].any()


def test_per_layer_heatmaps_are_thumbnails():
    tall = np.zeros((1024, 768, 3), np.uint8)
    assert thumbnail(tall).shape == (256, 192, 3)
    small = np.zeros((64, 48, 3), np.uint8)
    assert thumbnail(small) is small


def _generation(width: int, height: int, model_type: str = "viton_hd", trace=None, seed: int = 7):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (height, width, 3), dtype=np.uint8))
    prepared = SimpleNamespace(model_type=model_type)
    return SimpleNamespace(image=image, prepared=prepared, trace=trace, seed=seed, made_at=datetime(2026, 1, 2, 3, 4, 5))


def test_small_results_are_enlarged_with_whole_pixels_and_clicks_map_back():
    generation = _generation(96, 128)
    factor = display_factor(generation.image.size)
    assert factor == 4 and display_factor((768, 1024)) == 1 and 128 * factor >= DISPLAY_HEIGHT
    shown = marked_result(generation, None)
    assert shown.shape == (512, 384, 3)
    assert np.array_equal(shown, np.repeat(np.repeat(np.asarray(generation.image), 4, axis=0), 4, axis=1))
    assert enlarge(generation.image, 1) is generation.image
    for index, pixel in [((0, 0), (0, 0)), ((3, 3), (0, 0)), ((4, 7), (1, 1)), ((383, 511), (95, 127))]:
        assert display_to_result(index, generation) == pixel
    marked = marked_result(generation, (10, 20))
    changed = np.any(marked != shown, axis=2)
    rows, columns = np.nonzero(changed)
    centre = (10 * 4 + 1.5, 20 * 4 + 1.5)  # the middle of the result pixel's 4x4 block
    assert (columns.min() + columns.max()) / 2 == pytest.approx(centre[0], abs=1)
    assert (rows.min() + rows.max()) / 2 == pytest.approx(centre[1], abs=1)


def test_run_note_says_which_run_is_shown_and_flags_an_unrecorded_latest_one():
    assert run_note(None).startswith("No recorded result yet")
    recorded = _generation(96, 128, trace=object(), seed=7)
    assert run_note(recorded) == "Showing the try-on result of 03:04:05 (seed 7)."
    plain = _generation(96, 128, model_type="pose_transfer", seed=9)
    note = run_note(recorded, plain)
    assert note.startswith("Showing the try-on result of 03:04:05 (seed 7). The latest result (pose-transfer ")
    assert "(seed 9)) was generated without recording attention" in note
    assert run_note(recorded, recorded) == run_note(recorded)
    assert "was generated without recording" in run_note(None, plain)


def test_parse_preview_has_a_legend_of_the_labels_it_contains():
    labels = np.zeros((512, 384), np.uint8)
    labels[60:140, 150:234] = LABEL["face"]
    labels[150:330, 110:274] = LABEL["upper_clothes"]
    preview = np.asarray(parse_with_legend(labels))
    colours = label_colours()
    assert colours.shape == (len(PARSE_LABELS), 3)
    assert preview.shape[0] == 512 and preview.shape[1] > 384
    assert np.array_equal(preview[:, :384], colours[labels])
    legend = preview[:, 384:].reshape(-1, 3)
    for name in ("face", "upper_clothes"):
        assert (legend == colours[LABEL[name]]).all(axis=1).sum() > 100  # a swatch of that colour
    assert not (legend == colours[LABEL["pants"]]).all(axis=1).any()


def test_mask_preview_is_the_editor_colour_over_the_person():
    person = Image.new("RGB", (4, 2), (0, 0, 200))
    mask = Image.fromarray(np.array([[255, 0, 0, 0], [0, 0, 0, 255]], np.uint8))
    shown = np.asarray(mask_over(person, mask)).astype(int)
    alpha = MASK_COLOR[3] / 255
    expected = np.round((1 - alpha) * np.array([0, 0, 200]) + alpha * np.array(MASK_COLOR[:3]))
    assert np.abs(shown[0, 0] - expected).max() <= 1 and np.abs(shown[1, 3] - expected).max() <= 1
    assert shown[0, 1].tolist() == [0, 0, 200]
