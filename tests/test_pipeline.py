"""The sampler: seeds, CFG and rescale, reference acceleration, repaint, caching and input validation."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from leffa.core.pipeline import LeffaPipeline, repaint_images, rescale_noise_cfg

STEPS = 3


@pytest.fixture()
def pipe(tiny_model):
    return LeffaPipeline(tiny_model)


def _run(pipe, inputs, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("output_type", "pt")
    return pipe(*inputs, **kwargs)


def test_same_seed_same_image_different_seed_different_image(pipe, tiny_inputs):
    a = _run(pipe, tiny_inputs, seed=7)
    b = _run(pipe, tiny_inputs, generator=torch.Generator().manual_seed(7))
    c = _run(pipe, tiny_inputs, seed=8)
    assert a.seed == b.seed == 7
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)


def test_random_seed_is_reported_and_reproduces(pipe, tiny_inputs):
    first = _run(pipe, tiny_inputs, seed=-1)
    assert isinstance(first.seed, int) and first.seed >= 0
    again = _run(pipe, tiny_inputs, seed=first.seed)
    assert torch.equal(first.images, again.images)


def test_explicit_latents_are_used(pipe, tiny_inputs):
    gen = torch.Generator().manual_seed(5)
    latents = torch.randn(1, 4, 8, 6, generator=gen)
    explicit = _run(pipe, tiny_inputs, generator=gen, latents=latents)
    drawn = _run(pipe, tiny_inputs, generator=torch.Generator().manual_seed(5))
    assert torch.equal(explicit.images, drawn.images)
    other = _run(pipe, tiny_inputs, generator=torch.Generator().manual_seed(5).manual_seed(5), latents=latents * 0)
    assert not torch.equal(other.images, drawn.images)


def test_rescale_noise_cfg_matches_hand_computation():
    gen = torch.Generator().manual_seed(0)
    guided = torch.randn(2, 4, 3, 3, generator=gen)
    cond = torch.randn(2, 4, 3, 3, generator=gen) * 3
    phi = 2.5
    expected = torch.empty_like(guided)
    for i in range(2):
        ratio = cond[i].flatten().std() / guided[i].flatten().std()
        expected[i] = phi * guided[i] * ratio + (1 - phi) * guided[i]
    torch.testing.assert_close(rescale_noise_cfg(guided, cond, phi), expected)


def _spy(monkeypatch, model):
    """Record the noise predictions and the model output the scheduler receives."""
    predictions, stepped = [], []
    original_predict = model.predict_noise
    original_step = DDPMScheduler.step

    def predict(*args, **kwargs):
        out = original_predict(*args, **kwargs)
        predictions.append(out.clone())
        return out

    def step(self, model_output, *args, **kwargs):
        stepped.append(model_output.clone())
        return original_step(self, model_output, *args, **kwargs)

    monkeypatch.setattr(model, "predict_noise", predict)
    monkeypatch.setattr(DDPMScheduler, "step", step)
    return predictions, stepped


@pytest.mark.parametrize(("guidance", "rescale"), [(2.5, None), (3.0, 0.0), (1.0, None)])
def test_guidance_and_rescale_as_released(pipe, tiny_inputs, monkeypatch, guidance, rescale):
    predictions, stepped = _spy(monkeypatch, pipe.model)
    _run(pipe, tiny_inputs, seed=1, num_inference_steps=2, guidance_scale=guidance, guidance_rescale=rescale)
    for pred, used in zip(predictions, stepped):
        if guidance <= 1.0:
            assert pred.shape[0] == 1
            torch.testing.assert_close(used, pred)
            continue
        uncond, cond = pred.chunk(2)
        expected = uncond + guidance * (cond - uncond)
        phi = guidance if rescale is None else rescale
        if phi > 0:
            dims = (1, 2, 3)
            ratio = cond.std(dim=dims, keepdim=True) / expected.std(dim=dims, keepdim=True)
            expected = phi * expected * ratio + (1 - phi) * expected
        torch.testing.assert_close(used, expected)


def test_unconditional_half_uses_zero_reference(pipe, tiny_inputs, monkeypatch):
    seen = []
    original = pipe.model.reference_features

    def features(latents, t):
        seen.append(latents.clone())
        return original(latents, t)

    pipe.clear_cache()
    monkeypatch.setattr(pipe.model, "reference_features", features)
    _run(pipe, tiny_inputs, seed=1, num_inference_steps=1)
    zero = [x for x in seen if not x.any()]
    real = [x for x in seen if x.any()]
    assert len(zero) == 1 and len(real) == 1


def test_uncond_cache_reused_across_calls_and_same_result(tiny_model, tiny_inputs, monkeypatch):
    cached = LeffaPipeline(tiny_model)
    uncached = LeffaPipeline(tiny_model, uncond_cache_bytes=0)
    first = _run(cached, tiny_inputs, seed=3)
    calls = []
    original = tiny_model.reference_features
    monkeypatch.setattr(tiny_model, "reference_features", lambda x, t: calls.append(t) or original(x, t))
    second = _run(cached, tiny_inputs, seed=3)
    assert len(calls) == STEPS  # only the conditional reference per step
    assert torch.equal(first.images, second.images)
    torch.testing.assert_close(_run(uncached, tiny_inputs, seed=3).images, first.images)


def test_reference_acceleration_runs_reference_once_at_middle_timestep(pipe, tiny_inputs, monkeypatch):
    timesteps = []
    original = pipe.model.reference_features
    monkeypatch.setattr(
        pipe.model, "reference_features", lambda x, t: timesteps.append(int(t)) or original(x, t)
    )
    out = _run(pipe, tiny_inputs, seed=1, num_inference_steps=4, ref_acceleration=True)
    assert set(timesteps) == {out.timesteps[2]}
    assert len(timesteps) <= 2  # conditional + (maybe uncached) unconditional


def test_reference_acceleration_with_one_step_is_identical(pipe, tiny_inputs):
    plain = _run(pipe, tiny_inputs, seed=2, num_inference_steps=1)
    fast = _run(pipe, tiny_inputs, seed=2, num_inference_steps=1, ref_acceleration=True)
    assert torch.equal(plain.images, fast.images)


def test_repaint_keeps_pixels_outside_mask(pipe, tiny_inputs):
    src, _, mask, _ = tiny_inputs
    out = _run(pipe, tiny_inputs, seed=1, repaint=True).images
    outside = (mask == 0).expand_as(out)
    torch.testing.assert_close(out[outside], (src / 2 + 0.5)[outside])
    plain = _run(pipe, tiny_inputs, seed=1).images
    assert not torch.allclose(plain[outside], (src / 2 + 0.5)[outside])


def test_repaint_blurs_mask_edge_at_large_sizes():
    person = torch.zeros(1, 3, 400, 8)
    result = torch.ones(1, 3, 400, 8)
    mask = torch.zeros(1, 1, 400, 8)
    mask[..., 200:, :] = 1
    out = repaint_images(person, result, mask)
    assert out[0, 0, 0, 0] == 0 and out[0, 0, -1, 0] == pytest.approx(1.0)
    assert 0 < out[0, 0, 199, 4] < 0.5 < out[0, 0, 200, 4] < 1


def test_reference_image_changes_output(pipe, tiny_inputs):
    src, ref, mask, dense = tiny_inputs
    a = _run(pipe, (src, ref, mask, dense), seed=1).images
    b = _run(pipe, (src, -ref, mask, dense), seed=1).images
    assert (a - b).abs().max() > 1e-3


def test_output_types(pipe, tiny_inputs):
    pil = _run(pipe, tiny_inputs, seed=1, output_type="pil")
    arr = _run(pipe, tiny_inputs, seed=1, output_type="np")
    pt = _run(pipe, tiny_inputs, seed=1, output_type="pt")
    assert isinstance(pil[0], Image.Image) and pil[0].size == (48, 64)
    assert arr.images.dtype == np.uint8 and arr.images.shape == (1, 64, 48, 3)
    np.testing.assert_array_equal(np.asarray(pil[0]), arr.images[0])
    np.testing.assert_array_equal((pt.images * 255).round().byte().permute(0, 2, 3, 1).numpy(), arr.images)


def test_pil_inputs_equal_tensor_inputs(pipe, tiny_inputs):
    src, ref, mask, dense = tiny_inputs

    def to_pil(x):
        return Image.fromarray(((x[0].permute(1, 2, 0) / 2 + 0.5) * 255).round().byte().numpy())

    pil_src, pil_ref, pil_dense = to_pil(src), to_pil(ref), to_pil(dense)
    pil_mask = Image.fromarray((mask[0, 0] * 255).byte().numpy())
    from_pil = _run(pipe, (pil_src, pil_ref, pil_mask, pil_dense), seed=4)
    quantise = lambda x: ((x / 2 + 0.5) * 255).round() / 127.5 - 1  # noqa: E731
    from_tensor = _run(pipe, (quantise(src), quantise(ref), mask, quantise(dense)), seed=4)
    torch.testing.assert_close(from_pil.images, from_tensor.images, atol=1e-5, rtol=0)


def test_progress_callback_every_step(pipe, tiny_inputs):
    calls = []
    out = _run(pipe, tiny_inputs, seed=1, callback=lambda i, n, t: calls.append((i, n, t)))
    assert calls == [(i + 1, STEPS, t) for i, t in enumerate(out.timesteps)]


def test_bfloat16_runs_and_stays_close(tiny_model, tiny_inputs):
    from leffa.core.model import LeffaModel

    half = LeffaModel.from_base("tiny", device="meta")
    half.load_state_dict(tiny_model.state_dict(), assign=True)
    half.place("cpu", "bf16")
    out = _run(LeffaPipeline(half), tiny_inputs, seed=1, num_inference_steps=1).images
    ref = _run(LeffaPipeline(tiny_model), tiny_inputs, seed=1, num_inference_steps=1).images
    assert torch.isfinite(out).all()
    assert (out - ref).abs().mean() < 0.05


@pytest.mark.parametrize(
    ("change", "error", "pattern"),
    [
        (lambda s, r, m, d: (s[:, :2], r, m, d), ValueError, r"src_image: expected shape \(batch, 3"),
        (lambda s, r, m, d: (s, r, m.expand(-1, 3, -1, -1), d), ValueError, r"mask: expected shape \(batch, 1"),
        (lambda s, r, m, d: (s, r[..., :32, :], m, d), ValueError, "ref_image: size"),
        (lambda s, r, m, d: (s[..., :60, :], r[..., :60, :], m[..., :60, :], d[..., :60, :]), ValueError, "multiple of 8"),
        (lambda s, r, m, d: (s, r, m * 3, d), ValueError, "mask: values must be in"),
        (lambda s, r, m, d: (s * 4, r, m, d), ValueError, r"src_image: values must be in \[-1, 1\]"),
        (lambda s, r, m, d: ((s * 100).long(), r, m, d), TypeError, "floating point"),
        (lambda s, r, m, d: (s, r.repeat(3, 1, 1, 1), m, d.repeat(2, 1, 1, 1)), ValueError, "batch"),
        (lambda s, r, m, d: ("x.png", r, m, d), TypeError, "expected a tensor or PIL"),
    ],
)
def test_bad_inputs_are_clear_errors(pipe, tiny_inputs, change, error, pattern):
    with pytest.raises(error, match=pattern):
        _run(pipe, change(*tiny_inputs), seed=1)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"output_type": "jpeg"}, "output_type"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"seed": -5}, "seed must be"),
        ({"guidance_scale": -1.0}, "guidance_scale"),
        ({"latents": torch.zeros(1, 4, 4, 4)}, "latents: expected shape"),
    ],
)
def test_bad_arguments_are_clear_errors(pipe, tiny_inputs, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        _run(pipe, tiny_inputs, **kwargs)


def test_sizes_that_are_multiples_of_8_but_not_64_work(tiny_model):
    from leffa.core.recording import record_attention

    gen = torch.Generator().manual_seed(0)
    src = torch.rand(1, 3, 72, 40, generator=gen) * 2 - 1
    mask = torch.ones(1, 1, 72, 40)
    rec = record_attention(tiny_model, flows=True)
    pipe = LeffaPipeline(tiny_model)
    out = pipe(src, src, mask, src, num_inference_steps=1, seed=0, output_type="pt", observer=rec)
    assert out.images.shape == (1, 3, 72, 40)
    assert {tuple(f.shape[1:3]) for f in rec.flows_at(out.timesteps[0]).values()} == {(9, 5), (5, 3)}


def test_fp16_keeps_vae_in_fp32_when_its_config_asks():
    from leffa.core.configs import load_base_configs
    from leffa.core.model import LeffaModel

    configs = load_base_configs("tiny")
    upcast = LeffaModel.from_config(configs.unet, {**configs.vae, "force_upcast": True}, configs.scheduler, dtype="fp16")
    assert upcast.unet.dtype == torch.float16 and upcast.vae.dtype == torch.float32
    plain = LeffaModel.from_config(configs.unet, configs.vae, configs.scheduler, dtype="fp16")
    assert plain.vae.dtype == torch.float16


def _other_inputs(tiny_inputs):
    src, ref, mask, dense = tiny_inputs
    return src.flip(-1), ref.flip(-2), 1 - mask, dense.roll(5, -1)


def test_two_pipelines_on_one_model_in_threads_equal_sequential_runs(tiny_model, tiny_inputs):
    from leffa.core.recording import record_attention

    jobs = [(tiny_inputs, {"seed": 1}), (_other_inputs(tiny_inputs), {"seed": 2, "ref_acceleration": True})]
    sequential = [_run(LeffaPipeline(tiny_model), inputs, **kw).images for inputs, kw in jobs]
    alone = record_attention(tiny_model, flows=True)
    _run(LeffaPipeline(tiny_model), jobs[0][0], observer=alone, **jobs[0][1])

    barrier = threading.Barrier(2, timeout=60)  # both threads run every step at the same time
    results, errors = [None, None], []
    observed = record_attention(tiny_model, flows=True)

    def work(index):
        inputs, kw = jobs[index]
        try:
            results[index] = _run(
                LeffaPipeline(tiny_model), inputs, callback=lambda *_: barrier.wait(),
                observer=observed if index == 0 else None, **kw,
            ).images
        except Exception as error:
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert all(torch.equal(a, b) for a, b in zip(results, sequential))
    assert observed.flow_records.keys() == alone.flow_records.keys()
    assert all(torch.equal(observed.flow_records[k], v) for k, v in alone.flow_records.items())


def test_exception_inside_a_step_leaves_nothing_behind(tiny_model, tiny_inputs):
    from leffa.core.recording import record_attention

    pipe = LeffaPipeline(tiny_model)
    rec = record_attention(tiny_model, flows=True)

    def fail(index, total, timestep):
        raise RuntimeError(f"stopped at step {index}")

    with pytest.raises(RuntimeError, match="stopped at step 1"):
        _run(pipe, tiny_inputs, seed=1, callback=fail, observer=rec)
    recorded = dict(rec.flow_records)
    assert len(recorded) == len(tiny_model.layers)  # the first step only
    after = _run(pipe, _other_inputs(tiny_inputs), seed=2)
    fresh = _run(LeffaPipeline(tiny_model), _other_inputs(tiny_inputs), seed=2)
    assert torch.equal(after.images, fresh.images)
    assert rec.flow_records.keys() == recorded.keys()  # the later call was not observed
