"""Where the inspector says a pixel looked (``Trace.flow_at``), how pooled maps sit on the image
(``leffa.inspect.grids``), the default view, and how concentrated a heatmap is said to be
(``leffa.inspect.spread``): hand-made attention with known answers, no model runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from leffa.core.flow import attention_to_flow
from leffa.core.recording import AttentionRecorder
from leffa.inspect.grids import cell_positions, cell_under, grid_to_image, pooling_bins, token_positions
from leffa.inspect.spread import SHARP_AREA, Spread, attention_spread, core, sink_mask
from leffa.inspect.trace import Trace, View, trained_view
from leffa.inspect.visualize import query_token_index, upsample_attention

LAYER = "down_blocks.1.attentions.0.transformer_blocks.0.attn1"


def _trace(maps: dict[tuple[int, str], torch.Tensor], token_size, image_size, map_size=None) -> Trace:
    """A trace of hand-made head-averaged maps; the flows are computed exactly from unpooled maps."""
    layers = list(dict.fromkeys(layer for _, layer in maps))
    timesteps = sorted({t for t, _ in maps}, reverse=True)
    flows = {key: attention_to_flow(m[None].double(), token_size, token_size)[0].float() for key, m in maps.items()}
    return Trace(
        output=None, reference=np.zeros((*image_size, 3), np.uint8), image_size=image_size, layers=layers,
        timesteps=timesteps, token_sizes={layer: token_size for layer in layers},
        map_sizes={layer: map_size or token_size for layer in layers}, maps=maps, flows=flows,
    )


# --------------------------------------------------------------------------- the mean, not the maximum
def _sink_and_blob_map(h: int, w: int) -> torch.Tensor:
    """Every query puts 0.3 on the top-left key (the row's maximum) and 0.7 evenly on the 3x3 keys around
    the key two columns right of itself (clamped inside the grid)."""
    rows = torch.zeros(h * w, h * w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            ci, cj = min(max(i, 1), h - 2), min(max(j + 2, 1), w - 2)
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    rows[i * w + j, (ci + di) * w + cj + dj] = 0.7 / 9
            rows[i * w + j, 0] += 0.3
    return rows


def test_the_marked_point_is_the_attention_mean_not_its_maximum():
    h, w, height, width = 16, 12, 64, 48
    trace = _trace({(1, LAYER): _sink_and_blob_map(h, w).float()}, (h, w), (height, width))
    step_x, step_y = (width - 1) / (w - 1), (height - 1) / (h - 1)  # tokens sit on pixels j*step_x, i*step_y
    i, j = 6, 4
    point = (j * step_x, i * step_y)  # exactly on query token (6, 4); it looks around key (6, 6)
    expected = (0.7 * 6 * step_x + 0.3 * 0.0, 0.7 * 6 * step_y + 0.3 * 0.0)  # 70 % blob centre, 30 % corner
    assert trace.flow_at(point) == pytest.approx(expected, abs=1e-4)
    density = trace.attention(point)
    peak_y, peak_x = np.unravel_index(np.argmax(density), density.shape)
    assert (peak_x, peak_y) == (0, 0)  # the maximum is the corner sink, far from where most mass is
    # Between tokens the point is read bilinearly, as the flow picture is.
    x, y = point[0] + 0.25 * step_x, point[1] + 0.5 * step_y
    corners = [trace.flow_at((point[0] + a * step_x, point[1] + b * step_y)) for b in (0, 1) for a in (0, 1)]
    weights = [0.75 * 0.5, 0.25 * 0.5, 0.75 * 0.5, 0.25 * 0.5]
    naive = tuple(sum(wt * c[axis] for wt, c in zip(weights, corners)) for axis in (0, 1))
    assert trace.flow_at((x, y)) == pytest.approx(naive, abs=1e-4)
    flow_picture = trace.flow()[25, 17].double().numpy()  # the flow picture's pixel (17, 25)
    assert np.allclose((flow_picture + 1) / 2 * [width - 1, height - 1], trace.flow_at((17, 25)), atol=1e-3)
    with pytest.raises(ValueError, match="outside the image"):
        trace.flow_at((width, 0))


def test_views_average_the_points_of_their_layers_and_timesteps():
    h, w = 8, 6
    generator = torch.Generator().manual_seed(0)
    maps = {
        (t, name): torch.softmax(torch.randn(h * w, h * w, generator=generator) * 3, dim=-1)
        for t in (900, 400, 1)
        for name in (LAYER, "up_blocks.1.attentions.0.transformer_blocks.0.attn1")
    }
    trace = _trace(maps, (h, w), (32, 24))
    point = (10.0, 13.0)
    both = trace.flow_at(point, None, [400, 1])
    each = [trace.flow_at(point, name, t) for t in (400, 1) for name in trace.layers]
    assert both == pytest.approx(tuple(np.mean(each, axis=0)), abs=1e-5)
    assert trace.keys(LAYER, [1, 900]) == [(900, LAYER), (1, LAYER)] == trace.keys([LAYER], [np.int64(1), 900])
    assert trace.keys(LAYER, np.int64(1)) == [(1, LAYER)]
    with pytest.raises(ValueError, match="timestep 5 was not recorded"):
        trace.flow_at(point, None, [5])
    with pytest.raises(ValueError, match="at least one layer"):
        trace.flow_at(point, [], None)


def test_the_default_view_is_what_the_leffa_loss_supervises():
    # SD1.5 at 1024x768: token grids 128, 64, 32 and 16 rows; θ_res = 1/32 keeps h >= 32; θ_t = 500.
    sizes = {"a": (128, 96), "b": (64, 48), "mid": (16, 12), "c": (32, 24)}
    assert trained_view(sizes, [958, 496, 1], 1024) == View(["a", "b", "c"], [496, 1])
    assert trained_view({"tiny": (8, 6)}, [958], 128) == View(["tiny"], [958])  # none kept: all shown
    maps = {(t, LAYER): torch.full((48, 48), 1 / 48) for t in (958, 496, 1)}
    assert _trace(maps, (8, 6), (64, 48)).default_view == View([LAYER], [496, 1])


# ------------------------------------------------------------------------------- pooled grid positions
def test_pooled_cells_sit_at_their_block_centres():
    assert pooling_bins(10, 4) == [(0, 3), (2, 5), (5, 8), (7, 10)]  # torch's adaptive bins
    tokens = token_positions(128, 1024)
    assert tokens[0] == 0 and tokens[-1] == 1023
    cells = cell_positions(128, 32, 1024)
    assert cells[0] == pytest.approx(tokens[:4].mean()) and cells[-1] == pytest.approx(tokens[-4:].mean())
    assert cells[0] == pytest.approx(12.08, abs=0.01) and cells[-1] == pytest.approx(1023 - 12.08, abs=0.01)
    assert np.array_equal(cell_positions(12, 12, 96), token_positions(12, 96))
    # torch pools the same bins
    values = torch.arange(10.0)[None, None]
    pooled = F.adaptive_avg_pool1d(values, 4)[0, 0].numpy()
    assert np.allclose(pooled, [np.mean(range(s, e)) for s, e in pooling_bins(10, 4)])
    # Unpooled grids are read exactly as torch's bilinear resize with align_corners=True.
    grid = np.random.default_rng(0).random((5, 4))
    torch_resized = F.interpolate(torch.from_numpy(grid)[None, None], size=(13, 9), mode="bilinear", align_corners=True)
    assert np.allclose(grid_to_image(grid, (5, 4), (13, 9)), torch_resized[0, 0].numpy(), atol=1e-12)
    with pytest.raises(ValueError, match="cannot be pooled"):
        pooling_bins(4, 8)


def test_a_click_picks_the_pooled_cell_that_holds_its_token():
    image, tokens, cells = (1024, 768), (128, 96), (32, 24)
    assert query_token_index((0, 0), cells, image, tokens) == 0
    assert query_token_index((767, 1023), cells, image, tokens) == 32 * 24 - 1
    # x = 40 px is nearest token round(40 * 95 / 767) = 5, in cell 1 (tokens 4..7); as a 24-cell token grid
    # it would be read as cell round(40 * 23 / 767) = 1 too, but at x = 60 (token 7) the old reading says 2.
    assert cell_under(40, 96, 24, 768) == 1 and cell_under(60, 96, 24, 768) == 1
    assert query_token_index((60, 0), cells, image, tokens) == 1
    assert query_token_index((60, 0), cells, image) == 2  # the stretched (token-grid) reading, for contrast


def _block_constant(rng: np.random.Generator, blocks: tuple[int, int], factor: int, dim: int) -> torch.Tensor:
    """(1, 1, tokens, dim) vectors equal within each ``factor`` x ``factor`` block of a token grid."""
    per_block = torch.from_numpy(rng.standard_normal((*blocks, dim))).float()
    grid = per_block.repeat_interleave(factor, 0).repeat_interleave(factor, 1)
    return grid.reshape(1, 1, -1, dim)


def test_full_size_pooled_maps_read_the_same_point_as_the_exact_flow(tiny_model):
    """SD1.5's finest grid at 1024x768 (128x96 tokens) recorded with the default 32x24 pooling: a pooled
    row's mean position, with cells at block centres, is the exact flow of its queries."""
    rng = np.random.default_rng(3)
    layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"  # level 0: tokens = latent 128x96
    query = _block_constant(rng, (32, 24), 4, 8) * 2  # constant within blocks, so pooling loses nothing
    key = _block_constant(rng, (32, 24), 4, 8)
    recorder = AttentionRecorder(tiny_model, [layer], flows=True, maps=True, map_size=(32, 24))
    recorder.observe(layer, query, key, 1 / math.sqrt(8), timestep=1, latent_size=(128, 96))
    maps = recorder.map_records[(1, layer)][0]
    exact = recorder.flow_records[(1, layer)][0].double()
    trace = Trace(
        output=None, reference=np.zeros((1024, 768, 3), np.uint8), image_size=(1024, 768), layers=[layer],
        timesteps=[1], token_sizes={layer: (128, 96)}, map_sizes={layer: (32, 24)}, maps={(1, layer): maps},
        flows={(1, layer): exact.float()},
    )
    ys, xs = cell_positions(128, 32, 1024), cell_positions(96, 24, 768)
    old_ys, old_xs = np.linspace(0, 1023, 32), np.linspace(0, 767, 24)
    for token_y, token_x in [(0, 0), (127, 95), (61, 40), (3, 90)]:
        point = (token_x * 767 / 95, token_y * 1023 / 127)  # on the token, in image pixels
        row = trace.row(point, layer, 1).double().numpy().reshape(32, 24)
        row = row / row.sum()  # stored in fp16
        mean = (row.sum(0) @ xs, row.sum(1) @ ys)
        truth = ((exact[token_y, token_x, 0] + 1) / 2 * 767, (exact[token_y, token_x, 1] + 1) / 2 * 1023)
        assert mean == pytest.approx((float(truth[0]), float(truth[1])), abs=0.2)  # fp16 map storage
        assert trace.flow_at(point) == pytest.approx((float(truth[0]), float(truth[1])), abs=1e-3)
        stretched = (row.sum(0) @ old_xs, row.sum(1) @ old_ys)
        assert max(abs(a - b) for a, b in zip(stretched, mean)) < 12.2  # the old reading's error, bounded
    # A row with all its mass on one cell is drawn hottest at that block's centre, not stretched outward.
    one_cell = np.zeros(32 * 24)
    one_cell[5 * 24 + 7] = 1
    heat = upsample_attention(one_cell, (32, 24), (1024, 768), (128, 96))
    assert np.unravel_index(np.argmax(heat), heat.shape) == (round(ys[5]), round(xs[7])) == (173, 238)
    old = upsample_attention(one_cell, (32, 24), (1024, 768))
    assert np.unravel_index(np.argmax(old), old.shape) == (165, 233)  # 8 and 5 px off: 5 * 1023 / 31, 7 * 767 / 23
    # In the corner cell the heat is flat from the image edge to the block centre (12 px), then falls.
    corner = np.zeros(32 * 24)
    corner[0] = 1
    heat = upsample_attention(corner, (32, 24), (1024, 768), (128, 96))
    assert heat[0, 0] == heat[12, 12] == heat.max() > heat[13, 13]


# ----------------------------------------------------------------------------------------- spread
def _blob(shape, centre, radius, height):
    rows, columns = np.mgrid[: shape[0], : shape[1]]
    return height * np.exp(-((rows - centre[1]) ** 2 + (columns - centre[0]) ** 2) / (2 * radius**2))


def test_spread_names_sharp_broad_several_and_uniform_maps():
    shape = (64, 48)
    sharp = 0.2 + _blob(shape, (20, 30), 2.0, 200.0)
    sharp *= sharp.size / sharp.sum()  # a density: mean 1
    spread = attention_spread(sharp)
    assert spread.regions == 1 and spread.area <= SHARP_AREA and str(spread).startswith("sharp: half the attention")
    broad = 0.2 + _blob(shape, (24, 32), 12.0, 10.0)
    broad *= broad.size / broad.sum()
    assert str(attention_spread(broad)).startswith("broad: half the attention lies in one place")
    two = 0.1 + _blob(shape, (10, 10), 2.5, 50.0) + _blob(shape, (38, 54), 2.5, 50.0)
    two *= two.size / two.sum()
    assert attention_spread(two).regions == 2
    assert str(attention_spread(two)).startswith("spread over 2 places holding half the attention")
    assert str(attention_spread(np.ones(shape))).startswith("nearly uniform (peak 1.0× uniform)")
    # The core is the densest half of the attention.
    mask = core(two)
    assert two[mask].sum() >= 0.5 * two.sum() and two[mask].min() >= two[~mask].max()


def test_sinks_are_places_every_pixel_attends_and_are_named_as_such():
    shape = (64, 48)
    everywhere = np.ones(shape)
    everywhere[:4] = 6.0  # the top edge draws attention from every pixel
    sinks = sink_mask(everywhere)
    assert sinks[:4].all() and not sinks[4:].any()
    density = 0.1 + _blob(shape, (24, 1), 2.0, 40.0) + _blob(shape, (24, 40), 2.0, 40.0)
    density *= density.size / density.sum()
    spread = attention_spread(density, sinks)
    assert spread == Spread(pytest.approx(spread.peak), 2, pytest.approx(spread.area), 1)
    assert str(spread).endswith("among them a sink that draws attention from every pixel (dotted)")
    with pytest.raises(ValueError, match="non-negative"):
        attention_spread(-np.ones(shape))
