"""Training configuration: YAML files mapped onto typed dataclasses, validated with errors that name the key.

A config file has the sections below (every key optional except ``output_dir``; see
``train/configs/*.yaml`` and ``train/README.md``). ``--override section.key=value`` replaces one value
(parsed as YAML) before validation, so overrides get the same checks as the file.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from leffa.core.flow import LeffaLossConfig


class ConfigError(ValueError):
    """A config value is missing, unknown or invalid; the message names the key."""


@dataclass
class ModelConfig:
    """Which model to build and where its initial weights come from.

    ``*_config`` dicts override keys of the base's config (``base`` names the shipped configs).
    ``init``: ``random``; ``base`` = a diffusers inpainting model directory (``unet/``, ``vae/``) whose
    9-channel ``conv_in`` is expanded to 12 / cut to 4 as in the released models; ``checkpoint`` = a
    released or exported Leffa ``.pth`` / ``.safetensors``. ``vae_path`` replaces the VAE weights afterwards.
    """

    base: Literal["sd15-inpainting", "sdxl-inpainting", "tiny"] = "sd15-inpainting"
    unet_config: dict[str, Any] = field(default_factory=dict)
    vae_config: dict[str, Any] = field(default_factory=dict)
    scheduler_config: dict[str, Any] = field(default_factory=dict)
    init: Literal["random", "base", "checkpoint"] = "random"
    init_path: str | None = None
    vae_path: str | None = None

    def validate(self, prefix: str) -> None:
        if self.init == "random" and self.init_path is not None:
            raise ConfigError(
                f"{prefix}.init_path is set but {prefix}.init is 'random'; use init: base or checkpoint"
            )
        if self.init != "random" and self.init_path is None:
            kind = (
                "a diffusers inpainting model directory"
                if self.init == "base"
                else "a Leffa .pth/.safetensors file"
            )
            raise ConfigError(f"{prefix}.init is {self.init!r} and needs {prefix}.init_path ({kind})")


@dataclass
class AugmentationConfig:
    """See :class:`train.datasets.Augmentation`; all zero = no augmentation."""

    flip_probability: float = 0.0
    max_scale: float = 0.0
    max_shift: float = 0.0

    def validate(self, prefix: str) -> None:
        _check_range(f"{prefix}.flip_probability", self.flip_probability, 0.0, 1.0)
        _check_range(f"{prefix}.max_scale", self.max_scale, 0.0, 0.99)
        _check_range(f"{prefix}.max_shift", self.max_shift, 0.0, 0.99)

    @property
    def active(self) -> bool:
        return self.flip_probability > 0 or self.max_scale > 0 or self.max_shift > 0


DATASET_TYPES = ("vitonhd", "dresscode", "deepfashion", "synthetic")


@dataclass
class DataConfig:
    """The training dataset. ``root`` is required except for ``synthetic`` (rendered on the fly), which
    takes ``length`` and ``synthetic_seed`` instead; ``category`` is DressCode's."""

    type: Literal["vitonhd", "dresscode", "deepfashion", "synthetic"] = "vitonhd"
    root: str | None = None
    size: tuple[int, int] = (512, 384)
    category: Literal["upper_body", "lower_body", "dresses", "all"] | None = None
    length: int | None = None
    synthetic_seed: int | None = None
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    num_workers: int = 2

    def validate(self, prefix: str) -> None:
        if any(side <= 0 or side % 8 for side in self.size):
            raise ConfigError(
                f"{prefix}.size must be [height, width], positive multiples of 8; got {list(self.size)}"
            )
        synthetic = self.type == "synthetic"
        if synthetic and self.root is not None:
            raise ConfigError(f"{prefix}.root does not apply to type synthetic (it is rendered on the fly)")
        if not synthetic and self.root is None:
            raise ConfigError(f"{prefix}.root is required for type {self.type} (the dataset folder)")
        for key in ("length", "synthetic_seed"):
            if not synthetic and getattr(self, key) is not None:
                raise ConfigError(f"{prefix}.{key} applies only to type synthetic")
        if synthetic and (self.length is None or self.length < 1):
            raise ConfigError(f"{prefix}.length (number of samples, >= 1) is required for type synthetic")
        if synthetic and self.augmentation.active:
            raise ConfigError(f"{prefix}.augmentation is not supported for type synthetic; set it to zeros")
        if (self.type == "dresscode") != (self.category is not None):
            raise ConfigError(f"{prefix}.category is required for type dresscode and applies only to it")
        _check_min(f"{prefix}.num_workers", self.num_workers, 0)
        self.augmentation.validate(f"{prefix}.augmentation")


@dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule (linear warmup, then constant, linear decay or cosine)."""

    learning_rate: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2
    epsilon: float = 1e-8
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0

    def validate(self, prefix: str) -> None:
        _check_positive(f"{prefix}.learning_rate", self.learning_rate)
        for index, beta in enumerate(self.betas):
            _check_range(f"{prefix}.betas[{index}]", beta, 0.0, 0.999999)
        _check_min(f"{prefix}.weight_decay", self.weight_decay, 0.0)
        _check_positive(f"{prefix}.epsilon", self.epsilon)
        _check_min(f"{prefix}.warmup_steps", self.warmup_steps, 0)
        if self.max_grad_norm is not None:
            _check_positive(f"{prefix}.max_grad_norm", self.max_grad_norm)


@dataclass
class EMAConfig:
    """Exponential moving average of the trainable weights (export may choose them)."""

    enabled: bool = False
    decay: float = 0.9999

    def validate(self, prefix: str) -> None:
        _check_range(f"{prefix}.decay", self.decay, 0.0, 1.0)


@dataclass
class TrainingConfig:
    """Loop settings. ``batch_size`` is per process; the effective batch is
    ``batch_size x processes x gradient_accumulation_steps``."""

    max_steps: int = 1000
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    reference_dropout: float = 0.1
    freeze_reference_unet: bool = False
    ema: EMAConfig = field(default_factory=EMAConfig)

    def validate(self, prefix: str) -> None:
        _check_min(f"{prefix}.max_steps", self.max_steps, 1)
        _check_min(f"{prefix}.batch_size", self.batch_size, 1)
        _check_min(f"{prefix}.gradient_accumulation_steps", self.gradient_accumulation_steps, 1)
        _check_range(f"{prefix}.reference_dropout", self.reference_dropout, 0.0, 1.0)
        self.ema.validate(f"{prefix}.ema")


@dataclass
class LeffaConfig:
    """The Leffa loss (paper §3): off for base training, on for the final fine-tuning stage."""

    enabled: bool = False
    weight: float = 1e-3
    theta_resolution: float = 1 / 32
    theta_timestep: int = 500
    temperature: float = 2.0
    registers: int = 0

    def validate(self, prefix: str) -> None:
        _check_min(f"{prefix}.registers", self.registers, 0)
        try:
            self.loss_config()
        except ValueError as error:
            raise ConfigError(f"{prefix}: {error}") from error

    def loss_config(self) -> LeffaLossConfig:
        return LeffaLossConfig(
            weight=self.weight,
            theta_resolution=self.theta_resolution,
            theta_timestep=self.theta_timestep,
            temperature=self.temperature,
        )


@dataclass
class LoggingConfig:
    """Trackers, scalar logging and sample images (``sample_every: 0`` turns samples off)."""

    log_with: Literal["tensorboard", "wandb", "none"] = "tensorboard"
    project: str = "leffa"
    log_every: int = 10
    sample_every: int = 0
    sample_split: Literal["train", "test"] = "test"
    sample_count: int = 2
    sample_steps: int = 20
    sample_guidance: float = 2.5
    progress_bar: bool = True

    def validate(self, prefix: str) -> None:
        _check_min(f"{prefix}.log_every", self.log_every, 1)
        _check_min(f"{prefix}.sample_every", self.sample_every, 0)
        _check_min(f"{prefix}.sample_count", self.sample_count, 1)
        _check_min(f"{prefix}.sample_steps", self.sample_steps, 1)
        _check_min(f"{prefix}.sample_guidance", self.sample_guidance, 0.0)


@dataclass
class CheckpointConfig:
    """Resumable checkpoints under ``<output_dir>/checkpoints``; ``keep: null`` keeps them all."""

    every: int = 1000
    keep: int | None = 3

    def validate(self, prefix: str) -> None:
        _check_min(f"{prefix}.every", self.every, 1)
        if self.keep is not None:
            _check_min(f"{prefix}.keep", self.keep, 1)


@dataclass
class TrainConfig:
    """A whole training run."""

    output_dir: str
    seed: int = 42
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainingConfig = field(default_factory=TrainingConfig)
    leffa: LeffaConfig = field(default_factory=LeffaConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def validate(self) -> None:
        _check_min("seed", self.seed, 0)
        for section in ("model", "data", "optim", "train", "leffa", "logging", "checkpoint"):
            getattr(self, section).validate(section)


# ------------------------------------------------------------------------------------------- checks


def _check_min(key: str, value: float, minimum: float) -> None:
    if value < minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {value}")


def _check_positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key} must be > 0, got {value}")


def _check_range(key: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{key} must be in [{low}, {high}], got {value}")


# ------------------------------------------------------------------------------------ building


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` converted to the annotated type, or a ConfigError naming ``key``."""
    origin = get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        options = [arg for arg in get_args(hint) if arg is not type(None)]
        if value is None and len(options) < len(get_args(hint)):
            return None
        return _coerce(value, options[0], key)
    if origin is Literal:
        if value not in get_args(hint):
            choices = ", ".join(repr(choice) for choice in get_args(hint))
            raise ConfigError(f"{key} must be one of {choices}; got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return build(hint, value, key)
    if origin is tuple:
        items = get_args(hint)
        if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != len(items):
            raise ConfigError(f"{key} must be a list of {len(items)} values, got {value!r}")
        return tuple(_coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, items, strict=True)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    return _coerce_scalar(value, hint, key)


def _coerce_scalar(value: Any, hint: type, key: str) -> Any:
    if hint is float and isinstance(value, str):
        try:
            value = float(value)  # PyYAML reads "1e-5" (no decimal point) as a string
        except ValueError:
            pass
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[hint]
    if not ok:
        raise ConfigError(f"{key} must be a {_type_name(hint)}, got {value!r}")
    if hint is float:
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}")
    return value


