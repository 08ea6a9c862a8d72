"""Building blocks of Auto-DeepLab (Liu et al., "Auto-DeepLab: Hierarchical Neural Architecture
Search for Semantic Image Segmentation", CVPR 2019): the eight cell operations, the cell, the stem,
and the ASPP heads and DeepLabv3+ decoder of the search and evaluation networks.

The operations follow the authors' TensorFlow code (tensorflow/models
``research/deeplab/core/nas_cell.py``, ``NASBaseCell._apply_conv_operation``), so that parameter
counts match it: a separable conv is two stacked ReLU-depthwise-pointwise-BN; an atrous conv is
ReLU, a *full* k x k convolution with rate 2, BN (strided: a bilinear half-size resize, then the
convolution at rate 1); a strided skip connection is ReLU, a strided 1x1 convolution, BN.
Every factory takes ``(C, stride, affine)`` and maps C channels to C channels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from raynas.ops.convnext_net import drop_path
from raynas.ops.darts import Identity, ReLUConvBN, SepConv, Zero
from raynas.ops.mixed import fixed_choices

OpFactory = Callable[[int, int, bool], nn.Module]

# The paper's eight operations (Sec. 3.1), "none" (no connection) first as in DARTS.
ADL_PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "atrous_conv_3x3",
    "atrous_conv_5x5",
)

# The official cell's operation names (nas_network.py, hnasnet) in this table's names.
OFFICIAL_OP_NAMES: dict[str, str] = {
    "separable_3x3_2": "sep_conv_3x3",
    "separable_5x5_2": "sep_conv_5x5",
    "atrous_3x3": "atrous_conv_3x3",
    "atrous_5x5": "atrous_conv_5x5",
    "avg_pool_3x3": "avg_pool_3x3",
    "max_pool_3x3": "max_pool_3x3",
    "none": "skip_connect",  # in NASBaseCell, 'none' is the identity (a 1x1 conv when strided)
}


def half_size(size: int) -> int:
    """The size after a stride-2 layer with 'same' padding: ceil(size / 2)."""
    return (size + 1) // 2


class AtrousConv(nn.Module):
    """ReLU, a full ``k x k`` convolution with rate 2, BN; strided: bilinear half-size resize, then
    the convolution at rate 1 (nas_cell.py's ``atrous`` branch)."""

    def __init__(self, channels: int, kernel_size: int, stride: int, affine: bool = True) -> None:
        super().__init__()
        self.stride = stride
        rate = 1 if stride == 2 else 2
        self.conv = nn.Conv2d(
            channels, channels, kernel_size, padding=rate * (kernel_size // 2), dilation=rate, bias=False
        )
        self.bn = nn.BatchNorm2d(channels, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H/s, W/s)
        x = F.relu(x)
        if self.stride == 2:
            size = (half_size(x.shape[2]), half_size(x.shape[3]))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.bn(self.conv(x))


ADL_OPS: dict[str, OpFactory] = {
    "none": lambda c, stride, affine: Zero(stride),
    "max_pool_3x3": lambda c, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "avg_pool_3x3": lambda c, stride, affine: nn.AvgPool2d(
        3, stride=stride, padding=1, count_include_pad=False
    ),
    "skip_connect": lambda c, stride, affine: (
        Identity() if stride == 1 else ReLUConvBN(c, c, 1, stride, 0, affine=affine)
    ),
    "sep_conv_3x3": lambda c, stride, affine: SepConv(c, c, 3, stride, 1, affine),
    "sep_conv_5x5": lambda c, stride, affine: SepConv(c, c, 5, stride, 2, affine),
    "atrous_conv_3x3": lambda c, stride, affine: AtrousConv(c, 3, stride, affine),
    "atrous_conv_5x5": lambda c, stride, affine: AtrousConv(c, 5, stride, affine),
}


class AdlMixedOp(nn.Module):
    """Every candidate on one edge of a search cell, combined as ``sum_k w_k * op_k(x)`` (Eq. 2).

    Args:
        channels: Channels in and out.
        stride: 2 on the edges that leave the inputs of a cell that halves the resolution.
        primitives: Names in :data:`ADL_OPS`.
        affine: Learnable BatchNorm scale and shift (off in the search, as in DARTS).
    """

    def __init__(self, *, channels: int, stride: int, primitives: Sequence[str], affine: bool) -> None:
        super().__init__()
        self.stride = stride
        self.ops = nn.ModuleList(ADL_OPS[name](channels, stride, affine) for name in primitives)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        # x: (B, C, H, W); weights: (num_ops,) already normalised
        chosen = fixed_choices(weights)
        if chosen is None:
            return sum(w * op(x) for w, op in zip(weights, self.ops, strict=True))  # type: ignore[return-value]
        return sum(w * self.ops[i](x) for i, w in chosen)  # type: ignore[return-value]


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize to ``size`` (a no-op when the size already matches)."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class Cell(nn.Module):
    """One Auto-DeepLab cell at filter size ``channels`` (``F * s / 4``), output ``blocks * channels``.

    The inputs are prepared as in NASBaseCell._cell_base: ``H^{l-1}`` is upsampled first when it
    comes from the coarser rate (move -1), then ReLU-1x1-BN; ``H^{l-2}`` is resized to that size and
    gets a ReLU-1x1-BN when its channels differ. When the cell halves the resolution (move +1), the
    operations on the two inputs are strided (the paper's "stride 2 convolution" on s/2 -> s).
    Hidden states: 0 = ``H^{l-2}``, 1 = ``H^{l-1}``, 2 + i = block i (the DARTS convention).

    Args:
        channels: Filters of every operation.
        c_prev: Channels of ``H^{l-1}``.
        c_prev_prev: Channels of ``H^{l-2}``.
        move: Rate index change from ``H^{l-1}``: -1 (x2 up), 0 (same) or +1 (x2 down).
        edges: Per block, its incoming edges as ``(input index, op module)``; an op module takes
            ``(x)`` (a fixed cell) or ``(x, weights)`` (a search cell, see ``weights`` in forward).
        affine: Learnable BatchNorm scale and shift in the preprocessing.
        droppable: Per edge, in order, whether drop path applies to its output (a fixed cell:
            every operation but ``skip_connect``, as nas_cell.py's ``_apply_drop_path`` spares
            its identity, even strided); default none.
    """

    def __init__(
        self, *, channels: int, c_prev: int, c_prev_prev: int, move: int,
        edges: Sequence[Sequence[tuple[int, nn.Module]]], affine: bool,
        droppable: Sequence[bool] = (),
    ) -> None:
        super().__init__()
        if move not in (-1, 0, 1):
            raise ValueError(f"a cell moves the rate by -1, 0 or +1, got {move}")
        self.move = move
        self.preprocess1 = ReLUConvBN(c_prev, channels, 1, 1, 0, affine=affine)
        self.preprocess0: nn.Module = (
            Identity() if c_prev_prev == channels
            else ReLUConvBN(c_prev_prev, channels, 1, 1, 0, affine=affine)
        )
        self.inputs = [[j for j, _ in block] for block in edges]
        self.ops = nn.ModuleList(op for block in edges for _, op in block)
        if droppable and len(droppable) != len(self.ops):
            raise ValueError(f"droppable names {len(droppable)} edges; the cell has {len(self.ops)}")
        self.droppable = tuple(droppable) or (False,) * len(self.ops)

    def forward(
        self, h_prev: torch.Tensor, h_prev_prev: torch.Tensor, size: tuple[int, int],
        weights: torch.Tensor | None = None, drop_prob: float = 0.0,
    ) -> torch.Tensor:
        # h_prev: (B, c_prev, H', W') at the neighbouring rate; size: the output (H, W);
        # weights: (edges, num_ops) for a search cell, None for a fixed one; drop_prob: the
        # probability of dropping each droppable edge's output, per sample (training only)
        if self.move == -1:
            h_prev = resize(h_prev, size)
        s1 = self.preprocess1(h_prev)  # (B, C, H_in, W_in): the output size, or twice it (move +1)
        s0 = self.preprocess0(resize(h_prev_prev, tuple(s1.shape[2:])))  # type: ignore[arg-type]
        states = [s0, s1]
        k = 0
        for inputs in self.inputs:
            out = 0
            for j in inputs:
                op = self.ops[k]
                h = op(states[j]) if weights is None else op(states[j], weights[k])
                if self.droppable[k]:
                    h = drop_path(h, drop_prob, self.training)
                out = out + h
                k += 1
            states.append(out)  # type: ignore[arg-type]
        return torch.cat(states[2:], dim=1)  # (B, blocks * C, H, W)


class Stem(nn.Module):
    """Three 3x3 convolutions, stride 2 in the first and third, 64, 64 and 128 filters (paper
    Sec. 5.2; nas_network.py ``_nas_stem``). Returns the /2 tensor (``H^{-2}`` of the first cell)
    and the /4 tensor (its ``H^{-1}``), both after BN without a ReLU, as in the official code."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int] = (64, 64, 128)) -> None:
        super().__init__()
        a, b, c = widths
        self.conv0 = nn.Sequential(
            nn.Conv2d(in_channels, a, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(a), nn.ReLU()
        )
        self.conv1 = nn.Sequential(nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b))
        self.conv2 = nn.Sequential(
            nn.ReLU(), nn.Conv2d(b, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c)
        )
        self.channels = (b, c)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        half = self.conv1(self.conv0(x))  # (B, 64, H/2, W/2)
        return half, self.conv2(half)  # (B, 128, H/4, W/4)


def conv_bn_relu(c_in: int, c_out: int, kernel_size: int = 1, dilation: int = 1) -> nn.Sequential:
    """Conv (no bias) -> BN -> ReLU, 'same' padding."""
    return nn.Sequential(
        nn.Conv2d(
            c_in, c_out, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation, bias=False
        ),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


def separable_conv_bn_relu(c_in: int, c_out: int, dilation: int = 1) -> nn.Sequential:
    """DeepLab's ``split_separable_conv2d``: 3x3 depthwise (rate ``dilation``) -> BN -> ReLU ->
    1x1 pointwise -> BN -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, padding=dilation, dilation=dilation, groups=c_in, bias=False),
        nn.BatchNorm2d(c_in),
        nn.ReLU(),
        *conv_bn_relu(c_in, c_out),
    )


