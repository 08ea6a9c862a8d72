"""The candidate blocks of FBNet (Wu et al., "FBNet: Hardware-Aware Efficient ConvNet Design via
Differentiable Neural Architecture Search", CVPR 2019; the blocks as ``IRFBlock`` of
facebookresearch/mobile-vision, ``mobile_cv/arch/fbnet_v2/irf_block.py``).

A candidate is an inverted-residual block ``k{3,5}_e{1,3,6}`` (optionally ``_g2``) or ``skip``:

    1x1 group conv (cin -> e*cin, g groups) + BN + ReLU  [left out when e = 1, as mobile-vision does]
    channel shuffle                                      [when g > 1]
    KxK depthwise conv (stride s) + BN + ReLU
    1x1 group conv (e*cin -> cout, g groups) + BN
    + the input                                          [when s = 1 and cin = cout]

``skip`` is the identity where the shape stays, else (a layer that changes channels or strides)
mobile-vision's ``Identity``: 1x1 conv (stride s) + BN + ReLU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class BlockSpec:
    """The hyper-parameters of one candidate block (``papers.json``: [kernel, expansion, group])."""

    kernel: int
    expansion: int
    groups: int


# The nine candidates, in FBNet's order (also the column order of the supernet's theta).
FBNET_BLOCKS: tuple[str, ...] = (
    "k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6", "skip",
)
BLOCK_SPECS: dict[str, BlockSpec] = {
    "k3_e1": BlockSpec(3, 1, 1),
    "k3_e1_g2": BlockSpec(3, 1, 2),
    "k3_e3": BlockSpec(3, 3, 1),
    "k3_e6": BlockSpec(3, 6, 1),
    "k5_e1": BlockSpec(5, 1, 1),
    "k5_e1_g2": BlockSpec(5, 1, 2),
    "k5_e3": BlockSpec(5, 3, 1),
    "k5_e6": BlockSpec(5, 6, 1),
}


def conv_bn(
    c_in: int, c_out: int, kernel: int, *, stride: int = 1, groups: int = 1, relu: bool = True,
    affine: bool = True,
) -> nn.Sequential:
    """Conv (no bias, "same" padding) -> BatchNorm -> ReLU (unless ``relu`` is False)."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out, affine=affine),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle: (B, g*n, H, W) -> viewed (B, g, n) -> transposed -> flattened."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        return nn.functional.channel_shuffle(x, self.groups)


class InvertedResidual(nn.Module):
    """FBNet's block: expansion, depthwise convolution, projection, residual where shapes match.

    Args:
        c_in: Input channels.
        c_out: Output channels.
        stride: Stride of the depthwise convolution (1 or 2).
        spec: Kernel, expansion and groups of the candidate.
        affine: Learnable BatchNorm scale and shift.
    """

    def __init__(self, *, c_in: int, c_out: int, stride: int, spec: BlockSpec, affine: bool = True) -> None:
        super().__init__()
        g = spec.groups
        if c_in % g or c_out % g:
            raise ValueError(f"a block with {g} groups needs channels divisible by {g}, got {c_in}->{c_out}")
        mid = c_in * spec.expansion
        self.expand = conv_bn(c_in, mid, 1, groups=g, affine=affine) if mid != c_in else nn.Identity()
        self.shuffle = ChannelShuffle(g) if g > 1 else nn.Identity()
        self.depthwise = conv_bn(mid, mid, spec.kernel, stride=stride, groups=mid, affine=affine)
        self.project = conv_bn(mid, c_out, 1, groups=g, relu=False, affine=affine)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, cin, H, W) -> (B, cout, H/s, W/s)
        y = self.project(self.depthwise(self.shuffle(self.expand(x))))
        return x + y if self.residual else y


class Skip(nn.Module):
    """``skip``: the input itself, or a 1x1 conv + BN + ReLU where the layer changes the shape.

    A strided 1x1 convolution is computed on every ``stride``-th row and column (the same
    numbers: see :class:`raynas.ops.darts.FactorizedReduce` for the torch bug this avoids).
    """

    def __init__(self, *, c_in: int, c_out: int, stride: int, affine: bool = True) -> None:
        super().__init__()
        self.stride = stride
        self.conv = conv_bn(c_in, c_out, 1, affine=affine) if (c_in != c_out or stride != 1) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, cin, H, W) -> (B, cout, H/s, W/s)
        if self.conv is None:
            return x
        return self.conv(x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x)


def make_block(name: str, *, c_in: int, c_out: int, stride: int, affine: bool = True) -> nn.Module:
    """The candidate ``name`` (one of :data:`FBNET_BLOCKS`) for a layer ``c_in -> c_out`` at ``stride``."""
    if name == "skip":
        return Skip(c_in=c_in, c_out=c_out, stride=stride, affine=affine)
    if name not in BLOCK_SPECS:
        raise KeyError(f"unknown FBNet block {name!r}; choose one of: {', '.join(FBNET_BLOCKS)}")
    return InvertedResidual(c_in=c_in, c_out=c_out, stride=stride, spec=BLOCK_SPECS[name], affine=affine)
