"""Run the sampler once while recording attention, then browse maps and flows without re-running it.

``trace(pipe, src, ref, mask, densepose, ...)`` returns a :class:`Trace` holding the generated image and,
for chosen timesteps and layers, the head-averaged attention of the conditional branch (pooled to at most
``map_size`` per grid) and the exact flow fields. The inspector of the app and ``python -m leffa trace``
are built on it.

Where a pixel looked is the flow at that pixel (:meth:`Trace.flow_at`): the attention-weighted mean position
in the reference, ``F = Â · C``, the quantity the Leffa loss trains. Attention rows are diffuse and often
have several modes, so their maximum is a poor guide: on the demo models it misses the true location for
most clicks while the flow finds it (``docs/inspector-accuracy.md``). A :class:`View` picks the layers and
timesteps a picture averages; :attr:`Trace.default_view` is those the Leffa loss supervises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import NamedTuple

import numpy as np
import torch

from leffa.core.flow import LeffaLossConfig, select_layers_by_resolution, warp
from leffa.core.pipeline import LeffaOutput, LeffaPipeline
from leffa.core.recording import LayerSelection, record_attention
from leffa.core.settings import SamplingSettings
from leffa.inspect.grids import interpolation_weights, token_positions
from leffa.inspect.visualize import aggregate_rows, flow_to_color, overlay_heatmap, query_token_index

DEFAULT_TRACE_STEPS = 3
#: A choice of recorded layers or timesteps: one, several, or ``None`` for all of them.
LayerChoice = str | Sequence[str] | None
StepChoice = int | Sequence[int] | None


class View(NamedTuple):
    """Recorded layers and timesteps that a picture averages over; ``trace.attention(point, *view)``."""

    layers: list[str]
    timesteps: list[int]


def trained_view(
    token_sizes: dict[str, tuple[int, int]],
    timesteps: Sequence[int],
    image_height: int,
    config: LeffaLossConfig | None = None,
) -> View:
    """The layers (token-grid height >= θ_resolution of the image) and timesteps (t < θ_timestep) the Leffa
    loss supervises (``config``: the paper's defaults), in recorded order; all of them where the rule keeps
    none."""
    config = config or LeffaLossConfig()
    layers = select_layers_by_resolution(token_sizes, image_height, config.theta_resolution)
    steps = [t for t in timesteps if t < config.theta_timestep]
    return View(layers or list(token_sizes), steps or list(timesteps))


def spread_timesteps(timesteps: Sequence[int], count: int) -> list[int]:
    """``count`` timesteps spread evenly over a schedule (first, ..., last), without repeats."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    positions = np.linspace(0, len(timesteps) - 1, min(count, len(timesteps))).round().astype(int)
    return [int(timesteps[i]) for i in dict.fromkeys(positions.tolist())]


def _as_list(choice: str | int | Sequence | None) -> list | None:
    if choice is None:
        return None
    if isinstance(choice, str):
        return [choice]
    if isinstance(choice, Integral):
        return [int(choice)]
    return [int(item) if isinstance(item, Integral) else item for item in choice]


@dataclass
class Trace:
    """Recorded attention and flows of one generation (batch of one, conditional branch).

    ``maps[(t, layer)]`` is (n_q, n_k) over ``map_sizes[layer]`` cells, pooled from the layer's
    ``token_sizes[layer]`` grid where that is larger; ``flows[(t, layer)]`` is the exact (h, w, 2) flow.
    """

    output: LeffaOutput
    reference: np.ndarray
    image_size: tuple[int, int]
    layers: list[str]
    timesteps: list[int]
    token_sizes: dict[str, tuple[int, int]]
    map_sizes: dict[str, tuple[int, int]]
    maps: dict[tuple[int, str], torch.Tensor]
    flows: dict[tuple[int, str], torch.Tensor]
    default_view: View | None = None

    def __post_init__(self) -> None:
        if self.default_view is None:
            sizes = {name: self.token_sizes[name] for name in self.layers}
            self.default_view = trained_view(sizes, self.timesteps, self.image_size[0])

    def keys(self, layer: LayerChoice = None, timestep: StepChoice = None) -> list[tuple[int, str]]:
        """The recorded ``(timestep, layer)`` pairs of a choice (``None``: all), in recorded order."""
        layers, steps = _as_list(layer), _as_list(timestep)
        for name in layers or []:
            if name not in self.layers:
                raise ValueError(f"layer {name!r} was not recorded; recorded: {', '.join(self.layers)}")
        for step in steps or []:
            if step not in self.timesteps:
                raise ValueError(f"timestep {step} was not recorded; recorded: {self.timesteps}")
        if layers == [] or steps == []:
            raise ValueError("choose at least one layer and one timestep")
        return [
            (t, name)
            for t in self.timesteps
            for name in self.layers
            if (layers is None or name in layers) and (steps is None or t in steps)
        ]

    def row(self, point_xy: tuple[float, float], layer: str, timestep: int) -> torch.Tensor:
        """The recorded attention row (over the layer's stored key cells) of the query cell under model
        pixel ``(x, y)``."""
        size = self.map_sizes[layer]
        index = query_token_index(point_xy, size, self.image_size, self.token_sizes[layer])
        return self.maps[(timestep, layer)][index]

    def attention(self, point_xy: tuple[float, float], layer: LayerChoice = None, timestep: StepChoice = None) -> np.ndarray:
        """Where the output pixel ``(x, y)`` looks in the reference: float32 (H, W) density (1 = uniform).

        ``layer``/``timestep``: one, several, or ``None`` for all recorded ones (averaged).
        """
        keys = self.keys(layer, timestep)
        rows = [self.row(point_xy, name, t).float() for t, name in keys]
        return self._aggregate(rows, keys)

    def everywhere(self, layer: LayerChoice = None, timestep: StepChoice = None) -> np.ndarray:
        """The attention of every output pixel averaged: float32 (H, W) density (1 = uniform). Places far
        above 1 draw attention whichever pixel one clicks (sinks), not from one pixel in particular."""
        keys = self.keys(layer, timestep)
        return self._aggregate([self.maps[key].float().mean(dim=0) for key in keys], keys)

    def _aggregate(self, rows: list[torch.Tensor], keys: list[tuple[int, str]]) -> np.ndarray:
        sizes = [self.map_sizes[name] for _, name in keys]
        return aggregate_rows(rows, sizes, self.image_size, [self.token_sizes[name] for _, name in keys])

    def flow_at(self, point_xy: tuple[float, float], layer: LayerChoice = None, timestep: StepChoice = None) -> tuple[float, float]:
        """Where model pixel ``(x, y)`` takes from: the flow there (attention-weighted mean position, read
        bilinearly between tokens as :meth:`flow` is), averaged over the chosen layers and timesteps, as
        ``(x, y)`` in pixels of the reference image. This is the point the inspector marks."""
        height, width = self.image_size
        x, y = point_xy
        if not (0 <= x <= width - 1 and 0 <= y <= height - 1):
            raise ValueError(
                f"point {point_xy} lies outside the image: x must be in [0, {width - 1}], y in [0, {height - 1}]"
            )
        positions = []
        for key in self.keys(layer, timestep):
            h, w = self.token_sizes[key[1]]
            rows = interpolation_weights(token_positions(h, height), np.array([y], np.float64))
            columns = interpolation_weights(token_positions(w, width), np.array([x], np.float64))
            flow = self.flows[key].double().numpy()
            positions.append([float((rows @ flow[..., axis] @ columns.T)[0, 0]) for axis in (0, 1)])
        fx, fy = np.mean(positions, axis=0)
        return float((fx + 1) / 2 * (width - 1)), float((fy + 1) / 2 * (height - 1))

    def heatmap(self, point_xy: tuple[float, float], layer: LayerChoice = None, timestep: StepChoice = None) -> np.ndarray:
        """:meth:`attention` overlaid on the reference image, uint8 (H, W, 3)."""
        return overlay_heatmap(self.attention(point_xy, layer, timestep), self.reference)

    def flow(self, layer: LayerChoice = None, timestep: StepChoice = None) -> torch.Tensor:
        """Flow at image resolution (H, W, 2); several layers/timesteps (``None``: all) are averaged."""
        keys = self.keys(layer, timestep)
        flows = [
            torch.nn.functional.interpolate(
                self.flows[key].permute(2, 0, 1)[None], size=self.image_size, mode="bilinear", align_corners=True
            )[0].permute(1, 2, 0)
            for key in keys
        ]
        return torch.stack(flows).mean(dim=0)

    def flow_color(self, layer: LayerChoice = None, timestep: StepChoice = None) -> np.ndarray:
        """The flow's displacement from identity as a colour-wheel image, uint8 (H, W, 3)."""
        return flow_to_color(self.flow(layer, timestep))

    def warped_reference(self, layer: LayerChoice = None, timestep: StepChoice = None) -> np.ndarray:
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
    settings: SamplingSettings | None = None,
    *,
    layers: LayerSelection = "all",
    timesteps: Sequence[int] | None = None,
    num_trace_steps: int = DEFAULT_TRACE_STEPS,
    map_size: tuple[int, int] | None = (32, 24),
    temperature: float = 1.0,
    **options,
) -> Trace:
    """Generate once with ``settings`` (default :class:`SamplingSettings`; ``options`` as for
    :meth:`LeffaPipeline.sample`) while recording attention and flows.

    ``timesteps`` defaults to ``num_trace_steps`` timesteps spread over the schedule; maps are pooled to
    at most ``map_size`` (query and key grids) to bound memory; flows are kept exact.
    """
    settings = settings or SamplingSettings()
    if settings.num_images != 1:
        raise ValueError(f"trace records one image: pass settings with num_images=1, not {settings.num_images}")
    scheduler = pipe.model.make_scheduler()
    scheduler.set_timesteps(settings.num_inference_steps)
    schedule = [int(t) for t in scheduler.timesteps]
    chosen = spread_timesteps(schedule, num_trace_steps) if timesteps is None else [int(t) for t in timesteps]
    missing = sorted(set(chosen) - set(schedule))
    if missing:
        raise ValueError(
            f"timesteps {missing} are not in the {settings.num_inference_steps}-step schedule {schedule}"
        )
    size = {key: options.pop(key) for key in ("height", "width", "densepose_format") if key in options}
    inputs = pipe.prepare_inputs(src_image, ref_image, mask, densepose, **size)
    reference = inputs[1]
    if reference.shape[0] != 1:
        raise ValueError("trace works on one image at a time; pass a batch of one")
    recorder = record_attention(
        pipe.model, layers, chosen, flows=True, maps=True, map_size=map_size, temperature=temperature, keep_last=1
    )
    output = pipe.sample(*inputs, settings, observer=recorder, **options)
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
