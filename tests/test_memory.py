"""Memory levels (``leffa.core.memory``) and several images per run, on the CPU with the tiny model.

Budgets against the fp32 model at level ``none`` (images in [-1, 1]):

- ``model_offload``, ``group_offload``: exact. They move weights between devices and change no arithmetic.
- ``int8``: max 2e-3. Weight-only int8 with one scale per output channel rounds each weight by at most half a
  step (1/254 of the channel's largest weight); activations stay fp32.
- ``layerwise_fp8``: mean 0.01, max 0.1. float8 e4m3 keeps 3 mantissa bits (up to 6 % per weight) and the
  layers compute in bf16 (8 bits), so single pixels move visibly while the image as a whole stays.
"""

from __future__ import annotations

import copy
import threading
import time

import pytest
import torch

from leffa.core.memory import (
    AUTO_ORDER, MEMORY_LEVELS, apply_memory_level, choose_memory_level, estimated_need, remove_memory_level,
    weight_bytes,
)
from leffa.core.model import LeffaModel
from leffa.core.pipeline import LeffaPipeline
from leffa.core.serialization import save_state_dict
from leffa.core.settings import MAX_IMAGES, SamplingSettings
from leffa.core.speed import SpeedOptions, apply_speed_options
from leffa.inspect.trace import trace

STEPS = 3
BUDGETS = {  # level: (max, mean) absolute difference to fp32 at level none
    "model_offload": (0.0, 0.0),
    "group_offload": (0.0, 0.0),
    "int8": (2e-3, 2e-4),
    "layerwise_fp8": (0.1, 0.01),
}


def _run(model: LeffaModel, inputs, **options) -> torch.Tensor:
    options = {"num_inference_steps": STEPS, "seed": 3, "output_type": "pt", **options}
    return LeffaPipeline(model)(*inputs, **options).images


@pytest.fixture(scope="module")
def baseline(tiny_model):
    gen = torch.Generator().manual_seed(123)
    inputs = [torch.rand(1, 3, 64, 48, generator=gen) * 2 - 1 for _ in range(2)]
    mask = torch.zeros(1, 1, 64, 48)
    mask[..., 16:48, 8:40] = 1
    inputs += [mask, torch.rand(1, 3, 64, 48, generator=gen) * 2 - 1]
    return inputs, _run(tiny_model, inputs)


@pytest.mark.parametrize("level", list(BUDGETS))
def test_each_level_stays_within_its_budget_of_fp32(tiny_model, baseline, level):
    inputs, expected = baseline
    model = copy.deepcopy(tiny_model)
    apply_memory_level(model, level, "cpu")
    assert model.memory_level == level and model.device == torch.device("cpu") and model.dtype == torch.float32 or (
        level == "layerwise_fp8" and model.dtype == torch.bfloat16
    )
    difference = (_run(model, inputs) - expected).abs()
    worst, mean = BUDGETS[level]
    assert difference.max() <= worst and difference.mean() <= mean, (level, difference.max(), difference.mean())
    if level in ("int8", "layerwise_fp8"):
        assert difference.max() > 0  # the weights did change


def test_fp8_weights_take_at_most_055_of_the_bf16_bytes(tiny_model):
    unets = ("unet_encoder", "unet")
    half = copy.deepcopy(tiny_model).place("cpu", "bf16")
    bf16_bytes = weight_bytes(half, unets)
    apply_memory_level(half, "layerwise_fp8", "cpu")
    assert weight_bytes(half, unets) <= 0.55 * bf16_bytes
    assert weight_bytes(half, ("vae",)) == weight_bytes(copy.deepcopy(tiny_model).place("cpu", "bf16"), ("vae",))
    assert half.unet.conv_in.weight.dtype == torch.float8_e4m3fn and half.dtype == torch.bfloat16


def test_int8_weights_take_less_than_a_third_of_the_fp32_linear_bytes(tiny_model):
    full = copy.deepcopy(tiny_model)
    linear = [m for m in full.unet.modules() if isinstance(m, torch.nn.Linear)]
    before = sum(m.weight.numel() * 4 for m in linear)
    total_before = weight_bytes(full)
    apply_memory_level(full, "int8", "cpu")
    saved = total_before - weight_bytes(full)
    assert saved > 0.6 * before  # the UNets' linear weights went from 4 bytes to 1 (plus per-channel scales)


@pytest.mark.parametrize("level", ["model_offload", "group_offload"])
def test_offloading_hooks_come_off_cleanly(tiny_model, baseline, level):
    inputs, expected = baseline
    model = copy.deepcopy(tiny_model)
    apply_memory_level(model, level, "cpu")
    assert any(hasattr(m, "_hf_hook") or hasattr(m, "_diffusers_hook") for m in model.modules())
    remove_memory_level(model)
    assert model.memory_level == "none" and model.offload_hooks == []
    assert not any(hasattr(m, "_hf_hook") for m in model.modules())
    assert all(not getattr(m, "_diffusers_hook", None) or not m._diffusers_hook.hooks for m in model.modules())
    assert torch.equal(_run(model, inputs), expected)
    apply_memory_level(model, "group_offload" if level == "model_offload" else "model_offload", "cpu")
    assert torch.equal(_run(model, inputs), expected)


