"""Attention recording through the reference-attention processors, and the trace API."""

from __future__ import annotations

import math

import pytest
import torch

import leffa.core.recording as recording
from leffa.core.flow import attention_to_flow, leffa_loss
from leffa.core.model import LeffaModel
from leffa.core.pipeline import LeffaPipeline
from leffa.core.recording import LeffaRegisters, layer_sizes, record_attention, select_layers
from leffa.core.settings import SamplingSettings
from leffa.inspect.trace import spread_timesteps, trace


def _inputs(model, batch=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, 8, 6, generator=gen)
    mask = torch.ones(batch, 1, 8, 6)
    dense = torch.randn(batch, 3, 8, 6, generator=gen)
    ref = torch.randn(batch, 4, 8, 6, generator=gen)
    return latents, mask, latents.clone(), dense, ref


def _naive_maps(model, hidden_by_layer, features, temperature):
    """softmax(Q K_refᵀ / (√d τ)) averaged over heads, written out per head."""
    maps = {}
    for name, hidden in hidden_by_layer.items():
        attn = model.unet.get_submodule(name)
        q = hidden @ attn.to_q.weight.T
        k = features[name] @ attn.to_k.weight.T
        d = q.shape[-1] // attn.heads
        acc = 0
        for h in range(attn.heads):
            sl = slice(h * d, (h + 1) * d)
            logits = q[..., sl] @ k[..., sl].transpose(1, 2) / (math.sqrt(d) * temperature)
            acc = acc + torch.softmax(logits, dim=-1)
        maps[name] = acc / attn.heads
    return maps


def _capture_attn1_inputs(model):
    seen, hooks = {}, []
    for name in model.layers:
        module = model.unet.get_submodule(name)
        hooks.append(module.register_forward_pre_hook(lambda mod, args, name=name: seen.__setitem__(name, args[0])))
    return seen, hooks


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_recorded_maps_flows_rows_equal_explicit_attention(tiny_model, temperature):
    latents, mask, masked, dense, ref = _inputs(tiny_model, batch=2)
    t = torch.tensor(300)
    seen, hooks = _capture_attn1_inputs(tiny_model)
    points = [(0.0, 0.0), (1.0, 0.5), (0.4, 0.9)]
    rec = record_attention(
        tiny_model, flows=True, maps=True, rows=points, map_size=None, temperature=temperature
    )
    try:
        with torch.no_grad():
            features = tiny_model.reference_features(ref, t)
            tiny_model.predict_noise(latents, mask, masked, dense, t, features, observer=rec)
    finally:
        for hook in hooks:
            hook.remove()
    naive = _naive_maps(tiny_model, seen, features, temperature)
    sizes = layer_sizes(tiny_model, (8, 6))
    for name, expected in naive.items():
        torch.testing.assert_close(rec.map_records[(None, name)].float(), expected, atol=1e-3, rtol=1e-3)
        flow = attention_to_flow(expected, sizes[name], sizes[name])
        torch.testing.assert_close(rec.flow_records[(None, name)], flow, atol=1e-5, rtol=1e-5)
        h, w = sizes[name]
        index = [round(y * (h - 1)) * w + round(x * (w - 1)) for x, y in points]
        torch.testing.assert_close(rec.row_records[(None, name)], expected[:, index], atol=1e-5, rtol=1e-5)


def test_pooled_maps_keep_row_mass_and_match_manual_pooling(tiny_model):
    latents, mask, masked, dense, ref = _inputs(tiny_model)
    t = torch.tensor(10)
    with torch.no_grad():
        features = tiny_model.reference_features(ref, t)
        full = record_attention(tiny_model, maps=True, map_size=None)
        tiny_model.predict_noise(latents, mask, masked, dense, t, features, observer=full)
        pooled = record_attention(tiny_model, maps=True, map_size=(2, 3))
        tiny_model.predict_noise(latents, mask, masked, dense, t, features, observer=pooled)
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"  # 8×6 tokens
    small = pooled.map_records[(None, name)].float()
    assert small.shape == (1, 6, 6) and pooled.map_size_of(name) == (2, 3)
    torch.testing.assert_close(small.sum(-1), torch.ones(1, 6), atol=2e-3, rtol=0)
    big = full.map_records[(None, name)].float().reshape(8, 6, 8, 6)
    manual = big.reshape(2, 4, 3, 2, 2, 4, 3, 2).mean(dim=(1, 3)).sum(dim=(3, 5)).reshape(6, 6)
    torch.testing.assert_close(small[0], manual, atol=2e-3, rtol=1e-2)


