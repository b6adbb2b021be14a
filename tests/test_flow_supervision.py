"""Tests of the flow-supervision teacher term and the Leffa loss's mask-mean reduction (leffa.core.flow)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from leffa.core.flow import (
    FlowSupervisionConfig,
    LeffaLossConfig,
    flow_supervision_loss,
    leffa_loss,
)


def _naive_supervision(flow, true_flow, valid, timesteps, theta):
    """Per-pixel loops over an explicitly upsampled flow: mean EPE over valid pixels, gated, mean of layers."""
    batch, height, width, _ = true_flow.shape
    up = F.interpolate(flow.permute(0, 3, 1, 2), size=(height, width), mode="bilinear", align_corners=True)
    up = up.permute(0, 2, 3, 1)
    total = 0.0
    for b in range(batch):
        if timesteps[b] >= theta:
            continue
        distances = [
            float(torch.sqrt(((up[b, y, x] - true_flow[b, y, x]) ** 2).sum()))
            for y in range(height)
            for x in range(width)
            if valid[b, 0, y, x] > 0
        ]
        if distances:
            total += sum(distances) / len(distances)
    return total / batch


def test_flow_supervision_matches_naive_reference() -> None:
    generator = torch.Generator().manual_seed(0)
    flow = torch.rand(3, 4, 3, 2, generator=generator) * 2 - 1
    true_flow = torch.rand(3, 16, 12, 2, generator=generator) * 2 - 1
    valid = (torch.rand(3, 1, 16, 12, generator=generator) > 0.5).float()
    valid[2] = 0  # no valid pixel: counts 0
    timesteps = torch.tensor([10, 700, 20])
    out = flow_supervision_loss({"a": flow, "b": flow * 0.5}, true_flow, valid, timesteps, theta_timestep=500)
    expected_a = _naive_supervision(flow, true_flow, valid, timesteps, 500)
    expected_b = _naive_supervision(flow * 0.5, true_flow, valid, timesteps, 500)
    assert float(out.per_layer["a"]) == pytest.approx(expected_a, abs=1e-5)
    assert float(out.per_layer["b"]) == pytest.approx(expected_b, abs=1e-5)
    assert float(out.total) == pytest.approx((expected_a + expected_b) / 2, abs=1e-5)


def test_flow_supervision_is_zero_at_the_true_flow_and_pulls_towards_it() -> None:
    true_flow = torch.rand(2, 8, 6, 2) * 2 - 1
    valid = torch.ones(2, 8, 6)
    timesteps = torch.zeros(2, dtype=torch.long)
    assert float(flow_supervision_loss({"l": true_flow}, true_flow, valid, timesteps).total) == pytest.approx(0.0)
    flow = torch.zeros(2, 8, 6, 2, requires_grad=True)
    flow_supervision_loss({"l": flow}, true_flow, valid, timesteps).total.backward()
    with torch.no_grad():
        before = float(flow_supervision_loss({"l": flow}, true_flow, valid, timesteps).total)
        after = float(flow_supervision_loss({"l": flow - 0.05 * flow.grad}, true_flow, valid, timesteps).total)
    assert after < before


def test_flow_supervision_errors_name_the_problem() -> None:
    true_flow = torch.zeros(2, 8, 6, 2)
    with pytest.raises(ValueError, match="flows is empty"):
        flow_supervision_loss({}, true_flow, torch.ones(2, 8, 6), torch.zeros(2))
    with pytest.raises(ValueError, match=r"valid must have shape \(2, 1, 8, 6\) or \(2, 8, 6\), got \(2, 4, 3\)"):
        flow_supervision_loss({"l": true_flow}, true_flow, torch.ones(2, 4, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="has batch size 1, the true flow has 2"):
        flow_supervision_loss({"l": true_flow[:1]}, true_flow, torch.ones(2, 8, 6), torch.zeros(2))
    with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
        FlowSupervisionConfig(weight=-1.0)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        FlowSupervisionConfig(temperature=0.0)


def test_leffa_mask_mean_reduction_divides_by_the_masked_elements() -> None:
    generator = torch.Generator().manual_seed(1)
    reference = torch.rand(2, 3, 8, 6, generator=generator) * 2 - 1
    target = torch.rand(2, 3, 8, 6, generator=generator) * 2 - 1
    mask = torch.zeros(2, 1, 8, 6)
    mask[0, :, 2:6, 1:4] = 1  # 12 pixels; sample 1 has an empty mask
    flow = torch.rand(2, 4, 3, 2, generator=generator) * 2 - 1
    timesteps = torch.zeros(2, dtype=torch.long)
    element = leffa_loss({"l": flow}, reference, target, mask, timesteps)
    masked = leffa_loss({"l": flow}, reference, target, mask, timesteps, reduction="mask_mean")
    warped = F.grid_sample(
        reference, F.interpolate(flow.permute(0, 3, 1, 2), size=(8, 6), mode="bilinear", align_corners=True).permute(0, 2, 3, 1),
        mode="bilinear", padding_mode="border", align_corners=True,
    )
    squared = ((target - warped) * mask).square()
    assert float(element.total) == pytest.approx(float(squared[0].mean()) / 2, abs=1e-6)
    assert float(masked.total) == pytest.approx(float(squared[0].sum()) / (12 * 3) / 2, abs=1e-6)
    with pytest.raises(ValueError, match=r"reduction must be one of \('element_mean', 'mask_mean'\), got 'sum'"):
        leffa_loss({"l": flow}, reference, target, mask, timesteps, reduction="sum")
    with pytest.raises(ValueError, match=r"LeffaLossConfig.mask must be one of \('inpainting', 'garment'\)"):
        LeffaLossConfig(mask="person")
