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

from raynas.ops.darts import FactorizedReduce

# ``op_id`` 0-4 of micro_child.py's ``_enas_cell`` and ``_fixed_layer``; the identity is named as
# DARTS names it.
ENAS_OPS: tuple[str, ...] = ("sep_conv_3x3", "sep_conv_5x5", "avg_pool_3x3", "max_pool_3x3", "skip_connect")


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


def batch_statistics_only(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm normalising by the batch's own statistics, in training and
    evaluation alike, and keeping none (ENAS's shared child runs ``is_training=True`` always)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None  # type: ignore[assignment]
    return module
