"""The model: processors against naive attention, released key format, strict loading and saving."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor

from leffa.core.attention import (
    PassthroughProcessor,
    ReferenceAttentionProcessor,
    ReferenceCapture,
    ReferenceCaptureProcessor,
    ReferenceInputs,
    layer_sort_key,
)
from leffa.core.configs import load_base_configs
from leffa.core.model import LeffaModel
from leffa.common import CheckpointMismatchError
from leffa.core.serialization import read_state_dict, save_state_dict
from tests.conftest import SHARED_REFERENCE


def _naive_reference_attention(attn, hidden, reference):
    """Released formulation: attend over concat(own, reference) with explicit softmax, keep first n rows."""
    tokens = torch.cat([hidden, reference], dim=1)
    q = tokens @ attn.to_q.weight.T
    k = tokens @ attn.to_k.weight.T
    v = tokens @ attn.to_v.weight.T
    heads = attn.heads
    d = q.shape[-1] // heads
    outs = []
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        scores = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(d)
        weights = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        outs.append(weights @ v[..., sl])
    out = torch.cat(outs, dim=-1) @ attn.to_out[0].weight.T + attn.to_out[0].bias
    return out[:, : hidden.shape[1]]


def _first_block(model):
    return model.unet.down_blocks[0].attentions[0].transformer_blocks[0]


def test_reference_processor_equals_naive_concat_attention(tiny_model):
    block = _first_block(tiny_model)
    attn = block.attn1
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 48, 32, generator=gen)
    reference = torch.randn(2, 48, 32, generator=gen)
    with torch.no_grad():
        ours = ReferenceAttentionProcessor(name)(attn, hidden, reference=ReferenceInputs({name: reference}))
        naive = _naive_reference_attention(attn, hidden, reference)
        stock = AttnProcessor()(attn, torch.cat([hidden, reference], dim=1))[:, :48]
    torch.testing.assert_close(ours, naive, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=1e-5)


def _heads(attn, x):
    return x.view(x.shape[0], x.shape[1], attn.heads, -1).transpose(1, 2)


def _previous_processor(attn, hidden, reference=None):
    """The processors before they were built on AttnProcessor2_0: reference keys projected on their own,
    then concatenated; SDPA with the layer's explicit scale."""
    tokens = hidden if reference is None else torch.cat([hidden, reference], dim=1)
    key = _heads(attn, attn.to_k(hidden))
    if reference is not None:
        key = torch.cat([key, _heads(attn, attn.to_k(reference))], dim=2)
    out = F.scaled_dot_product_attention(
        _heads(attn, attn.to_q(hidden)), key, _heads(attn, attn.to_v(tokens)), scale=attn.scale
    )
    out = out.transpose(1, 2).reshape(hidden.shape[0], hidden.shape[1], -1)
    return attn.to_out[1](attn.to_out[0](out))


