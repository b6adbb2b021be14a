"""The built-in demo models (try-on and pose transfer): load strictly, generate in seconds on a CPU, and
reproduce the correspondence and image numbers recorded on their check batches."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from leffa.app.callbacks import AppCallbacks
from leffa.app.demo import demo_examples, demo_pose_examples, load_demo_model
from leffa.assets import DEMO_IMAGE_SIZE, DEMO_MODEL_DIR, DEMO_TASKS
from leffa.app.examples import demo_pose_example_files
from leffa.app.models import POSE_MODEL, RELEASED_MODELS, served_at
from leffa.app.service import ModelStore, PoseTransfer
from leffa.common import CheckpointMismatchError
from leffa.core.model import LeffaModel
from leffa.core.pipeline import LeffaPipeline
from leffa.core.serialization import read_state_dict
from leffa.core.settings import SamplingSettings
from train.synthetic.data import render_split, sample_seed, to_batch
from train.synthetic.people import make_sample
from train.synthetic.eval import masked_l1
from train.synthetic.experiment import untrained_model
from train.synthetic.pose import render_pose_split
from train.synthetic.pose_examples import DEFAULT_INDICES
from train.synthetic.ship import (
    BATCH_FILE,
    CHECK_BATCH_COUNT,
    CHECK_SAMPLER,
    correspondence_numbers,
    image_numbers,
    read_check_batch,
)

CHECKS = {task: json.loads((DEMO_MODEL_DIR / task / "check.json").read_text()) for task in DEMO_TASKS}


@pytest.fixture(scope="module", params=DEMO_TASKS)
def task(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def demo(task: str) -> LeffaModel:
    return load_demo_model("cpu", task=task)


@pytest.fixture(scope="module")
def batch(task: str) -> dict[str, torch.Tensor]:
    return read_check_batch(DEMO_MODEL_DIR / task / BATCH_FILE)


def test_loads_strictly_from_released_key_format(task: str, demo: LeffaModel) -> None:
    path = DEMO_MODEL_DIR / task / "model.safetensors"
    state = read_state_dict(path)
    assert {name.split(".")[0] for name in state} == {"vae", "unet_encoder", "unet"}
    assert set(state) == set(demo.state_dict())
    assert state["unet.conv_in.weight"].shape[1] == 12 and state["unet_encoder.conv_in.weight"].shape[1] == 4
    assert all(t.dtype == torch.float16 for t in state.values() if t.is_floating_point())
    assert path.stat().st_size < 10 * 2**20
    assert demo.dtype == torch.float32 and demo.device.type == "cpu"
    for name, tensor in demo.state_dict().items():
        torch.testing.assert_close(tensor, state[name].to(tensor.dtype), atol=0, rtol=0, msg=name)
    broken = dict(state)
    broken.pop("unet.conv_in.weight")
    with pytest.raises(CheckpointMismatchError, match="1 missing keys: unet.conv_in.weight"):
        demo.load_state_dict(broken)


def test_loads_with_from_pretrained_from_the_configs_beside_it(task: str, demo: LeffaModel) -> None:
    model = LeffaModel.from_pretrained(DEMO_MODEL_DIR / task / "model.safetensors", device="cpu")
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor.float(), demo.state_dict()[name], atol=0, rtol=0, msg=name)


def test_metadata_says_trained_and_how(task: str) -> None:
    metadata = json.loads((DEMO_MODEL_DIR / task / "metadata.json").read_text())
    assert metadata["task"] == task and metadata["trained"] is True
    assert metadata["image_size"] == list(DEMO_IMAGE_SIZE)
    assert all("run" in stage for stage in metadata["recipe"]) and len(metadata["recipe"]) >= 2


def test_missing_assets_give_clear_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="model incomplete in .*: missing model.safetensors .*; restore assets/demo-model"):
        load_demo_model("cpu", path=tmp_path)
    (tmp_path / "unet.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="missing vae.json, scheduler.json, model.safetensors"):
        load_demo_model("cpu", path=tmp_path)
    (tmp_path / "unet.json").unlink()
    with pytest.raises(ValueError, match=r"task must be one of \('virtual_tryon', 'pose_transfer'\), got 'tryon'"):
        load_demo_model("cpu", task="tryon")
    from train.synthetic.experiment import load_run

    with pytest.raises(FileNotFoundError, match="missing model.safetensors.*; train it first"):
        load_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="no example inputs"):
        demo_examples(tmp_path)
    with pytest.raises(FileNotFoundError, match="no pose examples"):
        demo_pose_examples(tmp_path)
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


def test_check_batch_is_held_out_test_data_in_the_documented_format(task: str) -> None:
    with np.load(DEMO_MODEL_DIR / task / BATCH_FILE) as stored:
        arrays = {key: stored[key] for key in stored.files}
    n, (h, w) = CHECK_BATCH_COUNT, DEMO_IMAGE_SIZE
    assert arrays["person"].shape == arrays["reference"].shape == arrays["densepose"].shape == (n, 3, h, w)
    assert arrays["mask"].shape == (n, 1, h, w) and arrays["true_flow"].shape == (n, h, w, 2)
    assert arrays["flow_valid"].shape == (n, h, w) and arrays["flow_valid"].dtype == bool
    assert arrays["person"].dtype == np.float32 and arrays["person"].min() >= -1 and arrays["person"].max() <= 1
    render = render_split if task == "virtual_tryon" else render_pose_split
    expected = to_batch(render("test", n, DEMO_IMAGE_SIZE, 0), np.arange(n))  # test split: never trained on
    np.testing.assert_array_equal(arrays["person"], expected["image"].numpy())
    np.testing.assert_array_equal(arrays["true_flow"], expected["flow"].numpy())
    if task == "pose_transfer":
        assert np.all(arrays["mask"] == 1)


def test_generates_in_seconds(task: str, demo: LeffaModel) -> None:
    example = demo_examples()[0]
    pipe = LeffaPipeline(demo)
    start = time.perf_counter()
    output = pipe(
        example["person"], example["garment"], example["mask"], example["densepose"],
        num_inference_steps=CHECK_SAMPLER.num_inference_steps, seed=0,
    )
    elapsed = time.perf_counter() - start
    assert elapsed < 20, f"one 128x96 {task} took {elapsed:.1f}s on the CPU"
    assert np.asarray(output.images[0]).shape == (*DEMO_IMAGE_SIZE, 3)


def test_reproduces_the_recorded_correspondence(task: str, demo: LeffaModel, batch) -> None:
    """Teacher-forced flow errors (t = 100, τ = 1) within 2 %, and far better than no correspondence."""
    check = CHECKS[task]
    scores = correspondence_numbers(demo, batch)
    for key in ("epe/layer_mean", "epe/best_layer"):
        assert scores[key] == pytest.approx(check["demo"][key], rel=0.02), key
    assert scores["epe/layer_mean"] < check["baselines"]["uniform/epe"] / 2
    assert scores["epe/best_layer"] < check["baselines"]["identity/epe"]
    assert scores["epe/layer_mean"] < check["untrained"]["epe/layer_mean"] / 2


@pytest.mark.slow
def test_reproduces_the_recorded_samples_and_beats_the_untrained_model(task: str, demo: LeffaModel, batch) -> None:
    check = CHECKS[task]
    scores = image_numbers(demo, batch)
    for key, value in scores.items():
        assert value == pytest.approx(check["demo"][f"plain/{key}"], rel=0.02), key
    assert scores["mask_l1"] < 0.6 * check["untrained"]["plain/mask_l1"]
    assert scores["garment_ssim"] > check["untrained"]["plain/garment_ssim"] + 0.1


def test_figures_use_the_finest_attention_layers_of_the_shipped_architecture() -> None:
    from train.synthetic.experiment import _finest_layers

    grid, layers = _finest_layers(load_demo_model("cpu"), DEMO_IMAGE_SIZE)
    assert grid == (16, 12)  # 128x96 image, 4x VAE, no attention at the 32x24 latent level
    assert [layer.split(".transformer_blocks")[0] for layer in layers] == [
        "down_blocks.1.attentions.0",
        "up_blocks.1.attentions.0",
        "up_blocks.1.attentions.1",
    ]


# ------------------------------------------------------------------------------ the app's pose examples
def _pose_store(model: LeffaModel) -> ModelStore:
    height, width = DEMO_IMAGE_SIZE
    return ModelStore(
        None, device="cpu", loaded={POSE_MODEL: model}, models=served_at(RELEASED_MODELS, (width, height), "demo")
    )


def test_pose_examples_are_check_batch_samples_through_the_apps_conversion() -> None:
    """Each shipped pose example, read as the app reads it (files → PoseTransfer.prepare → the pose
    pipeline's inputs), is its check-batch sample bit for bit, DensePose included."""
    examples, files = demo_pose_examples(), demo_pose_example_files()
    assert len(examples) == len(files) == len(DEFAULT_INDICES)
    assert all(image.size == DEMO_IMAGE_SIZE[::-1] for example in examples for image in example.values())
    batch = read_check_batch(DEMO_MODEL_DIR / POSE_MODEL / BATCH_FILE)
    store = _pose_store(load_demo_model("cpu", task=POSE_MODEL))
    pipe = store.pipeline(POSE_MODEL)
    assert pipe.default_densepose_format == "rgb"  # the grey part render, as the demo model was trained on
    for index, example in zip(DEFAULT_INDICES, files, strict=True):
        prepared = PoseTransfer(store).prepare(example.person, example.target, densepose=example.densepose)
        src, ref, mask, densepose = pipe.prepare_inputs(
            prepared.person, prepared.reference, prepared.mask, prepared.densepose
        )
        for name, got, expected in (
            ("target", src, batch["image"]), ("person", ref, batch["reference"]),
            ("mask", mask, batch["mask"]), ("densepose", densepose, batch["densepose"]),
        ):
            torch.testing.assert_close(got[0], expected[index], atol=0, rtol=0, msg=f"pose example {index}: {name}")


def test_pose_transfer_on_the_first_example_beats_the_untrained_model() -> None:
    """Example 0 through the app's callbacks at the demo size (20 steps, seed 0): masked L1 on the person
    pixels against the true target well below the untrained model's."""
    example = demo_pose_example_files()[0]
    batch = read_check_batch(DEMO_MODEL_DIR / POSE_MODEL / BATCH_FILE)
    index = DEFAULT_INDICES[0]
    target, person = (batch["image"][index : index + 1] / 2 + 0.5).clamp(0, 1), batch["flow_valid"][index : index + 1]
    settings = SamplingSettings(num_inference_steps=CHECK_SAMPLER.num_inference_steps, seed=0)

    def l1(model: LeffaModel) -> float:
        generation = AppCallbacks(_pose_store(model)).pose_transfer(
            example.person, example.target, densepose=example.densepose, settings=settings
        )
        image = torch.from_numpy(np.asarray(generation.image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
        return float(masked_l1(image, target, person)[0])

    trained, untrained = l1(load_demo_model("cpu", task=POSE_MODEL)), l1(untrained_model(DEMO_MODEL_DIR / POSE_MODEL))
    assert trained < 0.6 * untrained, (trained, untrained)


# --------------------------------------------------------------------------------------- shipping a run
def test_ship_writes_the_runs_ema_weights_with_ema(tmp_path, monkeypatch) -> None:
    """``ship --ema`` ships ``model-ema.safetensors`` (the trainer's EMA export), not ``model.safetensors``;
    the measuring is stubbed (its numbers are tested above)."""
    import shutil

    import train.synthetic.ship as ship
    from leffa.core.serialization import save_state_dict

    monkeypatch.setattr(ship, "check_numbers", lambda model, batch: {"bias": model.unet.conv_out.bias[0].item()})
    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.safetensors", "unet.json", "vae.json", "scheduler.json"):
        shutil.copy(DEMO_MODEL_DIR / "virtual_tryon" / name, run / name)
    plain = read_state_dict(run / "model.safetensors")
    ema = {**plain, "unet.conv_out.bias": plain["unet.conv_out.bias"] + 0.25}
    save_state_dict(ema, run / ship.EMA_EXPORT)
    for flag, expected in ((False, plain), (True, ema)):
        out = tmp_path / f"shipped-{flag}"
        check = ship.export_demo_model(run, "virtual_tryon", out, recipe=[{"stage": "test"}], ema=flag)
        shipped = read_state_dict(out / "model.safetensors")
        torch.testing.assert_close(shipped["unet.conv_out.bias"].float(), expected["unet.conv_out.bias"].float())
        assert check["demo"]["bias"] == pytest.approx(float(expected["unet.conv_out.bias"][0]), abs=1e-3)
        assert json.loads((out / "metadata.json").read_text())["recipe"] == [{"stage": "test"}]
        assert (out / BATCH_FILE).is_file()


@pytest.mark.slow
def test_trace_json_marks_where_the_demo_model_looks(task: str, tmp_path) -> None:
    """The user's view end to end: ``python -m leffa trace --tiny`` on a held-out check-batch sample, clicks
    inside the garment (body), ``trace.json``'s ``peaks`` against the true correspondence."""
    from bench.bench_inspector import write_inputs
    from leffa.app.cli import EXIT_OK, main

    samples, truth, clicks = write_inputs(task, tmp_path)
    index = 1
    ys, xs = np.nonzero(clicks[index])
    chosen = np.random.default_rng(0).choice(len(ys), 60, replace=False)
    points = [f"{xs[k]},{ys[k]}" for k in chosen]
    paths = samples[index]
    first, second = (paths["reference"], paths["person"]) if task == "pose_transfer" else (paths["person"], paths["reference"])
    extra = ["--task", "pose-transfer"] if task == "pose_transfer" else ["--mask", str(paths["mask"])]
    arguments = ["trace", str(first), str(second), "--densepose", str(paths["densepose"]), *extra, "--tiny"]
    arguments += ["--seed", "0", "--device", "cpu", "-o", str(tmp_path / "out")]
    assert main([*arguments, *(part for point in points for part in ("--point", point))]) == EXIT_OK
    summary = json.loads(next((tmp_path / "out").glob("*/trace.json")).read_text())
    errors = np.hypot(*(np.array(summary["peaks"]) - truth[index][ys[chosen], xs[chosen]]).T)
    # docs/inspector-accuracy.md measures >= 94 % over thousands of clicks; 60 of them vary by a few points
    assert np.mean(errors <= 8) >= 0.85 and np.median(errors) <= 5, np.round(errors, 1)
