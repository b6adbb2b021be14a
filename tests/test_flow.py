"""Analytic tests for flow fields, warping and the Leffa loss (leffa/core/flow.py)."""

import dataclasses
import json
import math
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch

from leffa.core.flow import (
    LeffaLossConfig,
    attention_entropy,
    attention_to_flow,
    end_point_error,
    leffa_loss,
    reference_grid,
    select_layers_by_resolution,
    upsample_flow,
    warp,
)

CONFIGS = Path(__file__).resolve().parents[1] / "leffa" / "core" / "base_configs"


def one_hot_attention(query_size, key_size, key_of_query):
    """(1, n_q, n_k) attention where query (i, j) attends only to key ``key_of_query(i, j)``."""
    h_q, w_q = query_size
    h_k, w_k = key_size
    attn = torch.zeros(1, h_q * w_q, h_k * w_k)
    for i in range(h_q):
        for j in range(w_q):
            ki, kj = key_of_query(i, j)
            attn[0, i * w_q + j, ki * w_k + kj] = 1.0
    return attn


def grid_position(i, j, size):
    """Normalised (x, y) of token (i, j) on a grid of ``size``, align_corners=True."""
    h, w = size
    return (-1 + 2 * j / (w - 1), -1 + 2 * i / (h - 1))


def bilinear(values, px, py):
    """Naive bilinear sample of ``values`` (C, H, W) at pixel (px, py), clamped to the border."""
    _, height, width = values.shape
    px = min(max(px, 0.0), width - 1)
    py = min(max(py, 0.0), height - 1)
    x0, y0 = int(math.floor(px)), int(math.floor(py))
    x1, y1 = min(x0 + 1, width - 1), min(y0 + 1, height - 1)
    fx, fy = px - x0, py - y0
    return (
        values[:, y0, x0] * (1 - fx) * (1 - fy)
        + values[:, y0, x1] * fx * (1 - fy)
        + values[:, y1, x0] * (1 - fx) * fy
        + values[:, y1, x1] * fx * fy
    )


def naive_leffa_loss(flows, reference, target, mask, timesteps, theta):
    """Loop-by-loop Leffa loss in float64: upsample, sample, masked squared error, gate, reduce."""
    batch, channels, height, width = target.shape
    per_layer = {}
    for name, flow in flows.items():
        layer = 0.0
        for b in range(batch):
            if timesteps[b] >= theta:
                continue
            field = flow[b].double().permute(2, 0, 1).numpy()
            h, w = field.shape[1:]
            ref = reference[b].double().numpy()
            squared = 0.0
            for y in range(height):
                for x in range(width):
                    sx = x * (w - 1) / (width - 1)
                    sy = y * (h - 1) / (height - 1)
                    fx, fy = bilinear(field, sx, sy)
                    sampled = bilinear(ref, (fx + 1) * (width - 1) / 2, (fy + 1) * (height - 1) / 2)
                    m = 1.0 if mask is None else float(mask[b, 0, y, x])
                    diff = m * (target[b, :, y, x].double().numpy() - sampled)
                    squared += float((diff**2).sum())
            layer += squared / (channels * height * width)
        per_layer[name] = layer / batch
    return per_layer


def attention_softmax(queries, keys, temperature):
    """softmax(Q Kᵀ / (√d τ)) over the keys, written out explicitly."""
    logits = queries @ keys.transpose(-1, -2) / (math.sqrt(queries.shape[-1]) * temperature)
    weights = torch.exp(logits - logits.max(dim=-1, keepdim=True).values)
    return weights / weights.sum(dim=-1, keepdim=True)


# reference_grid


def test_reference_grid_is_row_major_x_first_with_corners_at_minus_one_and_one():
    grid = reference_grid(3, 5)
    assert grid.shape == (15, 2)
    for i in range(3):
        for j in range(5):
            assert grid[i * 5 + j].tolist() == pytest.approx(grid_position(i, j, (3, 5)))
    assert grid[0].tolist() == [-1.0, -1.0]
    assert grid[-1].tolist() == [1.0, 1.0]


def test_reference_grid_follows_dtype_and_rejects_bad_sizes():
    assert reference_grid(2, 2, dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match="positive ints"):
        reference_grid(0, 4)


