"""Small building blocks whose parameter names match detectron2's checkpoint layout."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import FrozenBatchNorm2d

FROZEN_BN_EPS = 1e-5
"""detectron2's FrozenBatchNorm2d epsilon (also torchvision's default)."""


def frozen_bn_affine(norm: FrozenBatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel affine map (scale, shift) a frozen batch norm applies, as its forward computes it."""
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    return scale, norm.bias - norm.running_mean * scale


class Conv2dFrozenBN(nn.Conv2d):
    """Bias-free convolution followed by torchvision's FrozenBatchNorm2d stored as the child ``norm``.

    The norm's four buffers are detectron2's ``norm.{weight,bias,running_mean,running_var}``. The norm is folded into the convolution's weight and bias at run time, which saves a full pass
    over the activations and equals conv-then-norm up to float rounding.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
        )
        self.norm = FrozenBatchNorm2d(out_channels, eps=FROZEN_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = frozen_bn_affine(self.norm)
        return self._conv_forward(x, self.weight * scale.view(-1, 1, 1, 1), shift)


class Conv2dReLU(nn.Conv2d):
    """3×3 "same" convolution with bias and a ReLU; keeps the conv's parameters at the top level."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu_(super().forward(x))
