"""Checks of the sampler's settings, inputs and result.

Why: out-of-range settings otherwise crash deep inside diffusers (``IndexError``), and non-finite values
(``guidance_scale=inf``, NaN pixels, NaN weights, fp16 overflow) otherwise end as an all-black image with
no warning. Each check raises with what was wrong and what to do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any

import torch

#: Seeds are 64-bit (``torch.Generator.manual_seed``); ``-1`` asks for a random one.
MAX_SEED = 2**64 - 1


class NonFiniteOutputError(RuntimeError):
    """Sampling produced NaN or infinite values, which would otherwise become a black image."""


def _fits(steps: int, scheduler_config: Mapping[str, Any]) -> bool:
    """Whether ``steps`` sampling steps only use timesteps of the training schedule (``0..T-1``).

    diffusers' ``"leading"`` spacing (the shipped bases') uses timesteps ``i * (T // n) + steps_offset``;
    with ``steps_offset=1``, ``n = T`` would ask for timestep ``T`` and fail with an ``IndexError``.
    """
    train = int(scheduler_config.get("num_train_timesteps", 1000))
    if not 1 <= steps <= train:
        return False
    if scheduler_config.get("timestep_spacing", "leading") != "leading":
        return True
    return (steps - 1) * (train // steps) + int(scheduler_config.get("steps_offset", 0)) < train


def max_inference_steps(scheduler_config: Mapping[str, Any]) -> int:
    """The most sampling steps the scheduler can take (see :func:`_fits`)."""
    train = int(scheduler_config.get("num_train_timesteps", 1000))
    return next((n for n in range(train, 0, -1) if _fits(n, scheduler_config)), 0)


def check_sampling_settings(
    num_inference_steps: int,
    guidance_scale: float,
    guidance_rescale: float | None,
    scheduler_config: Mapping[str, Any],
) -> None:
    """Steps the scheduler can take (see :func:`max_inference_steps`) and finite, non-negative guidance."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, Integral):
        raise ValueError(f"num_inference_steps must be a whole number, got {num_inference_steps!r}")
    if not _fits(num_inference_steps, scheduler_config):
        limit = max_inference_steps(scheduler_config)
        train = scheduler_config.get("num_train_timesteps", 1000)
        raise ValueError(
            f"num_inference_steps must be between 1 and {limit} (the scheduler has {train} training steps), "
            f"got {num_inference_steps}"
        )
    guidance = {"guidance_scale": guidance_scale}
    if guidance_rescale is not None:
        guidance["guidance_rescale"] = guidance_rescale
    for name, value in guidance.items():
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_seed(seed: int) -> int:
    """A seed ``torch.Generator`` accepts: a whole number in ``0..2**64 - 1``."""
    if isinstance(seed, bool) or not isinstance(seed, Integral) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be -1 (random) or a whole number from 0 to 2**64 - 1, got {seed!r}")
    return int(seed)


def check_finite(tensor: torch.Tensor, name: str) -> None:
    """Reject NaN or infinite input values (they would spread through every step and give a black image)."""
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        raise ValueError(f"{name}: contains NaN or infinite values; pass finite values")


def check_generated(images: torch.Tensor, model_dtype: torch.dtype) -> None:
    """Raise :class:`NonFiniteOutputError` if the decoded images hold NaN or infinite values."""
    if torch.isfinite(images).all():
        return
    if model_dtype == torch.float16:
        advice = "fp16 overflowed or the weights hold NaN/inf; run in fp32 or bf16 (--dtype fp32 or bf16)"
    else:
        advice = f"the model's {model_dtype} weights hold NaN or infinite values; check or re-download them"
    raise NonFiniteOutputError(f"sampling produced NaN or infinite values instead of an image: {advice}")