# attention_to_flow


def test_one_hot_attention_gives_exactly_the_attended_positions():
    query_size, key_size = (4, 5), (4, 5)
    attn = one_hot_attention(query_size, key_size, lambda i, j: ((i + 1) % 4, (j + 2) % 5))
    flow = attention_to_flow(attn, query_size, key_size)
    assert flow.shape == (1, 4, 5, 2)
    for i in range(4):
        for j in range(5):
            assert flow[0, i, j].tolist() == pytest.approx(grid_position((i + 1) % 4, (j + 2) % 5, key_size))


def test_one_hot_attention_with_different_query_and_key_grids():
    query_size, key_size = (3, 4), (6, 8)
    attn = one_hot_attention(query_size, key_size, lambda i, j: (2 * i + 1, 7 - j))
    flow = attention_to_flow(attn, query_size, key_size)
    expected = torch.tensor([[grid_position(2 * i + 1, 7 - j, key_size) for j in range(4)] for i in range(3)])
    torch.testing.assert_close(flow[0], expected, rtol=0, atol=1e-7)


def test_uniform_attention_gives_the_grid_centre():
    attn = torch.full((2, 12, 35), 1 / 35)
    flow = attention_to_flow(attn, (3, 4), (5, 7))
    torch.testing.assert_close(flow, torch.zeros(2, 3, 4, 2), rtol=0, atol=1e-6)


def test_flow_is_the_attention_weighted_mean_position():
    torch.manual_seed(0)
    attn = torch.rand(2, 6, 12).softmax(dim=-1)
    flow = attention_to_flow(attn, (2, 3), (3, 4))
    grid = [grid_position(i, j, (3, 4)) for i in range(3) for j in range(4)]
    for b in range(2):
        for q in range(6):
            expected = [sum(attn[b, q, k].item() * grid[k][axis] for k in range(12)) for axis in (0, 1)]
            assert flow[b, q // 3, q % 3].tolist() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("attn", "query_size", "key_size", "message"),
    [
        (torch.zeros(6, 4), (2, 3), (2, 2), r"\(B, n_q, n_k\)"),
        (torch.zeros(1, 6, 4), (2, 2), (2, 2), "6 query tokens but query_size"),
        (torch.zeros(1, 6, 4), (2, 3), (3, 3), "4 key tokens but key_size"),
        (torch.zeros(1, 6, 4, dtype=torch.long), (2, 3), (2, 2), "floating-point"),
        (torch.zeros(1, 6, 4), (2, 3, 1), (2, 2), "query_size must be a pair"),
    ],
)
def test_attention_to_flow_rejects_bad_shapes_with_clear_messages(attn, query_size, key_size, message):
    with pytest.raises(ValueError, match=message):
        attention_to_flow(attn, query_size, key_size)


# upsample_flow and warp


def test_upsampling_the_identity_flow_gives_the_identity_at_the_new_size():
    identity = reference_grid(3, 4).reshape(1, 3, 4, 2)
    upsampled = upsample_flow(identity, (9, 10))
    torch.testing.assert_close(upsampled[0], reference_grid(9, 10).reshape(9, 10, 2), rtol=0, atol=1e-6)
    assert upsample_flow(identity, (3, 4)) is identity


def test_identity_attention_warps_the_reference_to_itself():
    torch.manual_seed(0)
    size = (4, 6)
    flow = attention_to_flow(one_hot_attention(size, size, lambda i, j: (i, j)), size, size)
    reference = torch.rand(1, 3, 13, 21)
    torch.testing.assert_close(warp(reference, flow), reference, rtol=0, atol=1e-5)
    loss = leffa_loss({"layer": flow}, reference, reference.clone(), None, torch.tensor([0]))
    assert loss.total.item() == pytest.approx(0.0, abs=1e-10)


