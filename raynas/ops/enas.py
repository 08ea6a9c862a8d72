"""The operations of ENAS's cell space (Pham et al., "Efficient Neural Architecture Search via
Parameter Sharing", ICML 2018), as ``melodyguan/enas``'s ``src/cifar10/micro_child.py`` builds them.

The five candidates, in the code's order (``op_id`` 0-4): separable convolutions 3x3 and 5x5 (each
two stacked ReLU, depthwise, pointwise, BatchNorm: DARTS's :class:`~raynas.ops.darts.SepConv`
layer for layer), average and max pooling 3x3 (padding excluded from the average, as TensorFlow's
``SAME`` pooling), and the identity (a factorised reduction where it must halve the resolution).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raynas.ops.darts import FactorizedReduce, SepConv

# ``op_id`` 0-4 of micro_child.py's ``_enas_cell`` and ``_fixed_layer``; the identity is named as
# DARTS names it.
ENAS_OPS: tuple[str, ...] = ("sep_conv_3x3", "sep_conv_5x5", "avg_pool_3x3", "max_pool_3x3", "skip_connect")


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's ``SAME`` padding of one side of ``size`` pixels for a window of ``kernel`` at
    ``stride``: ``ceil(size / stride)`` outputs, the padding they need split with the odd pixel
    after (torch pads both sides alike, which at stride 2 shifts every window by one pixel)."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """``x`` (B, C, H, W) padded as TensorFlow's ``SAME`` pads it (:func:`same_padding`)."""
    top, bottom = same_padding(x.shape[2], kernel, stride)
    left, right = same_padding(x.shape[3], kernel, stride)
    return F.pad(x, (left, right, top, bottom), value=value)


