"""The trainer: config validation, one step with and without the Leffa loss, a short run that learns,
exact resume, export to the released format, model initialisation and the data order."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from accelerate.state import AcceleratorState
from safetensors.torch import load_file, save_file

from leffa.core.configs import load_base_configs
from leffa.core.model import LeffaModel
from leffa.core.pipeline import LeffaPipeline
from train.config import ConfigError, ModelConfig, TrainConfig, config_from_dict, config_to_dict, load_config
from train.checkpoints import find_checkpoint, read_checkpoint_weights
from train.data_order import EpochSampler
from train.model_setup import build_model
from train.optimization import make_lr_scheduler, make_optimizer
from train.synthetic.vae import VaeTrainConfig
from train.trackers import read_jsonl_log
from train.train import Trainer, main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "train" / "configs"
SYNTHETIC = CONFIGS / "synthetic" / "tiny.yaml"


pytestmark = pytest.mark.usefixtures("fresh_accelerate")


def tiny_config(tmp_path: Path, *overrides: str):
    """The shipped synthetic/tiny config, shrunk for tests (no trackers, samples or progress bar)."""
    base = (
        f"output_dir={tmp_path / 'run'}",
        "data.length=16",
        "train.batch_size=2",
        "train.max_steps=2",
        "logging.log_with=none",
        "logging.sample_every=0",
        "logging.progress_bar=false",
        "checkpoint.every=1000",
    )
    return load_config(SYNTHETIC, base + overrides)


def parameters(model: LeffaModel) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def changed(before: dict[str, torch.Tensor], model: LeffaModel, prefix: str) -> bool:
    return any(
        not torch.equal(before[name], p) for name, p in model.named_parameters() if name.startswith(prefix)
    )


# ---------------------------------------------------------------------------------------- config


TRAINING_CONFIGS = (
    "synthetic/tiny",
    "vitonhd-512",
    "vitonhd-1024",
    "vitonhd-leffa",
    "dresscode-512",
    "dresscode-1024",
    "dresscode-leffa",
    "deepfashion-256",
    "deepfashion-512",
    "deepfashion-leffa",
)


SHIPPED_CONFIGS = sorted(
    path.relative_to(CONFIGS).with_suffix("").as_posix() for path in (*CONFIGS.glob("*.yaml"), *CONFIGS.glob("synthetic/*.yaml"))
)


def test_the_paper_stages_are_shipped():
    assert set(TRAINING_CONFIGS) <= set(SHIPPED_CONFIGS)


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_every_shipped_config_validates_and_round_trips(name):
    schema = VaeTrainConfig if name == "synthetic/vae" else TrainConfig
    config = load_config(CONFIGS / f"{name}.yaml", schema=schema)
    assert config.optim.learning_rate > 0 and config.output_dir
    assert config_from_dict(config_to_dict(config), schema=schema) == config


def test_shipped_accelerate_configs_load_in_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file

    folder = CONFIGS / "accelerate"
    names = ("cpu", "single_gpu", "multi_gpu", "deepspeed_zero2")
    kinds = {name: load_config_from_file(str(folder / f"{name}.yaml")).distributed_type for name in names}
    assert kinds == {
        "cpu": "NO",
        "single_gpu": "NO",
        "multi_gpu": "MULTI_GPU",
        "deepspeed_zero2": "DEEPSPEED",
    }
    deepspeed = load_config_from_file(str(folder / "deepspeed_zero2.yaml")).deepspeed_config
    settings = json.loads((REPO / deepspeed["deepspeed_config_file"]).read_text())
    assert settings["zero_optimization"]["stage"] == 2
    assert settings["train_micro_batch_size_per_gpu"] == "auto"


def test_overrides_are_parsed_as_yaml_and_typed(tmp_path):
    config = tiny_config(tmp_path, "optim.learning_rate=1e-4", "data.size=[32, 24]", "leffa.enabled=true")
    assert config.optim.learning_rate == 1e-4 and isinstance(config.optim.learning_rate, float)
    assert config.data.size == (32, 24) and config.leffa.enabled is True
    assert config.optim.betas == (0.9, 0.999)  # defaults fill what the file leaves out


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=1", r"unknown config key optim\.lr; valid keys in optim: learning_rate"),
        ("trainer.max_steps=1", r"unknown config key trainer"),
        (
            "train.mixed_precision=fp8",
            r"train\.mixed_precision must be one of 'no', 'fp16', 'bf16'; got 'fp8'",
        ),
        ("train.max_steps=many", r"train\.max_steps must be an integer; got 'many'"),
        ("train.max_steps=2.5", r"train\.max_steps must be an integer; got 2\.5"),
        ("train.gradient_checkpointing=1", r"train\.gradient_checkpointing must be true or false; got 1"),
        ("train.max_steps=0", r"train\.max_steps must be >= 1"),
        ("train.reference_dropout=2", r"train\.reference_dropout must be <= 1\.0; got 2"),
        ("optim.learning_rate=0", r"optim\.learning_rate must be > 0\.0; got 0"),
        ("optim.learning_rate=.inf", r"optim\.learning_rate must be a finite number"),
        ("data.size=[60, 48]", r"data\.size must be \[height, width\], positive multiples of 8"),
        ("data.size=[64]", r"data\.size must be a list of 2 values"),
        ("data.root=/data", r"data\.root does not apply to type synthetic"),
        ("data.type=vitonhd", r"data\.root is required for type vitonhd"),
        ("model.init=base", r"model\.init is 'base' and needs model\.init_path"),
        ("leffa.temperature=0", r"leffa: LeffaLossConfig\.temperature must be"),
        ("optim.betas=[0.9, 2]", r"optim\.betas\[1\] must be < 1\.0; got 2"),
        ("optim", r"override 'optim' must look like section\.key=value"),
        ("seed.value=1", r"override 'seed\.value=1': seed is not a section"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(tmp_path, override)


def test_errors_of_several_keys_are_all_reported(tmp_path):
    with pytest.raises(ConfigError) as error:
        tiny_config(tmp_path, "optim.lr=1", "optim.decay=2", "train.max_steps=0", "data.type=vitonhd")
    lines = str(error.value).splitlines()
    assert lines[0].endswith("unknown config key optim.lr, optim.decay; valid keys in optim: learning_rate, "
                             "betas, weight_decay, epsilon, lr_schedule, warmup_steps, max_grad_norm")
    assert lines[1:] == [
        "data.root is required for type vitonhd (the dataset folder)",
        "train.max_steps must be >= 1; got 0",
    ]
    with pytest.raises(ConfigError, match=r"data\.cache_dir applies only to type synthetic"):
        tiny_config(
            tmp_path,
            *("data.type=vitonhd", "data.root=/data", "data.length=null", "data.synthetic_seed=null"),
            "data.cache_dir=/tmp",
        )


def test_config_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping of sections"):
        load_config(path)
    with pytest.raises(ConfigError, match="missing required config key output_dir"):
        config_from_dict({"data": {"type": "synthetic", "length": 4}})


def test_cli_reports_config_errors_and_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(SYNTHETIC), "--override", "optim.lr=1"])
    assert exit_info.value.code == 2
    assert "unknown config key optim.lr" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("data:\n  type: vitonhd\n  root: MISSING\n", "error: missing folder MISSING; expected VITON-HD layout"),
        (
            "model:\n  base: tiny\n  init: checkpoint\n  init_path: MISSING/init.safetensors\n"
            "data:\n  type: synthetic\n  size: [64, 48]\n  length: 4\n",
            "error: checkpoint not found: MISSING/init.safetensors",
        ),
    ],
)
def test_cli_reports_a_missing_data_root_or_init_checkpoint_in_one_line(tmp_path, capsys, section, message):
    missing = str(tmp_path / "nowhere")
    config = tmp_path / "config.yaml"
    base = "" if "model:" in section else "model:\n  base: tiny\n"
    config.write_text(f"output_dir: {tmp_path / 'run'}\n{base}{section.replace('MISSING', missing)}")
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(config)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(message.replace("MISSING", missing)) and error.count("\n") == 1, error
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------- steps


@pytest.mark.parametrize("with_leffa", [False, True], ids=["diffusion", "leffa"])
def test_one_step_updates_both_unets_not_the_vae(tmp_path, with_leffa):
    overrides = ["train.reference_dropout=0"]
    if with_leffa:
        overrides += ["leffa.enabled=true", "leffa.theta_timestep=1000", "leffa.registers=2"]
    trainer = Trainer(tiny_config(tmp_path, *overrides))
    before = parameters(trainer.model)
    values = trainer.train_step()

    assert math.isfinite(values["loss/total"]) and math.isfinite(values["loss/diffusion"])
    assert values["lr"] == pytest.approx(1e-3)
    assert trainer.step == 1 and trainer.micro_step == 1
    assert changed(before, trainer.model, "unet.") and changed(before, trainer.model, "unet_encoder.")
    assert not changed(before, trainer.model, "vae.")
    leffa_keys = {key for key in values if key.startswith("leffa/")}
    if with_leffa:
        assert leffa_keys == {f"leffa/{layer}" for layer in trainer.model.layers}
        assert values["loss/leffa"] > 0
        assert values["loss/total"] == pytest.approx(values["loss/diffusion"] + 1e-3 * values["loss/leffa"])
        # Registers are optimised and checkpointed, but not part of the released weights.
        registers = list(trainer.accelerator.unwrap_model(trainer.module).registers.parameters())
        optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
        assert len(registers) == len(trainer.model.layers) and all(id(p) in optimised for p in registers)
        checkpoint = trainer.save_checkpoint()
        assert any(name.startswith("registers.") for name in load_file(str(checkpoint / "model.safetensors")))
        assert set(read_checkpoint_weights(checkpoint)) == set(trainer.model.state_dict())
    else:
        assert not leffa_keys and "loss/leffa" not in values
        assert values["loss/total"] == values["loss/diffusion"]


def test_freeze_reference_unet(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "train.freeze_reference_unet=true"))
    before = parameters(trainer.model)
    trainer.train_step()
    assert changed(before, trainer.model, "unet.")
    assert not changed(before, trainer.model, "unet_encoder.")


def test_gradient_accumulation_consumes_micro_batches(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "train.gradient_accumulation_steps=3"))
    trainer.train_step()
    assert trainer.step == 1 and trainer.micro_step == 3


@pytest.mark.parametrize("extra", [[], ["leffa.enabled=true", "leffa.theta_timestep=1000"]])
def test_gradient_checkpointing_matches_plain_training(tmp_path, extra):
    plain = Trainer(tiny_config(tmp_path / "a", *extra))
    plain.train_step()
    AcceleratorState._reset_state(reset_partial_state=True)
    checkpointed = Trainer(tiny_config(tmp_path / "b", "train.gradient_checkpointing=true", *extra))
    checkpointed.train_step()
    for (name, a), b in zip(plain.model.named_parameters(), checkpointed.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_trainer_ema_matches_a_naive_average_and_samples_with_it(tmp_path):
    """diffusers' EMAModel warm-up: the first update copies the weights, update n > 1 keeps
    min(decay, n / (n + 9)) of the average; sampling swaps the average in and the trained weights back."""
    trainer = Trainer(tiny_config(tmp_path, "train.ema.enabled=true", "train.ema.decay=0.7"))
    name = "unet.conv_in.weight"
    expected = None
    for update in range(1, 5):
        trainer.train_step()
        weight = dict(trainer.model.named_parameters())[name].detach().clone()
        decay = 0.0 if update == 1 else min(0.7, update / (update + 9))
        expected = weight if expected is None else decay * expected + (1 - decay) * weight
    torch.testing.assert_close(trainer.ema_weights()[name], expected, rtol=1e-5, atol=1e-7)
    assert set(trainer.ema_weights()) == {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    with trainer._ema_applied():
        assert torch.equal(dict(trainer.model.named_parameters())[name], trainer.ema_weights()[name])
    assert torch.equal(dict(trainer.model.named_parameters())[name], weight)


# ------------------------------------------------------------------------------------------ data


def test_epoch_sampler_shards_permutes_and_resumes():
    shards = [EpochSampler(11, seed=3, batch_size=2, rank=r, world_size=2) for r in range(2)]
    first = [list(s) for s in shards]
    assert [len(order) for order in first] == [4, 4]  # 5 per process, cut to whole batches
    assert not set(first[0]) & set(first[1]) and set(first[0]) | set(first[1]) <= set(range(11))
    shards[0].set_position(1, 0)
    second_epoch = list(shards[0])
    assert second_epoch != first[0]
    shards[0].set_position(1, 1)
    assert list(shards[0]) == second_epoch[2:] and len(shards[0]) == 2
    with pytest.raises(ValueError, match="fewer than train.batch_size"):
        EpochSampler(3, seed=0, batch_size=2, world_size=2)


# -------------------------------------------------------------------------------- initialisation


def write_base_model(folder: Path) -> tuple[dict, dict]:
    """A diffusers-layout tiny inpainting model (9-channel UNet) with random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    configs = load_base_configs("tiny")
    torch.manual_seed(7)
    unet = UNet2DConditionModel.from_config(configs.unet).state_dict()
    vae = AutoencoderKL.from_config(configs.vae).state_dict()
    for part, state in (("unet", unet), ("vae", vae)):
        (folder / part).mkdir(parents=True)
        save_file(state, str(folder / part / "diffusion_pytorch_model.safetensors"))
    return unet, vae


