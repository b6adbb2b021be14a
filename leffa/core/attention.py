"""Attention processors: the whole Leffa mechanism on stock diffusers UNets.

Three processors, installed by :func:`install_processors`. They keep only their layer name: everything one
forward pass needs travels in the UNet call as ``cross_attention_kwargs`` (how diffusers hands processors
their inputs), so two calls on one model never share anything and an exception leaves nothing behind.

* :class:`ReferenceCaptureProcessor` on the reference UNet's ``attn1``: given
  ``cross_attention_kwargs={"capture": ReferenceCapture(...)}`` it stores its input tokens (the block's
  ``norm1`` output) under the layer name, then attends as diffusers' :class:`AttnProcessor2_0` does. After
  the last layer the generative UNet needs it stops the forward pass (nothing after it is used).
* :class:`ReferenceAttentionProcessor` on the generative UNet's ``attn1``: given
  ``cross_attention_kwargs={"reference": ReferenceInputs(...)}``, queries come from the layer's own tokens,
  keys/values from ``concat([own tokens, reference tokens of the same layer])``: :class:`AttnProcessor2_0`
  with the concatenation as ``encoder_hidden_states``. This equals the released model (which attends over
  the concatenation and keeps the first ``h*w`` outputs) while computing only the outputs that are kept.
  When the call carries an observer that wants the layer, the queries and reference keys are also handed
  to it: the same processor serves the Leffa loss and the attention inspector.
* :class:`PassthroughProcessor` on every ``attn2``: returns its input, as the released weights expect
  (each transformer block then computes ``h = h + norm2(h)`` where cross-attention would be).

Passing the inputs through the call also makes gradient checkpointing recompute blocks with the same
features and observer in the backward pass. Layers are matched by name
(``down_blocks.0.attentions.0.transformer_blocks.0.attn1``), never by a counter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

_SECTION_ORDER = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
_LAYER_RE = re.compile(
    r"^(down_blocks|mid_block|up_blocks)(?:\.(\d+))?\.attentions\.(\d+)\.transformer_blocks\.(\d+)\.attn1$"
)


class ReferencePassComplete(Exception):
    """Raised inside the reference UNet once every needed feature is captured (ends the pass early)."""


class AttentionObserver(Protocol):
    """Receives the attention inputs of selected generative layers (see :mod:`leffa.core.recording`)."""

    def wants(self, layer: str, timestep: int | None) -> bool: ...

    def observe(
        self,
        layer: str,
        query: torch.Tensor,
        key: torch.Tensor,
        scale: float,
        *,
        timestep: int | None,
        latent_size: tuple[int, int],
    ) -> None:
        """``query`` (B, heads, n_q, d) from the target tokens, ``key`` (B, heads, n_k, d) from the reference;
        ``timestep`` and ``latent_size`` as in :class:`ReferenceInputs`."""


@dataclass(frozen=True)
class ReferenceInputs:
    """What one generative forward pass attends to, passed as ``cross_attention_kwargs={"reference": ...}``.

    ``timestep`` is the sampler's current timestep (``None`` outside the sampler, e.g. in training where
    every sample has its own); with ``latent_size`` it tells the observer where a record belongs.
    """

    features: Mapping[str, torch.Tensor]
    observer: AttentionObserver | None = None
    timestep: int | None = None
    latent_size: tuple[int, int] | None = None


@dataclass
class ReferenceCapture:
    """One reference pass, passed as ``cross_attention_kwargs={"capture": ...}``: collects layer tokens.

    A layer already captured is not captured again, so gradient checkpointing's recomputation neither
    replaces the features nor stops the pass a second time.
    """

    stop_after: str | None
    features: dict[str, torch.Tensor] = field(default_factory=dict)


def layer_sort_key(name: str) -> tuple[int, int, int, int]:
    """Execution order of a transformer layer name inside a UNet (down, mid, up; then by index)."""
    match = _LAYER_RE.match(name)
    if match is None:
        raise ValueError(f"not a self-attention layer name: {name!r}")
    section, block, attention, transformer = match.groups()
    return _SECTION_ORDER[section], int(block or 0), int(attention), int(transformer)


def self_attention_layers(unet: UNet2DConditionModel) -> list[str]:
    """Names of every ``attn1`` layer of ``unet`` in execution order."""
    names = [key.removesuffix(".processor") for key in unet.attn_processors if key.endswith("attn1.processor")]
    return sorted(names, key=layer_sort_key)


def _check_plain(attn: Attention, hidden_states: torch.Tensor, attention_mask, name: str) -> None:
    if hidden_states.ndim != 3:
        raise ValueError(f"{name}: expected tokens (batch, n, channels), got shape {tuple(hidden_states.shape)}")
    if attn.group_norm is not None or attn.spatial_norm is not None:
        raise ValueError(f"{name}: attention layers with group/spatial norm are not supported")
    if attention_mask is not None:
        raise ValueError(f"{name}: attention masks are not supported (Leffa attends over all tokens)")


def _project_heads(attn: Attention, x: torch.Tensor, proj: torch.nn.Linear, norm) -> torch.Tensor:
    batch, tokens, _ = x.shape
    out = proj(x).view(batch, tokens, attn.heads, -1).transpose(1, 2)
    return norm(out) if norm is not None else out


class PassthroughProcessor:
    """Cross-attention as released: the ``attn2`` module returns its input unchanged."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        *args,
        reference: ReferenceInputs | None = None,
        capture: ReferenceCapture | None = None,
        **kwargs,
    ) -> torch.Tensor:
        return hidden_states


