"""A faithful re-creation of the released per-step work, for timing against this project's step.

Written from ``shared/reference/README.md`` §2–3 (not from the authors' code). Per denoising step the
released sampler

- runs the reference UNet **in full** on a batch of two reference latents, ``[zeros, reference]`` (the
  unconditional half is recomputed every step), each block's ``attn1`` input being recorded;
- runs the generative UNet on ``[uncond, cond]``, where every block's ``attn1`` attends over
  ``concat([own tokens, reference tokens])`` with queries for all ``2·h·w`` tokens and keeps the first
  ``h·w`` outputs.

:class:`ReleasedStep` holds two stock UNets that share the weights of a :class:`~leffa.core.model.LeffaModel`
(no copy), with the processors below, so both formulations run on the very same parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from leffa.core.model import LeffaModel


class _Passthrough:
    """``attn2`` as released: returns its input."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states


class _RecordingSelfAttention:
    """Reference ``attn1``: record the input tokens under the layer name, then plain self-attention."""

    def __init__(self, name: str, store: dict[str, torch.Tensor]) -> None:
        self.name, self.store, self.attend = name, store, AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        self.store[self.name] = hidden_states
        return self.attend(attn, hidden_states)


class _ConcatenatedSelfAttention:
    """Generative ``attn1``: self-attention over ``concat([own, reference])``, first ``h·w`` outputs kept."""

    def __init__(self, name: str, store: dict[str, torch.Tensor]) -> None:
        self.name, self.store, self.attend = name, store, AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        tokens = torch.cat([hidden_states, self.store[self.name]], dim=1)
        return self.attend(attn, tokens)[:, : hidden_states.shape[1]]


def _weight_sharing_copy(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """A stock UNet built on the meta device whose parameters are ``unet``'s own tensors."""
    with torch.device("meta"):
        twin = UNet2DConditionModel.from_config(unet.config)
    twin.load_state_dict(unet.state_dict(), assign=True)
    return twin.eval()


def _install(unet: UNet2DConditionModel, make_attn1) -> None:
    processors = {}
    for key in unet.attn_processors:
        layer = key.removesuffix(".processor")
        processors[key] = make_attn1(layer) if layer.endswith("attn1") else _Passthrough()
    unet.set_attn_processor(processors)


class ReleasedStep:
    """The released sampler's model work for one CFG step, on the weights of ``model``."""

    def __init__(self, model: LeffaModel) -> None:
        self.model = model
        self.store: dict[str, torch.Tensor] = {}
        self.reference_unet = _weight_sharing_copy(model.unet_encoder)
        self.generative_unet = _weight_sharing_copy(model.unet)
        _install(self.reference_unet, lambda layer: _RecordingSelfAttention(layer, self.store))
        _install(self.generative_unet, lambda layer: _ConcatenatedSelfAttention(layer, self.store))

    @torch.no_grad()
    def reference_pass(self, reference_latents: torch.Tensor, timestep: torch.Tensor) -> dict[str, torch.Tensor]:
        """The full reference UNet on ``[zeros, reference]``; returns every layer's ``attn1`` input."""
        self.store.clear()
        references = torch.cat([torch.zeros_like(reference_latents), reference_latents]).to(self.model.dtype)
        self.reference_unet(references, timestep, encoder_hidden_states=None)
        return dict(self.store)

    @torch.no_grad()
    def generative_pass(self, channels: Sequence[torch.Tensor], timestep: torch.Tensor) -> torch.Tensor:
        """The generative UNet on the doubled inputs, attending to the features of the last reference pass.

        ``channels`` are the inputs in the UNet's channel order (noisy latents, mask, masked latents,
        DensePose), each ``[uncond, cond]``; they are concatenated as the released sampler does.
        """
        sample = torch.cat(list(channels), dim=1).to(self.model.dtype)
        return self.generative_unet(sample, timestep, encoder_hidden_states=None).sample
