"""Exponential moving average of the trained parameters (optional in the trainer, exportable)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn



class EMA:
    """Exponential moving average of named parameters, in fp32 on their device.

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the average is not
    dominated by the initial weights early in training.
    """

    def __init__(self, parameters: Mapping[str, nn.Parameter], decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.shadow = {name: p.detach().float().clone() for name, p in parameters.items()}

    @torch.no_grad()
    def update(self, parameters: Mapping[str, nn.Parameter]) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, param in parameters.items():
            self.shadow[name].lerp_(param.detach().float(), 1.0 - decay)

    def load(self, shadow: Mapping[str, Tensor], updates: int) -> None:
        if set(shadow) != set(self.shadow):
            raise ValueError(
                "EMA weights in the checkpoint do not match the trainable parameters of this config"
            )
        for name, tensor in shadow.items():
            self.shadow[name].copy_(tensor)
        self.updates = updates

    @contextmanager
    def applied(self, parameters: Mapping[str, nn.Parameter]) -> Iterator[None]:
        """Temporarily put the averaged weights into ``parameters`` (e.g. for sample images)."""
        backup = {name: p.detach().clone() for name, p in parameters.items()}
        with torch.no_grad():
            for name, param in parameters.items():
                param.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, param in parameters.items():
                    param.copy_(backup[name])
