"""AdamW and its learning-rate schedule from an ``optim`` config section, for every trainer in ``train/``."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from diffusers.optimization import get_scheduler
from torch.optim.lr_scheduler import LambdaLR

from train.config import OptimConfig


def make_optimizer(parameters: Iterable[torch.nn.Parameter], optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW over ``parameters`` with the section's rate, betas, weight decay and epsilon."""
    return torch.optim.AdamW(
        list(parameters),
        lr=optim.learning_rate,
        betas=optim.betas,
        weight_decay=optim.weight_decay,
        eps=optim.epsilon,
    )


def make_lr_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig, max_steps: int) -> LambdaLR:
    """``warmup_steps`` of linear warmup, then ``lr_schedule`` (constant, linear or cosine decay to zero
    at ``max_steps``); diffusers' schedules, stepped once per optimizer step."""
    name = "constant_with_warmup" if optim.lr_schedule == "constant" else optim.lr_schedule
    return get_scheduler(name, optimizer, num_warmup_steps=optim.warmup_steps, num_training_steps=max_steps)
