"""The blocks of RAN-explicit (Bhardwaj et al., "Restructurable Activation Networks", 2022; the
official code is ARM-software/ML-restructurable-activation-networks, ``RAN_e/model/blocks``).

RAN-e replaces inefficient blocks of a mobile network with hardware-aware ones that carry fewer
non-linear units. A layer holds one of:

* an inverted bottleneck ``ibn_k{K}_e{E}`` (``mb_conv_block.py``)::

      1x1 conv (cin -> E*cin) + BN + hard-swish      [left out when E = 1]
      KxK depthwise conv (stride s) + BN + hard-swish
      1x1 conv (E*cin -> cout) + BN
      + the input                                    [when s = 1 and cin = cout]

  Two activations, both on the expanded width.
* the ``collapsed`` block (``collapsed_block.py``), what is left of a linear block once its
  linear layers are collapsed into one convolution: ``BN + hard-swish + 3x3 conv (stride s) + BN``
  (plus the input where the shape stays). One activation, on the input's width; no depthwise
  convolution, which micro-NPUs run poorly.

The official code makes one layer special (``downsample_ibn``: the second 128 -> 128 layer of its
networks): the block then runs through half the width in two steps, ``c -> c/2 -> c``, each
step a block of its kind, with one residual around both. Here that is ``halved=True``. The code
hard-wires expansion 6 for that layer's inverted bottleneck whatever its stage's ratio; here the
candidate's own ratio counts (RAN-e-C's is 6 there, so its network is the code's).

Every convolution has no bias; BatchNorm uses the code's epsilon 1e-3 and Keras momentum 0.99
(torch momentum 0.01). A collapsed block can also be trained over-parameterised, as SESR's
collapsible linear blocks (the paper's lineage): ``linear_expansion`` > 0 trains its 3x3
convolution as a 3x3 convolution to ``linear_expansion * cout`` channels followed by a 1x1
convolution back, with nothing non-linear between, and :meth:`CollapsibleConv.collapse` folds
the two into the one 3x3 convolution exactly. The official RAN-e code trains the collapsed form
directly (``linear_expansion = 0``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

BN_EPS = 1e-3  # the code's bn_epsilon
BN_MOMENTUM = 0.01  # Keras momentum 0.99
COLLAPSED = "collapsed"
_IBN = re.compile(r"ibn_k(\d+)_e(\d+)")


@dataclass(frozen=True)
class IbnSpec:
    """The kernel size and expansion ratio of an inverted-bottleneck candidate."""

    kernel: int
    expansion: int


def ibn_name(kernel: int, expansion: int) -> str:
    """The candidate name of an inverted bottleneck, e.g. ``ibn_k5_e6``."""
    return f"ibn_k{kernel}_e{expansion}"


def parse_ibn(name: str) -> IbnSpec | None:
    """The spec an ``ibn_k{K}_e{E}`` name stands for (None for any other name)."""
    match = _IBN.fullmatch(name)
    return IbnSpec(int(match[1]), int(match[2])) if match else None


def batch_norm(channels: int, affine: bool = True, momentum: float = BN_MOMENTUM) -> nn.BatchNorm2d:
    """BatchNorm with the official code's epsilon (and by default its momentum)."""
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=momentum, affine=affine)


