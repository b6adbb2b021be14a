"""How concentrated a heatmap is, in words a user can act on, and which of its hot places are sinks.

A heatmap here is an attention density over the reference (1 = uniform, as ``Trace.attention`` gives it).
Its *core* is the smallest set of pixels holding half of the attention (the densest ones); the core's
connected places holding at least :data:`MIN_REGION_SHARE` of the attention are its *regions*. One small
region is a sharp map; several are alternatives the model mixes, and the flow (the attention's mean
position, which the inspector marks) may then lie between them. *Sinks* are places that draw attention from
every output pixel, whichever one is clicked (``Trace.everywhere`` at least :data:`SINK_LEVEL` × uniform): on
the pose demo model the top of the head and the image's bottom edge (``docs/inspector-accuracy.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Below this peak (× uniform) a map is called nearly uniform.
HOT_LEVEL = 2.0
#: The core holds this share of the attention.
CORE_SHARE = 0.5
#: A place of the core counts as a region when it holds at least this share of the attention.
MIN_REGION_SHARE = 0.05
#: One region covering at most this share of the reference is "sharp".
SHARP_AREA = 0.05
#: Attention averaged over every output pixel at least this high (× uniform) marks a sink.
SINK_LEVEL = 2.0
_EIGHT_NEIGHBOURS = np.ones((3, 3), bool)


@dataclass(frozen=True)
class Spread:
    """``peak`` (× uniform), the ``regions`` of the core, the share of the reference the core covers
    (``area``), and how many regions lie mostly in ``sinks``."""

    peak: float
    regions: int
    area: float
    sinks: int = 0

    def __str__(self) -> str:
        if self.peak < HOT_LEVEL:
            return (
                f"nearly uniform (peak {self.peak:.1f}× uniform): this view says little about where the pixel "
                "looked"
            )
        if self.regions <= 1:
            kind = "sharp" if self.area <= SHARP_AREA and self.regions == 1 else "broad"
            text = f"{kind}: half the attention lies in one place, {self.area:.0%} of the reference"
        else:
            text = f"spread over {self.regions} places holding half the attention, {self.area:.0%} of the reference"
        if self.sinks:
            sinks = "a sink that draws" if self.sinks == 1 else f"{self.sinks} sinks that draw"
            text += f"; {'it is' if self.regions == 1 else 'among them'} {sinks} attention from every pixel (dotted)"
        return text


def _check_density(density: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(density, np.float64)
    if array.ndim != 2 or not np.isfinite(array).all() or (array < 0).any():
        raise ValueError(f"{name} must be a finite, non-negative (H, W) density, got shape {array.shape}")
    return array


def core(density: np.ndarray, share: float = CORE_SHARE) -> np.ndarray:
    """The smallest set of pixels holding ``share`` of the attention (the densest ones), as a mask."""
    density = _check_density(density, "density")
    values = np.sort(density.ravel())[::-1]
    total = values.sum()
    if total <= 0:
        return np.zeros(density.shape, bool)
    cut = values[min(int(np.searchsorted(np.cumsum(values), share * total)), values.size - 1)]
    return density >= cut


def hot_regions(density: np.ndarray) -> list[np.ndarray]:
    """Boolean masks of the core's regions (see the module docstring), largest share first."""
    density = _check_density(density, "density")
    labels, count = ndimage.label(core(density), structure=_EIGHT_NEIGHBOURS)
    if count == 0:
        return []
    shares = ndimage.sum(density, labels, index=np.arange(1, count + 1)) / density.sum()
    order = [index for index in np.argsort(-shares) if shares[index] >= MIN_REGION_SHARE]
    return [labels == index + 1 for index in order]


def sink_mask(everywhere: np.ndarray, level: float = SINK_LEVEL) -> np.ndarray:
    """Where the attention of every output pixel, averaged (``Trace.everywhere``), is ``level`` × uniform or
    more: places that draw attention whichever pixel is clicked."""
    return _check_density(everywhere, "everywhere") >= level


def attention_spread(density: np.ndarray, sinks: np.ndarray | None = None) -> Spread:
    """:class:`Spread` of a heatmap; a region counts as a sink when most of it lies in ``sinks``."""
    density = _check_density(density, "density")
    regions = hot_regions(density)
    in_sinks = 0 if sinks is None else sum(int(sinks[region].mean() > 0.5) for region in regions)
    return Spread(float(density.max()), len(regions), float(core(density).mean()), in_sinks)
