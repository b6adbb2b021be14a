"""Recording attention over the reference keys, for the Leffa loss and the inspector.

``rec = record_attention(model, layers=..., timesteps=...)`` builds an :class:`AttentionRecorder`; pass it
to one call as ``observer=rec`` (``LeffaPipeline.__call__``, ``LeffaModel.predict_noise``) and the
reference-attention processors of that call (the same processors that inject the reference; see
:mod:`leffa.core.attention`) hand it their queries and reference keys. Nothing is attached to the model, so
other calls, concurrent ones included, keep the plain fused SDPA path.

For each selected layer the recorder computes ``A = softmax(Q K_refᵀ / (√d · τ))`` over the reference keys
only, averaged over heads, in query chunks so no layer ever holds all heads' full maps at once. What is kept
is bounded by the caller's choice:

* ``flows=True``: ``F = A · C`` per layer (B, h, w, 2), exact. Since ``A_h · C`` is attention with the
  grid coordinates as values, each head's flow is one fused ``scaled_dot_product_attention`` call and no map
  is ever materialised, in the forward or the backward pass: this is what the Leffa loss uses.
* ``rows=[(x, y), ...]``: only the attention rows of chosen query points (normalised image coordinates).
* ``maps=True``: the head-averaged maps, average-pooled to at most ``map_size`` on both the query and key
  grids (``None`` keeps them whole; only sensible for small layers).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from leffa.core.flow import reference_grid, select_layers_by_resolution
from leffa.core.model import LeffaModel

#: Elements of one chunk of attention logits (batch × heads × queries × keys); bounds peak memory.
CHUNK_ELEMENTS = 2**24
LayerSelection = str | Sequence[str] | Callable[[str], bool]


def layer_level(name: str, num_levels: int) -> int:
    """How many times a layer's token grid was halved from the latent (down i → i, mid → last, up j → last − j)."""
    section, _, rest = name.partition(".")
    if section == "mid_block":
        return num_levels - 1
    index = int(rest.split(".", 1)[0])
    return index if section == "down_blocks" else num_levels - 1 - index


def level_size(latent_size: tuple[int, int], level: int) -> tuple[int, int]:
    """Token grid after ``level`` stride-2 downsamplings (each rounds up, as the UNet's convolutions do)."""
    h, w = latent_size
    for _ in range(level):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return h, w


def layer_sizes(model: LeffaModel, latent_size: tuple[int, int]) -> dict[str, tuple[int, int]]:
    """Token grid (h, w) of every self-attention layer for a given latent size, in execution order."""
    levels = len(model.unet.config.block_out_channels)
    return {name: level_size(latent_size, layer_level(name, levels)) for name in model.layers}


