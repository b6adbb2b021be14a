"""Training configuration: YAML files validated by pydantic models, with errors that name the key.

A config file has the sections below (every key optional except ``output_dir``; see
``train/configs/*.yaml`` and ``train/README.md``). ``--override section.key=value`` replaces one value
(parsed as YAML) before validation, so overrides get the same checks as the file. The VAE trainer of the
synthetic benchmark has its own schema built from the same parts (:class:`Section`, :func:`load_config`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from leffa.core.flow import FlowSupervisionConfig, LeffaLossConfig


class ConfigError(ValueError):
    """A config value is missing, unknown or invalid; the message names the key."""


class Section(BaseModel):
    """A config section: unknown keys are errors, values are not silently converted, empty means defaults."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_is_default(cls, data: Any) -> Any:
        return {} if data is None else data


def _number_from_text(value: Any) -> Any:
    """PyYAML reads ``1e-5`` (no decimal point) as a string; accept it as the number it means."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _pair(value: Any) -> Any:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError("must be a list of 2 values")
    return tuple(value)


Number = Annotated[float, BeforeValidator(_number_from_text), Field(allow_inf_nan=False)]
Fraction = Annotated[Number, Field(ge=0.0, le=1.0)]
Beta = Annotated[Number, Field(ge=0.0, lt=1.0)]
#: ``[height, width]`` in pixels.
ImageSize = Annotated[tuple[int, int], BeforeValidator(_pair)]


class ModelConfig(Section):
    """Which model to build and where its initial weights come from.

    ``*_config`` dicts override keys of the base's config (``base`` names the shipped configs).
    ``init``: ``random``; ``base`` = a diffusers inpainting model directory (``unet/``, ``vae/``) whose
    9-channel ``conv_in`` is expanded to 12 / cut to 4 as in the released models; ``checkpoint`` = a
    released or exported Leffa ``.pth`` / ``.safetensors``. ``vae_path`` replaces the VAE weights afterwards.
    """

    base: Literal["sd15-inpainting", "sdxl-inpainting", "tiny"] = "sd15-inpainting"
    unet_config: dict[str, Any] = Field(default_factory=dict)
    vae_config: dict[str, Any] = Field(default_factory=dict)
    scheduler_config: dict[str, Any] = Field(default_factory=dict)
    init: Literal["random", "base", "checkpoint"] = "random"
    init_path: str | None = None
    vae_path: str | None = None

    @model_validator(mode="after")
    def _init_path_matches_init(self) -> ModelConfig:
        if self.init == "random" and self.init_path is not None:
            raise ValueError(
                "{section}.init_path is set but {section}.init is 'random'; use init: base or checkpoint"
            )
        if self.init != "random" and self.init_path is None:
            kind = (
                "a diffusers inpainting model directory" if self.init == "base" else "a Leffa .pth/.safetensors file"
            )
            raise ValueError(f"{{section}}.init is {self.init!r} and needs {{section}}.init_path ({kind})")
        return self


class AugmentationConfig(Section):
    """See :class:`train.datasets.Augmentation`; all zero = no augmentation."""

    flip_probability: Fraction = 0.0
    max_scale: Annotated[Number, Field(ge=0.0, le=0.99)] = 0.0
    max_shift: Annotated[Number, Field(ge=0.0, le=0.99)] = 0.0

    @property
    def active(self) -> bool:
        return self.flip_probability > 0 or self.max_scale > 0 or self.max_shift > 0


class DataConfig(Section):
    """The training dataset. ``root`` is required except for ``synthetic`` (rendered, see
    :mod:`train.synthetic.data`), which takes ``length``, ``synthetic_seed`` and optionally ``cache_dir``
    (render each split once, keep it in memory and in that folder) instead; ``category`` is DressCode's."""

    type: Literal["vitonhd", "dresscode", "deepfashion", "synthetic"] = "vitonhd"
    root: str | None = None
    size: ImageSize = (512, 384)
    category: Literal["upper_body", "lower_body", "dresses", "all"] | None = None
    length: Annotated[int, Field(ge=1)] | None = None
    synthetic_seed: Annotated[int, Field(ge=0)] | None = None
    synthetic_task: Literal["tryon", "pose_transfer"] = "tryon"
    cache_dir: str | None = None
    augmentation: AugmentationConfig = Field(default_factory=AugmentationConfig)
    num_workers: Annotated[int, Field(ge=0)] = 2

    @field_validator("size")
    @classmethod
    def _multiples_of_8(cls, size: tuple[int, int]) -> tuple[int, int]:
        if any(side <= 0 or side % 8 for side in size):
            raise ValueError("must be [height, width], positive multiples of 8")
        return size

    @model_validator(mode="after")
    def _keys_match_type(self) -> DataConfig:
        synthetic = self.type == "synthetic"
        if synthetic and self.root is not None:
            raise ValueError("{section}.root does not apply to type synthetic (it is rendered on the fly)")
        if not synthetic and self.root is None:
            raise ValueError(f"{{section}}.root is required for type {self.type} (the dataset folder)")
        for key in ("length", "synthetic_seed", "cache_dir"):
            if not synthetic and getattr(self, key) is not None:
                raise ValueError(f"{{section}}.{key} applies only to type synthetic")
        if synthetic and self.length is None:
            raise ValueError("{section}.length (number of samples, >= 1) is required for type synthetic")
        if synthetic and self.augmentation.active:
            raise ValueError("{section}.augmentation is not supported for type synthetic; set it to zeros")
        if (self.type == "dresscode") != (self.category is not None):
            raise ValueError("{section}.category is required for type dresscode and applies only to it")
        return self


