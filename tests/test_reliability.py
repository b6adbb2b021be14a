"""Issue 13, the library and command-line items: each defect a new user hit, and what happens now.

1 batch names never collide and nothing existing is replaced; 4 damaged checkpoints name the file;
5 every checkpoint this project writes loads with ``from_pretrained``; 6 too many steps; 7 non-finite
settings, inputs and results; 8 the smaller ones (trace points, Ctrl-C, directories, empty files, huge
seeds, pairs files with spaces, settings checked before loading). Items 2-3 (the app) are in the app tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from leffa.app import cli
from leffa.app.batch import BatchInputError, jobs_from_pairs_file, jobs_from_paths
from leffa.app.cli import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, main
from leffa.app.demo import load_demo_model
from leffa.assets import DEMO_MODEL_DIR, DEMO_TASKS
from leffa.app.runtime import single_model_runtime
from leffa.core.configs import BaseConfigs, load_base_configs
from leffa.core.model import LeffaModel
from leffa.core.pipeline import LeffaPipeline, resolve_seed
from leffa.core.serialization import (
    read_config_files, read_state_dict, save_state_dict, stored_configs, write_config_files,
)
from leffa.core.validation import NonFiniteOutputError, check_generated, max_inference_steps
from preprocess.images import load_image
from tests.conftest import read_run_log, write_block_image

SIZE = (48, 64)  # model size (width, height) the tiny model runs at here
FAST = ["--steps", "1", "--seed", "3"]


@pytest.fixture()
def tiny(tiny_model, monkeypatch):
    """``--tiny`` serves the session's random tiny model (no demo assets needed)."""
    monkeypatch.setattr(cli, "tiny_runtime", lambda **options: single_model_runtime(tiny_model, SIZE, []))


@pytest.fixture()
def no_model(monkeypatch):
    """Fails the test if the command gets as far as loading a model."""

    def refuse(**options):
        raise AssertionError("the model was loaded although the command should have stopped before")

    monkeypatch.setattr(cli, "tiny_runtime", refuse)


def _inputs(root: Path) -> dict[str, Path]:
    return {
        "garment": write_block_image(root / "g.png", colour=(0, 0, 255)),
        "mask": write_block_image(root / "m.png", mode="L"),
        "densepose": write_block_image(root / "d.png"),
    }