def test_init_from_base_model_expands_conv_in(tmp_path):
    unet, vae = write_base_model(tmp_path / "base")
    model = build_model(ModelConfig(base="tiny", init="base", init_path=str(tmp_path / "base")))
    state = model.state_dict()
    base_conv = unet["conv_in.weight"]
    assert base_conv.shape[1] == 9
    assert torch.equal(state["unet.conv_in.weight"][:, :9], base_conv)
    assert torch.equal(
        state["unet.conv_in.weight"][:, 9:], torch.zeros_like(state["unet.conv_in.weight"][:, 9:])
    )
    assert torch.equal(state["unet_encoder.conv_in.weight"], base_conv[:, :4])
    assert torch.equal(state["unet_encoder.conv_in.bias"], unet["conv_in.bias"])
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    assert torch.equal(state[f"unet.{name}"], unet[name]) and torch.equal(
        state[f"unet_encoder.{name}"], unet[name]
    )
    assert torch.equal(state["vae.encoder.conv_in.weight"], vae["encoder.conv_in.weight"])
    with pytest.raises(
        FileNotFoundError, match=r"has no unet weights; expected one of .*diffusion_pytorch_model"
    ):
        build_model(ModelConfig(base="tiny", init="base", init_path=str(tmp_path / "missing")))


