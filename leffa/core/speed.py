"""Opt-in speed settings for a :class:`~leffa.core.model.LeffaModel`, the ones diffusers users expect.

Every option is off by default because each may change results in the last bits (a different kernel,
fused or reordered arithmetic, lower precision, VAE tiles blended at their seams); ``bench/gpu.py``
measures each one. :func:`apply_speed_options` changes the model in place:

- ``channels_last``: both UNets' weights in channels-last memory format (faster convolutions on CUDA and
  on CPUs with oneDNN);
- ``sdpa_backend``: restrict ``scaled_dot_product_attention`` inside the UNets to one kernel family;
- ``autocast``: run the UNets under ``torch.autocast`` in ``bf16``/``fp16`` while the weights stay in
  their dtype (e.g. bf16 compute on a CPU with fp32 weights);
- ``vae_tiling`` / ``vae_slicing``: diffusers' tiled VAE (bounded memory for large images) and one image
  at a time through the VAE (bounded memory for large batches);
- ``compile``: ``torch.compile`` of both UNets with static shapes (every layer resolution gets its own
  graph; the first call at each input size compiles, minutes).
"""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from leffa.core.model import LeffaModel

#: ``auto`` lets PyTorch choose; the others pin one kernel family.
SDPA_BACKENDS: dict[str, SDPBackend | None] = {
    "auto": None,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}
AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
_CUDA_ONLY_BACKENDS = ("efficient", "cudnn")
_HALF_ONLY_BACKENDS = ("flash", "cudnn")
_RECOMPILE_LIMIT = 256


@dataclass(frozen=True)
class SpeedOptions:
    """What to speed up; the defaults change nothing. See the module docstring for each option."""

    compile: bool = False
    compile_mode: str | None = None
    compile_backend: str = "inductor"
    channels_last: bool = False
    sdpa_backend: str = "auto"
    autocast: str | None = None
    vae_tiling: bool = False
    vae_slicing: bool = False

    def __post_init__(self) -> None:
        if self.sdpa_backend not in SDPA_BACKENDS:
            raise ValueError(
                f"unknown sdpa_backend {self.sdpa_backend!r}; choose one of {', '.join(SDPA_BACKENDS)}"
            )
        if self.autocast is not None and self.autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"unknown autocast dtype {self.autocast!r}; choose one of {', '.join(AUTOCAST_DTYPES)}")

    @property
    def enabled(self) -> list[str]:
        """Names of the options that are on, for logs and notices."""
        names = []
        if self.compile:
            names.append(f"compile ({self.compile_backend}{', ' + self.compile_mode if self.compile_mode else ''})")
        if self.channels_last:
            names.append("channels-last")
        if self.sdpa_backend != "auto":
            names.append(f"SDPA {self.sdpa_backend}")
        if self.autocast:
            names.append(f"{self.autocast} autocast")
        names += [name for name, on in (("VAE tiling", self.vae_tiling), ("VAE slicing", self.vae_slicing)) if on]
        return names


def check_sdpa_backend(backend: str, device: torch.device, compute_dtype: torch.dtype) -> None:
    """Raise a clear error for a backend that has no kernel for this device or dtype."""
    if backend in _CUDA_ONLY_BACKENDS and device.type != "cuda":
        raise ValueError(f"SDPA backend {backend!r} exists on CUDA only (device is {device.type}); use 'auto'")
    if backend in _HALF_ONLY_BACKENDS and device.type == "cuda" and compute_dtype == torch.float32:
        raise ValueError(
            f"SDPA backend {backend!r} needs fp16 or bf16 on CUDA; load the model with dtype fp16/bf16, "
            "turn on autocast, or use 'efficient', 'math' or 'auto'"
        )


def _wrap_forward(module: nn.Module, options: SpeedOptions, device: torch.device) -> None:
    """Run ``module.forward`` inside the SDPA-backend and autocast contexts the options ask for."""
    forward = module.forward
    backend = SDPA_BACKENDS[options.sdpa_backend]
    autocast = AUTOCAST_DTYPES[options.autocast] if options.autocast else None

    def kernels() -> AbstractContextManager:
        return sdpa_kernel([backend]) if backend is not None else nullcontext()

    def precision() -> AbstractContextManager:
        return torch.autocast(device.type, dtype=autocast) if autocast is not None else nullcontext()

    @functools.wraps(forward)
    def wrapped(*args, **kwargs):
        with kernels(), precision():
            return forward(*args, **kwargs)

    module.forward = wrapped


def _allow_one_graph_per_layer() -> None:
    """Each layer's processor guards on its own layer name, so it compiles once per layer (70 in SDXL):
    raise dynamo's recompile limits (default 8) so no layer silently falls back to eager."""
    config = torch._dynamo.config
    for name, needed in (("recompile_limit", _RECOMPILE_LIMIT), ("accumulated_recompile_limit", 4 * _RECOMPILE_LIMIT)):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), needed))


def apply_speed_options(
    model: LeffaModel, options: SpeedOptions, *, device: torch.device | str | None = None
) -> LeffaModel:
    """Apply ``options`` to ``model`` in place (once per model) and return it.

    ``device`` is where the model will run (default: where it is now; pass it when the model is kept on
    the CPU and moved per run). Unsupported combinations raise ``ValueError`` before anything changes.
    """
    device = torch.device(device) if device is not None else model.device
    compute_dtype = AUTOCAST_DTYPES[options.autocast] if options.autocast else model.dtype
    if options.sdpa_backend != "auto":
        check_sdpa_backend(options.sdpa_backend, device, compute_dtype)
    if options.autocast == "fp16" and device.type == "cpu":
        raise ValueError("fp16 autocast is not useful on the CPU; use autocast 'bf16'")
    if getattr(model, "speed_options", None) is not None:
        raise ValueError("speed options are already applied to this model; build or load a fresh one")
    unets = (model.unet_encoder, model.unet)
    if options.channels_last:
        for unet in unets:
            unet.to(memory_format=torch.channels_last)
    if options.sdpa_backend != "auto" or options.autocast:
        for unet in unets:
            _wrap_forward(unet, options, device)
    if options.vae_tiling:
        model.vae.enable_tiling()
    if options.vae_slicing:
        model.vae.enable_slicing()
    if options.compile:
        _allow_one_graph_per_layer()
        for unet in unets:
            unet.compile(mode=options.compile_mode, backend=options.compile_backend, dynamic=False)
    model.speed_options = options
    return model
