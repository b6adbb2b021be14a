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


# ------------------------------------------------------------------------------ in the training objective


def _batch(seed: int = 0, size: int = 2) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(size, 1, 64, 48)
    mask[..., 16:48, 8:40] = 1
    return {
        "image": torch.rand(size, 3, 64, 48, generator=gen) * 2 - 1,
        "reference": torch.rand(size, 3, 64, 48, generator=gen) * 2 - 1,
        "mask": mask,
        "densepose": torch.rand(size, 3, 64, 48, generator=gen) * 2 - 1,
        "flow": torch.rand(size, 64, 48, 2, generator=gen) * 2 - 1,
        "flow_valid": mask.clone(),
    }


@pytest.fixture()
def model():
    from leffa.core.model import LeffaModel

    torch.manual_seed(0)
    return LeffaModel.from_base("tiny")


def test_flow_supervision_term_is_the_loss_of_the_recorded_flows(model, monkeypatch) -> None:
    import leffa.core.training as training

    seen = []
    original = training.flow_supervision_loss

    def spy(flows, true_flow, valid, timesteps, **kwargs):
        result = original(flows, true_flow, valid, timesteps, **kwargs)
        seen.append(float(result.total.detach()))
        return result

    monkeypatch.setattr(training, "flow_supervision_loss", spy)
    losses = training.training_losses(
        model, _batch(), model.make_scheduler(), generator=torch.Generator().manual_seed(1),
        reference_dropout=0.0, flow_supervision=FlowSupervisionConfig(weight=2.0),
    )
    assert losses.flow_supervision.item() == pytest.approx(seen[0])
    assert losses.loss.item() == pytest.approx(losses.diffusion.item() + 2.0 * seen[0], rel=1e-5)
    assert losses.leffa is None and "loss/flow_supervision" in losses.log_values()
    losses.loss.backward()
    to_q = model.unet.get_submodule(model.layers[0]).to_q.weight.grad
    assert to_q is not None and float(to_q.abs().sum()) > 0


def test_diffusion_weight_zero_trains_on_the_leffa_loss_alone(model) -> None:
    from leffa.core.training import training_losses

    losses = training_losses(
        model, _batch(), model.make_scheduler(), generator=torch.Generator().manual_seed(1), reference_dropout=0.0,
        leffa=LeffaLossConfig(weight=1.0, theta_timestep=1000, mask="garment"), diffusion_weight=0.0,
    )
    assert float(losses.loss.detach()) == pytest.approx(float(losses.leffa), rel=1e-6)
    assert float(losses.diffusion) > 0


def test_training_objective_errors_name_the_missing_input(model) -> None:
    from leffa.core.training import training_losses

    batch = {key: value for key, value in _batch().items() if key not in ("flow", "flow_valid")}
    with pytest.raises(KeyError, match="flow_supervision needs the batch's true flow"):
        training_losses(model, batch, model.make_scheduler(), flow_supervision=FlowSupervisionConfig())
    with pytest.raises(KeyError, match="leffa.mask 'garment' needs the batch's flow_valid"):
        training_losses(model, batch, model.make_scheduler(), leffa=LeffaLossConfig(mask="garment"))
    with pytest.raises(ValueError, match=r"leffa.temperature \(2.0\) and flow_supervision.temperature \(1.0\)"):
        training_losses(
            model, _batch(), model.make_scheduler(), leffa=LeffaLossConfig(), flow_supervision=FlowSupervisionConfig()
        )


# -------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"flow_supervision": {"enabled": True}}, "flow_supervision needs the true flow"),
        ({"leffa": {"enabled": True, "mask": "garment"}}, "leffa.mask garment needs the garment pixels"),
        ({"data": {"synthetic_task": "pose_transfer"}}, "data.synthetic_task applies only to data.type synthetic"),
        ({"leffa": {"reduction": "sum"}}, "leffa.reduction must be one of 'element_mean', 'mask_mean'; got 'sum'"),
        ({"flow_supervision": {"weight": -1.0}}, "flow_supervision.weight must be >= 0.0"),
    ],
)
def test_config_errors_name_the_key(extra, message) -> None:
    from train.config import ConfigError, config_from_dict

    raw = {"output_dir": "x", "data": {"type": "vitonhd", "root": "r"}}
    for section, values in extra.items():
        raw[section] = {**raw.get(section, {}), **values}
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


def test_config_builds_both_terms_for_synthetic_data() -> None:
    from train.config import ConfigError, config_from_dict

    raw = {
        "output_dir": "x",
        "data": {"type": "synthetic", "length": 4, "synthetic_task": "pose_transfer"},
        "flow_supervision": {"enabled": True, "weight": 2.0},
        "leffa": {"enabled": True, "temperature": 1.0, "mask": "garment", "reduction": "mask_mean"},
    }
    config = config_from_dict(raw)
    assert config.flow_supervision.loss_config() == FlowSupervisionConfig(weight=2.0)
    assert config.leffa.loss_config().mask == "garment" and config.leffa.loss_config().reduction == "mask_mean"
    with pytest.raises(ConfigError, match="flow_supervision.temperature must equal leffa.temperature"):
        config_from_dict({**raw, "leffa": {"enabled": True}})
