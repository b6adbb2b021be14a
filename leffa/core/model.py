"""The Leffa model: a VAE, a reference UNet and a generative UNet, all stock diffusers classes.

``LeffaModel.state_dict()`` keys are exactly the released checkpoint keys (``vae.*``, ``unet_encoder.*``,
``unet.*``), so released files load strictly and exported files are loadable by the released code. The model
holds no per-call state: :meth:`LeffaModel.reference_features` and :meth:`LeffaModel.predict_noise` pass what
the attention processors need through the UNet call, so one model can serve concurrent calls.
"""

from __future__ import annotations

import contextlib
import copy
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch import nn

from leffa.core.attention import (
    AttentionObserver,
    ReferenceCapture,
    ReferenceInputs,
    ReferencePassComplete,
    install_processors,
)
from leffa.core.configs import GENERATIVE_IN_CHANNELS, REFERENCE_IN_CHANNELS, BaseConfigs, load_base_configs
from leffa.common import CheckpointMismatchError, check_state_dict, resolve_device
from leffa.core.memory import OFFLOADING_LEVELS, offload_all
from leffa.core.serialization import checkpoint_configs, model_folder_weights, read_state_dict, trained_size

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """Accept ``torch.float16`` etc. or the names ``fp32``/``fp16``/``bf16``."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype}; use one of {', '.join(DTYPES)}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _build_unet(config: Mapping[str, Any], in_channels: int) -> UNet2DConditionModel:
    unet = UNet2DConditionModel.from_config({**config, "in_channels": in_channels})
    # Built with the base's added-embedding layers (their weights are in the checkpoints) but run with no
    # added conditioning, as the released model does.
    unet.register_to_config(addition_embed_type=None)
    return unet


class LeffaModel(nn.Module):
    """VAE + reference UNet (``unet_encoder``) + generative UNet (``unet``) + scheduler config."""

    def __init__(
        self,
        vae: AutoencoderKL,
        unet_encoder: UNet2DConditionModel,
        unet: UNet2DConditionModel,
        scheduler_config: Mapping[str, Any],
        *,
        base: str = "custom",
        vae_force_upcast: bool = False,
    ) -> None:
        super().__init__()
        self.vae = vae
        self.unet_encoder = unet_encoder
        self.unet = unet
        self.scheduler_config = dict(scheduler_config)
        self.base = base
        self.vae_force_upcast = vae_force_upcast
        #: (height, width) the model was trained at, when known (``from_pretrained`` reads it from the
        #: ``metadata.json`` beside the weights); the pipeline refuses other sizes. ``None``: any size.
        self.trained_size: tuple[int, int] | None = None
        #: The memory level (:mod:`leffa.core.memory`) and what it runs on; set by ``apply_memory_level``.
        self.memory_level = "none"
        self.offload_hooks: list = []
        self._execution_device: torch.device | None = None
        self._compute_dtype: torch.dtype | None = None
        self._running = threading.Lock()
        self._layers = tuple(install_processors(unet_encoder, unet))

    # ----------------------------------------------------------------------------------------- building
    @classmethod
    def from_config(
        cls,
        unet: Mapping[str, Any],
        vae: Mapping[str, Any],
        scheduler: Mapping[str, Any],
        *,
        base: str = "custom",
        device: str | torch.device | None = "cpu",
        dtype: str | torch.dtype | None = None,
    ) -> LeffaModel:
        """Build a model from config dicts. ``device="meta"`` allocates nothing (load weights afterwards)."""
        target = torch.device("meta") if device == "meta" else resolve_device(device)
        with torch.device("meta" if target.type == "meta" else "cpu"):
            model = cls(
                AutoencoderKL.from_config(dict(vae)),
                _build_unet(unet, REFERENCE_IN_CHANNELS),
                _build_unet(unet, GENERATIVE_IN_CHANNELS),
                scheduler,
                base=base,
                vae_force_upcast=bool(vae.get("force_upcast", False)),
            )
        if target.type != "meta":
            model.place(target, dtype)
        return model

    @classmethod
    def from_base(
        cls, base: str | BaseConfigs, *, device: str | torch.device | None = "cpu", dtype=None
    ) -> LeffaModel:
        """Build from a shipped base config (``sd15-inpainting``, ``sdxl-inpainting``, ``tiny``)."""
        configs = load_base_configs(base) if isinstance(base, str) else base
        return cls.from_config(
            configs.unet, configs.vae, configs.scheduler, base=configs.name, device=device, dtype=dtype
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        base: str | BaseConfigs = "auto",
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> LeffaModel:
        """Load a released ``.pth`` (or our ``.safetensors``, or a model folder) strictly into a model built on
        the meta device.

        ``base="auto"`` uses the configs stored with the checkpoint (see
        :func:`~leffa.core.serialization.stored_configs`), else picks a shipped base by the keys
        (:func:`detect_base`). A ``metadata.json`` beside the weights with an ``image_size`` sets
        :attr:`trained_size`. Every error names the file. The model comes in eval mode, for inference
        (``train()`` it to fine-tune).
        """
        path = Path(path)
        if path.is_dir():
            path = model_folder_weights(path)
        size = trained_size(path)
        state = read_state_dict(path)
        model = cls.from_base(checkpoint_configs(path, state, base), device="meta")
        try:
            model.load_state_dict(state, assign=True)
        except CheckpointMismatchError as error:
            raise CheckpointMismatchError(f"{path}: {error}") from None
        model.trained_size = size
        return model.eval().place(resolve_device(device), dtype)

    def place(self, device: torch.device | str, dtype: str | torch.dtype | None = None) -> LeffaModel:
        """Move to ``device``/``dtype``; an fp16 VAE whose config asks for upcasting stays in fp32. (At a
        memory level, use :func:`leffa.core.memory.apply_memory_level` instead.)"""
        if self.memory_level != "none":
            raise ValueError(f"the model is at memory level {self.memory_level!r}: apply_memory_level moves it")
        dtype = resolve_dtype(dtype)
        self.to(device=device, dtype=dtype)
        if self.vae_force_upcast and dtype == torch.float16:
            self.vae.to(torch.float32)
        return self

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """Load released-format weights; a mismatch raises one error naming the first differences."""
        if strict:
            expected = {name: t.shape for name, t in self.state_dict().items()}
            check_state_dict(expected, state_dict, hint=f"model base: {self.base}")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ------------------------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        """Where the model computes: its weights' device, or the device an offloading level runs on."""
        return self._execution_device or self.unet.conv_in.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype it computes in: its weights', or the compute dtype of a storage-casting level."""
        return self._compute_dtype or self.unet.conv_in.weight.dtype

    def set_memory_level(self, level: str, device: torch.device | None, dtype: torch.dtype | None) -> None:
        """Record the memory level :func:`leffa.core.memory.apply_memory_level` put the model at (``device``
        and ``dtype``: where and in what it computes, when that is not where its weights are)."""
        self.memory_level = level
        self._execution_device = device if level in OFFLOADING_LEVELS else None
        self._compute_dtype = dtype if level == "layerwise_fp8" else None

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles get a lock of their own (a lock cannot be copied)."""
        state = super().__getstate__()
        state.pop("_running", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._running = threading.Lock()

    @contextlib.contextmanager
    def running(self) -> Iterator[LeffaModel]:
        """One call's use of the model. At an offloading level calls take turns (two calls must not move
        weights under each other) and every part goes back to the CPU afterwards; else nothing happens."""
        if self.memory_level not in OFFLOADING_LEVELS:
            yield self
            return
        with self._running:
            try:
                yield self
            finally:
                offload_all(self)

    @property
    def latent_scale(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def layers(self) -> list[str]:
        """Self-attention layer names shared by both UNets, in execution order."""
        return list(self._layers)

    def make_scheduler(self) -> DDPMScheduler:
        """A fresh DDPM scheduler from the base config (each pipeline call owns its own)."""
        return DDPMScheduler.from_config(copy.deepcopy(self.scheduler_config))

    # -------------------------------------------------------------------------------------- compute
    def encode_image(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """VAE posterior sample of images in [-1, 1], scaled by the latent scaling factor."""
        vae_dtype = self.vae.dtype
        posterior = self.vae.encode(images.to(self.device, vae_dtype)).latent_dist
        return (posterior.sample(generator) * self.latent_scale).to(self.dtype)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode scaled latents to images in [-1, 1] (float32)."""
        vae_dtype = self.vae.dtype
        return self.vae.decode(latents.to(vae_dtype) / self.latent_scale).sample.float()

    def reference_features(self, reference_latents: torch.Tensor, timestep: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the reference UNet up to its last used layer; return each layer's ``attn1`` input tokens."""
        capture = ReferenceCapture(stop_after=self._layers[-1] if self._layers else None)
        try:
            self.unet_encoder(
                reference_latents.to(self.dtype),
                timestep,
                encoder_hidden_states=None,
                cross_attention_kwargs={"capture": capture},
            )
        except ReferencePassComplete:
            pass
        return dict(capture.features)

    def predict_noise(
        self,
        noisy_latents: torch.Tensor,
        mask: torch.Tensor,
        masked_latents: torch.Tensor,
        densepose: torch.Tensor,
        timestep: torch.Tensor,
        features: Mapping[str, torch.Tensor],
        *,
        observer: AttentionObserver | None = None,
        sampler_timestep: int | None = None,
    ) -> torch.Tensor:
        """Generative UNet on the 12-channel input, attending to the given reference features.

        ``observer`` (e.g. :func:`leffa.core.recording.record_attention`) sees this call's attention;
        ``sampler_timestep`` is the sampler's current timestep it keys and gates its records by (``None``
        outside the sampler).
        """
        sample = torch.cat([noisy_latents, mask, masked_latents, densepose], dim=1).to(self.dtype)
        latent_size = (sample.shape[-2], sample.shape[-1])
        reference = ReferenceInputs(dict(features), observer, sampler_timestep, latent_size)
        return self.unet(
            sample, timestep, encoder_hidden_states=None, cross_attention_kwargs={"reference": reference}
        ).sample