@pytest.mark.parametrize(("channels", "heads", "tokens"), [(32, 8, 48), (320, 8, 192), (128, 2, 96)])
def test_processors_are_bit_identical_to_the_previous_formulation(channels, heads, tokens):
    torch.manual_seed(0)
    attn = Attention(channels, heads=heads, dim_head=channels // heads).eval()
    hidden, reference = torch.randn(2, tokens, channels), torch.randn(2, tokens // 2, channels)
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    with torch.no_grad():
        inputs = ReferenceInputs({name: reference})
        generative = ReferenceAttentionProcessor(name)(attn, hidden, reference=inputs)
        plain = ReferenceCaptureProcessor(name)(attn, hidden)
        assert torch.equal(generative, _previous_processor(attn, hidden, reference))
        assert torch.equal(plain, _previous_processor(attn, hidden))


def test_processors_keep_only_their_layer_name(tiny_model):
    for unet in (tiny_model.unet, tiny_model.unet_encoder):
        for key, processor in unet.attn_processors.items():
            layer = key.removesuffix(".processor")
            assert vars(processor) == ({"name": layer} if layer.endswith("attn1") else {})


def test_generative_unet_without_reference_inputs_is_a_clear_error(tiny_model):
    block = _first_block(tiny_model)
    with pytest.raises(RuntimeError, match="no reference features for layer down_blocks.0.attentions.0"):
        block.attn1(torch.randn(1, 48, 32))
    with pytest.raises(ValueError, match="attention masks are not supported"):
        block.attn1(torch.randn(1, 48, 32), attention_mask=torch.ones(1, 48))



def test_each_unet_refuses_the_other_unets_input(tiny_model):
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    hidden = torch.randn(1, 48, 32)
    with pytest.raises(
        ValueError, match=rf"^{name}: got reference=, which belongs to the other UNet; this layer takes capture=$"
    ):
        tiny_model.unet_encoder.down_blocks[0].attentions[0].transformer_blocks[0].attn1(
            hidden, reference=ReferenceInputs({name: hidden})
        )
    with pytest.raises(
        ValueError, match=rf"^{name}: got capture=, which belongs to the other UNet; this layer takes reference=$"
    ):
        _first_block(tiny_model).attn1(hidden, capture=ReferenceCapture(stop_after=None))


def test_cross_attention_returns_input_so_block_adds_norm2(tiny_model):
    block = _first_block(tiny_model)
    assert isinstance(block.attn2.processor, PassthroughProcessor)
    hidden = torch.randn(1, 48, 32)
    kwargs = {"reference": ReferenceInputs({block.attn1.processor.name: torch.randn(1, 48, 32)})}
    with torch.no_grad():
        out = block(hidden, cross_attention_kwargs=kwargs)
        h1 = hidden + block.attn1(block.norm1(hidden), **kwargs)
        h2 = h1 + block.norm2(h1)
        expected = h2 + block.ff(block.norm3(h2))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_reference_features_are_attn1_inputs_matched_by_name(tiny_model):
    latents = torch.randn(1, 4, 8, 6)
    seen = {}
    hooks = [
        module.register_forward_pre_hook(lambda mod, args, name=name: seen.setdefault(name, args[0]))
        for name, module in tiny_model.unet_encoder.named_modules()
        if name.endswith("attn1")
    ]
    try:
        with torch.no_grad():
            features = tiny_model.reference_features(latents, torch.tensor(10))
    finally:
        for hook in hooks:
            hook.remove()
    assert list(features) == tiny_model.layers
    for name, tensor in features.items():
        torch.testing.assert_close(tensor, seen[name])


def test_reference_pass_stops_after_last_used_layer(tiny_model):
    calls = []
    hook = tiny_model.unet_encoder.conv_out.register_forward_hook(lambda *args: calls.append(1))
    try:
        with torch.no_grad():
            tiny_model.reference_features(torch.randn(1, 4, 8, 6), torch.tensor(10))
    finally:
        hook.remove()
    assert calls == []


def test_layers_in_execution_order(tiny_model):
    assert tiny_model.layers == sorted(tiny_model.layers, key=layer_sort_key)
    assert tiny_model.layers[2].startswith("mid_block")
    with pytest.raises(ValueError, match="not a self-attention layer"):
        layer_sort_key("conv_in")


def _read_tsv(path):
    rows = path.read_text().strip().splitlines()[1:]
    return {key: tuple(int(x) for x in shape.split("x")) for key, shape in (row.split("\t") for row in rows)}


@pytest.mark.parametrize(
    ("base", "tsv", "layers"),
    [("sd15-inpainting", "checkpoint_keys_virtual_tryon.tsv", 16), ("sdxl-inpainting", "checkpoint_keys_pose_transfer.tsv", 70)],
)
def test_full_size_model_has_released_keys_and_shapes(base, tsv, layers):
    path = SHARED_REFERENCE / tsv
    if not path.exists():
        pytest.skip(f"{path} not present")
    model = LeffaModel.from_base(base, device="meta")
    ours = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert ours == _read_tsv(path)
    assert len(model.layers) == layers


def test_sdxl_runs_without_added_conditioning():
    configs = load_base_configs("sdxl-inpainting")
    assert configs.scheduler["rescale_betas_zero_snr"] is True
    model = LeffaModel.from_base("sdxl-inpainting", device="meta")
    assert model.unet.config.addition_embed_type is None
    assert "add_embedding.linear_1.weight" in model.unet.state_dict()
    assert model.vae_force_upcast is True


def test_base_scheduler_timesteps_match_release():
    scheduler = LeffaModel.from_base("tiny", device="meta").make_scheduler()
    scheduler.set_timesteps(30)
    steps = scheduler.timesteps.tolist()
    assert steps[:2] == [958, 925] and steps[-2:] == [34, 1] and len(steps) == 30


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_save_and_strict_load_round_trip(tiny_model, tmp_path, suffix, tiny_inputs):
    path = save_state_dict(tiny_model.state_dict(), tmp_path / f"tiny{suffix}")
    loaded = LeffaModel.from_pretrained(path, base="tiny", device="cpu")
    for name, tensor in tiny_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert all(p.device.type == "cpu" for p in loaded.parameters())


def test_fp16_copy_keeps_keys_and_halves_size(tiny_model, tmp_path):
    full = save_state_dict(tiny_model.state_dict(), tmp_path / "a.safetensors")
    half = save_state_dict(tiny_model.state_dict(), tmp_path / "b.safetensors", dtype=torch.float16)
    state = read_state_dict(half)
    assert set(state) == set(tiny_model.state_dict())
    assert all(t.dtype == torch.float16 for t in state.values())
    assert half.stat().st_size < 0.6 * full.stat().st_size
    model = LeffaModel.from_pretrained(half, base="tiny", device="cpu", dtype="fp32")
    assert model.dtype == torch.float32


def test_mismatched_checkpoint_names_first_differences(tiny_model, tmp_path):
    state = dict(tiny_model.state_dict())
    state.pop("unet.conv_in.bias")
    state["unet.extra.weight"] = torch.zeros(1)
    state["vae.quant_conv.bias"] = torch.zeros(3)
    path = save_state_dict(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError) as info:
        LeffaModel.from_pretrained(path, base="tiny", device="cpu")
    message = str(info.value)
    assert "1 missing keys: unet.conv_in.bias" in message
    assert "1 unexpected keys: unet.extra.weight" in message
    assert "vae.quant_conv.bias (3,) != (8,)" in message
    assert "model base: tiny" in message


def test_wrong_base_is_a_clear_error(tiny_model, tmp_path):
    path = save_state_dict(tiny_model.state_dict(), tmp_path / "tiny.safetensors")
    with pytest.raises(CheckpointMismatchError, match="model base: sd15-inpainting"):
        LeffaModel.from_pretrained(path, base="sd15-inpainting", device="cpu")


def test_unreadable_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        read_state_dict(tmp_path / "missing.pth")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match="unsupported checkpoint type"):
        read_state_dict(tmp_path / "x.txt")
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="could not read"):
        read_state_dict(tmp_path / "junk.pth")
    torch.save({"a": 1}, tmp_path / "notensors.pth")
    with pytest.raises(ValueError, match="not a plain dict of tensors"):
        read_state_dict(tmp_path / "notensors.pth")


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"a": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="could not read"):
        read_state_dict(tmp_path / "evil.pth")


