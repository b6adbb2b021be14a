"""Base model configurations shipped with the package.

The released Leffa checkpoints were built from public inpainting bases; their configs are copied here
(``configs/<base>/{unet,vae,scheduler}.json``) so no hub access is needed to build a model. ``tiny`` is a
few-MB configuration with the same structure, used by tests, benchmarks and the built-in demo.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

BASES: tuple[str, ...] = ("sd15-inpainting", "sdxl-inpainting", "tiny")

#: Channels of the generative UNet input: noisy latent (4), mask (1), masked-image latent (4), densepose (3).
GENERATIVE_IN_CHANNELS = 12
#: The reference UNet only sees the reference image's latent.
REFERENCE_IN_CHANNELS = 4


@dataclass(frozen=True)
class BaseConfigs:
    """The three config dicts a :class:`~leffa.core.model.LeffaModel` is built from."""

    unet: dict[str, Any]
    vae: dict[str, Any]
    scheduler: dict[str, Any]
    name: str = "custom"
    extra: dict[str, Any] = field(default_factory=dict)


def _read_json(base: str, part: str) -> dict[str, Any]:
    text = resources.files("leffa.core").joinpath("base_configs", base, f"{part}.json").read_text()
    return json.loads(text)


def load_base_configs(base: str) -> BaseConfigs:
    """Return the configs of a shipped base, with the scheduler settings the released sampler uses.

    The SDXL base's scheduler runs with ``rescale_betas_zero_snr=True`` in the released demo.
    """
    if base not in BASES:
        raise ValueError(f"unknown base {base!r}; choose one of {', '.join(BASES)}")
    scheduler = _read_json(base, "scheduler")
    if base == "sdxl-inpainting":
        scheduler["rescale_betas_zero_snr"] = True
    return BaseConfigs(unet=_read_json(base, "unet"), vae=_read_json(base, "vae"), scheduler=scheduler, name=base)