def select_layers(
    model: LeffaModel, image_size: tuple[int, int], theta_resolution: float
) -> list[str]:
    """Layers whose token-grid height is at least ``theta_resolution`` of the image height (paper's θ_res)."""
    factor = model.vae_scale_factor
    latent = (image_size[0] // factor, image_size[1] // factor)
    return select_layers_by_resolution(layer_sizes(model, latent), image_size[0], theta_resolution)


class LeffaRegisters(nn.Module):
    """Optional learnable register keys (paper §3.2): extra keys that may absorb attention in the loss.

    Their logits join the softmax of the recorded attention only, so a query need not put all its mass on
    the reference; the flow uses the reference columns. Off by default; the model's parameters are untouched.
    """

    def __init__(self, model: LeffaModel, layers: Iterable[str], num_registers: int = 4) -> None:
        super().__init__()
        self.keys = nn.ParameterDict()
        for name in layers:
            attn = model.unet.get_submodule(name)
            head_dim = attn.to_q.out_features // attn.heads
            self.keys[name.replace(".", "_")] = nn.Parameter(torch.randn(attn.heads, num_registers, head_dim) * 0.02)

    def for_layer(self, name: str) -> Tensor | None:
        key = name.replace(".", "_")
        return self.keys[key] if key in self.keys else None


def _attention_chunk(q: Tensor, k: Tensor, scale: float, registers: Tensor | None) -> Tensor:
    """Head-averaged softmax over the reference keys (plus registers) for a chunk of queries, fp32."""
    logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if registers is None:
        return logits.softmax(dim=-1).mean(dim=1)
    reg_logits = torch.matmul(q.float(), registers.float().transpose(-1, -2).unsqueeze(0)) * scale
    probs = torch.cat([logits, reg_logits], dim=-1).softmax(dim=-1)
    return probs[..., : k.shape[2]].mean(dim=1)


def _chunk_size(q: Tensor, k: Tensor) -> int:
    batch, heads, _, _ = q.shape
    return max(1, CHUNK_ELEMENTS // (batch * heads * k.shape[2]))


def attention_flow(
    query: Tensor, key: Tensor, scale: float, size: tuple[int, int], registers: Tensor | None = None
) -> Tensor:
    """Head-averaged flow ``mean_h softmax(q_h k_hᵀ · scale) · C`` as (B, h, w, 2), in float32.

    Computed as attention whose values are the reference grid (zero-padded to the head width; register
    keys get zero values), so the fused kernels apply and gradients need no stored maps.
    """
    batch, heads, _, dim = query.shape
    grid = reference_grid(*size, device=query.device, dtype=torch.float32)
    if grid.shape[0] != key.shape[2]:
        raise ValueError(f"{key.shape[2]} reference tokens do not fit a {size} grid")
    value = F.pad(grid, (0, max(dim, 2) - 2)).expand(batch, heads, -1, -1)
    key = key.float()
    if registers is not None:
        extra = registers.float().unsqueeze(0).expand(batch, -1, -1, -1)
        key = torch.cat([key, extra], dim=2)
        value = torch.cat([value, value.new_zeros(batch, heads, extra.shape[2], value.shape[-1])], dim=2)
    out = F.scaled_dot_product_attention(query.float(), key, value, scale=scale)
    return out[..., :2].mean(dim=1).reshape(batch, *size, 2)


@dataclass
class AttentionRecorder:
    """Observer for :class:`~leffa.core.attention.ReferenceAttentionProcessor` (see module docstring).

    Records are keyed by ``(timestep, layer)``; the timestep is the sampler's current one, as the call passes
    it (``None`` during training, where every sample has its own). ``keep_last`` keeps only the last samples
    of each batch (the conditional half under classifier-free guidance); ``batch_rows`` (indices) records only
    those samples (training skips the work for samples the Leffa loss ignores).
    """

    model: LeffaModel
    layers: list[str]
    timesteps: set[int] | None = None
    temperature: float = 1.0
    flows: bool = False
    maps: bool = False
    rows: Sequence[tuple[float, float]] | None = None
    map_size: tuple[int, int] | None = (32, 24)
    keep_last: int | None = None
    batch_rows: Tensor | None = None
    registers: LeffaRegisters | None = None
    flow_records: dict[tuple[int | None, str], Tensor] = field(default_factory=dict)
    map_records: dict[tuple[int | None, str], Tensor] = field(default_factory=dict)
    row_records: dict[tuple[int | None, str], Tensor] = field(default_factory=dict)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)

    def wants(self, layer: str, timestep: int | None) -> bool:
        if layer not in self._layer_set:
            return False
        return self.timesteps is None or timestep in self.timesteps

    def __post_init__(self) -> None:
        unknown = sorted(set(self.layers) - set(self.model.layers))
        if unknown:
            raise ValueError(f"unknown layers {unknown[:3]}; choose from model.layers")
        wanted = set(self.layers)
        self.layers = [name for name in self.model.layers if name in wanted]
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not (self.flows or self.maps or self.rows):
            raise ValueError("nothing to record: set flows=True, maps=True or rows=[(x, y), ...]")
        self._layer_set = set(self.layers)

    # ------------------------------------------------------------------------------------- observing
    def observe(
        self,
        layer: str,
        query: Tensor,
        key: Tensor,
        scale: float,
        *,
        timestep: int | None,
        latent_size: tuple[int, int],
    ) -> None:
        if self.keep_last is not None:
            query, key = query[-self.keep_last :], key[-self.keep_last :]
        if self.batch_rows is not None:
            query, key = query[self.batch_rows], key[self.batch_rows]
        size = self._grid(layer, query.shape[2], latent_size)
        self.sizes[layer] = size
        record_key = (timestep, layer)
        scale = scale / self.temperature
        registers = self.registers.for_layer(layer) if self.registers is not None else None
        if self.flows:
            self.flow_records[record_key] = attention_flow(query, key, scale, size, registers)
        if self.rows:
            index = torch.tensor([self._token(point, size) for point in self.rows], device=query.device)
            rows = _attention_chunk(query[:, :, index], key, scale, registers)
            self.row_records[record_key] = rows.detach()
        if self.maps:
            self.map_records[record_key] = self._pooled_map(query, key, scale, registers, size).detach()

    def _grid(self, layer: str, tokens: int, latent_size: tuple[int, int]) -> tuple[int, int]:
        size = level_size(latent_size, layer_level(layer, len(self.model.unet.config.block_out_channels)))
        if size[0] * size[1] != tokens:
            raise RuntimeError(f"{layer}: {tokens} tokens do not fit the latent size {latent_size}")
        return size

    @staticmethod
    def _token(point: tuple[float, float], size: tuple[int, int]) -> int:
        x, y = point
        if not (0 <= x <= 1 and 0 <= y <= 1):
            raise ValueError(f"query point {point} must be in normalised image coordinates [0, 1]")
        h, w = size
        return round(y * (h - 1)) * w + round(x * (w - 1))

    def _pooled_map(self, q: Tensor, k: Tensor, scale: float, registers: Tensor | None, size) -> Tensor:
        h, w = size
        target = (min(h, self.map_size[0]), min(w, self.map_size[1])) if self.map_size else (h, w)
        step = _chunk_size(q, k)
        with torch.no_grad():
            parts = []
            for start in range(0, q.shape[2], step):
                part = _attention_chunk(q[:, :, start : start + step], k, scale, registers)
                keys = part.reshape(-1, 1, h, w)
                pooled = F.adaptive_avg_pool2d(keys, target) * (h * w) / (target[0] * target[1])
                parts.append(pooled.reshape(q.shape[0], -1, target[0] * target[1]))
            full = torch.cat(parts, dim=1)
            queries = full.transpose(1, 2).reshape(q.shape[0], -1, h, w)
            pooled_q = F.adaptive_avg_pool2d(queries, target)
        return pooled_q.reshape(q.shape[0], -1, target[0] * target[1]).transpose(1, 2).half()

    # --------------------------------------------------------------------------------------- reading
    def flows_at(self, timestep: int | None = None) -> dict[str, Tensor]:
        """Flows of one timestep (``None`` in training), keyed by layer in execution order."""
        return {layer: self.flow_records[(timestep, layer)] for layer in self.layers if (timestep, layer) in self.flow_records}

    def map_size_of(self, layer: str) -> tuple[int, int]:
        """Grid of a stored (pooled) map of ``layer`` (query grid = key grid)."""
        h, w = self.sizes[layer]
        return (min(h, self.map_size[0]), min(w, self.map_size[1])) if self.map_size else (h, w)

    def clear(self) -> None:
        self.flow_records.clear()
        self.map_records.clear()
        self.row_records.clear()


def _resolve_layers(model: LeffaModel, layers: LayerSelection) -> list[str]:
    if layers == "all":
        return model.layers
    if callable(layers):
        return [name for name in model.layers if layers(name)]
    if isinstance(layers, str):
        raise ValueError(f"layers must be 'all', a list of names or a predicate, got {layers!r}")
    return list(layers)


def record_attention(
    model: LeffaModel,
    layers: LayerSelection = "all",
    timesteps: Iterable[int] | None = None,
    **options,
) -> AttentionRecorder:
    """A recorder for ``model``'s attention; pass it as ``observer=`` to the call(s) to record.

    ``layers``: ``"all"``, names, or a predicate (see :func:`select_layers` for the θ_res rule);
    ``timesteps``: record only at these sampler timesteps (``None`` = all). Other options are
    :class:`AttentionRecorder` fields (``flows``, ``maps``, ``rows``, ``temperature``, ``map_size``,
    ``keep_last``, ``batch_rows``, ``registers``).
    """
    return AttentionRecorder(
        model, _resolve_layers(model, layers), set(timesteps) if timesteps is not None else None, **options
    )