def test_separate_vae_weights_replace_the_vae(tmp_path):
    _, vae = write_base_model(tmp_path / "base")
    save_file(vae, str(tmp_path / "vae.safetensors"))
    model = build_model(ModelConfig(base="tiny", vae_path=str(tmp_path / "vae.safetensors")))
    for name, tensor in vae.items():
        assert torch.equal(model.vae.state_dict()[name], tensor)
    save_file(
        {"encoder.conv_in.weight": vae["encoder.conv_in.weight"]}, str(tmp_path / "partial.safetensors")
    )
    with pytest.raises(ValueError, match="do not match the model's VAE config"):
        build_model(ModelConfig(base="tiny", vae_path=str(tmp_path / "partial.safetensors")))


def test_a_trained_vae_config_beside_the_weights_must_match(tmp_path):
    _, vae = write_base_model(tmp_path / "base")
    save_file(vae, str(tmp_path / "vae.safetensors"))
    tiny_vae = load_base_configs("tiny").vae
    (tmp_path / "vae.json").write_text(json.dumps({**tiny_vae, "scaling_factor": 0.5}))
    with pytest.raises(ValueError, match=r"scaling_factor is 0\.18215 but the VAE at .* measured 0\.50000"):
        build_model(ModelConfig(base="tiny", vae_path=str(tmp_path / "vae.safetensors")))
    (tmp_path / "vae.json").write_text(json.dumps({**tiny_vae, "latent_channels": 8}))
    with pytest.raises(ValueError, match=r"model\.vae_config\.latent_channels is 4 but the VAE at .* has 8"):
        build_model(ModelConfig(base="tiny", vae_path=str(tmp_path / "vae.safetensors")))
    (tmp_path / "vae.json").write_text(json.dumps({**tiny_vae, "scaling_factor": 0.18}))  # within 5 %
    build_model(ModelConfig(base="tiny", vae_path=str(tmp_path / "vae.safetensors")))


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_lr_schedules_match_the_formulas(schedule):
    optim = config_from_dict(
        {"output_dir": "x", "data": {"type": "synthetic", "length": 1}},
        [f"optim.lr_schedule={schedule}", "optim.warmup_steps=4", "optim.learning_rate=2e-3"],
    ).optim
    optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(1))], optim)
    scheduler = make_lr_scheduler(optimizer, optim, max_steps=20)
    for step in range(20):
        progress = (step - 4) / 16
        decay = {"constant": 1.0, "linear": 1 - progress, "cosine": 0.5 * (1 + math.cos(math.pi * progress))}
        expected = 2e-3 * (step / 4 if step < 4 else decay[schedule])
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, abs=1e-12), step
        optimizer.step()
        scheduler.step()