def test_recorder_sees_only_the_calls_it_is_passed_to(tiny_model):
    latents, mask, masked, dense, ref = _inputs(tiny_model)
    t = torch.tensor(10)
    rec = record_attention(tiny_model, flows=True)
    with torch.no_grad():
        features = tiny_model.reference_features(ref, t)
        tiny_model.predict_noise(latents, mask, masked, dense, t, features)
        assert rec.flow_records == {}
        tiny_model.predict_noise(latents, mask, masked, dense, t, features, observer=rec, sampler_timestep=10)
    assert sorted(rec.flow_records) == sorted((10, name) for name in tiny_model.layers)


def test_recording_does_not_change_sampler_output(tiny_model, tiny_inputs):
    pipe = LeffaPipeline(tiny_model)
    plain = pipe(*tiny_inputs, num_inference_steps=2, seed=1, output_type="pt").images
    rec = record_attention(tiny_model, flows=True, maps=True, rows=[(0.5, 0.5)])
    recorded = pipe(*tiny_inputs, num_inference_steps=2, seed=1, output_type="pt", observer=rec).images
    assert torch.equal(plain, recorded)
    assert len(rec.flow_records) == 2 * len(tiny_model.layers)


def test_timestep_and_layer_gating(tiny_model, tiny_inputs):
    pipe = LeffaPipeline(tiny_model)
    layer = tiny_model.layers[1]
    rec = record_attention(tiny_model, [layer], timesteps=[601], flows=True)
    out = pipe(*tiny_inputs, num_inference_steps=5, seed=1, observer=rec)
    assert 601 in out.timesteps
    assert list(rec.flow_records) == [(601, layer)]
    assert rec.flows_at(601)[layer].shape == (2, 4, 3, 2)  # CFG batch: uncond + cond
    rec = record_attention(tiny_model, lambda name: name.startswith("up_blocks"), flows=True)
    assert all(name.startswith("up_blocks") for name in rec.layers) and len(rec.layers) == 4


def test_bad_recording_options(tiny_model):
    with pytest.raises(ValueError, match="unknown layers"):
        record_attention(tiny_model, ["nope"], flows=True)
    with pytest.raises(ValueError, match="nothing to record"):
        record_attention(tiny_model)
    with pytest.raises(ValueError, match="temperature"):
        record_attention(tiny_model, flows=True, temperature=0)
    with pytest.raises(ValueError, match="layers must be"):
        record_attention(tiny_model, "some", flows=True)


def test_layer_selection_by_resolution_counts():
    sd15 = LeffaModel.from_base("sd15-inpainting", device="meta")
    chosen = select_layers(sd15, (1024, 768), 1 / 32)
    assert len(chosen) == 15 and not any(name.startswith("mid_block") for name in chosen)
    assert len(select_layers(sd15, (1024, 768), 1 / 8)) == 5
    sdxl = LeffaModel.from_base("sdxl-inpainting", device="meta")
    assert len(select_layers(sdxl, (1024, 768), 1 / 32)) == 70
    assert len(select_layers(sdxl, (1024, 768), 1 / 16)) == 10
    sizes = layer_sizes(sd15, (128, 96))
    assert sizes["mid_block.attentions.0.transformer_blocks.0.attn1"] == (16, 12)
    assert sizes["up_blocks.3.attentions.2.transformer_blocks.0.attn1"] == (128, 96)


def _training_loss(model, registers=None):
    latents, mask, masked, dense, ref = _inputs(model, batch=2)
    images = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(9)) * 2 - 1
    t = torch.tensor([100, 800])
    rec = record_attention(model, model.layers[:2], flows=True, temperature=2.0, registers=registers)
    features = model.reference_features(ref, t)
    model.predict_noise(latents, mask, masked, dense, t, features, observer=rec)
    return leffa_loss(rec.flows_at(None), images.flip(-1), images, None, t).total


def test_leffa_loss_gradients_reach_both_unets():
    torch.manual_seed(0)
    model = LeffaModel.from_base("tiny")
    _training_loss(model).backward()
    first = model.layers[0]
    assert model.unet.get_submodule(first).to_q.weight.grad.abs().sum() > 0
    assert model.unet.get_submodule(first).to_k.weight.grad.abs().sum() > 0
    assert model.unet_encoder.conv_in.weight.grad.abs().sum() > 0