class OptimConfig(Section):
    """AdamW and the learning-rate schedule (linear warmup, then constant, linear decay or cosine)."""

    learning_rate: Annotated[Number, Field(gt=0.0)] = 1e-5
    betas: Annotated[tuple[Beta, Beta], BeforeValidator(_pair)] = (0.9, 0.999)
    weight_decay: Annotated[Number, Field(ge=0.0)] = 1e-2
    epsilon: Annotated[Number, Field(gt=0.0)] = 1e-8
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    max_grad_norm: Annotated[Number, Field(gt=0.0)] | None = 1.0


class EMAConfig(Section):
    """Exponential moving average of the trainable weights (export may choose them)."""

    enabled: bool = False
    decay: Fraction = 0.9999


class TrainingConfig(Section):
    """Loop settings. ``batch_size`` is per process; the effective batch is
    ``batch_size x processes x gradient_accumulation_steps``."""

    max_steps: Annotated[int, Field(ge=1)] = 1000
    batch_size: Annotated[int, Field(ge=1)] = 1
    gradient_accumulation_steps: Annotated[int, Field(ge=1)] = 1
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    reference_dropout: Fraction = 0.1
    diffusion_weight: Annotated[Number, Field(ge=0.0)] = 1.0
    freeze_reference_unet: bool = False
    ema: EMAConfig = Field(default_factory=EMAConfig)


class LeffaConfig(Section):
    """The Leffa loss (paper §3): off for base training, on for the final fine-tuning stage."""

    enabled: bool = False
    weight: Number = 1e-3
    theta_resolution: Number = 1 / 32
    theta_timestep: int = 500
    temperature: Number = 2.0
    mask: Literal["inpainting", "garment"] = "inpainting"
    reduction: Literal["element_mean", "mask_mean"] = "element_mean"
    registers: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _valid_loss_config(self) -> LeffaConfig:
        self.loss_config()  # its ValueError names the bad value
        return self

    def loss_config(self) -> LeffaLossConfig:
        return LeffaLossConfig(
            weight=self.weight,
            theta_resolution=self.theta_resolution,
            theta_timestep=self.theta_timestep,
            temperature=self.temperature,
            mask=self.mask,
            reduction=self.reduction,
        )


class FlowSupervisionSection(Section):
    """The teacher term (not in the paper, :func:`leffa.core.flow.flow_supervision_loss`): attention flows
    pulled to the true flow, which only synthetic data has."""

    enabled: bool = False
    weight: Annotated[Number, Field(ge=0.0)] = 1.0
    temperature: Annotated[Number, Field(gt=0.0)] = 1.0
    theta_timestep: Annotated[int, Field(ge=0)] = 1000

    def loss_config(self) -> FlowSupervisionConfig:
        return FlowSupervisionConfig(
            weight=self.weight, temperature=self.temperature, theta_timestep=self.theta_timestep
        )


class LoggingConfig(Section):
    """Trackers, scalar logging and sample images (``sample_every: 0`` turns samples off). ``jsonl`` writes
    ``<output_dir>/logs/<project>/log.jsonl`` (one JSON object a logged step)."""

    log_with: Literal["tensorboard", "wandb", "jsonl", "none"] = "tensorboard"
    project: str = "leffa"
    log_every: Annotated[int, Field(ge=1)] = 10
    sample_every: Annotated[int, Field(ge=0)] = 0
    sample_split: Literal["train", "test"] = "test"
    sample_count: Annotated[int, Field(ge=1)] = 2
    sample_steps: Annotated[int, Field(ge=1)] = 20
    sample_guidance: Annotated[Number, Field(ge=0.0)] = 2.5
    progress_bar: bool = True


class CheckpointConfig(Section):
    """Resumable checkpoints under ``<output_dir>/checkpoints``; ``keep: null`` keeps them all."""

    every: Annotated[int, Field(ge=1)] = 1000
    keep: Annotated[int, Field(ge=1)] | None = 3


