"""The numerics on every available device and dtype: CPU always; CUDA and Apple MPS when present.

Each test takes the ``device_dtype`` fixture: fp32 everywhere, bf16 on the CPU, fp16 and bf16 on CUDA,
fp16 on MPS. A device or dtype this machine lacks is skipped with the reason, never failed. References are
computed naively in float32/float64 on the CPU from the same (cast) inputs, and compared with a tolerance
per dtype (``tolerance``). ``bench/gpu.py`` runs this file as its CUDA test lane.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from leffa.core.flow import attention_to_flow, leffa_loss, reference_grid, warp
from leffa.core.model import DTYPES, LeffaModel
from leffa.core.pipeline import LeffaPipeline, rescale_noise_cfg
from leffa.core.recording import attention_flow
from leffa.core.speed import SpeedOptions, apply_speed_options
from preprocess.densepose import DensePoseModel, DensePoseRCNN, DensePoseSettings

DEVICE_DTYPES: dict[str, tuple[str, ...]] = {"cpu": ("fp32", "bf16"), "cuda": ("fp32", "fp16", "bf16"), "mps": ("fp32", "fp16")}
_TOLERANCES = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
_ACCELERATOR_FP32 = 1e-4  # other kernels (and TF32 convolutions on CUDA) reorder fp32 sums
_DENSEPOSE = DensePoseSettings(shortest_edge=128, max_size=192, detections_per_image=2)


def _unavailable(device: str, dtype: str) -> str | None:
    if device == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available on this machine"
    if device == "mps" and not torch.backends.mps.is_available():
        return "Apple MPS is not available on this machine"
    if device == "cuda" and dtype == "bf16" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bf16 support"
    return None


@pytest.fixture(
    params=[(device, dtype) for device, dtypes in DEVICE_DTYPES.items() for dtype in dtypes],
    ids=lambda case: f"{case[0]}-{case[1]}",
)
def device_dtype(request) -> tuple[torch.device, torch.dtype]:
    reason = _unavailable(*request.param)
    if reason is not None:
        pytest.skip(reason)
    device, dtype = request.param
    return torch.device(device), DTYPES[dtype]


def tolerance(device: torch.device, dtype: torch.dtype) -> float:
    """Absolute and relative tolerance of a result computed in ``dtype`` on ``device``."""
    if dtype == torch.float32 and device.type != "cpu":
        return _ACCELERATOR_FP32
    return _TOLERANCES[dtype]


def _close(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    torch.testing.assert_close(actual.detach().cpu().double(), expected.detach().cpu().double(), atol=tol, rtol=tol)


def _tiny(device: torch.device, dtype: torch.dtype) -> LeffaModel:
    torch.manual_seed(0)
    return LeffaModel.from_base("tiny", device=device, dtype=dtype).eval()


def _images(seed: int = 123) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    src, ref, dense = (torch.rand(1, 3, 64, 48, generator=gen) * 2 - 1 for _ in range(3))
    mask = torch.zeros(1, 1, 64, 48)
    mask[..., 16:48, 8:40] = 1
    return src, ref, mask, dense


def _step_inputs(device: torch.device, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    latents, masked, ref = (torch.randn(2, 4, 8, 6, generator=gen) for _ in range(3))
    dense = torch.randn(2, 3, 8, 6, generator=gen)
    mask = (torch.rand(2, 1, 8, 6, generator=gen) > 0.5).float()
    return tuple(t.to(device) for t in (latents, mask, masked, dense, ref))


def _naive_concat_attention(attn, hidden: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Released formulation in float64: softmax over concat(own, reference) per head, first n rows."""
    def weight(layer):
        return layer.weight.detach().cpu().double()

    tokens = torch.cat([hidden, reference], dim=1).cpu().double()
    q, k, v = (tokens @ weight(proj).T for proj in (attn.to_q, attn.to_k, attn.to_v))
    d = q.shape[-1] // attn.heads
    heads = []
    for h in range(attn.heads):
        part = slice(h * d, (h + 1) * d)
        scores = q[..., part] @ k[..., part].transpose(1, 2) / math.sqrt(d)
        heads.append(scores.softmax(dim=-1) @ v[..., part])
    out = torch.cat(heads, dim=-1) @ weight(attn.to_out[0]).T + attn.to_out[0].bias.detach().cpu().double()
    return out[:, : hidden.shape[1]]


