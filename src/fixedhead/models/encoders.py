"""Image encoders in CIFAR form: (B, C_in, H, W) -> features (B, num_features).

Every encoder sets `num_features`. All use global pooling, so they work at any input size from
16 px up (32, 64 and 96 px are the paper's); ResNet-18 also offers the authors' fixed 4x4 pooling.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import UserError

POOLS = ("avg", "authors")  # model.pool: global average, or the authors' fixed 4x4 average (resnets)


class GlobalPool(nn.Module):
    """(B, C, H, W) -> (B, C) by mean or max over space. Unlike the adaptive pooling layers, its
    backward pass is deterministic on CUDA, so runs with train.deterministic repeat exactly.

    Max uses max(dim) (backward: the gradient goes to the recorded index), not amax (backward: to every
    element equal to the maximum): under torch.compile with bf16, a fused kernel may compare a
    float32 recomputation with the rounded maximum, find no equal element and divide 0 by 0. On a
    channels-last map it reduces a view in that memory order, so the gradient comes back channels-last:
    flattened as (B, C, H * W), max's backward built a contiguous gradient, and the layers below then ran
    their backward in the other layout."""

    def __init__(self, mode: str = "avg"):
        super().__init__()
        self.mode = mode

    def forward(self, x):
        if self.mode == "avg":
            return x.mean((2, 3))
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            return x.permute(0, 2, 3, 1).flatten(1, 2).max(dim=1).values  # (B, H * W, C), a view
        return x.flatten(2).max(dim=2).values

    def extra_repr(self) -> str:
        return self.mode


def _conv_bn(cin: int, cout: int, stride: int = 1, kernel: int = 3, groups: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut (He et al. 2016)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(cin, cout, stride), nn.ReLU(inplace=True), *_conv_bn(cout, cout))
        needs_projection = stride != 1 or cin != cout
        self.shortcut = nn.Sequential(*_conv_bn(cin, cout, stride, kernel=1)) if needs_projection else nn.Identity()

    def forward(self, x):
        return (self.body(x) + self.shortcut(x)).relu()


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stride-1 stem, no max-pool, stages of BasicBlocks, then pooling."""

    if TYPE_CHECKING:  # for type checkers only: TorchScript takes no nn.Module annotations
        pool: nn.Module

    def __init__(self, widths, depths, in_channels: int = 3, pool: str = "avg", image_size: int = 32):
        super().__init__()
        layers = [*_conv_bn(in_channels, widths[0]), nn.ReLU(inplace=True)]
        cin = widths[0]
        for stage, (width, depth) in enumerate(zip(widths, depths)):
            for block in range(depth):
                layers.append(BasicBlock(cin, width, stride=2 if stage > 0 and block == 0 else 1))
                cin = width
        self.body = nn.Sequential(*layers)
        if pool == "avg":
            self.pool, self.num_features = GlobalPool("avg"), cin
        elif pool == "authors":
            # The reference code's F.avg_pool2d(out, 4): D = 512 at 32 px but 4608 at 96 px.
            side = image_size // 2 ** (len(widths) - 1) // 4
            if side < 1:
                raise UserError(f"model.pool=authors (a fixed 4x4 average pool after {len(widths) - 1} halvings) needs "
                                f"images of at least {4 * 2 ** (len(widths) - 1)} px; these are {image_size} px; "
                                "use model.pool=avg")
            self.pool = nn.Sequential(nn.AvgPool2d(4), nn.Flatten())
            self.num_features = cin * side * side
        else:
            raise ValueError(f"unknown pool {pool!r}; choose 'avg' or 'authors'")

    def forward(self, x):
        return self.pool(self.body(x))


def resnet18(in_channels=3, pool="avg", image_size=32):
    return ResNet((64, 128, 256, 512), (2, 2, 2, 2), in_channels, pool, image_size)


def resnet20(in_channels=3, pool="avg", image_size=32):
    return ResNet((16, 32, 64), (3, 3, 3), in_channels, pool, image_size)


