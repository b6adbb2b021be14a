"""Auto-crop around the person (``preprocess.crop``, ``leffa.app.framing``) and the try-on and pose-transfer
chain with it, on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from leffa.app.inspector import display_to_model
from leffa.app.models import RELEASED_MODELS, served_at
from leffa.app.service import ModelStore, PoseTransfer, TryOn
from leffa.core.settings import SamplingSettings
from preprocess.mask_adjust import MaskAdjustments
from preprocess.crop import AUTO_CROP_BELOW, Crop, choose_crop, crop_around, crop_preview, paste_back

SIZE = (48, 64)  # the tiny test model's frame (width, height)
PHOTO = (400, 300)  # a wide photo with a small person in it
PERSON = (170, 90, 230, 210)  # left, top, right, bottom
FAST = SamplingSettings(num_inference_steps=2, seed=4)


def _scene() -> tuple[Image.Image, Image.Image, Image.Image]:
    """The photo (a grey room, a small orange person), its mask (the person's torso) and DensePose render."""
    photo = Image.new("RGB", PHOTO, (200, 200, 190))
    pixels = np.asarray(photo).copy()
    left, top, right, bottom = PERSON
    pixels[top:bottom, left:right] = (230, 120, 60)
    pixels[top:top + 20, left + 20:right - 20] = (240, 200, 170)  # the head
    photo = Image.fromarray(pixels)
    mask = np.zeros(PHOTO[::-1], np.uint8)
    mask[top + 25:top + 80, left + 5:right - 5] = 255
    dense = np.zeros((*PHOTO[::-1], 3), np.uint8)
    dense[top:bottom, left:right] = (40, 40, 40)
    return photo, Image.fromarray(mask), Image.fromarray(dense)


@pytest.fixture()
def store(tiny_model, tmp_path):
    models = {key: tiny_model for key in ("viton_hd", "dress_code", "pose_transfer")}
    return ModelStore(tmp_path, device="cpu", loaded=models, models=served_at(RELEASED_MODELS, SIZE, "tiny"),
                      preprocessing=False)


def test_the_crop_keeps_the_frame_aspect_and_the_person_with_a_margin():
    crop = crop_around(PERSON, PHOTO, SIZE)
    left, top, right, bottom = crop.box
    assert left <= PERSON[0] - 12 and top <= PERSON[1] - 12 and right >= PERSON[2] + 12 and bottom >= PERSON[3] + 12
    assert (right - left) / (bottom - top) == pytest.approx(SIZE[0] / SIZE[1], abs=0.01)
    assert 0 <= left and 0 <= top and right <= PHOTO[0] and bottom <= PHOTO[1]
    corner = crop_around((0, 0, 60, 120), PHOTO, SIZE)  # moved inside the photo, not cut short
    assert corner.box[:2] == (0, 0) and corner.size == crop_around((100, 100, 160, 220), PHOTO, SIZE).size
    tall = crop_around((0, 0, 400, 300), PHOTO, SIZE)  # larger than the photo allows: cut at its edges
    assert tall.box == (0, 0, 400, 300)


def test_auto_crops_only_a_person_small_in_the_photo():
    small, note = choose_crop(PERSON, PHOTO, SIZE, "auto")
    assert small is not None and small.share < AUTO_CROP_BELOW and note.startswith("auto-crop: generated on the person")
    assert choose_crop((20, 10, 380, 295), PHOTO, SIZE, "auto") == (None, "")
    assert choose_crop(PERSON, PHOTO, SIZE, "off") == (None, "")
    assert choose_crop(None, PHOTO, SIZE, "on") == (None, "auto-crop: no person found to crop around; the whole photo is used")
    with pytest.raises(ValueError, match="auto_crop must be one of auto, on, off, got 'yes'"):
        choose_crop(PERSON, PHOTO, SIZE, "yes")


def test_paste_back_changes_the_mask_region_only_and_fades_its_edge_inside():
    photo, _, _ = _scene()
    crop = Crop((150, 60, 250, 200), PHOTO)
    result = Image.new("RGB", crop.size, (0, 0, 255))
    mask = np.zeros(crop.size[::-1], bool)
    mask[30:90, 20:80] = True
    pasted = np.asarray(paste_back(photo, result, crop, mask)).astype(int)
    original = np.asarray(photo).astype(int)
    outside = np.ones(PHOTO[::-1], bool)
    outside[60 + 30:60 + 90, 150 + 20:150 + 80] = False
    assert np.array_equal(pasted[outside], original[outside])  # exact outside the mask, the crop's border included
    assert pasted[60 + 60, 150 + 50].tolist() == [0, 0, 255]  # the mask's inside is the result
    edge = pasted[60 + 30, 150 + 50]
    assert 0 < edge[2] < 255 and edge[0] > 0  # blended over the mask's edge
    preview = np.asarray(crop_preview(photo, crop)).astype(int)
    assert preview[5, 5].sum() < original[5, 5].sum() * 0.7 and np.array_equal(preview[100, 200], original[100, 200])


def test_tryon_on_a_small_person_generates_on_the_crop_and_pastes_back(store):
    photo, mask, dense = _scene()
    result = TryOn(store)(photo, photo, mask=mask, densepose=dense, settings=FAST)
    prepared = result.prepared
    crop = prepared.framing.crop
    assert crop is not None and "crop" in prepared.previews and prepared.notes[0].startswith("auto-crop: generated")
    assert result.image.size == PHOTO
    person = (np.asarray(prepared.person).astype(int) - (230, 120, 60)).__abs__().sum(axis=2) < 30
    assert person.mean() > 0.3  # the person fills the frame now (2 % of the whole photo's letterbox)
    mask_in_photo = np.zeros(PHOTO[::-1], bool)
    left, top, right, bottom = crop.box
    cut = prepared.mask.crop(prepared.box.box).resize(crop.size, Image.Resampling.NEAREST)
    mask_in_photo[top:bottom, left:right] = np.asarray(cut) > 127
    shown, original = np.asarray(result.image), np.asarray(photo)
    assert np.array_equal(shown[~mask_in_photo], original[~mask_in_photo])  # only the mask region changed
    assert (shown[mask_in_photo] != original[mask_in_photo]).any()
    assert abs(mask_in_photo.sum() - (np.asarray(mask) > 127).sum()) < 0.15 * (np.asarray(mask) > 127).sum()

    whole = TryOn(store)(photo, photo, mask=mask, densepose=dense, auto_crop="off", settings=FAST)
    assert whole.prepared.framing.crop is None and whole.prepared.notes == [] and whole.image.size == PHOTO


def test_a_supplied_mask_of_the_photo_size_is_framed_like_the_photo(store):
    photo, mask, dense = _scene()
    prepared = TryOn(store).prepare(photo, photo, mask=mask, densepose=dense, auto_crop="off")
    framed = np.asarray(prepared.mask) > 127
    person = (np.asarray(prepared.person).astype(int) - (230, 120, 60)).__abs__().sum(axis=2) < 40
    assert framed.any() and (person[framed]).mean() > 0.9  # on the person, not stretched off it
    assert not framed[:8].any() and not framed[-8:].any()  # the letterbox's borders stay unmasked


def test_a_supplied_mask_of_another_size_turns_auto_crop_off(store):
    photo, mask, dense = _scene()
    framed_mask = mask.resize(SIZE)
    prepared = TryOn(store).prepare(photo, photo, mask=framed_mask, densepose=dense, auto_crop="on")
    assert prepared.framing.crop is None
    assert prepared.notes == ["auto-crop: off, because the supplied mask or DensePose is not of the photo's size"]


def test_pose_transfer_crops_the_target_and_returns_that_cut(store):
    photo, _, dense = _scene()
    result = PoseTransfer(store)(photo, photo, densepose=dense, settings=FAST)
    crop = result.prepared.framing.crop
    assert crop is not None and result.image.size == crop.size
    assert result.prepared.notes[0].endswith("the result is that cut of the target photo")


def test_an_inspector_click_maps_through_the_crop(store):
    photo, mask, dense = _scene()
    settings = SamplingSettings(num_inference_steps=2, seed=1, record_attention=True)
    result = TryOn(store)(photo, photo, mask=mask, densepose=dense, settings=settings)
    left, top, right, bottom = result.prepared.framing.crop.box
    x, y = display_to_model(((left + right) / 2, (top + bottom) / 2), result)
    assert x == pytest.approx(SIZE[0] / 2, abs=1.0) and y == pytest.approx(SIZE[1] / 2, abs=1.0)
    with pytest.raises(ValueError, match=r"lies outside the generated region .* \(auto-crop\): click inside it"):
        display_to_model((5, 5), result)


def test_a_mask_reaching_the_cut_is_named(store):
    photo, mask, dense = _scene()
    prepared = TryOn(store).prepare(photo, photo, mask=mask, densepose=dense)
    assert len(prepared.notes) == 1  # the crop only
    stretched = prepared.adjusted(MaskAdjustments(extend_down=100))
    assert stretched.notes[0].startswith("auto-crop: generated") and stretched.notes[-1].startswith(
        "auto-crop: the mask reaches the edge of the cut"
    )
    again = stretched.adjusted(MaskAdjustments(extend_down=101))
    assert len(again.notes) == len(stretched.notes)  # notes of the adjustment before do not pile up


def test_a_framed_mask_goes_back_to_the_photo_and_frames_again_unchanged():
    from leffa.app.framing import Framing

    photo = Image.new("RGB", (400, 300), (150, 150, 140))
    mask = np.zeros((300, 400), bool)
    mask[140:260, 170:230] = True
    for crop in (None, Crop((140, 100, 260, 260), (400, 300))):
        _, framing = Framing.make(photo, (96, 128), crop)
        framed = framing.supplied(Image.fromarray(mask.astype(np.uint8) * 255))
        back = framing.to_photo(framed).convert("L")
        assert back.size == (400, 300)
        if crop is not None:  # nothing outside the cut
            outside = np.ones((300, 400), bool)
            outside[100:260, 140:260] = False
            assert not (np.asarray(back) > 127)[outside].any()
        assert np.mean((np.asarray(back) > 127) == mask) > 0.99
        assert np.array_equal(np.asarray(framing.supplied(back)), np.asarray(framed))