class TrainConfig(Section):
    """A whole training run."""

    output_dir: str
    seed: Annotated[int, Field(ge=0)] = 42
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainingConfig = Field(default_factory=TrainingConfig)
    leffa: LeffaConfig = Field(default_factory=LeffaConfig)
    flow_supervision: FlowSupervisionSection = Field(default_factory=FlowSupervisionSection)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    @model_validator(mode="after")
    def _true_flow_terms_need_synthetic_data(self) -> TrainConfig:
        synthetic = self.data.type == "synthetic"
        if self.flow_supervision.enabled and not synthetic:
            raise ValueError("flow_supervision needs the true flow, which only data.type synthetic has")
        if self.leffa.enabled and self.leffa.mask == "garment" and not synthetic:
            raise ValueError("leffa.mask garment needs the garment pixels, which only data.type synthetic has")
        if self.data.synthetic_task != "tryon" and not synthetic:
            raise ValueError("data.synthetic_task applies only to data.type synthetic")
        both = self.flow_supervision.enabled and self.leffa.enabled
        if both and self.flow_supervision.temperature != self.leffa.temperature:
            raise ValueError(
                "flow_supervision.temperature must equal leffa.temperature when both are enabled "
                "(both read one recording of the attention)"
            )
        return self


# ---------------------------------------------------------------------------------------- messages

#: pydantic error types -> what the value must be (``ctx`` fills the braces).
_PROBLEMS = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "dict_type": "must be a mapping of keys to values",
    "model_type": "must be a mapping of keys to values",
}


def _key(loc: Sequence[str | int]) -> str:
    """``("optim", "betas", 1)`` -> ``optim.betas[1]``."""
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def _section_at(schema: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The section model at ``loc`` of ``schema``, or None when ``loc`` is a value."""
    model = schema
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _describe(schema: type[BaseModel], error: Mapping[str, Any]) -> str:
    loc, kind, ctx = error["loc"], error["type"], error.get("ctx") or {}
    key = _key(loc)
    if kind == "missing":
        return f"missing required config key {key}"
    if kind == "literal_error":
        choices = ctx["expected"].replace(" or ", ", ")
        return f"{key} must be one of {choices}; got {error['input']!r}"
    if kind in _PROBLEMS:
        return f"{key or 'the config'} {_PROBLEMS[kind].format(**ctx)}; got {error['input']!r}"
    text = str(ctx["error"]) if kind == "value_error" else error["msg"]
    if "{section}" in text:
        return text.replace("{section}", key)
    if _section_at(schema, loc) is not None:
        return f"{key or 'the config'}: {text}"
    return f"{key} {text}; got {error['input']!r}"


def _messages(schema: type[BaseModel], errors: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per problem; unknown keys of one section share a line listing the valid keys."""
    unknown: dict[tuple, list[str]] = {}
    lines = []
    for error in errors:
        if error["type"] == "extra_forbidden":
            unknown.setdefault(tuple(error["loc"][:-1]), []).append(_key(error["loc"]))
        else:
            lines.append(_describe(schema, error))
    for parent, keys in unknown.items():
        section = _section_at(schema, parent)
        where = _key(parent) or "the config"
        valid = ", ".join(section.model_fields) if section is not None else ""
        lines.insert(0, f"unknown config key {', '.join(keys)}; valid keys in {where}: {valid}")
    return lines


# ------------------------------------------------------------------------------------- loading

Schema = TypeVar("Schema", bound=BaseModel)


def apply_override(raw: dict, override: str) -> None:
    """Set ``a.b.c=value`` (value parsed as YAML) in the nested dict ``raw``, in place."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} must look like section.key=value")
    parts = key.strip().split(".")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {'.'.join(parts[: depth + 1])} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"override {override!r}: value is not valid YAML ({error})") from error


def _plain(value: Any) -> Any:
    """A deep copy made of dicts and lists only (so overrides can edit it)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_from_dict(
    raw: Mapping, overrides: Sequence[str] = (), schema: type[Schema] = TrainConfig
) -> Schema:
    """Validated ``schema`` (a :class:`TrainConfig` by default) from a nested mapping plus overrides."""
    merged = _plain(raw)
    for override in overrides:
        apply_override(merged, override)
    try:
        return schema.model_validate(merged)
    except ValidationError as error:
        raise ConfigError("\n".join(_messages(schema, error.errors()))) from None


def load_config(
    path: str | Path, overrides: Sequence[str] = (), schema: type[Schema] = TrainConfig
) -> Schema:
    """Read a YAML config; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}; see train/configs/ for examples")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(raw, Mapping):
        sections = ", ".join(schema.model_fields)
        raise ConfigError(f"{path} must hold a mapping of sections ({sections}), got {raw!r}")
    try:
        return config_from_dict(raw, overrides, schema)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error


def config_to_dict(config: BaseModel) -> dict:
    """Plain nested dict (tuples as lists) that :func:`config_from_dict` reads back."""
    return config.model_dump(mode="json")


def flat_config(config: BaseModel) -> dict[str, bool | int | float | str]:
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