class ImagePooling(nn.Module):
    """ASPP's image-level branch: global average pool, 1x1 conv-BN-ReLU, upsampled back."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = conv_bn_relu(c_in, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H, W)
        pooled = self.conv(F.adaptive_avg_pool2d(x, 1))  # (B, Cout, 1, 1)
        return pooled.expand(-1, -1, *x.shape[2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabv3): a 1x1 branch, one 3x3 branch per rate, image
    pooling, concatenated and projected by a 1x1 conv-BN-ReLU.

    Args:
        c_in: Input channels.
        c_out: Filters of every branch and of the projection.
        rates: Atrous rates of the 3x3 branches.
        separable: 3x3 branches as depthwise-separable convolutions (DeepLab's default
            ``aspp_with_separable_conv``), else full convolutions.
    """

    def __init__(self, c_in: int, c_out: int, rates: Sequence[int], *, separable: bool) -> None:
        super().__init__()
        atrous = separable_conv_bn_relu if separable else (
            lambda a, b, dilation: conv_bn_relu(a, b, 3, dilation)
        )
        self.branches = nn.ModuleList(
            [conv_bn_relu(c_in, c_out), *(atrous(c_in, c_out, dilation=r) for r in rates),
             ImagePooling(c_in, c_out)]
        )
        self.project = conv_bn_relu(c_out * len(self.branches), c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H, W)
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class SearchHead(nn.Module):
    """The search network's ASPP at downsample rate ``s`` (paper Sec. 5.1): three branches of
    ``channels`` filters (1x1, 3x3 with rate 96/s, image pooling), then 1x1 logits."""

    def __init__(self, channels: int, rate: int, num_classes: int) -> None:
        super().__init__()
        self.aspp = ASPP(channels, channels, (max(1, 96 // rate),), separable=False)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, classes, h, w)
        return self.classifier(self.aspp(F.relu(x)))


class Decoder(nn.Module):
    """The DeepLabv3+ decoder (model.py ``refine_by_decoder``): low-level features at rate 4 ->
    1x1 conv to 48, concatenated with the upsampled encoder output, two 3x3 convs of ``filters``
    (depthwise-separable with ``separable``), then 1x1 logits."""

    def __init__(
        self, c_low: int, c_encoder: int, num_classes: int, *, filters: int = 256, separable: bool = False
    ) -> None:
        super().__init__()
        conv = separable_conv_bn_relu if separable else (lambda a, b: conv_bn_relu(a, b, 3))
        self.low = conv_bn_relu(c_low, 48)
        self.refine = nn.Sequential(conv(48 + c_encoder, filters), conv(filters, filters))
        self.classifier = nn.Conv2d(filters, num_classes, 1)

    def forward(self, encoded: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        # encoded: (B, Ce, H/s, W/s); low: (B, Cl, H/4, W/4) -> (B, classes, H/4, W/4)
        low = self.low(low)  # the cell output as it is (BN last), as model.py takes Cell_2
        x = torch.cat([resize(encoded, tuple(low.shape[2:])), low], dim=1)  # type: ignore[arg-type]
        return self.classifier(self.refine(x))