# ---------------------------------------------------------------------------------- longer runs


def scalar_series(log_dir: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = []
    for events in sorted(log_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            values += [event.value for event in accumulator.Scalars(tag)]
    return values


@pytest.mark.slow
def test_short_run_decreases_loss_logs_and_exports(tmp_path):
    config = tiny_config(
        tmp_path,
        "train.max_steps=30",
        "train.batch_size=4",
        "data.length=64",
        "logging.log_with=tensorboard",
        "logging.log_every=1",
        "logging.sample_every=30",
        "logging.sample_steps=2",
    )
    exported = Trainer(config).fit()

    losses = scalar_series(tmp_path / "run" / "logs", "loss/total")
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    assert len(scalar_series(tmp_path / "run" / "logs", "lr")) == 30
    sample = tmp_path / "run" / "samples" / "step-00000030.png"
    assert np.asarray(Image.open(sample)).shape == (2 * 64, 5 * 48, 3)
    assert LeffaModel.from_pretrained(exported).base == "tiny"
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["max_steps"] == 30


@pytest.mark.slow
def test_resume_gives_the_same_weights_and_export_loads_identically(tmp_path):
    overrides = ("train.max_steps=4", "checkpoint.every=2", "train.ema.enabled=true", "train.ema.decay=0.5")
    straight = Trainer(tiny_config(tmp_path / "a", *overrides))
    straight.fit()
    AcceleratorState._reset_state(reset_partial_state=True)
    resumed = Trainer(tiny_config(tmp_path / "b", *overrides))
    resumed.resume(tmp_path / "a" / "run" / "checkpoints" / "step-00000002")
    assert resumed.step == 2 and resumed.micro_step == 2
    resumed.fit()

    for (name, a), b in zip(straight.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert resumed.ema.optimization_step == straight.ema.optimization_step == 4
    for name, shadow in straight.ema_weights().items():
        assert torch.equal(shadow, resumed.ema_weights()[name]), name
    assert find_checkpoint(tmp_path / "a" / "run").name == "step-00000004"

    checkpoint = tmp_path / "b" / "run" / "checkpoints" / "step-00000004"
    assert main(["export", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "m.pth")]) == 0
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(checkpoint),
                "--output",
                str(tmp_path / "e.safetensors"),
                "--ema",
                "--fp16",
            ]
        )
        == 0
    )
    loaded = LeffaModel.from_pretrained(tmp_path / "m.pth")
    for name, tensor in resumed.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    ema_file = load_file(str(tmp_path / "e.safetensors"))
    assert all(t.dtype == torch.float16 for t in ema_file.values())
    assert torch.equal(ema_file["unet.conv_in.weight"], resumed.ema_weights()["unet.conv_in.weight"].half())
    assert set(read_checkpoint_weights(checkpoint)) == set(resumed.model.state_dict())

    src = torch.rand(1, 3, 64, 48) * 2 - 1
    mask = torch.zeros(1, 1, 64, 48)
    mask[..., 16:48, 8:40] = 1
    inputs = (src, torch.rand(1, 3, 64, 48) * 2 - 1, mask, torch.rand(1, 3, 64, 48) * 2 - 1)
    outputs = [
        LeffaPipeline(model)(*inputs, num_inference_steps=2, seed=5, output_type="pt").images
        for model in (resumed.model, loaded)
    ]
    assert torch.equal(outputs[0], outputs[1])