def build(cls: type, raw: Any, prefix: str = "") -> Any:
    """An instance of dataclass ``cls`` from a mapping; unknown and missing keys are errors."""
    where = prefix or "the config"
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {raw!r}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [str(key) for key in raw if key not in names]
    if unknown:
        keys = ", ".join(f"{prefix}.{k}" if prefix else k for k in unknown)
        raise ConfigError(f"unknown config key {keys}; valid keys in {where}: {', '.join(names)}")
    values = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in raw:
            values[f.name] = _coerce(raw[f.name], hints[f.name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required config key {key}")
    return cls(**values)


def apply_override(raw: dict, override: str) -> None:
    """Set ``a.b.c=value`` (value parsed as YAML) in the nested dict ``raw``, in place."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} must look like section.key=value")
    parts = key.strip().split(".")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {'.'.join(parts[: depth + 1])} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"override {override!r}: value is not valid YAML ({error})") from error


def config_from_dict(raw: Mapping, overrides: Sequence[str] = ()) -> TrainConfig:
    """Validated :class:`TrainConfig` from a (nested) mapping plus ``key=value`` overrides."""
    merged = _plain(raw)
    for override in overrides:
        apply_override(merged, override)
    config = build(TrainConfig, merged)
    config.validate()
    return config


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML training config; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}; see train/configs/ for examples")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path} must hold a mapping of sections (model, data, optim, ...), got {raw!r}")
    try:
        return config_from_dict(raw, overrides)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error


def config_to_dict(config: TrainConfig) -> dict:
    """Plain nested dict (tuples as lists) that :func:`config_from_dict` reads back."""
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    """A deep copy made of dicts and lists only (so overrides can edit it and YAML can write it)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def flat_config(config: TrainConfig) -> dict[str, bool | int | float | str]:
    """``section.key`` -> scalar (other values as strings), for tracker hyperparameters."""
    flat: dict[str, bool | int | float | str] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, child in value.items():
                visit(f"{prefix}.{key}" if prefix else key, child)
        elif isinstance(value, (bool, int, float, str)):
            flat[prefix] = value
        else:
            flat[prefix] = str(value)

    visit("", config_to_dict(config))
    return flat