def _exit_code(arguments: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(arguments)
    return info.value.code


def _custom_configs() -> BaseConfigs:
    """The tiny configs with narrower UNets: key detection alone would build the wrong model."""
    tiny = load_base_configs("tiny")
    return BaseConfigs({**tiny.unet, "block_out_channels": [32, 32]}, tiny.vae, tiny.scheduler, name="narrow")


# ------------------------------------------------------------------------ 1. silent data loss in batches
def test_same_stems_in_a_batch_get_distinct_names(tmp_path):
    garment = write_block_image(tmp_path / "g.png")
    for path in ("a/p.png", "b/p.png", "same/p.png", "same/p.jpg"):
        write_block_image(tmp_path / path)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("a/p.png g.png\nb/p.png g.png\na/p.png g.png\n")
    assert [job.name for job in jobs_from_pairs_file(pairs, ())] == ["p__g", "p__g-2", "p__g-3"]
    assert [job.name for job in jobs_from_paths(tmp_path / "same", garment, {})] == ["p__g", "p__g-2"]


def test_a_batch_writes_every_result_and_logs_its_name(tiny, tmp_path, capsys):
    _inputs(tmp_path)
    for folder in ("a", "b"):
        write_block_image(tmp_path / folder / "p.png", colour=(255, 0, 0) if folder == "a" else (0, 255, 0))
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("a/p.png g.png m.png d.png\nb/p.png g.png m.png d.png\n")
    out = tmp_path / "out"
    assert main(["tryon", "--pairs", str(pairs), "--tiny", "-o", str(out), *FAST]) == EXIT_OK
    log = read_run_log(out)
    assert [(entry["name"], Path(entry["output"]).name) for entry in log] == [
        ("p__g", "p__g.png"), ("p__g-2", "p__g-2.png"),
    ]
    assert sorted(p.name for p in out.glob("*.png")) == ["p__g-2.png", "p__g.png"]
    assert "[2/2] p__g-2" in capsys.readouterr().out


def test_results_the_user_already_has_are_kept_unless_overwrite(tiny, tmp_path, capsys):
    files = _inputs(tmp_path)
    person = write_block_image(tmp_path / "p.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "p__g.png").write_bytes(b"my own file")
    arguments = ["tryon", str(person), str(files["garment"]), "--mask", str(files["mask"]), "--densepose",
                 str(files["densepose"]), "--tiny", "-o", str(out), *FAST]
    assert main(arguments) == EXIT_ERROR
    assert "1 of the results already exist in" in capsys.readouterr().err
    assert (out / "p__g.png").read_bytes() == b"my own file" and not (out / "log.jsonl").exists()
    assert main([*arguments, "--overwrite"]) == EXIT_OK
    assert Image.open(out / "p__g.png").size == (96, 128)


def test_convert_keeps_an_existing_output_unless_overwrite(tiny_model, tmp_path, capsys):
    source = save_state_dict(tiny_model.state_dict(), tmp_path / "tiny.pth")
    out = tmp_path / "copy.safetensors"
    out.write_bytes(b"mine")
    assert main(["convert", str(source), str(out)]) == EXIT_ERROR
    assert f"{out} already exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"mine"
    assert main(["convert", str(source), str(out), "--overwrite"]) == EXIT_OK
    assert main(["convert", str(source), str(source), "--overwrite"]) == EXIT_ERROR
    assert "is the input checkpoint" in capsys.readouterr().err


# --------------------------------------------------------------------------- 4. bad safetensors files
@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"garbage!", "header too large"), ("truncated", "incomplete metadata"), (b"", "is empty")],
)
def test_damaged_safetensors_name_the_file_and_the_problem(tiny_model, tmp_path, capsys, content, reason):
    path = tmp_path / "model.safetensors"
    if content == "truncated":
        whole = save_state_dict(tiny_model.state_dict(), tmp_path / "whole.safetensors").read_bytes()
        content = whole[: len(whole) // 2]
    path.write_bytes(content)
    with pytest.raises(ValueError, match=reason) as info:
        LeffaModel.from_pretrained(path, device="cpu")
    assert str(path) in str(info.value)
    assert main(["convert", str(path), str(tmp_path / "out.safetensors")]) == EXIT_ERROR  # no exception escapes
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(path) in err and reason in err and "Traceback" not in err


# ------------------------------------------------------------------ 5. every written checkpoint loads
@pytest.mark.parametrize("task", DEMO_TASKS)
def test_the_shipped_demo_models_load_through_from_pretrained(task):
    expected = load_demo_model("cpu", task=task).state_dict()
    for path in (DEMO_MODEL_DIR / task / "model.safetensors", DEMO_MODEL_DIR / task):
        loaded = LeffaModel.from_pretrained(path, device="cpu").state_dict()
        assert set(loaded) == set(expected)
        assert all(torch.equal(loaded[name], expected[name]) for name in expected)


def test_configs_in_the_header_rebuild_a_custom_model(tmp_path):
    torch.manual_seed(0)
    configs = _custom_configs()
    model = LeffaModel.from_base(configs)
    path = save_state_dict(model.state_dict(), tmp_path / "narrow.safetensors", configs=configs)
    assert stored_configs(path) == configs
    loaded = LeffaModel.from_pretrained(path, device="cpu")
    assert loaded.base == "narrow"
    expected = model.state_dict()
    assert all(torch.equal(t, expected[name]) for name, t in loaded.state_dict().items())
    bare = save_state_dict(model.state_dict(), tmp_path / "bare" / "narrow.safetensors")
    with pytest.raises(ValueError, match=rf"{bare}: checkpoint does not match the model"):
        LeffaModel.from_pretrained(bare, device="cpu")  # what every custom checkpoint did before


def test_config_files_beside_the_weights_are_used(tmp_path):
    configs = _custom_configs()
    model = LeffaModel.from_base(configs)
    folder = tmp_path / "run"
    save_state_dict(model.state_dict(), folder / "model.safetensors")
    for part in ("unet", "vae", "scheduler"):
        (folder / f"{part}.json").write_text(json.dumps(getattr(configs, part)))
    loaded = LeffaModel.from_pretrained(folder, device="cpu")
    assert set(loaded.state_dict()) == set(model.state_dict()) and loaded.base == "custom"


def test_written_config_files_read_back_and_load(tmp_path):
    configs = _custom_configs()
    model = LeffaModel.from_base(configs)
    folder = tmp_path / "export"
    write_config_files(configs, folder)
    assert sorted(f.name for f in folder.iterdir()) == ["scheduler.json", "unet.json", "vae.json"]
    assert read_config_files(folder) == {part: getattr(configs, part) for part in ("unet", "vae", "scheduler")}
    save_state_dict(model.state_dict(), folder / "model.safetensors")
    loaded = LeffaModel.from_pretrained(folder, device="cpu")
    assert set(loaded.state_dict()) == set(model.state_dict())


def test_convert_carries_the_configs_and_refuses_a_pth_that_would_lose_them(tmp_path, capsys):
    configs = _custom_configs()
    source = save_state_dict(LeffaModel.from_base(configs).state_dict(), tmp_path / "a.safetensors", configs=configs)
    out = tmp_path / "b.safetensors"
    assert main(["convert", str(source), str(out), "--fp16"]) == EXIT_OK
    assert stored_configs(out) == configs
    assert LeffaModel.from_pretrained(out, device="cpu").dtype == torch.float32
    assert main(["convert", str(source), str(tmp_path / "c.pth")]) == EXIT_ERROR
    assert "cannot hold; write a .safetensors file" in capsys.readouterr().err
    assert not (tmp_path / "c.pth").exists()


def test_released_pth_files_keep_base_detection(tiny_model, tmp_path):
    path = save_state_dict(tiny_model.state_dict(), tmp_path / "released.pth")
    assert stored_configs(path) is None
    assert LeffaModel.from_pretrained(path, device="cpu").base == "tiny"
    with pytest.raises(ValueError, match="cannot store the model configs"):
        save_state_dict(tiny_model.state_dict(), tmp_path / "x.pth", configs=load_base_configs("tiny"))


# ------------------------------------------------------------------------------- 6. too many steps
@pytest.mark.parametrize(
    "config",
    [
        {"num_train_timesteps": 1000, "steps_offset": 1},
        {"num_train_timesteps": 1000, "steps_offset": 0},
        {"num_train_timesteps": 100, "steps_offset": 2},
        {"num_train_timesteps": 1000, "steps_offset": 1, "timestep_spacing": "trailing"},
    ],
)
def test_step_limit_is_where_diffusers_leaves_the_schedule(config):
    limit = max_inference_steps(config)
    scheduler = DDPMScheduler.from_config(config)
    scheduler.set_timesteps(limit)
    assert int(scheduler.timesteps.max()) < config["num_train_timesteps"]
    if limit < config["num_train_timesteps"]:
        scheduler.set_timesteps(limit + 1)
        assert int(scheduler.timesteps.max()) >= config["num_train_timesteps"]  # would raise IndexError


@pytest.mark.parametrize("steps", [1000, 5000])
def test_too_many_steps_is_a_clear_error(tiny_model, tiny_inputs, steps):
    with pytest.raises(ValueError, match=rf"between 1 and 999 \(the scheduler has 1000 training steps\), got {steps}"):
        LeffaPipeline(tiny_model)(*tiny_inputs, num_inference_steps=steps, seed=0)


# ------------------------------------------------------------ 7. silent black or ignored output
@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"guidance_scale": float("inf")}, "guidance_scale must be a finite number >= 0, got inf"),
        ({"guidance_scale": float("nan")}, "guidance_scale must be a finite number >= 0, got nan"),
        ({"guidance_rescale": float("nan")}, "guidance_rescale must be a finite number >= 0, got nan"),
        ({"num_inference_steps": True}, "num_inference_steps must be a whole number"),
        ({"latents": float("nan")}, "latents: contains NaN or infinite values"),
    ],
)
def test_non_finite_settings_are_refused(tiny_model, tiny_inputs, kwargs, pattern):
    if "latents" in kwargs:
        factor = tiny_model.vae_scale_factor
        kwargs = {"latents": torch.full((1, 4, 64 // factor, 48 // factor), kwargs["latents"])}
    with pytest.raises(ValueError, match=pattern):
        LeffaPipeline(tiny_model)(*tiny_inputs, **{"num_inference_steps": 1, "seed": 0, **kwargs})


@pytest.mark.parametrize(("index", "name"), [(0, "src_image"), (1, "ref_image"), (2, "mask"), (3, "densepose")])
def test_non_finite_inputs_are_refused(tiny_model, tiny_inputs, index, name):
    inputs = [t.clone() for t in tiny_inputs]
    inputs[index][0, 0, 3, 4] = float("nan") if index % 2 else float("inf")
    with pytest.raises(ValueError, match=f"{name}: contains NaN or infinite values"):
        LeffaPipeline(tiny_model)(*inputs, num_inference_steps=1, seed=0)


def test_nan_weights_raise_instead_of_a_black_image(tiny_inputs):
    model = LeffaModel.from_base("tiny").eval()
    with torch.no_grad():
        model.vae.decoder.conv_out.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteOutputError, match="float32 weights hold NaN or infinite values"):
        LeffaPipeline(model)(*tiny_inputs, num_inference_steps=1, seed=0)


def test_fp16_overflow_advice_names_fp32_and_bf16():
    with pytest.raises(NonFiniteOutputError, match=r"fp16 overflowed .* run in fp32 or bf16"):
        check_generated(torch.tensor([0.0, float("inf")]), torch.float16)
    check_generated(torch.zeros(2), torch.float16)


# --------------------------------------------------------------------------------------- 8. smaller
@pytest.mark.parametrize("point", ["nan,nan", "inf,3", "-1,4"])
def test_trace_point_must_be_finite_and_not_negative(no_model, point, capsys):
    assert _exit_code(["trace", "a.png", "b.png", "--tiny", f"--point={point}"]) == EXIT_USAGE
    assert "X and Y must be finite pixel positions >= 0" in capsys.readouterr().err


def test_trace_point_outside_the_photo_fails_before_sampling(tiny, tmp_path, monkeypatch, capsys):
    files = _inputs(tmp_path)

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before checking the point")

    monkeypatch.setattr(cli, "_generate", no_sampling)
    out = tmp_path / "out"
    code = main(["trace", str(files["densepose"]), str(files["garment"]), "--mask", str(files["mask"]),
                 "--densepose", str(files["densepose"]), "--tiny", "-o", str(out), "--point", "96,5", *FAST])
    assert code == EXIT_USAGE  # before any model loads, so nothing is written either
    assert "point (96, 5) lies outside the result image of 96x128 pixels" in capsys.readouterr().err
    assert not out.exists()


def test_ctrl_c_ends_a_batch_with_a_summary_and_exit_130(tiny, tmp_path, monkeypatch, capsys):
    files = _inputs(tmp_path)
    for name in ("a", "b", "c"):
        write_block_image(tmp_path / "persons" / f"{name}.png")
    generate = cli._generate
    calls = []

    def interrupted_at_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return generate(*args, **kwargs)

    monkeypatch.setattr(cli, "_generate", interrupted_at_the_second)
    out = tmp_path / "out"
    code = main(["tryon", str(tmp_path / "persons"), str(files["garment"]), "--mask", str(files["mask"]),
                 "--densepose", str(files["densepose"]), "--tiny", "-o", str(out), *FAST])
    assert code == EXIT_INTERRUPTED
    assert [entry["status"] for entry in read_run_log(out)] == ["ok", "interrupted"]
    assert sorted(p.name for p in out.glob("*.png")) == ["a__g.png"]
    assert f"interrupted: 1 of 3 done, 0 failed; log: {out / 'log.jsonl'}" in capsys.readouterr().err


def test_a_directory_given_as_an_image_says_so(tmp_path):
    with pytest.raises(IsADirectoryError, match=f"{tmp_path} is a directory, not an image file"):
        load_image(tmp_path)


def test_an_empty_pth_gives_a_reason(tmp_path):
    path = tmp_path / "virtual_tryon.pth"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"virtual_tryon.pth is empty \(0 bytes\); the file is damaged"):
        read_state_dict(path)
    path.write_bytes(b"\x80\x02")  # a pickle cut short: torch raises an error with no message
    with pytest.raises(ValueError, match=r"as a tensor checkpoint \(\w+"):
        read_state_dict(path)


def test_seed_range_is_checked_in_the_library_and_the_cli(tiny_model, tiny_inputs, no_model, capsys):
    assert resolve_seed(2**64 - 1) == 2**64 - 1
    for seed in (2**64, -2):
        with pytest.raises(ValueError, match="seed must be -1 \\(random\\) or a whole number from 0 to 2\\*\\*64 - 1"):
            LeffaPipeline(tiny_model)(*tiny_inputs, num_inference_steps=1, seed=seed)
    assert _exit_code(["tryon", "a.png", "b.png", "--tiny", "--seed", str(2**64)]) == EXIT_USAGE
    # one range, checked in one place (the settings object) for the page, the API and the command line
    assert f"seed must be -1 (random) or a whole number from 0 to 2**64 - 1, got {2**64}" in capsys.readouterr().err


def test_pairs_files_accept_quoted_paths_with_spaces(tmp_path):
    person = write_block_image(tmp_path / "my photos" / "anna smith.png")
    garment = write_block_image(tmp_path / "shirt #2.png")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\"my photos/anna smith.png\"\t'shirt #2.png'  # quoted\n")
    (job,) = jobs_from_pairs_file(pairs, ("mask",))
    assert (job.first, job.second, job.name) == (person, garment, "anna smith__shirt #2")
    pairs.write_text("\"my photos/anna smith.png shirt.png\n")
    with pytest.raises(BatchInputError, match="pairs.txt:1: no closing quotation in .*; close the quote"):
        jobs_from_pairs_file(pairs, ())


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--steps", "500"], "steps (num_inference_steps) must be between 1 and 200, got 500"),
        (["--guidance", "nan"], "guidance (guidance_scale) must be"),
        (["--guidance", "inf"], "guidance (guidance_scale) must be"),
        (["--guidance", "51"], "guidance (guidance_scale) must be between 0 and 50"),
    ],
)
def test_batch_settings_are_checked_once_before_loading(no_model, tmp_path, option, message, capsys):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("a.png b.png\n" * 3)
    assert _exit_code(["tryon", "--pairs", str(pairs), "--tiny", *option]) == EXIT_USAGE
    assert f"tryon: {message}" in capsys.readouterr().err
    assert _exit_code(["tryon", "--pairs", str(pairs), "--tiny", "--seed", "-7"]) == EXIT_USAGE
    assert "tryon: seed must be -1 (random) or a whole number from 0 to" in capsys.readouterr().err