def test_meta_build_allocates_nothing():
    model = LeffaModel.from_base("sd15-inpainting", device="meta")
    assert all(p.is_meta for p in model.parameters())


def test_bad_device_and_dtype_names():
    with pytest.raises(ValueError, match="unsupported dtype"):
        LeffaModel.from_base("tiny", dtype="fp8")
    with pytest.raises(ValueError, match="unknown base"):
        LeffaModel.from_base("sd3")


def test_base_is_detected_from_keys(tiny_model, tmp_path):
    from leffa.core.serialization import detect_base

    path = save_state_dict(tiny_model.state_dict(), tmp_path / "tiny.safetensors")
    assert LeffaModel.from_pretrained(path, device="cpu").base == "tiny"
    sd15 = {name: torch.empty(0) for name in LeffaModel.from_base("sd15-inpainting", device="meta").state_dict()}
    sdxl = {name: torch.empty(0) for name in LeffaModel.from_base("sdxl-inpainting", device="meta").state_dict()}
    sd15["unet.conv_in.weight"] = sdxl["unet.conv_in.weight"] = torch.empty(320, 12, 3, 3)
    assert detect_base(sd15) == "sd15-inpainting"
    assert detect_base(sdxl) == "sdxl-inpainting"
    with pytest.raises(ValueError, match="not a Leffa checkpoint"):
        detect_base({"weight": torch.zeros(1)})


def test_a_model_that_knows_its_training_size_refuses_others(tiny_model, tmp_path):
    """The demo models' metadata.json says the size they were trained at: from_pretrained reads it and the
    pipeline refuses other sizes (noise, slowly) with the letterbox call that fixes it."""
    import json

    from PIL import Image

    from leffa.core.pipeline import LeffaPipeline

    path = save_state_dict(tiny_model.state_dict(), tmp_path / "model.safetensors")
    assert LeffaModel.from_pretrained(path, base="tiny", device="cpu").trained_size is None  # no metadata
    (tmp_path / "metadata.json").write_text(json.dumps({"trained": True, "image_size": [64, 48]}))
    model = LeffaModel.from_pretrained(tmp_path, base="tiny", device="cpu")
    assert model.trained_size == (64, 48)
    pipe = LeffaPipeline(model)

    def run(width: int, height: int):
        image = Image.new("RGB", (width, height), "white")
        return pipe(image, image, Image.new("L", (width, height), 255), image, num_inference_steps=1, seed=0)

    with pytest.raises(ValueError, match=r"trained at 48x64 pixels \(width x height.*gives noise at 96x128: "
                                         r"letterbox the images to its size, .*letterbox\(image, size=\(48, 64\)\)"):
        run(96, 128)
    assert run(48, 64)[0].size == (48, 64)
    model.trained_size = None
    assert run(96, 128)[0].size == (96, 128)
    (tmp_path / "metadata.json").write_text(json.dumps({"image_size": "big"}))
    with pytest.raises(ValueError, match=r"image_size must be \[height, width\] in pixels, got 'big'"):
        LeffaModel.from_pretrained(tmp_path, base="tiny", device="cpu")