def test_reference_attention_equals_naive_concat_attention(device_dtype):
    device, dtype = device_dtype
    model = _tiny(device, dtype)
    latents, mask, masked, dense, ref = _step_inputs(device)
    t = torch.tensor(300, device=device)
    seen, hooks = {}, []

    def keep(name: str):
        def hook(module, args, out) -> None:
            seen[name] = (args[0], out)

        return hook

    for name in model.layers:
        hooks.append(model.unet.get_submodule(name).register_forward_hook(keep(name)))
    try:
        with torch.no_grad():
            features = model.reference_features(ref, t)
            model.predict_noise(latents, mask, masked, dense, t, features)
    finally:
        for hook in hooks:
            hook.remove()
    assert set(seen) == set(model.layers) == set(features)
    for name, (hidden, out) in seen.items():
        assert out.dtype == dtype and out.device.type == device.type
        naive = _naive_concat_attention(model.unet.get_submodule(name), hidden, features[name].to(dtype))
        _close(out, naive, tolerance(device, dtype))


def _spy(monkeypatch, model):
    predictions, stepped = [], []
    original_predict, original_step = model.predict_noise, DDPMScheduler.step

    def predict(*args, **kwargs):
        out = original_predict(*args, **kwargs)
        predictions.append(out.detach().cpu().double())
        return out

    def step(self, model_output, *args, **kwargs):
        stepped.append(model_output.detach().cpu().double())
        return original_step(self, model_output, *args, **kwargs)

    monkeypatch.setattr(model, "predict_noise", predict)
    monkeypatch.setattr(DDPMScheduler, "step", step)
    return predictions, stepped


def test_sampler_guidance_and_rescale_equal_the_formula(device_dtype, monkeypatch):
    device, dtype = device_dtype
    model = _tiny(device, dtype)
    predictions, stepped = _spy(monkeypatch, model)
    LeffaPipeline(model)(*_images(), num_inference_steps=2, guidance_scale=2.5, seed=1, output_type="pt")
    assert len(predictions) == len(stepped) == 2
    for pred, used in zip(predictions, stepped):
        uncond, cond = pred.chunk(2)
        guided = uncond + 2.5 * (cond - uncond)
        ratio = cond.std(dim=(1, 2, 3), keepdim=True) / guided.std(dim=(1, 2, 3), keepdim=True)
        _close(used, 2.5 * guided * ratio - 1.5 * guided, tolerance(device, torch.float32))


def test_rescale_noise_cfg_in_each_dtype(device_dtype):
    device, dtype = device_dtype
    gen = torch.Generator().manual_seed(0)
    guided, cond = torch.randn(2, 4, 5, 3, generator=gen), torch.randn(2, 4, 5, 3, generator=gen) * 3
    guided, cond = guided.to(dtype), cond.to(dtype)
    expected = torch.empty(2, 4, 5, 3, dtype=torch.float64)
    for i in range(2):
        g, c = guided[i].double(), cond[i].double()
        expected[i] = 2.5 * g * (c.flatten().std() / g.flatten().std()) - 1.5 * g
    result = rescale_noise_cfg(guided.to(device), cond.to(device), 2.5)
    assert result.dtype == dtype
    _close(result, expected, 4 * tolerance(device, dtype))


def test_same_seed_same_image_on_the_device(device_dtype):
    device, dtype = device_dtype
    pipe = LeffaPipeline(_tiny(device, dtype))

    def run(seed: int) -> torch.Tensor:
        return pipe(*_images(), num_inference_steps=2, seed=seed, output_type="pt").images

    first, again, other = run(7), run(7), run(8)
    assert first.device.type == device.type and torch.isfinite(first).all()
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    if dtype == torch.float32 and device.type != "cpu":
        on_cpu = LeffaPipeline(_tiny(torch.device("cpu"), dtype))(
            *_images(), num_inference_steps=2, seed=7, output_type="pt"
        ).images
        assert (first.cpu() - on_cpu).abs().max().item() < 1e-2  # the noise is drawn on the CPU: same image


