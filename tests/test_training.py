"""The training objective: diffusion + Leffa loss, reference dropout, conv_in expansion from a base model."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from leffa.core.configs import load_base_configs
from leffa.core.flow import LeffaLossConfig
from leffa.core.model import LeffaModel
from leffa.core.training import expand_conv_in, init_state_from_base, training_losses


def _batch(seed=0, size=2):
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(size, 3, 64, 48, generator=gen) * 2 - 1
    mask = torch.zeros(size, 1, 64, 48)
    mask[..., 16:48, 8:40] = 1
    return {
        "image": image,
        "reference": torch.rand(size, 3, 64, 48, generator=gen) * 2 - 1,
        "mask": mask,
        "densepose": torch.rand(size, 3, 64, 48, generator=gen) * 2 - 1,
    }


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return LeffaModel.from_base("tiny")


def _grads(model):
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("with_leffa", [False, True])
def test_one_step_losses_finite_and_gradients_reach_both_unets(model, with_leffa):
    scheduler = model.make_scheduler()
    config = LeffaLossConfig(theta_timestep=1000) if with_leffa else None
    losses = training_losses(
        model, _batch(), scheduler, generator=torch.Generator().manual_seed(1), leffa=config, reference_dropout=0.0
    )
    assert math.isfinite(float(losses.loss.detach()))
    losses.loss.backward()
    grads = _grads(model)
    layer = model.layers[0]
    for unet in ("unet", "unet_encoder"):
        assert grads[f"{unet}.{layer}.to_q.weight"].abs().sum() > 0
    assert not any(name.startswith("vae.") for name in grads)
    if with_leffa:
        assert losses.leffa > 0
        assert set(losses.leffa_per_layer) == set(model.layers)  # tiny layers are all >= 1/16 of H
        expected = losses.diffusion + 1e-3 * losses.leffa
        torch.testing.assert_close(losses.loss.detach(), expected)
        assert "loss/leffa" in losses.log_values()
    else:
        assert losses.leffa is None and float(losses.loss.detach()) == float(losses.diffusion)


def test_leffa_term_is_zero_above_theta_timestep(model):
    losses = training_losses(
        model, _batch(), model.make_scheduler(), generator=torch.Generator().manual_seed(1),
        leffa=LeffaLossConfig(theta_timestep=0), reference_dropout=0.0,
    )
    assert float(losses.leffa) == 0.0
    assert float(losses.loss.detach()) == pytest.approx(float(losses.diffusion))


def test_dropped_references_get_no_leffa_loss(model):
    losses = training_losses(
        model, _batch(), model.make_scheduler(), generator=torch.Generator().manual_seed(1),
        leffa=LeffaLossConfig(theta_timestep=1000), reference_dropout=1.0,
    )
    assert float(losses.leffa) == 0.0


def test_same_generator_same_loss(model):
    def run():
        return training_losses(model, _batch(), model.make_scheduler(), generator=torch.Generator().manual_seed(4))

    assert float(run().loss.detach()) == float(run().loss.detach())


def test_gradient_checkpointing_recomputes_with_the_same_features_and_observer(model):
    def run():
        model.zero_grad()
        losses = training_losses(
            model, _batch(size=3), model.make_scheduler(), generator=torch.Generator().manual_seed(2),
            leffa=LeffaLossConfig(theta_timestep=1000), reference_dropout=0.3,
        )
        losses.loss.backward()
        return losses, {name: grad.clone() for name, grad in _grads(model).items()}

    plain, plain_grads = run()
    model.unet.enable_gradient_checkpointing()
    model.unet_encoder.enable_gradient_checkpointing()
    model.train()
    checkpointed, grads = run()
    assert float(checkpointed.leffa) > 0
    assert torch.equal(checkpointed.loss, plain.loss)
    assert grads.keys() == plain_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], atol=1e-6, rtol=1e-5)


def test_bad_training_inputs(model):
    with pytest.raises(KeyError, match="missing"):
        training_losses(model, {"image": torch.zeros(1, 3, 64, 48)}, model.make_scheduler())
    with pytest.raises(ValueError, match="reference_dropout"):
        training_losses(model, _batch(), model.make_scheduler(), reference_dropout=2.0)


def test_expand_conv_in_copies_first_channels_and_zeros_the_rest():
    weight = torch.randn(8, 9, 3, 3)
    bias = torch.randn(8)
    wide, b = expand_conv_in(weight, bias, 12)
    assert torch.equal(wide[:, :9], weight) and not wide[:, 9:].any() and torch.equal(b, bias)
    narrow, _ = expand_conv_in(weight, bias, 4)
    assert torch.equal(narrow, weight[:, :4])


def test_init_from_base_loads_strictly():
    configs = load_base_configs("tiny")
    unet = UNet2DConditionModel.from_config(configs.unet)
    vae = AutoencoderKL.from_config(configs.vae)
    state = init_state_from_base(unet.state_dict(), vae.state_dict())
    model = LeffaModel.from_base("tiny", device="meta")
    model.load_state_dict(state, assign=True)
    assert model.unet.conv_in.weight.shape[1] == 12 and model.unet_encoder.conv_in.weight.shape[1] == 4
    assert torch.equal(model.unet.down_blocks[0].resnets[0].conv1.weight, unet.down_blocks[0].resnets[0].conv1.weight)


def test_leffa_loss_counts_only_active_samples_over_the_whole_batch(model, monkeypatch):
    """With half the batch above θ_timestep, the loss is the active samples' loss × (active / batch)."""
    import leffa.core.training as training

    calls = []
    original = training.leffa_loss

    def spy(flows, reference, target, mask, timesteps, **kwargs):
        result = original(flows, reference, target, mask, timesteps, **kwargs)
        calls.append((reference.shape[0], float(result.total.detach())))
        return result

    monkeypatch.setattr(training, "leffa_loss", spy)
    monkeypatch.setattr(torch, "randint", lambda *a, **k: torch.tensor([100, 900]))
    losses = training_losses(
        model, _batch(), model.make_scheduler(), generator=torch.Generator().manual_seed(1),
        leffa=LeffaLossConfig(theta_timestep=500), reference_dropout=0.0,
    )
    assert calls and calls[0][0] == 1
    assert float(losses.leffa) == pytest.approx(calls[0][1] / 2)