def test_fused_flow_values_and_gradients_equal_explicit_attention():
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(2, 4, 12, 8, generator=gen, requires_grad=True)
    key = torch.randn(2, 4, 12, 8, generator=gen, requires_grad=True)
    registers = torch.randn(4, 3, 8, generator=gen, requires_grad=True)
    weights = torch.randn(2, 4, 3, 2, generator=gen)
    scale = 0.35

    def naive(with_registers):
        logits = query @ key.transpose(-1, -2) * scale
        if with_registers:
            extra = query @ registers.transpose(-1, -2).unsqueeze(0) * scale
            probs = torch.cat([logits, extra], dim=-1).softmax(dim=-1)[..., :12]
        else:
            probs = logits.softmax(dim=-1)
        return attention_to_flow(probs.mean(dim=1), (4, 3), (4, 3))

    for with_registers in (False, True):
        reg = registers if with_registers else None
        fused = recording.attention_flow(query, key, scale, (4, 3), reg)
        fused_grads = torch.autograd.grad((fused * weights).sum(), [query, key] + ([registers] if reg is not None else []))
        expected = naive(with_registers)
        naive_grads = torch.autograd.grad((expected * weights).sum(), [query, key] + ([registers] if reg is not None else []))
        torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-5)
        for a, b in zip(fused_grads, naive_grads):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_registers_are_optional_and_trainable():
    torch.manual_seed(0)
    model = LeffaModel.from_base("tiny")
    before = set(dict(model.named_parameters()))
    registers = LeffaRegisters(model, model.layers[:2], num_registers=3)
    assert set(dict(model.named_parameters())) == before
    _training_loss(model, registers).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in registers.parameters())


def test_spread_timesteps():
    assert spread_timesteps([9, 7, 5, 3, 1], 3) == [9, 5, 1]
    assert spread_timesteps([9, 7], 5) == [9, 7]
    with pytest.raises(ValueError):
        spread_timesteps([1], 0)


def test_trace_browses_recorded_maps_and_flows(tiny_model, tiny_inputs):
    pipe = LeffaPipeline(tiny_model)
    result = trace(pipe, *tiny_inputs, SamplingSettings(num_inference_steps=4, seed=3), num_trace_steps=2, output_type="pt")
    plain = pipe(*tiny_inputs, num_inference_steps=4, seed=3, output_type="pt")
    assert torch.equal(result.output.images, plain.images)
    assert result.timesteps == [751, 1] and result.layers == tiny_model.layers
    assert len(result.maps) == len(result.flows) == 2 * len(tiny_model.layers)
    assert result.heatmap((10, 20)).shape == (64, 48, 3)
    density = result.attention((10, 20), layer=tiny_model.layers[0], timestep=1)
    assert density.shape == (64, 48) and density.mean() == pytest.approx(1.0, rel=0.05)
    assert result.flow_color().shape == (64, 48, 3)
    assert result.warped_reference(tiny_model.layers[0], 751).shape == (64, 48, 3)
    with pytest.raises(ValueError, match="was not recorded"):
        result.heatmap((1, 1), layer="nope")
    with pytest.raises(ValueError, match="not recorded"):
        result.flow(timestep=500)


def test_trace_errors(tiny_model, tiny_inputs):
    pipe = LeffaPipeline(tiny_model)
    with pytest.raises(ValueError, match="not in the 4-step schedule"):
        trace(pipe, *tiny_inputs, SamplingSettings(num_inference_steps=4), timesteps=[500])
    batch = [torch.cat([x, x]) for x in tiny_inputs]
    with pytest.raises(ValueError, match="one image at a time"):
        trace(pipe, *batch, SamplingSettings(num_inference_steps=2))


def test_batch_rows_record_only_those_samples(tiny_model):
    latents, mask, masked, dense, ref = _inputs(tiny_model, batch=3)
    t = torch.tensor([10, 20, 30])
    with torch.no_grad():
        features = tiny_model.reference_features(ref, t)
        full = record_attention(tiny_model, flows=True)
        tiny_model.predict_noise(latents, mask, masked, dense, t, features, observer=full)
        part = record_attention(tiny_model, flows=True, batch_rows=torch.tensor([2, 0]))
        tiny_model.predict_noise(latents, mask, masked, dense, t, features, observer=part)
    for name, flow in full.flows_at(None).items():
        torch.testing.assert_close(part.flows_at(None)[name], flow[[2, 0]])
