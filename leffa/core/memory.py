"""Fitting the GPU the user has: memory levels built on diffusers' and accelerate's own machinery.

:func:`apply_memory_level` puts a :class:`~leffa.core.model.LeffaModel` at one level, in place, for an
execution device (no hooks are written here; each level is a library's):

- ``none``: every weight on the device.
- ``model_offload``: the weights wait on the CPU; each part (VAE, reference UNet, generative UNet) moves to
  the device when it runs and the part before it leaves: accelerate's ``cpu_offload_with_hook``, chained as
  diffusers' ``enable_model_cpu_offload`` chains a pipeline's parts, with the two UNets handing over to each
  other at every step. One part on the device at a time.
- ``group_offload``: diffusers' group offloading (``enable_group_offload``): the generative UNet by blocks,
  with CUDA streams where the device has them; the reference UNet and the VAE by leaf layers (the reference
  pass ends early by design, and the VAE is entered through ``encode``/``decode``, not ``forward``: both are
  cases block groups and stream prefetching do not expect).
- ``layerwise_fp8``: both UNets' weights stored in float8 e4m3 and computed in bf16 (fp16 for an fp16 model)
  layer by layer (diffusers' ``enable_layerwise_casting``); the VAE keeps its weights.
- ``int8``: both UNets' linear layers with int8 weights (torchao's ``Int8WeightOnlyConfig``, pinned).
- ``auto``: :func:`choose_memory_level`, the fastest of the levels that keep the weights as they are (``none``,
  ``model_offload``, ``group_offload``) whose estimated need fits the free device memory. It never picks fp8
  or int8 by itself: they change the output (slightly), so the user asks for them.

``layerwise_fp8`` and ``int8`` change the weights, so they cannot be undone in place (``ModelStore`` loads
the model again to leave them). Offloading levels run one call at a time (:meth:`LeffaModel.running`), so
two concurrent calls never move weights under each other, and send every part back to the CPU afterwards.
"""

from __future__ import annotations

import torch
from accelerate import cpu_offload_with_hook
from accelerate.hooks import remove_hook_from_module
from diffusers.hooks import HookRegistry
from diffusers.hooks.group_offloading import _GROUP_OFFLOADING, _LAZY_PREFETCH_GROUP_OFFLOADING
from diffusers.hooks.layerwise_casting import _LAYERWISE_CASTING_HOOK

#: The levels, and ``auto``.
MEMORY_LEVELS: tuple[str, ...] = ("none", "model_offload", "group_offload", "layerwise_fp8", "int8")
MEMORY_CHOICES: tuple[str, ...] = (*MEMORY_LEVELS, "auto")
#: Levels whose weights change (leaving them needs the weights loaded again).
LASTING_LEVELS: tuple[str, ...] = ("layerwise_fp8", "int8")
#: Levels that move weights during a call (one call at a time, everything back to the CPU after it).
OFFLOADING_LEVELS: tuple[str, ...] = ("model_offload", "group_offload")
#: ``auto`` tries these levels in this order, fastest first (an order to confirm with ``bench/gpu.py``); all
#: leave the weights as they are.
AUTO_ORDER: tuple[str, ...] = ("none", "model_offload", "group_offload")
#: Activation memory per latent token and batch item in fp16, a rough figure for ``auto``'s estimates
#: (SD1.5-size UNets at 128x96 latents, batch 2, peak about 3 GB above the weights).
_ACTIVATION_BYTES_PER_TOKEN = 120_000


def check_memory_choice(level: str) -> str:
    """``level`` if it is one of :data:`MEMORY_CHOICES`; a ``ValueError`` naming them otherwise."""
    if level not in MEMORY_CHOICES:
        raise ValueError(f"memory must be one of {', '.join(MEMORY_CHOICES)}, got {level!r}")
    return level


def _parts(model) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    return model.vae, model.unet_encoder, model.unet


def apply_memory_level(model, level: str, device: torch.device | str) -> None:
    """Put ``model`` at memory ``level`` (not ``auto``: resolve it with :func:`choose_memory_level`) for
    running on ``device``. A model at a lasting level (:data:`LASTING_LEVELS`) cannot move to another."""
    if level not in MEMORY_LEVELS:
        raise ValueError(f"memory level must be one of {', '.join(MEMORY_LEVELS)}, got {level!r}")
    device = torch.device(device)
    if model.memory_level == level and model.device == device:
        return
    if model.memory_level in LASTING_LEVELS:
        raise ValueError(
            f"the model's weights are at memory level {model.memory_level!r}, which changed them; load the "
            f"model again for level {level!r}"
        )
    remove_memory_level(model)
    compute = model.dtype
    if level in OFFLOADING_LEVELS:
        model.to("cpu")
        if level == "model_offload":
            _chain_model_offload(model, device)
        else:
            _group_offload(model, device)
    else:
        model.to(device)
        if level == "layerwise_fp8":
            storage_compute = compute if compute in (torch.float16, torch.bfloat16) else torch.bfloat16
            for part in (model.unet_encoder, model.unet):
                part.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=storage_compute)
            compute = storage_compute
        elif level == "int8":
            _quantize_int8(model)
    model.set_memory_level(level, device, compute)