def test_integer_translation_at_image_resolution_is_recovered_in_flow_and_warp():
    torch.manual_seed(0)
    height, width, dx, dy = 8, 10, 3, -2
    reference = torch.rand(1, 3, height, width)
    target = torch.roll(reference, shifts=(dy, dx), dims=(2, 3))
    size = (height, width)
    attn = one_hot_attention(size, size, lambda i, j: ((i - dy) % height, (j - dx) % width))
    flow = attention_to_flow(attn, size, size)
    inside = (slice(max(dy, 0), height + min(dy, 0)), slice(max(dx, 0), width + min(dx, 0)))
    identity = reference_grid(height, width).reshape(height, width, 2)
    displacement = (flow[0] - identity) * torch.tensor([(width - 1) / 2, (height - 1) / 2])
    torch.testing.assert_close(
        displacement[inside], torch.tensor([-dx, -dy], dtype=torch.float32).expand_as(displacement[inside])
    )
    torch.testing.assert_close(
        warp(reference, flow)[..., inside[0], inside[1]], target[..., inside[0], inside[1]]
    )


def test_translation_is_recovered_from_feature_attention_at_low_temperature():
    torch.manual_seed(0)
    height, width, dx, dy, dim = 6, 7, 2, 1, 32
    reference_features = torch.randn(height, width, dim)
    target_features = torch.roll(reference_features, shifts=(dy, dx), dims=(0, 1))
    attn = attention_softmax(
        target_features.reshape(1, -1, dim) * 4, reference_features.reshape(1, -1, dim) * 4, temperature=0.1
    )
    flow = attention_to_flow(attn, (height, width), (height, width))
    identity = reference_grid(height, width).reshape(height, width, 2)
    displacement = (flow[0] - identity) * torch.tensor([(width - 1) / 2, (height - 1) / 2])
    torch.testing.assert_close(
        displacement[dy:, dx:],
        torch.tensor([-dx, -dy], dtype=torch.float32).expand(height - dy, width - dx, 2),
        rtol=0,
        atol=1e-3,
    )


def test_low_resolution_translation_moves_the_full_resolution_image_by_the_token_stride():
    torch.manual_seed(0)
    tokens, stride = 5, 4
    pixels = (tokens - 1) * stride + 1
    reference = torch.rand(1, 1, pixels, pixels)
    flow = attention_to_flow(
        one_hot_attention((tokens, tokens), (tokens, tokens), lambda i, j: (i, max(j - 1, 0))),
        (tokens, tokens),
        (tokens, tokens),
    )
    warped = warp(reference, flow)
    torch.testing.assert_close(warped[..., stride:], reference[..., : pixels - stride], rtol=0, atol=1e-5)


def test_warp_clamps_positions_outside_the_reference_to_its_border():
    reference = torch.arange(12, dtype=torch.float32).reshape(1, 1, 3, 4)
    right_of_middle_row = torch.tensor([1.5, 0.0]).expand(1, 3, 4, 2)
    above_top_left = torch.tensor([-3.0, -2.0]).expand(1, 3, 4, 2)
    torch.testing.assert_close(warp(reference, right_of_middle_row), torch.full((1, 1, 3, 4), 7.0))
    torch.testing.assert_close(warp(reference, above_top_left), torch.zeros(1, 1, 3, 4))


def test_warp_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="batch size 2 does not match image batch size 1"):
        warp(torch.zeros(1, 3, 4, 4), torch.zeros(2, 2, 2, 2))
    with pytest.raises(ValueError, match=r"\(B, h, w, 2\)"):
        warp(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 2, 3))
    with pytest.raises(ValueError, match=r"image must be a tensor of shape \(B, C, H, W\)"):
        warp(torch.zeros(3, 4, 4), torch.zeros(1, 2, 2, 2))


# leffa_loss


def random_case(batch=3, size=(6, 7)):
    generator = torch.Generator().manual_seed(1)
    flows = {
        "down": torch.rand(batch, 3, 4, 2, generator=generator) * 2.6 - 1.3,
        "up": torch.rand(batch, 2, 2, 2, generator=generator) * 2.6 - 1.3,
    }
    reference = torch.rand(batch, 3, *size, generator=generator) * 2 - 1
    target = torch.rand(batch, 3, *size, generator=generator) * 2 - 1
    mask = (torch.rand(batch, 1, *size, generator=generator) > 0.4).float()
    return flows, reference, target, mask


