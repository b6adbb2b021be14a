"""Mask adjustments (``preprocess.mask_adjust``) on the synthetic person of ``tests/test_masks.py``."""

from __future__ import annotations

import numpy as np
import pytest

from preprocess.mask_adjust import NO_ADJUSTMENTS, MaskAdjustments, adjust_mask, mask_regions
from preprocess.masks import CATEGORIES, VARIANTS, agnostic_mask, grow
from preprocess.parsing import LABEL
from tests.test_masks import _keypoints, _person

FRAME = (384, 512)


@pytest.fixture(scope="module")
def person():
    parse, keypoints = _person(), _keypoints()
    return parse, keypoints, mask_regions(parse, keypoints, FRAME)


def _rows(mask: np.ndarray) -> tuple[int, int]:
    rows = np.nonzero(mask.any(axis=1))[0]
    return int(rows.min()), int(rows.max())


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("category", CATEGORIES)
def test_the_defaults_give_the_released_mask_bit_for_bit(person, variant, category):
    parse, keypoints, regions = person
    released = agnostic_mask(parse, keypoints, category, variant)
    adjusted, notes = adjust_mask(released, NO_ADJUSTMENTS, regions, category)
    assert adjusted is released and notes == []
    assert MaskAdjustments() == NO_ADJUSTMENTS and NO_ADJUSTMENTS.changes_nothing


def test_grow_and_shrink_move_the_edge_by_that_many_pixels(person):
    parse, keypoints, regions = person
    base = agnostic_mask(parse, keypoints, "upper_body", "viton_hd")
    open_hands = MaskAdjustments(grow=12, keep_hands=False, keep_face=False)
    assert np.array_equal(adjust_mask(base, open_hands, regions).mask, grow(base, 12))
    assert np.array_equal(adjust_mask(base, MaskAdjustments(grow=-12), regions).mask, grow(base, -12))
    top, bottom = _rows(base)
    assert _rows(grow(base, 12)) == (top - 12, min(bottom + 12, FRAME[1] - 1))


@pytest.mark.parametrize(("side", "axis", "sign"), [("down", 0, 1), ("up", 0, -1), ("right", 1, 1), ("left", 1, -1)])
def test_extend_stretches_the_mask_to_one_side_only(person, side, axis, sign):
    parse, keypoints, regions = person
    base = agnostic_mask(parse, keypoints, "upper_body", "viton_hd")
    extended = adjust_mask(base, MaskAdjustments(**{f"extend_{side}": 20}, keep_hands=False, keep_face=False)).mask
    expected = base.copy()
    for step in range(1, 21):
        shifted = np.roll(base, sign * step, axis=axis)
        edge = [slice(None), slice(None)]
        edge[axis] = slice(0, step) if sign > 0 else slice(-step, None)
        shifted[tuple(edge)] = False  # nothing wraps round the image
        expected |= shifted
    assert np.array_equal(extended, expected)
    assert extended.sum() > base.sum() and not (base & ~extended).any()


def test_what_the_adjustments_add_keeps_off_hands_and_face(person):
    parse, keypoints, regions = person
    base = agnostic_mask(parse, keypoints, "upper_body", "viton_hd")
    kept = adjust_mask(base, MaskAdjustments(grow=40, extend_up=60), regions).mask
    added = kept & ~base
    assert added.sum() > 10_000 and not (added & (regions.hands | regions.face)).any()
    assert (base & ~kept).sum() == 0  # the automatic mask itself is untouched
    free = adjust_mask(base, MaskAdjustments(grow=40, extend_up=60, keep_hands=False, keep_face=False), regions).mask
    assert (free & ~base & regions.hands).sum() > 500 and (free & ~base & regions.face).sum() > 1000
    hands, arms = regions.hands, np.isin(parse, [LABEL["left_arm"], LABEL["right_arm"]])
    assert hands[336:365].sum() == arms[336:365].sum()  # the drawn hands (rows 336-364) ...
    rows = np.nonzero(hands.any(axis=1))[0]
    assert rows.min() > 290 and rows.max() < 380  # ... from just before the wrists (y 305), and no more
    assert not (hands & ~arms).any()  # arm pixels only, never the shirt


def test_cover_legs_reaches_the_ankles_between_the_legs_and_spares_the_shoes(person):
    parse, keypoints = _person(lower="dress"), _keypoints()
    regions = mask_regions(parse, keypoints, FRAME)
    base = agnostic_mask(parse, keypoints, "dresses", "viton_hd")
    covered, notes = adjust_mask(base, MaskAdjustments(cover_legs=True), regions, "dresses")
    assert notes == [] and _rows(base)[1] < 440  # the released VITON-HD dress mask stops above the knees
    assert covered[470, 150] and covered[470, 192] and covered[470, 230]  # both legs and between them, ankle height
    assert not (covered & regions.shoes).any() and not (base & ~covered).any()
    unchanged, notes = adjust_mask(base, MaskAdjustments(cover_legs=True), regions, "upper_body")
    assert np.array_equal(unchanged, base) and notes == [
        "cover legs is for lower-body garments and dresses; ignored for an upper-body garment"
    ]


def test_out_of_range_values_clip_with_a_note_and_an_emptied_mask_is_refused(person):
    parse, keypoints, regions = person
    base = agnostic_mask(parse, keypoints, "upper_body", "viton_hd")
    clipped, notes = adjust_mask(base, MaskAdjustments(extend_down=5000, extend_left=-7), regions)
    assert notes == [
        "extend down 5000 px is outside 0..512 for this image; 512 px used",
        "extend left -7 px is outside 0..384 for this image; 0 px used",
    ]
    assert clipped[-1].any() and np.array_equal(clipped[:, :1], base[:, :1] | clipped[:, :1])
    with pytest.raises(ValueError, match="^the mask is empty after the adjustments"):
        adjust_mask(base, MaskAdjustments(grow=-1000), regions)
    supplied, notes = adjust_mask(base, MaskAdjustments(grow=3, cover_legs=True), None, "dresses")
    assert np.array_equal(supplied, grow(base, 3)) and notes == [
        "cover legs needs the parse map of the photo; ignored for a supplied mask",
        "keeping hands and face and hair needs the parse map of the photo; not done for a supplied mask",
    ]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"grow": 2.5}, "grow must be a whole number of pixels, got 2.5"),
        ({"extend_down": "10"}, "extend_down must be a whole number of pixels, got '10'"),
        ({"extend_up": float("nan")}, "extend_up must be a whole number"),
        ({"keep_hands": "yes"}, "keep_hands must be true or false, got 'yes'"),
        ({"cover_legs": 1}, "cover_legs must be true or false, got 1"),
    ],
)
def test_adjustments_are_checked_when_made(fields, message):
    with pytest.raises(ValueError, match=message):
        MaskAdjustments(**fields)
    assert MaskAdjustments(grow=20.0).grow == 20 and isinstance(MaskAdjustments(grow=20.0).grow, int)


def test_regions_scale_to_the_model_frame(person):
    parse, keypoints, regions = person
    large = mask_regions(parse, keypoints, (768, 1024))
    assert large.hands.shape == (1024, 768)
    assert abs(int(large.hands.sum()) - 4 * int(regions.hands.sum())) < 0.01 * large.hands.sum()
