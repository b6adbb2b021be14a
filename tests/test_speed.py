"""Speed options: each does what it says, changes results at most in the last bits, and bad use is a clear error."""

from __future__ import annotations

import pytest
import torch

from leffa.core.model import LeffaModel
from leffa.core.pipeline import LeffaPipeline
from leffa.core.speed import SpeedOptions, apply_speed_options, check_sdpa_backend


def _model() -> LeffaModel:
    torch.manual_seed(0)
    return LeffaModel.from_base("tiny").eval()


def _generate(model: LeffaModel, tiny_inputs) -> torch.Tensor:
    return LeffaPipeline(model)(*tiny_inputs, num_inference_steps=2, seed=3, output_type="pt").images


def _inside_attention(model: LeffaModel, probe):
    """Run ``probe()`` inside the first generative self-attention layer during a forward pass."""
    seen = []
    module = model.unet.get_submodule(model.layers[0])
    hook = module.register_forward_pre_hook(lambda mod, args: seen.append(probe()))
    try:
        with torch.no_grad():
            t = torch.tensor(10)
            latents = torch.randn(1, 4, 8, 6)
            model.predict_noise(latents, torch.ones(1, 1, 8, 6), latents, torch.zeros(1, 3, 8, 6), t,
                                model.reference_features(latents, t))
    finally:
        hook.remove()
    return seen[0]


def test_defaults_change_nothing(tiny_inputs):
    options = SpeedOptions()
    assert options.enabled == []
    assert torch.equal(_generate(apply_speed_options(_model(), options), tiny_inputs), _generate(_model(), tiny_inputs))


def test_channels_last_converts_unet_weights_and_keeps_results(tiny_inputs):
    model = apply_speed_options(_model(), SpeedOptions(channels_last=True))
    for unet in (model.unet, model.unet_encoder):
        assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.vae.encoder.conv_in.weight.is_contiguous()
    torch.testing.assert_close(_generate(model, tiny_inputs), _generate(_model(), tiny_inputs), atol=1e-5, rtol=1e-5)


def test_sdpa_backend_is_pinned_inside_the_unets_only():
    model = apply_speed_options(_model(), SpeedOptions(sdpa_backend="math"))
    assert _inside_attention(model, torch.backends.cuda.flash_sdp_enabled) is False
    assert _inside_attention(model, torch.backends.cuda.math_sdp_enabled) is True
    assert torch.backends.cuda.flash_sdp_enabled() is True  # restored outside
    assert _inside_attention(_model(), torch.backends.cuda.flash_sdp_enabled) is True


def test_bf16_autocast_runs_the_unets_in_bf16_and_stays_close(tiny_inputs):
    model = apply_speed_options(_model(), SpeedOptions(autocast="bf16"))
    assert _inside_attention(model, lambda: torch.is_autocast_enabled("cpu")) is True
    assert not torch.is_autocast_enabled("cpu")
    assert model.unet.conv_in.weight.dtype == torch.float32
    fast, plain = _generate(model, tiny_inputs), _generate(_model(), tiny_inputs)
    assert not torch.equal(fast, plain)
    assert (fast - plain).abs().mean().item() < 0.02


def test_vae_tiling_and_slicing_are_switched_on():
    model = apply_speed_options(_model(), SpeedOptions(vae_tiling=True, vae_slicing=True))
    assert model.vae.use_tiling and model.vae.use_slicing
    plain = _model()
    assert not plain.vae.use_tiling and not plain.vae.use_slicing


def test_compile_compiles_both_unets_with_room_for_one_graph_per_layer(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kwargs: calls.append((self, kwargs)))
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 8)
    model = apply_speed_options(_model(), SpeedOptions(compile=True, compile_mode="max-autotune"))
    assert [unet for unet, _ in calls] == [model.unet_encoder, model.unet]
    assert all(kwargs == {"mode": "max-autotune", "backend": "inductor", "dynamic": False} for _, kwargs in calls)
    assert torch._dynamo.config.recompile_limit >= 256


def test_enabled_names_every_option():
    options = SpeedOptions(compile=True, channels_last=True, sdpa_backend="flash", autocast="bf16",
                           vae_tiling=True, vae_slicing=True)
    assert options.enabled == [
        "compile (inductor)", "channels-last", "SDPA flash", "bf16 autocast", "VAE tiling", "VAE slicing",
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sdpa_backend": "fast"}, r"unknown sdpa_backend 'fast'; choose one of auto, flash, efficient, cudnn, math"),
        ({"autocast": "fp8"}, r"unknown autocast dtype 'fp8'; choose one of bf16, fp16"),
    ],
)
def test_bad_option_values_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpeedOptions(**kwargs)


def test_combinations_without_a_kernel_are_refused_before_anything_changes():
    model = _model()
    with pytest.raises(ValueError, match=r"SDPA backend 'efficient' exists on CUDA only \(device is cpu\)"):
        apply_speed_options(model, SpeedOptions(sdpa_backend="efficient", channels_last=True))
    assert model.unet.conv_in.weight.is_contiguous()
    with pytest.raises(ValueError, match="fp16 autocast is not useful on the CPU; use autocast 'bf16'"):
        apply_speed_options(model, SpeedOptions(autocast="fp16"))
    with pytest.raises(ValueError, match=r"SDPA backend 'flash' needs fp16 or bf16 on CUDA"):
        check_sdpa_backend("flash", torch.device("cuda"), torch.float32)
    check_sdpa_backend("flash", torch.device("cuda"), torch.float16)
    check_sdpa_backend("flash", torch.device("cpu"), torch.float32)


def test_options_apply_once_per_model():
    model = apply_speed_options(_model(), SpeedOptions(channels_last=True))
    with pytest.raises(ValueError, match="speed options are already applied to this model"):
        apply_speed_options(model, SpeedOptions(sdpa_backend="math"))


def test_command_line_flags_become_speed_options():
    from leffa.app.cli import _speed, build_parser

    args = build_parser().parse_args(
        ["tryon", "p.png", "g.png", "--compile", "--channels-last", "--sdpa-backend", "math", "--autocast", "bf16",
         "--vae-tiling"]
    )
    assert _speed(args) == SpeedOptions(compile=True, channels_last=True, sdpa_backend="math", autocast="bf16",
                                        vae_tiling=True)
    assert _speed(build_parser().parse_args(["tryon", "p.png", "g.png"])) == SpeedOptions()


def test_released_runtime_applies_the_speed_options_as_each_model_loads(tmp_path, monkeypatch):
    import leffa.app.service as service
    from leffa.app.runtime import released_runtime

    monkeypatch.setattr(service, "ensure_files", lambda task, ckpt_dir, download: {"virtual_tryon": "x.pth"})
    monkeypatch.setattr(service.LeffaModel, "from_pretrained", lambda path, device, dtype: _model())
    runtime = released_runtime(tmp_path, device="cpu", download=False, speed=SpeedOptions(channels_last=True))
    model = runtime.store.pipeline("viton_hd").model
    assert model.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.speed_options == SpeedOptions(channels_last=True)
