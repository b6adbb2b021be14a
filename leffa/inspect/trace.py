"""Run the sampler once while recording attention, then browse maps and flows without re-running it.

``trace(pipe, src, ref, mask, densepose, ...)`` returns a :class:`Trace` holding the generated image and,
for chosen timesteps and layers, the head-averaged attention of the conditional branch (pooled to at most
``map_size`` per grid) and the exact flow fields. The inspector of the app and ``python -m leffa trace``
are built on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from leffa.core.flow import warp
from leffa.core.pipeline import LeffaOutput, LeffaPipeline
from leffa.core.recording import LayerSelection, record_attention
from leffa.inspect.visualize import aggregate_rows, flow_to_color, overlay_heatmap, query_token_index

DEFAULT_TRACE_STEPS = 3


def spread_timesteps(timesteps: Sequence[int], count: int) -> list[int]:
    """``count`` timesteps spread evenly over a schedule (first, ..., last), without repeats."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    positions = np.linspace(0, len(timesteps) - 1, min(count, len(timesteps))).round().astype(int)
    return [int(timesteps[i]) for i in dict.fromkeys(positions.tolist())]


@dataclass
class Trace:
    """Recorded attention and flows of one generation (batch of one, conditional branch)."""

    output: LeffaOutput
    reference: np.ndarray
    image_size: tuple[int, int]
    layers: list[str]
    timesteps: list[int]
    token_sizes: dict[str, tuple[int, int]]
    map_sizes: dict[str, tuple[int, int]]
    maps: dict[tuple[int, str], torch.Tensor]
    flows: dict[tuple[int, str], torch.Tensor]

    def _pick(self, layer: str | None, timestep: int | None) -> list[tuple[int, str]]:
        if layer is not None and layer not in self.layers:
            raise ValueError(f"layer {layer!r} was not recorded; recorded: {', '.join(self.layers)}")
        if timestep is not None and timestep not in self.timesteps:
            raise ValueError(f"timestep {timestep} was not recorded; recorded: {self.timesteps}")
        return [
            (t, name)
            for t in self.timesteps
            for name in self.layers
            if (layer is None or name == layer) and (timestep is None or t == timestep)
        ]

    def attention(self, point_xy: tuple[float, float], layer: str | None = None, timestep: int | None = None) -> np.ndarray:
        """Where the output pixel ``(x, y)`` looks in the reference: float32 (H, W) density (1 = uniform).

        ``layer``/``timestep`` ``None`` aggregates over all recorded ones.
        """
        keys = self._pick(layer, timestep)
        rows, sizes = [], []
        for key in keys:
            size = self.map_sizes[key[1]]
            index = query_token_index(point_xy, size, self.image_size)
            rows.append(self.maps[key][index].float())
            sizes.append(size)
        return aggregate_rows(rows, sizes, self.image_size)

    def heatmap(self, point_xy: tuple[float, float], layer: str | None = None, timestep: int | None = None) -> np.ndarray:
        """:meth:`attention` overlaid on the reference image, uint8 (H, W, 3)."""
        return overlay_heatmap(self.attention(point_xy, layer, timestep), self.reference)

    def flow(self, layer: str | None = None, timestep: int | None = None) -> torch.Tensor:
        """Flow at image resolution (H, W, 2); ``None`` averages the recorded layers/timesteps."""
        keys = self._pick(layer, timestep)
        flows = [
            torch.nn.functional.interpolate(
                self.flows[key].permute(2, 0, 1)[None], size=self.image_size, mode="bilinear", align_corners=True
            )[0].permute(1, 2, 0)
            for key in keys
        ]
        return torch.stack(flows).mean(dim=0)

    def flow_color(self, layer: str | None = None, timestep: int | None = None) -> np.ndarray:
        """The flow's displacement from identity as a colour-wheel image, uint8 (H, W, 3)."""
        return flow_to_color(self.flow(layer, timestep))

    def warped_reference(self, layer: str | None = None, timestep: int | None = None) -> np.ndarray:
        """The reference image warped by the flow: what the layer 'copies' to each output pixel, uint8."""
        reference = torch.from_numpy(self.reference).permute(2, 0, 1)[None].float()
        warped = warp(reference, self.flow(layer, timestep)[None])
        return warped[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()


def trace(
    pipe: LeffaPipeline,
    src_image,
    ref_image,
    mask,
    densepose,
    *,
    layers: LayerSelection = "all",
    timesteps: Sequence[int] | None = None,
    num_trace_steps: int = DEFAULT_TRACE_STEPS,
    map_size: tuple[int, int] | None = (32, 24),
    temperature: float = 1.0,
    num_inference_steps: int = 30,
    **kwargs,
) -> Trace:
    """Generate once (same arguments as :class:`LeffaPipeline`) while recording attention and flows.

    ``timesteps`` defaults to ``num_trace_steps`` timesteps spread over the schedule; maps are pooled to
    at most ``map_size`` (query and key grids) to bound memory; flows are kept exact.
    """
    scheduler = pipe.model.make_scheduler()
    scheduler.set_timesteps(num_inference_steps)
    schedule = [int(t) for t in scheduler.timesteps]
    chosen = spread_timesteps(schedule, num_trace_steps) if timesteps is None else [int(t) for t in timesteps]
    missing = sorted(set(chosen) - set(schedule))
    if missing:
        raise ValueError(f"timesteps {missing} are not in the {num_inference_steps}-step schedule {schedule}")
    size = {key: kwargs.pop(key) for key in ("height", "width", "densepose_format") if key in kwargs}
    inputs = pipe.prepare_inputs(src_image, ref_image, mask, densepose, **size)
    reference = inputs[1]
    if reference.shape[0] != 1:
        raise ValueError("trace works on one image at a time; pass a batch of one")
    recorder = record_attention(
        pipe.model, layers, chosen, flows=True, maps=True, map_size=map_size, temperature=temperature, keep_last=1
    )
    output = pipe(*inputs, num_inference_steps=num_inference_steps, observer=recorder, **kwargs)
    images = ((reference[0].float().permute(1, 2, 0) / 2 + 0.5).clamp(0, 1) * 255).round().byte().cpu().numpy()
    return Trace(
        output=output,
        reference=images,
        image_size=tuple(reference.shape[-2:]),
        layers=list(recorder.layers),
        timesteps=chosen,
        token_sizes=dict(recorder.sizes),
        map_sizes={layer: recorder.map_size_of(layer) for layer in recorder.sizes},
        maps={key: value[0].cpu() for key, value in recorder.map_records.items()},
        flows={key: value[0].detach().cpu() for key, value in recorder.flow_records.items()},
    )