def test_loss_equals_an_explicit_loop_computation():
    flows, reference, target, mask = random_case()
    timesteps = torch.tensor([10, 700, 499])
    loss = leffa_loss(flows, reference, target, mask, timesteps)
    expected = naive_leffa_loss(flows, reference, target, mask, timesteps, theta=500)
    for name in flows:
        assert loss.per_layer[name].item() == pytest.approx(expected[name], rel=1e-6, abs=1e-6)
    assert loss.total.item() == pytest.approx(sum(expected.values()), rel=1e-6, abs=1e-6)


def test_loss_without_mask_equals_an_all_ones_mask():
    flows, reference, target, _ = random_case()
    timesteps = torch.tensor([0, 1, 2])
    ones = torch.ones(3, 1, *target.shape[-2:])
    unmasked = leffa_loss(flows, reference, target, None, timesteps)
    masked = leffa_loss(flows, reference, target, ones, timesteps)
    torch.testing.assert_close(unmasked.total, masked.total)
    expected = naive_leffa_loss(flows, reference, target, None, timesteps, theta=500)
    assert unmasked.total.item() == pytest.approx(sum(expected.values()), rel=1e-6)


def test_per_layer_values_sum_to_the_total():
    flows, reference, target, mask = random_case()
    loss = leffa_loss(flows, reference, target, mask, torch.tensor([1, 2, 3]))
    assert set(loss.per_layer) == {"down", "up"}
    torch.testing.assert_close(loss.total, loss.per_layer["down"] + loss.per_layer["up"])
    assert loss.total.ndim == 0


def test_zero_mask_gives_zero_loss():
    flows, reference, target, mask = random_case()
    loss = leffa_loss(flows, reference, target, torch.zeros_like(mask), torch.tensor([1, 2, 3]))
    assert loss.total.item() == 0.0


def test_timestep_gating_drops_late_samples_but_keeps_the_full_batch_divisor():
    flows, reference, target, mask = random_case()
    loss = leffa_loss(flows, reference, target, mask, torch.tensor([100, 500, 499]))
    kept = [0, 2]
    alone = leffa_loss(
        {name: flow[kept] for name, flow in flows.items()},
        reference[kept],
        target[kept],
        mask[kept],
        torch.tensor([100, 499]),
    )
    torch.testing.assert_close(loss.total, alone.total * 2 / 3)
    changed_target = target.clone()
    changed_target[1] = 5.0
    unchanged = leffa_loss(flows, reference, changed_target, mask, torch.tensor([100, 500, 499]))
    torch.testing.assert_close(unchanged.total, loss.total)


def test_all_gated_gives_zero_total_and_zero_layers():
    flows, reference, target, mask = random_case()
    loss = leffa_loss(flows, reference, target, mask, torch.tensor([500, 999, 750]))
    assert loss.total.item() == 0.0
    assert all(value.item() == 0.0 for value in loss.per_layer.values())


def test_theta_timestep_and_scalar_timestep_are_honoured():
    flows, reference, target, mask = random_case()
    assert leffa_loss(flows, reference, target, mask, torch.tensor(600), theta_timestep=700).total.item() > 0
    assert leffa_loss(flows, reference, target, mask, torch.tensor(600), theta_timestep=600).total.item() == 0


def test_gradient_reaches_flows_and_attention_except_for_gated_samples():
    torch.manual_seed(0)
    logits = torch.randn(2, 12, 12, requires_grad=True)
    flow = attention_to_flow(logits.softmax(dim=-1), (3, 4), (3, 4))
    reference = torch.rand(2, 3, 9, 10)
    target = torch.rand(2, 3, 9, 10)
    loss = leffa_loss({"layer": flow}, reference, target, None, torch.tensor([10, 900]))
    loss.total.backward()
    grad = logits.grad
    assert torch.isfinite(grad).all()
    assert grad[0].abs().sum() > 0
    assert grad[1].abs().sum() == 0


