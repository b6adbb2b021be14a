"""Building the model to train: base configs with overrides, initial weights, what is trainable."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from torch import Tensor, nn

from leffa.core.configs import BaseConfigs, load_base_configs
from leffa.core.model import LeffaModel
from leffa.core.serialization import read_state_dict
from leffa.core.training import init_state_from_base
from train.config import ModelConfig, TrainConfig

BASE_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def model_configs(config: ModelConfig) -> BaseConfigs:
    """The base's configs with the config file's overrides merged in (named ``custom`` when overridden)."""
    base = load_base_configs(config.base)
    overridden = bool(config.unet_config or config.vae_config or config.scheduler_config)
    return BaseConfigs(
        unet={**base.unet, **config.unet_config},
        vae={**base.vae, **config.vae_config},
        scheduler={**base.scheduler, **config.scheduler_config},
        name="custom" if overridden else base.name,
    )


def read_base_model(directory: str | Path) -> dict[str, Tensor]:
    """Released-format initial weights from a diffusers inpainting model (``unet/`` and ``vae/`` folders)."""
    directory = Path(directory)
    parts = {}
    for part in ("unet", "vae"):
        candidates = [directory / part / name for name in BASE_WEIGHT_FILES]
        found = next((path for path in candidates if path.is_file()), None)
        if found is None:
            raise FileNotFoundError(
                f"base model {directory} has no {part} weights; expected one of "
                f"{', '.join(str(c) for c in candidates)} (diffusers layout, e.g. a download of an "
                "inpainting model such as stable-diffusion-inpainting)"
            )
        parts[part] = read_state_dict(found)
    return init_state_from_base(parts["unet"], parts["vae"])


#: Keys of a VAE trainer's ``vae.json`` that the model's VAE config must repeat exactly.
VAE_ARCHITECTURE_KEYS = ("block_out_channels", "layers_per_block", "latent_channels", "norm_num_groups")


def check_trained_vae_config(path: str | Path, vae_config: dict) -> None:
    """When ``vae.json`` lies beside VAE weights (``train/synthetic/vae.py`` writes it, with the latent
    scaling factor it measured), the model's VAE config must agree with it: same architecture, and the
    scaling factor within 5 %."""
    stored = Path(path).parent / "vae.json"
    if not stored.is_file():
        return
    trained = json.loads(stored.read_text())
    for key in VAE_ARCHITECTURE_KEYS:
        if list(np.atleast_1d(trained[key])) != list(np.atleast_1d(vae_config[key])):
            raise ValueError(f"model.vae_config.{key} is {vae_config[key]} but the VAE at {path} has {trained[key]}")
    if not math.isclose(trained["scaling_factor"], vae_config["scaling_factor"], rel_tol=0.05):
        raise ValueError(
            f"model.vae_config.scaling_factor is {vae_config['scaling_factor']} but the VAE at {path} measured "
            f"{trained['scaling_factor']:.5f}; put the measured value in the config"
        )


def load_vae_weights(model: LeffaModel, path: str | Path) -> None:
    """Replace the VAE weights with an ``AutoencoderKL`` state dict (keys with or without ``vae.``)."""
    check_trained_vae_config(path, dict(model.vae.config))
    state = {name.removeprefix("vae."): t for name, t in read_state_dict(path).items()}
    expected = set(model.vae.state_dict())
    if set(state) != expected:
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(
            f"VAE weights {path} do not match the model's VAE config: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}; check model.vae_config / model.base"
        )
    model.vae.load_state_dict({k: v.to(model.vae.dtype) for k, v in state.items()})


def build_model(config: ModelConfig) -> LeffaModel:
    """A CPU fp32 model initialised as the config says (seed the RNG first for ``init: random``)."""
    configs = model_configs(config)
    if config.init == "random":
        model = LeffaModel.from_base(configs, device="cpu")
    else:
        if config.init == "base":
            state = read_base_model(config.init_path)
        else:
            state = read_state_dict(config.init_path)
        model = LeffaModel.from_base(configs, device="meta")
        model.load_state_dict(state, assign=True)
        model.place("cpu")
    if config.vae_path is not None:
        load_vae_weights(model, config.vae_path)
    return model


def configure_trainable(model: LeffaModel, config: TrainConfig) -> None:
    """Freeze the VAE; train both UNets unless the reference UNet is frozen; optional checkpointing."""
    model.vae.requires_grad_(False)
    model.unet.requires_grad_(True)
    model.unet_encoder.requires_grad_(not config.train.freeze_reference_unet)
    if config.train.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
        model.unet_encoder.enable_gradient_checkpointing()


def trainable_parameters(model: LeffaModel) -> dict[str, nn.Parameter]:
    """Released-format names of the parameters that are trained (and averaged by EMA)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}
