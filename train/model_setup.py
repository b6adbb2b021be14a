"""Building the model to train: base configs with overrides, initial weights, what is trainable."""

from __future__ import annotations

from pathlib import Path

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


def load_vae_weights(model: LeffaModel, path: str | Path) -> None:
    """Replace the VAE weights with an ``AutoencoderKL`` state dict (keys with or without ``vae.``)."""
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