class SameSepConv(SepConv):
    """``_fixed_conv``: the separable convolution pair at ``stride``, its first depthwise
    convolution padded as TensorFlow's ``SAME`` (:func:`pad_same`; zeros before the ReLU are zeros
    after it). Parameters as :class:`~raynas.ops.darts.SepConv`'s."""

    def __init__(self, channels: int, kernel: int, stride: int) -> None:
        super().__init__(channels, channels, kernel, stride, kernel // 2)
        self.kernel, self.step = kernel, stride
        self[0][1].padding = (0, 0)  # type: ignore[index]  # (the first depthwise convolution)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(pad_same(x, self.kernel, self.step))  # type: ignore[no-any-return]


class SamePool(nn.Module):
    """``tf.layers.{average,max}_pooling2d(x, 3, stride, "SAME")``: padded as :func:`pad_same`,
    the padding never the maximum and left out of the average."""

    def __init__(self, kind: str, kernel: int, stride: int) -> None:
        super().__init__()
        self.kind, self.kernel, self.stride = kind, kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel, self.stride
        if self.kind == "max":
            return F.max_pool2d(pad_same(x, k, s, value=float("-inf")), k, s)
        sums = F.avg_pool2d(pad_same(x, k, s), k, s, divisor_override=1)  # (B, C, H', W')
        counts = F.avg_pool2d(pad_same(torch.ones_like(x[:1, :1]), k, s), k, s, divisor_override=1)
        return sums / counts


class FactorizedReduction(FactorizedReduce):
    """``_factorized_reduction`` at stride 2: two 1x1 convolutions, on the even and on the odd rows
    and columns, each giving half the channels, then BatchNorm; no ReLU before them (where the code
    wants one, ``_maybe_calibrate_size``, it is :class:`~raynas.ops.darts.FactorizedReduce`)."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True) -> None:
        super().__init__(c_in, c_out, affine)
        self.relu = nn.Identity()  # type: ignore[assignment]


class AuxiliaryHead(nn.Module):
    """``_model``'s auxiliary head: ReLU, 5x5 average pooling of stride 3 (``VALID``), 1x1 conv to
    128, BatchNorm, ReLU, a conv to 768 whose kernel covers the pooled map (``SAME``), BatchNorm,
    ReLU, global average pooling and a linear layer without bias. On maps smaller than 5x5 the
    pooling window shrinks to the map (the code assumes 8x8 there)."""

    def __init__(self, channels: int, size: int, num_classes: int, *, batch_stats: bool = False) -> None:
        super().__init__()
        self.window = min(5, size)
        pooled = (size - self.window) // 3 + 1
        self.kernel = pooled
        track = not batch_stats
        self.proj = nn.Sequential(
            nn.Conv2d(channels, 128, 1, bias=False), nn.BatchNorm2d(128, track_running_stats=track), nn.ReLU()
        )
        self.conv = nn.Conv2d(128, 768, pooled, bias=False)
        self.bn = nn.BatchNorm2d(768, track_running_stats=track)
        self.fc = nn.Linear(768, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        x = F.avg_pool2d(F.relu(x), self.window, stride=3)  # (B, C, h, h)
        x = self.proj(x)  # (B, 128, h, h)
        pad = self.kernel - 1  # TensorFlow's SAME for a stride of 1: the extra row and column after
        x = F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
        x = F.relu(self.bn(self.conv(x)))  # (B, 768, h, h)
        return self.fc(x.mean((2, 3)))


def code_batch_norms(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm as ``image_ops.batch_norm`` makes it (both ENAS CIFAR
    children, the shared and the fixed ones): epsilon 1e-3 (torch's default is 1e-5), moving
    statistics decaying by 0.9 (torch's momentum 0.1). Its ``fused_batch_norm`` moves the variance
    by the batch's corrected one, as torch does."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eps, m.momentum = 1e-3, 0.1
    return module


def batch_statistics_only(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm normalising by the batch's own statistics, in training and
    evaluation alike, and keeping none (ENAS's shared child runs ``is_training=True`` always)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None  # type: ignore[assignment]
    return module


# ``count`` 0-5 of general_child.py's ``_enas_layer`` (``num_branches`` of them offered: 6 in the
# search, 4 in the final run), named as the other spaces name them.
ENAS_MACRO_OPS: tuple[str, ...] = (
    "conv_3x3", "sep_conv_3x3", "conv_5x5", "sep_conv_5x5", "avg_pool_3x3", "max_pool_3x3",
)


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class MacroBranch(nn.Module):
    """A branch of the shared child's layer (``_conv_branch``, ``_pool_branch`` with the whole
    channels): a 1x1 convolution, BatchNorm and ReLU, then the op: a convolution or a separable
    convolution (depthwise, then pointwise, one channel a filter), BatchNorm and ReLU; or a 3x3
    pooling of stride 1 (padding left out of the average, as TensorFlow's ``SAME`` pooling)."""

    def __init__(self, op: str, channels: int) -> None:
        super().__init__()
        self.inp = _conv_bn_relu(channels, channels)
        self.pool = op.endswith("pool_3x3")
        self.max = op == "max_pool_3x3"
        if not self.pool:
            k = int(op[-1])
            conv: list[nn.Module] = (
                [nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels, bias=False),
                 nn.Conv2d(channels, channels, 1, bias=False)] if op.startswith("sep_")
                else [nn.Conv2d(channels, channels, k, padding=k // 2, bias=False)]
            )
            self.out = nn.Sequential(*conv, nn.BatchNorm2d(channels), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        x = self.inp(x)
        if not self.pool:
            return self.out(x)
        if self.max:
            return F.max_pool2d(x, 3, stride=1, padding=1)
        return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class MacroFixedOp(nn.Module):
    """``_fixed_layer``'s op with the whole channels: ReLU, a 1x1 convolution and BatchNorm, then
    ReLU, a ``k x k`` convolution and BatchNorm. The released code builds a plain convolution for
    both separable ids (``size = [3, 3, 5, 5]``), and nothing for the pools (``pass``, leaving the
    layer without an output); a pool here is the shared child's branch (:class:`MacroBranch`)."""

    def __init__(self, op: str, c_in: int, channels: int) -> None:
        super().__init__()
        self.pool = MacroBranch(op, channels) if op.endswith("pool_3x3") else None
        if self.pool is not None and c_in != channels:
            raise ValueError(f"a pool layer reads {channels} channels, got {c_in}")
        k = int(op[-1])
        self.ops = None if self.pool is not None else nn.Sequential(
            nn.ReLU(), nn.Conv2d(c_in, channels, 1, bias=False), nn.BatchNorm2d(channels),
            nn.ReLU(), nn.Conv2d(channels, channels, k, padding=k // 2, bias=False), nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C, H, W)
        return self.pool(x) if self.pool is not None else self.ops(x)  # type: ignore[misc]
