"""How to sample, as one object: :class:`SamplingSettings`.

The page, the HTTP API, the command line, batches and the Python API build it by keyword; it checks (and
normalises) its values once, when it is made, with one seed range; and it travels whole to the sampler
(:meth:`leffa.core.pipeline.LeffaPipeline.sample`, :func:`leffa.inspect.trace.trace`). Its field names are
the pipeline's own. The page, the HTTP API and the command line call two of them otherwise (``steps``,
``guidance``: public names that stay), so messages about those give both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np

from leffa.core.memory import check_memory_choice
from leffa.core.validation import MAX_SEED

#: Limits of the settings object (the pipeline itself allows as many steps as the scheduler can take): far
#: past where more steps or stronger guidance change the result.
MAX_STEPS = 200
MAX_GUIDANCE = 50.0
#: Images per run (one batched pass).
MAX_IMAGES = 4
#: What the page, the HTTP API and the command line call a field, where that differs from its name here.
PUBLIC_NAMES = {"num_inference_steps": "steps", "guidance_scale": "guidance"}


def _named(field: str) -> str:
    """How a message names a field: ``steps (num_inference_steps)`` where the public name differs."""
    public = PUBLIC_NAMES.get(field)
    return f"{public} ({field})" if public else field


def checked_number(value: Any, field: str) -> int | float:
    """``value`` as an int or a finite float; a ``ValueError`` naming ``field`` for anything else (bools,
    strings, None, NaN)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{_named(field)} must be a number, got {value!r}")
    if isinstance(value, Integral):
        return int(value)  # exact at any size: float() would round a 64-bit seed and overflow past 1e308
    if not math.isfinite(value):
        raise ValueError(f"{_named(field)} must be a finite number, got {value!r}")
    return float(value)


def checked_whole(value: Any, field: str) -> int:
    """``value`` as an int (a float must be whole); a ``ValueError`` naming ``field`` else."""
    number = checked_number(value, field)
    if isinstance(number, float):
        if not number.is_integer():
            raise ValueError(f"{_named(field)} must be a whole number, got {value!r}")
        return int(number)
    return number


def checked_flag(value: Any, field: str) -> bool:
    """``value`` if it is a boolean; a ``ValueError`` naming ``field`` else (strings such as "false",
    numbers and None are refused, not read as truthy)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{field} must be true or false, got {value!r}")
    return bool(value)


def check_num_images(value: Any) -> int:
    """``value`` as a number of images per run, 1 to :data:`MAX_IMAGES`; a ``ValueError`` else."""
    count = checked_whole(value, "num_images")
    if not 1 <= count <= MAX_IMAGES:
        raise ValueError(f"num_images must be between 1 and {MAX_IMAGES}, got {count}")
    return count


@dataclass(frozen=True)
class SamplingSettings:
    """Sampling controls, checked when made (a ``ValueError`` naming the field and its range).

    ``seed`` ``-1`` picks a random seed (the result reports it); ``ref_acceleration`` runs the reference UNet
    once; ``repaint`` keeps everything outside the mask as photographed; ``record_attention`` records
    attention and flows for the inspector (slower; of the first image). ``num_images`` (1 to 4) makes that
    many in one batched pass, seeded ``seed``, ``seed + 1``, ... ``memory`` is the memory level to run at
    (:mod:`leffa.core.memory`; ``auto`` picks by the device's free memory). Numbers may come as floats with
    whole values (a slider's ``30.0``); they are stored as ints.
    """

    num_inference_steps: int = 30
    guidance_scale: float = 2.5
    seed: int = -1
    ref_acceleration: bool = False
    repaint: bool = False
    record_attention: bool = False
    num_images: int = 1
    memory: str = "auto"

    def __post_init__(self) -> None:
        steps = checked_whole(self.num_inference_steps, "num_inference_steps")
        if not 1 <= steps <= MAX_STEPS:
            raise ValueError(f"{_named('num_inference_steps')} must be between 1 and {MAX_STEPS}, got {steps}")
        guidance = checked_number(self.guidance_scale, "guidance_scale")
        if not 0 <= guidance <= MAX_GUIDANCE:
            raise ValueError(
                f"{_named('guidance_scale')} must be between 0 and {MAX_GUIDANCE:g}, got {self.guidance_scale!r}"
            )
        seed = checked_whole(self.seed, "seed")
        if not -1 <= seed <= MAX_SEED:
            raise ValueError(f"seed must be -1 (random) or a whole number from 0 to 2**64 - 1, got {seed}")
        count = check_num_images(self.num_images)
        if seed != -1 and seed + count - 1 > MAX_SEED:
            raise ValueError(f"seed {seed} + {count - 1} images passes 2**64 - 1; choose a smaller seed")
        checked = dict(
            num_inference_steps=steps, guidance_scale=float(guidance), seed=seed, num_images=count,
            memory=check_memory_choice(self.memory),
        )
        for field in ("ref_acceleration", "repaint", "record_attention"):
            checked[field] = checked_flag(getattr(self, field), field)
        for field, value in checked.items():
            object.__setattr__(self, field, value)


#: The defaults, as one shared (frozen) object for default arguments.
DEFAULT_SAMPLING = SamplingSettings()