def _chain_model_offload(model, device: torch.device) -> None:
    """accelerate's offload hooks on the three parts: the reference UNet and the generative UNet hand over
    to each other at every step, and the generative UNet to the VAE for decoding. (A hook hands over from one
    part only, so the VAE leaves after encoding through :func:`encoding_done`.)"""
    vae, reference, generative = _parts(model)
    _, vae_hook = cpu_offload_with_hook(vae, device)
    _, reference_hook = cpu_offload_with_hook(reference, device, prev_module_hook=vae_hook)
    _, generative_hook = cpu_offload_with_hook(generative, device, prev_module_hook=reference_hook)
    reference_hook.hook.prev_module_hook = generative_hook
    vae_hook.hook.prev_module_hook = generative_hook
    model.offload_hooks = [vae_hook, reference_hook, generative_hook]


def _group_offload(model, device: torch.device) -> None:
    vae, reference, generative = _parts(model)
    streams = device.type == "cuda"
    generative.enable_group_offload(device, offload_type="block_level", num_blocks_per_group=1, use_stream=streams)
    for part in (reference, vae):
        part.enable_group_offload(device, offload_type="leaf_level", use_stream=False)


def _quantize_int8(model) -> None:
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as error:  # pinned in requirements.txt; a hand-made environment may lack it
        raise ValueError(f"memory level 'int8' needs torchao (pip install torchao==0.18.0): {error}") from error
    for part in (model.unet_encoder, model.unet):
        quantize_(part, Int8WeightOnlyConfig())


def remove_memory_level(model) -> None:
    """Take ``model`` back to level ``none`` on the CPU: every offloading hook removed (the lasting levels
    cannot be removed: see :func:`apply_memory_level`)."""
    if model.memory_level in LASTING_LEVELS:
        raise ValueError(f"memory level {model.memory_level!r} changed the weights; load the model again instead")
    for part in _parts(model):
        remove_hook_from_module(part, recurse=True)
        registry = HookRegistry.check_if_exists_or_initialize(part)
        for name in (_GROUP_OFFLOADING, _LAZY_PREFETCH_GROUP_OFFLOADING, _LAYERWISE_CASTING_HOOK):
            registry.remove_hook(name, recurse=True)
    model.offload_hooks = []
    model.to("cpu")
    model.set_memory_level("none", None, None)


def encoding_done(model) -> None:
    """After the VAE encoded a call's images, at ``model_offload``: the VAE back to the CPU before the
    reference UNet moves in (its hook hands over from the generative UNet, the part it follows at every
    later step)."""
    if model.memory_level == "model_offload":
        model.offload_hooks[0].offload()


def offload_all(model) -> None:
    """After a call at an offloading level: every part back on the CPU (group offloading does this by itself
    after each group; accelerate's chained hooks leave the last part on the device)."""
    for hook in model.offload_hooks:
        hook.offload()


def weight_bytes(model, parts: tuple[str, ...] = ("vae", "unet_encoder", "unet")) -> int:
    """Bytes of the named parts' weights and buffers as they are stored (fp8 one byte each, int8 one byte
    plus its scales)."""
    total = 0
    for name in parts:
        for tensor in (*getattr(model, name).parameters(), *getattr(model, name).buffers()):
            total += _storage_bytes(tensor)
    return total


def _storage_bytes(tensor: torch.Tensor) -> int:
    inner = getattr(tensor, "__tensor_flatten__", None)
    if inner is not None:  # a torchao tensor subclass: the bytes of the plain tensors inside it
        names, _ = inner()
        return sum(_storage_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def estimated_need(model, level: str, latent_tokens: int, batch: int) -> int:
    """A rough estimate of the device memory a call needs at ``level``: the weights resident at once plus
    activations for ``batch`` images (twice that under classifier-free guidance is the caller's ``batch``)."""
    activations = _ACTIVATION_BYTES_PER_TOKEN * latent_tokens * batch
    parts = {name: weight_bytes(model, (name,)) for name in ("vae", "unet_encoder", "unet")}
    if level == "none":
        weights = sum(parts.values())
    elif level == "model_offload":
        weights = max(parts.values())
    elif level == "group_offload":
        weights = max(parts.values()) // 8  # a block or a leaf at a time: a fraction of a UNet
    elif level == "layerwise_fp8":
        weights = parts["vae"] + (parts["unet_encoder"] + parts["unet"]) // max(1, model.dtype.itemsize)
    else:  # int8: linear weights at one byte, the convolutions untouched (about 60 % of a UNet's bytes)
        weights = parts["vae"] + int((parts["unet_encoder"] + parts["unet"]) * 0.6)
    return weights + activations


def choose_memory_level(model, device: torch.device | str, latent_tokens: int, batch: int, free_bytes: int | None = None) -> str:
    """``auto``: ``none`` off CUDA; on CUDA the first of :data:`AUTO_ORDER` whose :func:`estimated_need`
    fits 90 % of the free memory (``free_bytes``, default ``torch.cuda.mem_get_info``), else the last."""
    device = torch.device(device)
    if device.type != "cuda":
        return "none"
    if free_bytes is None:
        free_bytes, _ = torch.cuda.mem_get_info(device)
        free_bytes += weight_bytes(model) if model.device.type == "cuda" else 0
    for level in AUTO_ORDER:
        if estimated_need(model, level, latent_tokens, batch) <= 0.9 * free_bytes:
            return level
    return AUTO_ORDER[-1]
