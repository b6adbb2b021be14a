"""The built-in demo model: loads strictly, generates in seconds on a CPU, beats the untrained model as recorded."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from leffa.app.demo import DEMO_IMAGE_SIZE, DEMO_MODEL_DIR, demo_examples, load_demo_model
from leffa.core.pipeline import LeffaPipeline
from leffa.common import CheckpointMismatchError
from leffa.core.serialization import read_state_dict
from train.synthetic.data import make_sample, sample_seed
from train.synthetic.eval import CHECK_SETTINGS, check_metrics

CHECK = json.loads((DEMO_MODEL_DIR / "check.json").read_text())


@pytest.fixture(scope="module")
def demo():
    return load_demo_model("cpu")


def test_loads_strictly_from_released_key_format(demo) -> None:
    state = read_state_dict(DEMO_MODEL_DIR / "model.safetensors")
    assert {name.split(".")[0] for name in state} == {"vae", "unet_encoder", "unet"}
    assert set(state) == set(demo.state_dict())
    assert state["unet.conv_in.weight"].shape[1] == 12 and state["unet_encoder.conv_in.weight"].shape[1] == 4
    assert all(t.dtype == torch.float16 for t in state.values() if t.is_floating_point())
    assert demo.dtype == torch.float32 and demo.device.type == "cpu"
    for name, tensor in demo.state_dict().items():
        torch.testing.assert_close(tensor, state[name].to(tensor.dtype), atol=0, rtol=0, msg=name)
    broken = dict(state)
    broken.pop("unet.conv_in.weight")
    with pytest.raises(CheckpointMismatchError, match="1 missing keys: unet.conv_in.weight"):
        demo.load_state_dict(broken)


def test_missing_assets_give_clear_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="missing unet.json, vae.json, scheduler.json, model.safetensors"):
        load_demo_model("cpu", path=tmp_path)
    from train.synthetic.experiment import load_run

    with pytest.raises(FileNotFoundError, match="missing unet.json.*; train it first"):
        load_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="no example inputs"):
        demo_examples(tmp_path)
    (tmp_path / "person_00.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="example 00 .* missing garment_00.png"):
        demo_examples(tmp_path)


def test_examples_are_the_synthetic_test_samples() -> None:
    examples = demo_examples()
    assert len(examples) == 4
    for k, example in enumerate(examples):
        sample = make_sample(sample_seed("test", k, 0), DEMO_IMAGE_SIZE)
        assert example["person"].size == DEMO_IMAGE_SIZE[::-1] and example["mask"].mode == "L"
        np.testing.assert_array_equal(np.asarray(example["person"]), sample.person)
        np.testing.assert_array_equal(np.asarray(example["garment"]), sample.garment)
        np.testing.assert_array_equal(np.asarray(example["densepose"]), sample.densepose)
        np.testing.assert_array_equal(np.asarray(example["mask"]), sample.mask.astype(np.uint8) * 255)


def test_generates_a_try_on_in_seconds(demo) -> None:
    example = demo_examples()[0]
    pipe = LeffaPipeline(demo)
    start = time.perf_counter()
    output = pipe(
        example["person"], example["garment"], example["mask"], example["densepose"],
        num_inference_steps=CHECK_SETTINGS.num_inference_steps, seed=0,
    )
    elapsed = time.perf_counter() - start
    assert elapsed < 20, f"one 128x96 try-on took {elapsed:.1f}s on the CPU"
    result = np.asarray(output.images[0], dtype=np.float64) / 255
    person = np.asarray(example["person"], dtype=np.float64) / 255
    inside = np.asarray(example["mask"]) > 127
    assert result.shape == person.shape
    # The example's person already wears the garment, so it is the target inside the mask too.
    assert np.abs(result - person)[~inside].mean() < 0.1
    assert np.abs(result - person)[inside].mean() < CHECK["untrained"]["sample_mask_l1"]


@pytest.mark.slow
def test_reproduces_recorded_metrics_and_beats_the_untrained_model(demo) -> None:
    scores = check_metrics(demo)
    for key, recorded in CHECK["demo"].items():
        assert scores[key] == pytest.approx(recorded, rel=0.02), key
    assert {"sample_garment_l1", "sample_mask_l1"} <= set(CHECK["margins"])
    for key, margin in CHECK["margins"].items():
        assert scores[key] <= CHECK["untrained"][key] - margin, key


def test_figures_use_the_finest_attention_layers_of_the_shipped_architecture(demo) -> None:
    from train.synthetic.experiment import _finest_layers

    grid, layers = _finest_layers(demo, DEMO_IMAGE_SIZE)
    assert grid == (16, 12)  # 128x96 image, 4x VAE, no attention at the 32x24 latent level
    assert [layer.split(".transformer_blocks")[0] for layer in layers] == [
        "down_blocks.1.attentions.0",
        "up_blocks.1.attentions.0",
        "up_blocks.1.attentions.1",
    ]