def test_half_precision_flows_are_computed_in_float32():
    flows, reference, target, mask = random_case()
    timesteps = torch.tensor([1, 2, 3])
    half = leffa_loss(
        {k: v.half() for k, v in flows.items()}, reference.half(), target.half(), mask, timesteps
    )
    assert half.total.dtype == torch.float32
    full = leffa_loss(
        {k: v.half().float() for k, v in flows.items()},
        reference.half().float(),
        target.half().float(),
        mask,
        timesteps,
    )
    torch.testing.assert_close(half.total, full.total)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"flows": {}}, "flows is empty"),
        ({"target": torch.zeros(2, 3, 6, 6)}, "must have the same shape"),
        ({"mask": torch.zeros(2, 6, 7)}, r"mask must have shape \(2, 1, 6, 7\)"),
        ({"timesteps": torch.zeros(3)}, r"timesteps must be a tensor of shape \(2,\)"),
        ({"flows": {"a": torch.zeros(3, 2, 2, 2)}}, r"flows\['a'\] has batch size 3"),
        ({"flows": {"a": torch.zeros(2, 2, 2)}}, r"flows\['a'\] must be a tensor of shape"),
    ],
)
def test_leffa_loss_rejects_bad_inputs_with_clear_messages(change, message):
    arguments = {
        "flows": {"a": torch.zeros(2, 2, 2, 2)},
        "reference": torch.zeros(2, 3, 6, 7),
        "target": torch.zeros(2, 3, 6, 7),
        "mask": None,
        "timesteps": torch.zeros(2),
    }
    arguments.update(change)
    with pytest.raises(ValueError, match=message):
        leffa_loss(**arguments)


# configuration and layer selection