def test_jsonl_logging_writes_every_logged_step_and_a_model_folder(tmp_path):
    config = tiny_config(
        tmp_path, "train.max_steps=3", "logging.log_with=jsonl", "logging.log_every=2", "model.unet_config={}"
    )
    Trainer(config).fit()
    records = read_jsonl_log(tmp_path / "run" / "logs" / "synthetic-tiny" / "log.jsonl")
    assert [r["step"] for r in records] == [2, 3]  # every log_every steps, and the last
    assert {"loss/total", "loss/diffusion", "lr"} <= set(records[0]) and math.isfinite(records[0]["loss/total"])
    assert not (tmp_path / "run" / "unet.json").exists()  # a shipped base needs no configs beside it
    AcceleratorState._reset_state(reset_partial_state=True)
    custom = tiny_config(tmp_path / "c", "train.max_steps=1", "model.vae_config={scaling_factor: 0.3}")
    Trainer(custom).fit()
    assert json.loads((tmp_path / "c" / "run" / "vae.json").read_text())["scaling_factor"] == 0.3
    loaded = LeffaModel.from_pretrained(tmp_path / "c" / "run", device="cpu")
    assert loaded.vae.config.scaling_factor == 0.3


def test_export_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a training checkpoint"):
        find_checkpoint(tmp_path)
    (tmp_path / "training_state.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        read_checkpoint_weights(tmp_path)
    save_file({"other.weight": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="holds no model"):
        read_checkpoint_weights(tmp_path)
    save_file({"model.unet.conv_in.weight": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(FileNotFoundError, match="no EMA weights"):
        read_checkpoint_weights(tmp_path, ema=True)