def conv_bn(
    c_in: int, c_out: int, kernel: int, *, stride: int = 1, groups: int = 1, act: bool = True,
    affine: bool = True, momentum: float = BN_MOMENTUM,
) -> nn.Sequential:
    """Conv (no bias, "same" padding) -> BN -> hard-swish (unless ``act`` is False): ``conv2d_block``."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        batch_norm(c_out, affine, momentum),
    ]
    if act:
        layers.append(nn.Hardswish())
    return nn.Sequential(*layers)


class InvertedBottleneck(nn.Module):
    """An ``ibn_k{K}_e{E}`` block, optionally halved (``c -> c/2 -> c`` in two steps).

    Args:
        c_in: Input channels.
        c_out: Output channels.
        stride: Stride of the depthwise convolution (of the first step when halved).
        spec: Kernel size and expansion.
        halved: Run through ``c_out // 2`` channels in two steps (the code's ``downsample_ibn``).
        affine: Learnable BatchNorm scale and shift.
        bn_momentum: torch's BatchNorm momentum (0.01: the code's Keras momentum 0.99).
    """

    def __init__(
        self, *, c_in: int, c_out: int, stride: int, spec: IbnSpec, halved: bool = False,
        affine: bool = True, bn_momentum: float = BN_MOMENTUM,
    ) -> None:
        super().__init__()
        mid = c_out // 2 if halved else c_out
        # The code's io=1: the hidden width is the input's times E; in a halved layer's second
        # step it is max(c/2, c) * E = c * E (mb_conv_block.py, "SECOND DOWNSAMPLED IBN").
        steps = [(c_in, mid, stride, c_in), (mid, c_out, 1, c_out)] if halved else [
            (c_in, c_out, stride, c_in)
        ]
        self.steps = nn.Sequential(*(
            self._step(a, b, s, w, spec, affine, bn_momentum) for a, b, s, w in steps
        ))
        self.residual = stride == 1 and c_in == c_out

    @staticmethod
    def _step(
        c_in: int, c_out: int, stride: int, base: int, spec: IbnSpec, affine: bool, momentum: float
    ) -> nn.Sequential:
        layers: list[nn.Module] = []
        if spec.expansion != 1:
            hidden = base * spec.expansion
            layers.append(conv_bn(c_in, hidden, 1, affine=affine, momentum=momentum))
        else:
            hidden = c_in
        layers += [
            conv_bn(
                hidden, hidden, spec.kernel, stride=stride, groups=hidden, affine=affine, momentum=momentum
            ),
            conv_bn(hidden, c_out, 1, act=False, affine=affine, momentum=momentum),
        ]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, cin, H, W) -> (B, cout, H/s, W/s)
        y = self.steps(x)
        return x + y if self.residual else y


class CollapsibleConv(nn.Module):
    """A KxK convolution without bias, trained as itself or as KxK (to ``expansion * c_out``)
    followed by 1x1 (back to ``c_out``): a linear block that :meth:`collapse` folds into one.

    Args:
        c_in: Input channels.
        c_out: Output channels.
        kernel: Odd kernel size.
        stride: Stride.
        expansion: 0: a single convolution; else the width of the linear block's middle, as a
            multiple of ``c_out``.
    """

    def __init__(self, *, c_in: int, c_out: int, kernel: int, stride: int, expansion: int = 0) -> None:
        super().__init__()
        if expansion < 0:
            raise ValueError(f"expansion must be >= 0, got {expansion}")
        width = expansion * c_out if expansion else c_out
        self.conv = nn.Conv2d(c_in, width, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.project = nn.Conv2d(width, c_out, 1, bias=False) if expansion else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, cin, H, W) -> (B, cout, H/s, W/s)
        y = self.conv(x)
        return self.project(y) if self.project is not None else y

    def collapsed_weight(self) -> torch.Tensor:
        """The one KxK kernel (c_out, c_in, K, K) this block computes."""
        if self.project is None:
            return self.conv.weight
        # y_o = sum_m P[o, m] * (W[m] * x): the kernels compose as P @ W.
        return torch.einsum("om,mikl->oikl", self.project.weight[:, :, 0, 0], self.conv.weight)

    def collapse(self) -> CollapsibleConv:
        """The same computation as a single convolution (an equal copy when already collapsed)."""
        conv = self.conv
        out = CollapsibleConv(
            c_in=conv.in_channels, c_out=self.collapsed_weight().shape[0], kernel=conv.kernel_size[0],
            stride=conv.stride[0],
        ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            out.conv.weight.copy_(self.collapsed_weight())
        return out


class CollapsedBlock(nn.Module):
    """RAN-e's hardware-aware block: ``BN -> hard-swish -> 3x3 conv -> BN`` (twice, through half
    the width, when halved), plus the input where the shape stays.

    Args:
        c_in: Input channels.
        c_out: Output channels.
        stride: Stride of the (first) convolution.
        halved: Two convolutions through ``c_out // 2`` channels, a hard-swish between them.
        linear_expansion: Train each convolution as a collapsible linear block of this expansion
            (0: a single convolution, as the official code).
        affine: Learnable BatchNorm scale and shift.
        bn_momentum: torch's BatchNorm momentum (0.01: the code's Keras momentum 0.99).
    """

    KERNEL = 3  # collapsed_block.py: kernel_size=(3, 3)

    def __init__(
        self, *, c_in: int, c_out: int, stride: int, halved: bool = False, linear_expansion: int = 0,
        affine: bool = True, bn_momentum: float = BN_MOMENTUM,
    ) -> None:
        super().__init__()
        mid = c_out // 2 if halved else c_out
        self.pre_norm = batch_norm(c_in, affine, bn_momentum)
        self.act = nn.Hardswish()
        self.conv1 = CollapsibleConv(
            c_in=c_in, c_out=mid, kernel=self.KERNEL, stride=stride, expansion=linear_expansion
        )
        self.norm1 = batch_norm(mid, affine, bn_momentum)
        self.conv2 = (
            CollapsibleConv(c_in=mid, c_out=c_out, kernel=self.KERNEL, stride=1, expansion=linear_expansion)
            if halved else None
        )
        self.norm2 = batch_norm(c_out, affine, bn_momentum) if halved else None
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, cin, H, W) -> (B, cout, H/s, W/s)
        y = self.norm1(self.conv1(self.act(self.pre_norm(x))))
        if self.conv2 is not None and self.norm2 is not None:
            y = self.norm2(self.conv2(self.act(y)))
        return x + y if self.residual else y

    def collapse(self) -> None:
        """Fold over-parameterised convolutions into single ones, in place (same outputs)."""
        self.conv1 = self.conv1.collapse()
        if self.conv2 is not None:
            self.conv2 = self.conv2.collapse()


def make_block(
    name: str, *, c_in: int, c_out: int, stride: int, halved: bool = False, linear_expansion: int = 0,
    affine: bool = True, bn_momentum: float = BN_MOMENTUM,
) -> nn.Module:
    """The candidate ``name`` (``collapsed`` or ``ibn_k{K}_e{E}``) for a layer ``c_in -> c_out``."""
    if name == COLLAPSED:
        return CollapsedBlock(
            c_in=c_in, c_out=c_out, stride=stride, halved=halved, linear_expansion=linear_expansion,
            affine=affine, bn_momentum=bn_momentum,
        )
    spec = parse_ibn(name)
    if spec is None:
        raise KeyError(f"unknown RAN-e block {name!r}; choose {COLLAPSED} or ibn_k<kernel>_e<expansion>")
    return InvertedBottleneck(
        c_in=c_in, c_out=c_out, stride=stride, spec=spec, halved=halved, affine=affine,
        bn_momentum=bn_momentum,
    )

