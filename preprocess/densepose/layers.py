"""Small building blocks whose parameter names match detectron2's checkpoint layout."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

FROZEN_BN_EPS = 1e-5


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics: y = (x - mean) / sqrt(var + eps) * weight + bias.

    All four tensors are buffers (never trained), stored as ``norm.{weight,bias,running_mean,running_var}``.
    """

    def __init__(self, num_features: int, eps: float = FROZEN_BN_EPS) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def scale_and_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-channel affine map (scale, shift) this layer applies."""
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale_and_shift()
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


class Conv2dFrozenBN(nn.Conv2d):
    """Bias-free convolution followed by a FrozenBatchNorm2d stored as the child ``norm``.

    The norm is folded into the convolution's weight and bias at run time, which saves a full pass
    over the activations and equals conv-then-norm up to float rounding.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
        )
        self.norm = FrozenBatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.norm.scale_and_shift()
        return self._conv_forward(x, self.weight * scale.view(-1, 1, 1, 1), shift)


class Conv2dReLU(nn.Conv2d):
    """3×3 "same" convolution with bias and a ReLU; keeps the conv's parameters at the top level."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu_(super().forward(x))