def test_lasting_levels_cannot_be_left_in_place(tiny_model):
    model = copy.deepcopy(tiny_model)
    apply_memory_level(model, "int8", "cpu")
    with pytest.raises(ValueError, match="load the model again"):
        apply_memory_level(model, "none", "cpu")
    with pytest.raises(ValueError, match="apply_memory_level moves it"):
        model.place("cpu")
    with pytest.raises(ValueError, match="memory level must be one of none, model_offload"):
        apply_memory_level(copy.deepcopy(tiny_model), "auto", "cpu")


def test_the_level_survives_from_pretrained_pipeline_and_trace(tiny_model, baseline, tmp_path):
    inputs, _ = baseline
    path = save_state_dict(tiny_model.state_dict(), tmp_path / "tiny.safetensors")
    settings = SamplingSettings(num_inference_steps=STEPS, seed=3)
    for level in ("group_offload", "layerwise_fp8"):
        model = LeffaModel.from_pretrained(path, base="tiny", device="cpu")
        plain = trace(LeffaPipeline(model), *inputs, settings, num_trace_steps=2)
        apply_memory_level(model, level, "cpu")
        recorded = trace(LeffaPipeline(model), *inputs, settings, num_trace_steps=2)
        assert model.memory_level == level and recorded.timesteps == plain.timesteps
        assert recorded.flows.keys() == plain.flows.keys() and recorded.maps.keys() == plain.maps.keys()
        if level == "group_offload":  # the observer saw exactly what it sees at level none
            assert all(torch.equal(recorded.flows[key], plain.flows[key]) for key in plain.flows)


@pytest.mark.parametrize("level", ["model_offload", "group_offload"])
def test_reference_acceleration_and_speed_options_compose_with_offloading(tiny_model, baseline, level):
    inputs, _ = baseline
    expected = _run(apply_speed_options(copy.deepcopy(tiny_model), SpeedOptions(channels_last=True)), inputs,
                    ref_acceleration=True)
    model = apply_speed_options(copy.deepcopy(tiny_model), SpeedOptions(channels_last=True))
    apply_memory_level(model, level, "cpu")
    assert torch.equal(_run(model, inputs, ref_acceleration=True), expected)


def test_two_calls_on_an_offloaded_model_take_turns(tiny_model, baseline):
    inputs, expected = baseline
    model = copy.deepcopy(tiny_model)
    apply_memory_level(model, "model_offload", "cpu")
    calls: list[str] = []

    def slow_step(module, args):
        calls.append(threading.current_thread().name)
        time.sleep(0.005)  # room for the other thread to step in, were it allowed

    handle = model.unet.register_forward_pre_hook(slow_step)
    results = {}
    threads = [
        threading.Thread(target=lambda n=name: results.__setitem__(n, _run(model, inputs)), name=name)
        for name in ("first", "second")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    handle.remove()
    switches = sum(a != b for a, b in zip(calls, calls[1:]))
    assert switches == 1 and len(calls) == 2 * STEPS  # one whole call, then the other
    assert all(torch.equal(result, expected) for result in results.values())


def test_num_images_equal_single_runs_with_consecutive_seeds(tiny_model, baseline):
    inputs, _ = baseline
    output = LeffaPipeline(tiny_model)(*inputs, num_inference_steps=STEPS, seed=7, num_images=3, output_type="pt")
    assert output.seeds == [7, 8, 9] and output.seed == 7 and output.images.shape[0] == 3
    for index, seed in enumerate(output.seeds):
        single = _run(tiny_model, inputs, seed=seed)
        torch.testing.assert_close(output.images[index : index + 1], single, atol=1e-5, rtol=0)


def test_num_images_refuses_what_it_cannot_seed(tiny_model, baseline):
    inputs, _ = baseline
    pipe = LeffaPipeline(tiny_model)
    with pytest.raises(ValueError, match="pass seed, not generator"):
        pipe(*inputs, num_inference_steps=1, num_images=2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="num_images=2 makes several images of one input; got a batch of 2"):
        pipe(*(t.expand(2, -1, -1, -1) for t in inputs), num_inference_steps=1, num_images=2)
    with pytest.raises(ValueError, match="trace records one image"):
        trace(pipe, *inputs, SamplingSettings(num_images=2))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"num_images": 0}, "num_images must be between 1 and 4, got 0"),
        ({"num_images": MAX_IMAGES + 1}, "num_images must be between 1 and 4, got 5"),
        ({"num_images": 2.5}, "num_images"),
        ({"num_images": 2, "seed": 2**64 - 1}, "passes 2\\*\\*64 - 1"),
        ({"memory": "fp4"}, "memory must be one of none, model_offload, group_offload, layerwise_fp8, int8, auto"),
    ],
)
def test_settings_check_images_and_memory(fields, message):
    with pytest.raises(ValueError, match=message):
        SamplingSettings(**fields)


