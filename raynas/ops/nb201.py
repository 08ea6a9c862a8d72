"""The NAS-Bench-201 operations (Dong and Yang, "NAS-Bench-201: Extending the Scope of Reproducible
Neural Architecture Search", ICLR 2020; ``xautodl/models/cell_operations.py`` of D-X-Y/AutoDL-Projects).

The benchmark's five candidates are ``none``, ``skip_connect``, ``nor_conv_1x1``, ``nor_conv_3x3``
and ``avg_pool_3x3``. Three of them are already in :data:`raynas.ops.OPS` with definitions that
equal the benchmark's on its cells (stride 1, as many channels in as out); this module adds the two
"normal" convolutions, and the residual block that reduces the resolution between the stages.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from raynas.ops.darts import OPS


class NorConv(nn.Sequential):
    """ReLU -> conv -> BatchNorm, the benchmark's ``ReLUConvBN``.

    As in the benchmark, the convolution has a bias exactly when the BatchNorm has no affine
    parameters (``bias=not affine``): the search cells (``affine=False``) have conv biases, the
    trained networks (``affine=True``) do not. Parameter counts and FLOPs depend on it.

    Args:
        c_in: Input channels.
        c_out: Output channels.
        kernel_size: Square kernel size (padding keeps the resolution at stride 1).
        stride: Convolution stride.
        affine: Learn the BatchNorm's scale and shift.
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, affine: bool) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(
                c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2, bias=not affine
            ),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class ResNetBasicBlock(nn.Module):
    """The fixed block between the benchmark's stages: two 3x3 ``NorConv`` (the first strided)
    plus a shortcut of 2x2 average pooling and a 1x1 conv (no bias, no BatchNorm).

    Args:
        c_in: Input channels.
        c_out: Output channels (the benchmark doubles them).
        stride: 2 between stages; 1 keeps the resolution (shortcut: identity or a 1x1 NorConv).
        affine: Learn the BatchNorm parameters of the two convolutions.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 2, affine: bool = True) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ResNetBasicBlock: stride must be 1 or 2, got {stride}")
        self.conv_a = NorConv(c_in, c_out, 3, stride, affine)
        self.conv_b = NorConv(c_out, c_out, 3, 1, affine)
        self.downsample: nn.Module | None
        if stride == 2:
            self.downsample = nn.Sequential(
                nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
                nn.Conv2d(c_in, c_out, kernel_size=1, bias=False),
            )
        elif c_in != c_out:
            self.downsample = NorConv(c_in, c_out, 1, 1, affine)
        else:
            self.downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H/s, W/s)
        residual = x if self.downsample is None else self.downsample(x)
        return residual + self.conv_b(self.conv_a(x))


OPS.register("nor_conv_1x1")(lambda c, stride, affine: NorConv(c, c, 1, stride, affine))
OPS.register("nor_conv_3x3")(lambda c, stride, affine: NorConv(c, c, 3, stride, affine))


def stage_cells(
    channels: int, cells_per_stage: int, make_cell: Callable[[int], nn.Module]
) -> tuple[nn.ModuleList, int]:
    """The benchmark's body: three stages of ``cells_per_stage`` cells at C, 2C and 4C channels,
    joined by stride-2 residual blocks. ``make_cell(channels)`` builds one cell.

    Returns:
        The modules in order, and the channels of the last stage.
    """
    cells = nn.ModuleList()
    c = channels
    for stage in range(3):
        if stage:
            cells.append(ResNetBasicBlock(c, 2 * c, stride=2, affine=True))
            c *= 2
        cells.extend(make_cell(c) for _ in range(cells_per_stage))
    return cells, c