class _LayerSelfAttention(AttnProcessor2_0):
    """What both ``attn1`` processors share: the layer name they are keyed by, the plain-input checks and
    the call signature.

    The signature names both per-call inputs because diffusers hands a processor only the
    ``cross_attention_kwargs`` its signature names; each processor takes the one named by ``takes`` and
    refuses the other, which belongs to the other UNet.
    """

    takes: str

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        capture: ReferenceCapture | None = None,
        reference: ReferenceInputs | None = None,
    ) -> torch.Tensor:
        _check_plain(attn, hidden_states, attention_mask, self.name)
        inputs = {"capture": capture, "reference": reference}
        for other, value in inputs.items():
            if other != self.takes and value is not None:
                raise ValueError(
                    f"{self.name}: got {other}=, which belongs to the other UNet; this layer takes {self.takes}="
                )
        return self._attend(attn, hidden_states, inputs[self.takes])

    def _attend(
        self, attn: Attention, hidden: torch.Tensor, inputs: ReferenceCapture | ReferenceInputs | None
    ) -> torch.Tensor:
        raise NotImplementedError


class ReferenceCaptureProcessor(_LayerSelfAttention):
    """Reference UNet ``attn1``: capture the input tokens, then plain self-attention."""

    takes = "capture"

    def _attend(self, attn: Attention, hidden: torch.Tensor, capture: ReferenceCapture | None) -> torch.Tensor:
        if capture is not None and self.name not in capture.features:
            capture.features[self.name] = hidden
            if capture.stop_after == self.name:
                raise ReferencePassComplete
        return AttnProcessor2_0.__call__(self, attn, hidden)


class ReferenceAttentionProcessor(_LayerSelfAttention):
    """Generative UNet ``attn1``: target queries attend over target and reference tokens of this layer."""

    takes = "reference"

    def _attend(self, attn: Attention, hidden: torch.Tensor, reference: ReferenceInputs | None) -> torch.Tensor:
        if reference is None or self.name not in reference.features:
            raise RuntimeError(
                f"no reference features for layer {self.name}; run the generative UNet through "
                "LeffaModel.predict_noise (or pass cross_attention_kwargs={'reference': ReferenceInputs(...)})"
            )
        tokens = reference.features[self.name].to(hidden.dtype)
        if tokens.shape[0] != hidden.shape[0] or tokens.shape[2] != hidden.shape[2]:
            raise ValueError(
                f"{self.name}: reference tokens {tuple(tokens.shape)} do not match target tokens "
                f"{tuple(hidden.shape)} (batch and channels must agree)"
            )
        observer = reference.observer
        if observer is not None and observer.wants(self.name, reference.timestep):
            query = _project_heads(attn, hidden, attn.to_q, attn.norm_q)
            key = _project_heads(attn, tokens, attn.to_k, attn.norm_k)
            observer.observe(
                self.name, query, key, attn.scale, timestep=reference.timestep, latent_size=reference.latent_size
            )
        own_and_reference = torch.cat([hidden, tokens], dim=1)
        return AttnProcessor2_0.__call__(self, attn, hidden, encoder_hidden_states=own_and_reference)


def install_processors(
    reference_unet: UNet2DConditionModel, generative_unet: UNet2DConditionModel
) -> list[str]:
    """Install the Leffa processors on both UNets; return their shared self-attention layers, in order.

    Raises ``ValueError`` when the two UNets do not have the same self-attention layers.
    """
    ref_layers = self_attention_layers(reference_unet)
    gen_layers = self_attention_layers(generative_unet)
    if ref_layers != gen_layers:
        raise ValueError("reference and generative UNets must have the same transformer layers")
    for unet, make in ((reference_unet, ReferenceCaptureProcessor), (generative_unet, ReferenceAttentionProcessor)):
        processors = {}
        for key in unet.attn_processors:
            layer = key.removesuffix(".processor")
            processors[key] = make(layer) if layer.endswith("attn1") else PassthroughProcessor()
        unet.set_attn_processor(processors)
    return gen_layers