_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    """VGG-16 with batch norm in CIFAR form: 13 convolutions, global average pool, 512-d."""

    def __init__(self, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for item in _VGG16:
            if isinstance(item, str):  # "M"
                layers.append(nn.MaxPool2d(2, ceil_mode=True))  # ceil: 16 px inputs survive five pools
            else:
                layers += [*_conv_bn(cin, item), nn.ReLU(inplace=True)]
                cin = item
        self.body = nn.Sequential(*layers, GlobalPool("avg"))
        self.num_features = cin

    def forward(self, x):
        return self.body(x)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection (Sandler et al. 2018)."""

    def __init__(self, cin: int, cout: int, expansion: int, stride: int):
        super().__init__()
        hidden = cin * expansion
        self.body = nn.Sequential(
            *_conv_bn(cin, hidden, kernel=1), nn.ReLU6(inplace=True),
            *_conv_bn(hidden, hidden, stride, groups=hidden), nn.ReLU6(inplace=True),
            *_conv_bn(hidden, cout, kernel=1),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


# (expansion, width, blocks, stride); CIFAR form: stride 1 in the stem and the 24-channel stage.
_MOBILENETV2 = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    def __init__(self, in_channels: int = 3):
        super().__init__()
        layers, cin = [*_conv_bn(in_channels, 32), nn.ReLU6(inplace=True)], 32
        for expansion, width, blocks, stride in _MOBILENETV2:
            for block in range(blocks):
                layers.append(InvertedResidual(cin, width, expansion, stride if block == 0 else 1))
                cin = width
        layers += [*_conv_bn(cin, 1280, kernel=1), nn.ReLU6(inplace=True), GlobalPool("avg")]
        self.body = nn.Sequential(*layers)
        self.num_features = 1280

    def forward(self, x):
        return self.body(x)


class FastNet(nn.Module):
    """airbench-style 3-stage conv net for CPU work: stem, then 3 x (conv, max-pool, BN, GELU, conv,
    BN, GELU), global max pool."""

    def __init__(self, in_channels: int = 3, widths=(32, 64, 128, 256)):
        super().__init__()
        layers = [*_conv_bn(in_channels, widths[0]), nn.GELU()]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(cout), nn.GELU(),
                *_conv_bn(cout, cout), nn.GELU(),
            ]
        self.body = nn.Sequential(*layers, GlobalPool("max"))
        self.num_features = widths[-1]

    def forward(self, x):
        return self.body(x)


class AirNet(nn.Module):
    """The network of airbench93 (Jordan 2024, KellerJordan/cifar10-airbench), head removed: a 2x2
    convolution without padding and with a bias (2 * C * 4 filters: room for +/- patch-whitening pairs,
    see whitening.py), GELU, then 3 x (conv, max-pool, BN, GELU, conv, BN, GELU) at widths 64-128-128,
    global max pool (at 32 px the 3x3 map airbench pools with MaxPool2d(3)). As there: batch-norm scales
    fixed at 1 (shifts trained), eps 1e-12, running statistics with momentum 0.4, and every 3x3
    convolution's first C_in filters initialised to the identity (dirac), the rest PyTorch's default."""

    def __init__(self, in_channels: int = 3, widths=(64, 128, 128)):
        super().__init__()
        stem = 2 * in_channels * 2 * 2
        layers = [nn.Conv2d(in_channels, stem, 2, padding=0, bias=True), nn.GELU()]
        for cin, cout in zip((stem, *widths[:-1]), widths):
            layers += [_identity_conv(cin, cout), nn.MaxPool2d(2), _shift_only_bn(cout), nn.GELU(),
                       _identity_conv(cout, cout), _shift_only_bn(cout), nn.GELU()]
        self.body = nn.Sequential(*layers, GlobalPool("max"))
        self.num_features = widths[-1]

    def forward(self, x):
        return self.body(x)


def _identity_conv(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    nn.init.dirac_(conv.weight.data[:min(cin, cout)])
    return conv


def _shift_only_bn(channels: int) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels, eps=1e-12, momentum=0.4)
    norm.weight.requires_grad_(False)
    return norm


def fastnet(in_channels=3, **_):
    return FastNet(in_channels)


def fastnet_small(in_channels=3, **_):
    return FastNet(in_channels, widths=(16, 32, 64, 128))


def fastnet_wide(in_channels=3, **_):
    """The GPU fast encoder: widths of a ResNet-9 (64-128-256-512), about 4x fastnet's compute."""
    return FastNet(in_channels, widths=(64, 128, 256, 512))


def airnet_small(in_channels=3, **_):
    """airnet at 3/4 width (48-96-96): about 0.6x its multiply-adds (the convolutions' cost goes with the
    square of the width)."""
    return AirNet(in_channels, widths=(48, 96, 96))
