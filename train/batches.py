"""Batches of the model inputs: the four tensors every dataset item carries and the sampler takes, in order.

One place for the stacking and the sampler call, shared by the trainer's sample images, the evaluation
command and the synthetic benchmark.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from leffa.core.pipeline import LeffaPipeline

#: The model inputs, in the order :class:`~leffa.core.pipeline.LeffaPipeline` takes them.
BATCH_KEYS = ("image", "reference", "mask", "densepose")


def stack_items(items: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
    """Dataset items stacked into one batch of the model inputs (other keys are left out)."""
    return {key: torch.stack([item[key] for item in items]) for key in BATCH_KEYS}


def generate_batch(pipeline: LeffaPipeline, batch: Mapping[str, Tensor], **options: Any) -> Any:
    """``pipeline`` run on a batch of the model inputs; ``options`` are the sampler's keyword arguments."""
    return pipeline(*(batch[key] for key in BATCH_KEYS), **options)