def test_loss_config_holds_the_paper_defaults_and_is_frozen():
    config = LeffaLossConfig()
    assert (config.weight, config.theta_resolution, config.theta_timestep, config.temperature) == (
        1e-3,
        1 / 32,
        500,
        2.0,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.weight = 1.0


@pytest.mark.parametrize(
    ("field", "value"),
    [("weight", -1.0), ("theta_resolution", 0.0), ("theta_timestep", -1), ("temperature", 0.0)],
)
def test_loss_config_rejects_invalid_values(field, value):
    with pytest.raises(ValueError, match=f"LeffaLossConfig.{field}"):
        LeffaLossConfig(**{field: value})


def self_attention_layer_sizes(config_name, image_size):
    """Token-map size of every transformer block, walking the UNet config the way diffusers builds it."""
    config = json.loads((CONFIGS / config_name / "unet.json").read_text())
    vae = json.loads((CONFIGS / config_name / "vae.json").read_text())
    vae_scale = 2 ** (len(vae["block_out_channels"]) - 1)
    n_blocks = len(config["block_out_channels"])
    per_block = config.get("transformer_layers_per_block") or 1
    per_block = per_block if isinstance(per_block, list) else [per_block] * n_blocks
    height, width = image_size[0] // vae_scale, image_size[1] // vae_scale
    sizes = {}
    for index, kind in enumerate(config["down_block_types"]):
        scale = 2**index
        for attention in range(config["layers_per_block"] if kind.startswith("CrossAttn") else 0):
            for block in range(per_block[index]):
                sizes[f"down_blocks.{index}.attentions.{attention}.{block}"] = (
                    height // scale,
                    width // scale,
                )
    scale = 2 ** (n_blocks - 1)
    for block in range(per_block[-1]):
        sizes[f"mid_block.attentions.0.{block}"] = (height // scale, width // scale)
    for index, kind in enumerate(config["up_block_types"]):
        scale = 2 ** (n_blocks - 1 - index)
        for attention in range(config["layers_per_block"] + 1 if kind.startswith("CrossAttn") else 0):
            for block in range(per_block[n_blocks - 1 - index]):
                sizes[f"up_blocks.{index}.attentions.{attention}.{block}"] = (height // scale, width // scale)
    return sizes


def test_sd15_has_16_layers_and_theta_one_32nd_selects_all_but_the_mid_block():
    sizes = self_attention_layer_sizes("sd15-inpainting", (1024, 768))
    assert len(sizes) == 16
    assert sorted({size[0] for size in sizes.values()}) == [16, 32, 64, 128]
    selected = select_layers_by_resolution(sizes, 1024, 1 / 32)
    assert len(selected) == 15
    assert [name for name in sizes if name not in selected] == ["mid_block.attentions.0.0"]
    assert selected == [name for name in sizes if name in selected]
    assert len(select_layers_by_resolution(sizes, 1024, 1 / 8)) == 5
    assert len(select_layers_by_resolution(sizes, 1024, 1 / 64)) == 16


def test_sdxl_has_70_layers_all_selected_at_one_32nd_and_10_at_one_16th():
    sizes = self_attention_layer_sizes("sdxl-inpainting", (1024, 768))
    assert len(sizes) == 70
    per_resolution = {height: sum(size[0] == height for size in sizes.values()) for height in (32, 64)}
    assert per_resolution == {32: 60, 64: 10}
    assert len(select_layers_by_resolution(sizes, 1024, 1 / 32)) == 70
    assert len(select_layers_by_resolution(sizes, 1024, 1 / 16)) == 10
    assert select_layers_by_resolution(sizes, 1024, 1 / 8) == []


def test_layer_selection_rejects_bad_arguments():
    with pytest.raises(ValueError, match="image_height must be a positive int"):
        select_layers_by_resolution({"a": (4, 4)}, 0, 0.5)
    with pytest.raises(ValueError, match=r"theta must be in \(0, 1\]"):
        select_layers_by_resolution({"a": (4, 4)}, 64, 0)
    with pytest.raises(ValueError, match=r"layer_sizes\['a'\] must be a pair"):
        select_layers_by_resolution({"a": (4,)}, 64, 0.5)


# end_point_error and attention_entropy


def test_end_point_error_is_measured_in_pixels_inside_the_valid_region():
    height, width = 5, 9
    truth = reference_grid(height, width).reshape(1, height, width, 2)
    shift = torch.tensor([3 * 2 / (width - 1), 4 * 2 / (height - 1)])
    prediction = truth + shift
    valid = torch.ones(1, 1, height, width)
    assert end_point_error(prediction, truth, valid).tolist() == pytest.approx([5.0])
    prediction[0, 0, 0] += 10.0
    valid[0, 0, 0, 0] = 0
    assert end_point_error(prediction, truth, valid[:, 0].bool()).tolist() == pytest.approx([5.0])
    doubled = end_point_error(truth + shift, truth, torch.ones(1, height, width), image_size=(9, 17))
    assert doubled.tolist() == pytest.approx([10.0])


def test_end_point_error_gives_nan_without_valid_pixels_and_rejects_bad_masks():
    flow = torch.zeros(2, 3, 3, 2)
    assert torch.isnan(end_point_error(flow, flow, torch.zeros(2, 3, 3))).all()
    with pytest.raises(ValueError, match="valid must have shape"):
        end_point_error(flow, flow, torch.zeros(2, 2, 3, 3))


def test_attention_entropy_matches_an_explicit_computation():
    torch.manual_seed(0)
    attn = torch.rand(2, 5, 7).softmax(dim=-1)
    expected = [
        np.mean([-sum(p * math.log(p) for p in attn[b, q].tolist()) for q in range(5)]) for b in range(2)
    ]
    assert attention_entropy(attn).tolist() == pytest.approx(expected, rel=1e-6)
    assert attention_entropy(torch.full((1, 3, 8), 1 / 8)).item() == pytest.approx(math.log(8))
    assert attention_entropy(torch.eye(4)[None]).item() == 0.0


def test_lower_temperature_sharpens_attention_monotonically():
    torch.manual_seed(0)
    queries, keys = torch.randn(1, 20, 16), torch.randn(1, 30, 16)
    temperatures = [100.0, 5.0, 2.0, 1.0, 0.5, 0.1]
    entropies = [attention_entropy(attention_softmax(queries, keys, tau)).item() for tau in temperatures]
    assert all(later < earlier for earlier, later in pairwise(entropies))
    assert entropies[0] == pytest.approx(math.log(30), rel=1e-2)
    reference = torch.softmax(queries @ keys.transpose(1, 2) / (4.0 * 2.0), dim=-1)
    torch.testing.assert_close(attention_softmax(queries, keys, 2.0), reference)


def test_attention_entropy_rejects_vectors():
    with pytest.raises(ValueError, match=r"\(\.\.\., n_q, n_k\)"):
        attention_entropy(torch.ones(4))
