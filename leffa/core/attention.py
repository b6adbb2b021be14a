"""Attention processors: the whole Leffa mechanism on stock diffusers UNets.

Three processors, installed by :func:`install_processors`:

* :class:`ReferenceCaptureProcessor` on the reference UNet's ``attn1``: stores its input tokens (the
  block's ``norm1`` output) under the layer name, then attends as usual. After the last layer the generative
  UNet needs it stops the forward pass (nothing after it is used).
* :class:`ReferenceAttentionProcessor` on the generative UNet's ``attn1``: queries from the layer's own
  tokens, keys/values from ``concat([own tokens, reference tokens of the same layer])``. This equals the
  released model (which attends over the concatenation and keeps the first ``h*w`` outputs) while computing
  only the outputs that are kept. When an observer is attached it also hands the queries and reference keys
  to it: the same processor serves the Leffa loss and the attention inspector.
* :class:`PassthroughProcessor` on every ``attn2``: returns its input, as the released weights expect
  (each transformer block then computes ``h = h + norm2(h)`` where cross-attention would be).

Layers are matched by name (``down_blocks.0.attentions.0.transformer_blocks.0.attn1``), never by a counter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention

_SECTION_ORDER = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
_LAYER_RE = re.compile(
    r"^(down_blocks|mid_block|up_blocks)(?:\.(\d+))?\.attentions\.(\d+)\.transformer_blocks\.(\d+)\.attn1$"
)


class ReferencePassComplete(Exception):
    """Raised inside the reference UNet once every needed feature is captured (ends the pass early)."""


class AttentionObserver(Protocol):
    """Receives the attention inputs of selected generative layers (see :mod:`leffa.core.recording`)."""

    def wants(self, layer: str) -> bool: ...

    def observe(self, layer: str, query: torch.Tensor, key: torch.Tensor, scale: float) -> None:
        """``query`` (B, heads, n_q, d) from the target tokens, ``key`` (B, heads, n_k, d) from the reference."""


@dataclass(frozen=True)
class ReferenceInputs:
    """What one generative forward pass attends to, passed as ``cross_attention_kwargs={"reference": ...}``.

    Passing it through the UNet call (rather than only through shared state) means gradient checkpointing
    recomputes blocks with the same features and observer in the backward pass.
    """

    features: dict[str, torch.Tensor]
    observer: AttentionObserver | None = None


@dataclass
class ReferenceState:
    """State shared by the processors of one model: captured features and the optional observer."""

    features: dict[str, torch.Tensor] | None = None
    capture: dict[str, torch.Tensor] | None = None
    stop_after: str | None = None
    observer: AttentionObserver | None = None
    timestep: int | None = None
    latent_size: tuple[int, int] | None = None
    layers: list[str] = field(default_factory=list)


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


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, tokens, channels = x.shape
    return x.view(batch, tokens, heads, channels // heads).transpose(1, 2)


def _finish(attn: Attention, out: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
    batch, heads, tokens, dim = out.shape
    out = out.transpose(1, 2).reshape(batch, tokens, heads * dim).to(hidden_states.dtype)
    out = attn.to_out[1](attn.to_out[0](out))
    if attn.residual_connection:
        out = out + hidden_states
    return out / attn.rescale_output_factor


def _check_plain(attn: Attention, hidden_states: torch.Tensor, name: str) -> None:
    if hidden_states.ndim != 3:
        raise ValueError(f"{name}: expected tokens (batch, n, channels), got shape {tuple(hidden_states.shape)}")
    if attn.group_norm is not None or attn.spatial_norm is not None:
        raise ValueError(f"{name}: attention layers with group/spatial norm are not supported")


def _project_heads(attn: Attention, x: torch.Tensor, proj: torch.nn.Linear, norm) -> torch.Tensor:
    out = _split_heads(proj(x), attn.heads)
    return norm(out) if norm is not None else out


class PassthroughProcessor:
    """Cross-attention as released: the ``attn2`` module returns its input unchanged."""

    def __call__(
        self, attn: Attention, hidden_states: torch.Tensor, *args, reference: ReferenceInputs | None = None, **kwargs
    ) -> torch.Tensor:
        return hidden_states


class ReferenceCaptureProcessor:
    """Reference UNet ``attn1``: capture the input tokens, then plain self-attention."""

    def __init__(self, name: str, state: ReferenceState) -> None:
        self.name = name
        self.state = state

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        _check_plain(attn, hidden_states, self.name)
        if self.state.capture is not None:
            self.state.capture[self.name] = hidden_states
            if self.state.stop_after == self.name:
                raise ReferencePassComplete
        query = _project_heads(attn, hidden_states, attn.to_q, attn.norm_q)
        key = _project_heads(attn, hidden_states, attn.to_k, attn.norm_k)
        value = _split_heads(attn.to_v(hidden_states), attn.heads)
        out = F.scaled_dot_product_attention(query, key, value, scale=attn.scale)
        return _finish(attn, out, hidden_states)


class ReferenceAttentionProcessor:
    """Generative UNet ``attn1``: target queries attend over target and reference tokens of this layer."""

    def __init__(self, name: str, state: ReferenceState) -> None:
        self.name = name
        self.state = state

    def __call__(
        self, attn: Attention, hidden_states: torch.Tensor, *args, reference: ReferenceInputs | None = None, **kwargs
    ) -> torch.Tensor:
        _check_plain(attn, hidden_states, self.name)
        features = reference.features if reference is not None else self.state.features
        observer = reference.observer if reference is not None else self.state.observer
        if features is None or self.name not in features:
            raise RuntimeError(
                f"no reference features for layer {self.name}; run the generative UNet through "
                "LeffaModel.predict_noise (or set model.state.features)"
            )
        reference = features[self.name].to(hidden_states.dtype)
        if reference.shape[0] != hidden_states.shape[0] or reference.shape[2] != hidden_states.shape[2]:
            raise ValueError(
                f"{self.name}: reference tokens {tuple(reference.shape)} do not match target tokens "
                f"{tuple(hidden_states.shape)} (batch and channels must agree)"
            )
        query = _project_heads(attn, hidden_states, attn.to_q, attn.norm_q)
        key_own = _project_heads(attn, hidden_states, attn.to_k, attn.norm_k)
        key_ref = _project_heads(attn, reference, attn.to_k, attn.norm_k)
        value = _split_heads(attn.to_v(torch.cat([hidden_states, reference], dim=1)), attn.heads)
        key = torch.cat([key_own, key_ref], dim=2)
        if observer is not None and observer.wants(self.name):
            observer.observe(self.name, query, key_ref, attn.scale)
        out = F.scaled_dot_product_attention(query, key, value, scale=attn.scale)
        return _finish(attn, out, hidden_states)


def install_processors(
    reference_unet: UNet2DConditionModel, generative_unet: UNet2DConditionModel, state: ReferenceState
) -> None:
    """Install the Leffa processors on both UNets and record the shared layer list in ``state``.

    Raises ``ValueError`` when the two UNets do not have the same self-attention layers.
    """
    ref_layers = self_attention_layers(reference_unet)
    gen_layers = self_attention_layers(generative_unet)
    if ref_layers != gen_layers:
        raise ValueError("reference and generative UNets must have the same transformer layers")
    state.layers = gen_layers
    state.stop_after = gen_layers[-1] if gen_layers else None
    for unet, make in ((reference_unet, ReferenceCaptureProcessor), (generative_unet, ReferenceAttentionProcessor)):
        processors = {}
        for key in unet.attn_processors:
            layer = key.removesuffix(".processor")
            processors[key] = make(layer, state) if layer.endswith("attn1") else PassthroughProcessor()
        unet.set_attn_processor(processors)
