"""ResNet-50 (FrozenBN, stride in the 1×1 conv) with an FPN producing P2–P6, named as in detectron2."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from .layers import Conv2dFrozenBN

RESNET50_BLOCKS = (3, 4, 6, 3)
FPN_CHANNELS = 256
FEATURE_STRIDES = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}


class BasicStem(nn.Module):
    """7×7/2 conv + FrozenBN + ReLU, then 3×3/2 max-pool: overall stride 4."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = Conv2dFrozenBN(3, 64, 7, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class Bottleneck(nn.Module):
    """1×1 → 3×3 → 1×1 residual block; the stride sits in the first 1×1 conv (MSRA style)."""

    def __init__(self, in_channels: int, bottleneck_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if in_channels != out_channels:
            self.shortcut = Conv2dFrozenBN(in_channels, out_channels, 1, stride=stride)
        else:
            self.shortcut = None
        self.conv1 = Conv2dFrozenBN(in_channels, bottleneck_channels, 1, stride=stride)
        self.conv2 = Conv2dFrozenBN(bottleneck_channels, bottleneck_channels, 3)
        self.conv3 = Conv2dFrozenBN(bottleneck_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


class ResNet50(nn.Module):
    """Bottom-up path returning res2..res5 (strides 4, 8, 16, 32)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = BasicStem()
        in_channels, bottleneck = 64, 64
        for index, num_blocks in enumerate(RESNET50_BLOCKS):
            out_channels = bottleneck * 4
            first_stride = 1 if index == 0 else 2
            blocks = [
                Bottleneck(
                    in_channels if i == 0 else out_channels,
                    bottleneck,
                    out_channels,
                    first_stride if i == 0 else 1,
                )
                for i in range(num_blocks)
            ]
            self.add_module(f"res{index + 2}", nn.Sequential(*blocks))
            in_channels, bottleneck = out_channels, bottleneck * 2

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        outputs = []
        for name in ("res2", "res3", "res4", "res5"):
            x = getattr(self, name)(x)
            outputs.append(x)
        return outputs


class FPNBackbone(nn.Module):
    """ResNet-50 + FPN (sum fusion, no norm); P6 is a stride-2 subsampling (1×1 max-pool) of P5."""

    def __init__(self) -> None:
        super().__init__()
        self.bottom_up = ResNet50()
        for level, in_channels in zip((2, 3, 4, 5), (256, 512, 1024, 2048), strict=True):
            self.add_module(f"fpn_lateral{level}", nn.Conv2d(in_channels, FPN_CHANNELS, 1))
            self.add_module(f"fpn_output{level}", nn.Conv2d(FPN_CHANNELS, FPN_CHANNELS, 3, padding=1))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Return {"p2": ..., "p6": ...}; the input height and width must be multiples of 32."""
        res = self.bottom_up(x)
        merged = self.fpn_lateral5(res[3])
        outputs = {"p5": self.fpn_output5(merged)}
        for level in (4, 3, 2):
            top_down = F.interpolate(merged, scale_factor=2.0, mode="nearest")
            merged = getattr(self, f"fpn_lateral{level}")(res[level - 2]) + top_down
            outputs[f"p{level}"] = getattr(self, f"fpn_output{level}")(merged)
        outputs["p6"] = F.max_pool2d(outputs["p5"], kernel_size=1, stride=2)
        return {name: outputs[name] for name in FEATURE_STRIDES}
