"""The photo → result chain with the tiny model and fake preprocessing models (no weights needed)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from leffa.weights import MissingWeightsError
from leffa.core.settings import SamplingSettings
from leffa.app.models import RELEASED_MODELS, served_at
from leffa.app.service import ModelStore, PoseTransfer, TryOn
from leffa.common import NoPersonError
from preprocess.images import InvalidImageError
from tests.fake_preprocessing import FakeDensePose, FakeOpenPose, FakeParser

SIZE = (48, 64)  # model size (width, height) of the tiny test model


def _photo(width=120, height=200, colour=(200, 120, 90)):
    image = Image.new("RGB", (width, height), (255, 255, 255))
    image.paste(Image.new("RGB", (width // 2, height // 2), colour), (width // 4, height // 4))
    return image


@pytest.fixture()
def store(tiny_model, monkeypatch, tmp_path):
    models = {key: tiny_model for key in ("viton_hd", "dress_code", "pose_transfer")}
    store = ModelStore(tmp_path, device="cpu", loaded=models, models=served_at(RELEASED_MODELS, SIZE, "tiny"))
    monkeypatch.setattr(store, "parser", lambda status=None: FakeParser())
    monkeypatch.setattr(store, "openpose", lambda status=None: FakeOpenPose())
    monkeypatch.setattr(store, "densepose", lambda status=None: FakeDensePose())
    return store


def test_tryon_with_automatic_mask_and_densepose(store):
    result = TryOn(store)(_photo(), _photo(colour=(20, 40, 200)), settings=SamplingSettings(num_inference_steps=2, seed=5))
    prepared = result.prepared
    assert result.image.size == (120, 200) and result.raw.size == SIZE
    assert set(prepared.previews) == {"parse", "keypoints", "mask", "densepose"}
    mask = np.asarray(prepared.mask) > 127
    assert mask.shape == (64, 48) and 0.05 < mask.mean() < 0.9
    dense = np.asarray(prepared.densepose)
    assert dense.shape == (64, 48, 3) and dense[0, 0].tolist() == [0, 0, 0] and dense[32, 24].any()
    assert result.seed == 5
    again = TryOn(store)(_photo(), _photo(colour=(20, 40, 200)), settings=SamplingSettings(num_inference_steps=2, seed=5))
    assert np.array_equal(np.asarray(result.raw), np.asarray(again.raw))


def test_dresscode_uses_its_own_mask_variant_and_render(store):
    prepared = TryOn(store).prepare(_photo(), _photo(), model_type="dress_code")
    dense = np.asarray(prepared.densepose)
    assert dense[32, 24].tolist() == [2, 2, 2]  # the I channel repeated, not a colormap


def test_user_mask_and_densepose_skip_preprocessing(store, monkeypatch):
    monkeypatch.setattr(store, "parser", lambda status=None: pytest.fail("parser must not load"))
    monkeypatch.setattr(store, "densepose", lambda status=None: pytest.fail("densepose must not load"))
    user_mask = np.zeros((200, 120), np.uint8)
    user_mask[50:150, 30:90] = 255
    prepared = TryOn(store).prepare(_photo(), _photo(), mask=user_mask, densepose=Image.new("RGB", (10, 10), "red"))
    assert prepared.parse is None and prepared.densepose.size == SIZE
    assert 0.1 < (np.asarray(prepared.mask) > 127).mean() < 0.6


def test_edited_mask_replaces_the_automatic_one(store):
    prepared = TryOn(store).prepare(_photo(), _photo())
    edited = prepared.with_mask(Image.new("L", (480, 640), 0))
    assert not np.asarray(edited.mask).any() and np.asarray(prepared.mask).any()
    assert edited.previews["mask"] is edited.mask


def test_inspect_records_a_trace(store):
    result = TryOn(store)(_photo(), _photo(), settings=SamplingSettings(num_inference_steps=2, seed=1, record_attention=True))
    assert result.trace is not None and result.trace.heatmap((10, 10)).shape == (64, 48, 3)


def test_pose_transfer_uses_target_iuv_and_full_mask(store):
    result = PoseTransfer(store)(_photo(), _photo(90, 150), settings=SamplingSettings(num_inference_steps=1, seed=2))
    assert result.image.size == (90, 150)
    assert np.asarray(result.prepared.mask).min() == 255
    dense = np.asarray(result.prepared.densepose)
    assert dense[32, 24].tolist() == [127, 127, 2]  # [U*255, V*255, I]


def test_no_person_is_a_clear_error(store, monkeypatch):
    monkeypatch.setattr(store, "densepose", lambda status=None: FakeDensePose(people=False))
    with pytest.raises(NoPersonError, match="no person found"):
        PoseTransfer(store).prepare(_photo(), _photo())


def test_bad_inputs(store, tmp_path):
    service = TryOn(store)
    with pytest.raises(ValueError, match="unknown model type"):
        service.prepare(_photo(), _photo(), model_type="idm")
    with pytest.raises(ValueError, match="unknown garment category"):
        service.prepare(_photo(), _photo(), category="hat")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(InvalidImageError):
        service.prepare(tmp_path / "bad.jpg", _photo())
    with pytest.raises(InvalidImageError):
        service.prepare(_photo(20, 20), _photo())


def test_missing_weights_name_the_file_and_command(tmp_path):
    store = ModelStore(tmp_path, device="cpu")
    with pytest.raises(MissingWeightsError) as info:
        store.pipeline("viton_hd")
    assert "virtual_tryon.pth" in str(info.value) and "python -m leffa download virtual_tryon" in str(info.value)
    assert "none yet" in store.describe()


def test_describe_lists_loaded_models(store):
    assert "leffa:viton_hd" in store.describe() and "device cpu" in store.describe()