def _naive_bilinear(image: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bilinear sample of (C, H, W) at pixel positions (border-clamped), written out; differentiable in x, y."""
    height, width = image.shape[-2:]
    x, y = x.clamp(0, width - 1), y.clamp(0, height - 1)
    x0 = x.detach().floor().clamp(max=width - 2).long()
    y0 = y.detach().floor().clamp(max=height - 2).long()
    wx, wy = x - x0, y - y0
    top = image[:, y0, x0] * (1 - wx) + image[:, y0, x0 + 1] * wx
    bottom = image[:, y0 + 1, x0] * (1 - wx) + image[:, y0 + 1, x0 + 1] * wx
    return top * (1 - wy) + bottom * wy


def _naive_warp(reference: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Upsample the flow (align-corners bilinear) to the image and sample the image at it, in float64."""
    batch, channels, height, width = reference.shape
    h, w = flow.shape[1:3]
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij")
    out = []
    for b in range(batch):
        field = flow[b].permute(2, 0, 1).double()
        up = _naive_bilinear(field, xs * (w - 1) / (width - 1), ys * (h - 1) / (height - 1))
        px, py = (up[0] + 1) * (width - 1) / 2, (up[1] + 1) * (height - 1) / 2
        out.append(_naive_bilinear(reference[b].double(), px, py))
    return torch.stack(out)


def _flow_case(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 12, 20, generator=gen) * 3
    reference = torch.rand(2, 3, 9, 10, generator=gen) * 2 - 1
    target = torch.rand(2, 3, 9, 10, generator=gen) * 2 - 1
    mask = (torch.rand(2, 1, 9, 10, generator=gen) > 0.4).float()
    return logits, reference, target, mask


def test_flow_and_warp_equal_naive(device_dtype):
    device, dtype = device_dtype
    logits, reference, _, _ = _flow_case()
    attn = logits.softmax(dim=-1).to(dtype)
    flow = attention_to_flow(attn.to(device), (3, 4), (4, 5))
    grid = torch.stack(torch.meshgrid(torch.linspace(-1, 1, 4), torch.linspace(-1, 1, 5), indexing="ij")[::-1], -1)
    expected = (attn.double() @ grid.reshape(20, 2).double()).reshape(2, 3, 4, 2)
    assert flow.dtype == dtype
    _close(flow, expected, tolerance(device, dtype))
    warped = warp(reference.to(device, dtype), flow)
    _close(warped, _naive_warp(reference.to(dtype), flow.cpu()), 4 * tolerance(device, dtype))


def test_fused_attention_flow_equals_explicit_head_average(device_dtype):
    device, dtype = device_dtype
    gen = torch.Generator().manual_seed(2)
    query, key = (torch.randn(2, 4, 12, 8, generator=gen).to(dtype) for _ in range(2))
    flow = attention_flow(query.to(device), key.to(device), 0.5, (3, 4))
    probs = (query.double() @ key.double().transpose(-1, -2) * 0.5).softmax(dim=-1).mean(dim=1)
    expected = (probs @ reference_grid(3, 4, dtype=torch.float64)).reshape(2, 3, 4, 2)
    assert flow.dtype == torch.float32  # computed in float32 whatever the inputs
    _close(flow, expected, tolerance(device, torch.float32) * 10)


def _naive_loss(flows, reference, target, mask, timesteps, theta=500):
    total = 0
    for flow in flows.values():
        error = (target.double() - _naive_warp(reference, flow)) * mask.double()
        gate = (timesteps < theta).double()
        total = total + (error.square().mean(dim=(1, 2, 3)) * gate).sum() / target.shape[0]
    return total


def test_leffa_loss_and_its_gradient_equal_naive(device_dtype):
    device, dtype = device_dtype
    logits, reference, target, mask = _flow_case(3)
    flows = {
        "a": (torch.rand(2, 3, 4, 2, generator=torch.Generator().manual_seed(4)) * 2.4 - 1.2).to(dtype),
        "b": (torch.rand(2, 2, 3, 2, generator=torch.Generator().manual_seed(5)) * 2.4 - 1.2).to(dtype),
    }
    timesteps = torch.tensor([10, 499])
    leaves = {name: flow.to(device).clone().requires_grad_() for name, flow in flows.items()}
    loss = leffa_loss(leaves, reference.to(device), target.to(device), mask.to(device), timesteps.to(device))
    loss.total.backward()
    naive_leaves = {name: flow.double().clone().requires_grad_() for name, flow in flows.items()}
    naive = _naive_loss(naive_leaves, reference, target, mask, timesteps)
    naive.backward()
    _close(loss.total, naive, tolerance(device, torch.float32))
    for name in flows:
        assert leaves[name].grad.dtype == dtype
        _close(leaves[name].grad, naive_leaves[name].grad, 4 * tolerance(device, dtype))


@pytest.fixture(scope="module")
def densepose_case():
    """Seeded random weights whose box classifier calls every proposal a person (boxes = proposals), an
    image, and the CPU fp32 references: backbone features in the plain layout and the end-to-end result."""
    torch.manual_seed(0)
    network = DensePoseRCNN().eval()
    with torch.no_grad():
        predictor = network.roi_heads.box_predictor
        predictor.cls_score.weight.zero_()
        predictor.cls_score.bias.copy_(torch.tensor([4.0, 0.0]))
        predictor.bbox_pred.weight.zero_()
        predictor.bbox_pred.bias.zero_()
    image = np.random.default_rng(0).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    batch = torch.randn(1, 3, 128, 96, generator=torch.Generator().manual_seed(1)) * 50
    with torch.no_grad():
        features = network.backbone(batch)
    result = DensePoseModel(copy.deepcopy(network), _DENSEPOSE).predict(image)
    return network, image, batch, features, result


def test_densepose_on_the_device_matches_the_cpu(device_dtype, densepose_case):
    device, dtype = device_dtype
    network, image, batch, features, expected = densepose_case
    model = DensePoseModel(copy.deepcopy(network), _DENSEPOSE).to(device, dtype)
    with torch.no_grad():
        ours = model.network.backbone(batch.to(device, dtype).contiguous(memory_format=model.memory_format))
    assert set(ours) == set(features)
    for level, tensor in features.items():
        scale = tensor.abs().max().item()
        assert (ours[level].float().cpu() - tensor).abs().max().item() <= 20 * tolerance(device, dtype) * scale, level
    result = model.predict(image)
    assert result.num_people == expected.num_people == 2
    if dtype == torch.float32:
        np.testing.assert_allclose(result.boxes, expected.boxes, atol=1e-2)
        assert (result.part_index_map() == expected.part_index_map()).mean() >= 0.99


def _speed_cases() -> list:
    return [
        pytest.param(SpeedOptions(channels_last=True), id="channels-last"),
        pytest.param(SpeedOptions(sdpa_backend="math"), id="sdpa-math"),
        pytest.param(SpeedOptions(sdpa_backend="flash"), id="sdpa-flash"),
        pytest.param(SpeedOptions(sdpa_backend="efficient"), id="sdpa-efficient"),
    ]


@pytest.mark.parametrize("options", _speed_cases())
def test_speed_options_keep_the_noise_prediction(device_dtype, options):
    device, dtype = device_dtype
    if options.sdpa_backend in ("efficient", "cudnn") and device.type != "cuda":
        pytest.skip(f"SDPA backend {options.sdpa_backend!r} exists on CUDA only")
    if options.sdpa_backend == "flash" and device.type == "cuda" and dtype == torch.float32:
        pytest.skip("flash attention on CUDA needs fp16/bf16")
    if options.sdpa_backend == "flash" and device.type == "mps":
        pytest.skip("no flash attention kernel on MPS")
    inputs = _step_inputs(device)
    t = torch.tensor(300, device=device)

    def predict(model):
        with torch.no_grad():
            return model.predict_noise(*inputs[:4], t, model.reference_features(inputs[4], t))

    plain = predict(_tiny(device, dtype))
    fast = predict(apply_speed_options(_tiny(device, dtype), options))
    _close(fast, plain, 10 * tolerance(device, dtype))