def test_settings_keep_whole_slider_values_and_defaults():
    settings = SamplingSettings(num_images=3.0, memory="int8")
    assert settings.num_images == 3 and isinstance(settings.num_images, int) and settings.memory == "int8"
    assert SamplingSettings().num_images == 1 and SamplingSettings().memory == "auto"


def test_auto_picks_the_fastest_level_that_fits(tiny_model):
    model = copy.deepcopy(tiny_model)
    tokens, batch = 128 * 96, 2
    needs = {level: estimated_need(model, level, tokens, batch) for level in MEMORY_LEVELS}
    assert needs["group_offload"] < needs["model_offload"] < needs["none"]
    assert needs["layerwise_fp8"] < needs["none"] and needs["int8"] < needs["none"]
    assert choose_memory_level(model, "cpu", tokens, batch) == "none"  # off CUDA nothing is to be saved
    assert choose_memory_level(model, "cuda", tokens, batch, free_bytes=10 * needs["none"]) == "none"
    squeezed = int(needs["model_offload"] / 0.9) + 1
    assert choose_memory_level(model, "cuda", tokens, batch, free_bytes=squeezed) == "model_offload"
    tight = int(needs["group_offload"] / 0.9) + 1
    assert needs["layerwise_fp8"] > 0.9 * tight  # auto never changes the weights, however tight
    assert choose_memory_level(model, "cuda", tokens, batch, free_bytes=tight) == "group_offload"
    assert choose_memory_level(model, "cuda", tokens, batch, free_bytes=1) == AUTO_ORDER[-1] == "group_offload"


def test_sample_puts_the_model_at_the_settings_level_and_auto_leaves_it(tiny_model, baseline):
    inputs, expected = baseline
    model = copy.deepcopy(tiny_model)
    pipe = LeffaPipeline(model)
    auto = pipe.sample(*inputs, SamplingSettings(num_inference_steps=STEPS, seed=3), output_type="pt")
    assert model.memory_level == "none" and torch.equal(auto.images, expected)
    offloaded = pipe.sample(*inputs, SamplingSettings(num_inference_steps=STEPS, seed=3, memory="group_offload"),
                            output_type="pt")
    assert model.memory_level == "group_offload" and torch.equal(offloaded.images, expected)
    pipe.sample(*inputs, SamplingSettings(num_inference_steps=1, memory="int8"))
    with pytest.raises(ValueError, match="load the model again for level 'none'"):
        pipe.sample(*inputs, SamplingSettings(num_inference_steps=1, memory="none"))


@pytest.mark.parametrize("ref_acceleration", [False, True])
def test_model_offload_keeps_one_part_on_the_device_at_a_time(tiny_model, baseline, ref_acceleration):
    """The parts run in the order the sampler calls them; accelerate's hook moves a part to the device and
    sends its ``prev_module_hook``'s part back (when that is not on the CPU already, which on this CPU-only
    machine it always is, so the moves are replayed from the recorded order and the hooks' chain)."""
    inputs, _ = baseline
    model = copy.deepcopy(tiny_model)
    apply_memory_level(model, "model_offload", "cpu")
    names = {id(hook): name for name, hook in zip(("vae", "reference", "generative"), model.offload_hooks)}
    previous = {names[id(hook)]: names.get(id(hook.hook.prev_module_hook)) for hook in model.offload_hooks}
    order: list[str] = []
    for hook in model.offload_hooks:
        onload, offload, part = hook.hook.pre_forward, hook.offload, names[id(hook)]

        def on(module, *args, onload=onload, name=part, **kwargs):
            order.append(name)
            return onload(module, *args, **kwargs)

        def off(offload=offload, name=part):
            order.append(f"-{name}")
            offload()

        hook.hook.pre_forward, hook.offload = on, off
    _run(model, inputs, ref_acceleration=ref_acceleration)
    resident: set[str] = set()
    for name in order:
        if name.startswith("-"):
            resident.discard(name[1:])
            continue
        resident.discard(previous[name])
        resident.add(name)
        assert len(resident) == 1, (name, resident)
    assert resident == set()  # everything back on the CPU after the call
    order = [name for name in order if not name.startswith("-")]
    assert order[0] == order[-1] == "vae" and order.count("generative") >= STEPS
    handovers = sum(a != b for a, b in zip(order, order[1:]))
    assert handovers == (3 if ref_acceleration else 2 * STEPS + 1)  # the UNets take turns at every step
