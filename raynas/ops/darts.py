"""The DARTS operation table (Liu, Simonyan and Yang, "DARTS: Differentiable Architecture Search",
ICLR 2019), built exactly as in the authors' ``cnn/operations.py`` so that parameter counts match.

Every factory takes ``(C, stride, affine)`` and maps C channels to C channels; ``stride=2`` halves
the spatial size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from raynas.registry import Registry

OpFactory = Callable[[int, int, bool], nn.Module]

OPS: Registry[OpFactory] = Registry("op")

# The eight candidate operations of the DARTS CNN search space, in the paper's order.
PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)


class ReLUConvBN(nn.Sequential):
    """ReLU -> conv -> BatchNorm (the cell preprocessing of DARTS)."""

    def __init__(
        self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU -> dilated depthwise conv -> pointwise conv -> BatchNorm."""

    def __init__(
        self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int, dilation: int,
        affine: bool = True,
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel_size, stride, padding, dilation, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked (ReLU, depthwise conv, pointwise conv, BatchNorm); only the first is strided."""

    def __init__(
        self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True
    ) -> None:
        super().__init__(
            DilConv(c_in, c_in, kernel_size, stride, padding, 1, affine),
            DilConv(c_in, c_out, kernel_size, 1, padding, 1, affine),
        )


class Identity(nn.Module):
    """The identity; a class of its own so that drop path can recognise it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Zero(nn.Module):
    """The ``none`` operation: zeros of the output shape."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H/s, W/s)
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halve the spatial size with two offset 1x1 stride-2 convs, each giving half the channels.

    Each is computed as the 1x1 convolution of the input's even (odd) rows and columns, which is
    what a 1x1 convolution of stride 2 computes: torch 2.14's CPU backward of a strided 1x1
    convolution on channels-last tensors of fewer than 8 input channels corrupts memory (the
    process aborts), and PC-DARTS's partial channels and small test networks have such inputs.
    """

    def __init__(self, c_in: int, c_out: int, affine: bool = True) -> None:
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, padding=0, bias=False)  # on rows/columns 0, 2, ...
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, padding=0, bias=False)  # on rows/columns 1, 3, ...
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H/2, W/2)
        x = self.relu(x)
        out = torch.cat([self.conv_1(x[:, :, ::2, ::2]), self.conv_2(x[:, :, 1::2, 1::2])], dim=1)
        return self.bn(out)


def _register(name: str, factory: OpFactory) -> None:
    OPS.register(name)(factory)


_register("none", lambda c, stride, affine: Zero(stride))
_register(
    "avg_pool_3x3",
    lambda c, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
)
_register("max_pool_3x3", lambda c, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1))
_register(
    "skip_connect",
    lambda c, stride, affine: Identity() if stride == 1 else FactorizedReduce(c, c, affine),
)
_register("sep_conv_3x3", lambda c, stride, affine: SepConv(c, c, 3, stride, 1, affine))
_register("sep_conv_5x5", lambda c, stride, affine: SepConv(c, c, 5, stride, 2, affine))
_register("sep_conv_7x7", lambda c, stride, affine: SepConv(c, c, 7, stride, 3, affine))
_register("dil_conv_3x3", lambda c, stride, affine: DilConv(c, c, 3, stride, 2, 2, affine))
_register("dil_conv_5x5", lambda c, stride, affine: DilConv(c, c, 5, stride, 4, 2, affine))
# Used only by AmoebaNet's published reduction cell.
_register(
    "conv_7x1_1x7",
    lambda c, stride, affine: nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(c, c, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
        nn.Conv2d(c, c, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
        nn.BatchNorm2d(c, affine=affine),
    ),
)
