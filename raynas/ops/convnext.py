"""ConvNeXt-style operations for DARTS cells.

Three blocks bring the micro-design of ConvNeXt (Liu et al., "A ConvNet for the 2020s", CVPR 2022)
into the DARTS operation table, as studied by Ahmadian et al., "Pseudo-Inverted Bottleneck
Convolution for DARTS Search Space" (PIBConv, ICASSP 2023):

* ``convnext_KxK``: the ConvNeXt block, a KxK depthwise convolution, LayerNorm over the
  channels, a 1x1 convolution that expands the channels four times, GELU, and a 1x1 convolution
  that projects them back. Its weights number ``2 F C^2 + K^2 C`` (F = 4) plus biases and the
  norm's scale and shift.
* ``pib_conv_KxK``: the pseudo-inverted bottleneck, which keeps the inverted bottleneck's
  expansion (F = 2) at a fraction of the cost. Its layers are those of the authors' ``PseudoInvBn``
  (mahdihosseini/PIBConv ``cnn/operations.py``, commit 605fea4): a KxK depthwise convolution,
  BatchNorm, a 1x1 convolution to F*C channels, a KxK convolution back to C in C groups (F
  channels each), GELU and a 1x1 convolution, none with a bias (BatchNorm, not LayerNorm: the
  README reports that LayerNorm lowered the accuracy). Its weights number
  ``(F + 1) C^2 + (F + 1) K^2 C``: the README's Table 1 gives ``(F + 1) C^2 + 2 K^2 C``, which
  counts the grouped KxK convolution as K^2 C, where the code's has F K^2 C; the code is followed.
* ``sep_conv_gelu_KxK``: DARTS's separable convolution with GELU for ReLU and LayerNorm for
  BatchNorm, the first two steps of the paper's road map from DARTS to ConvNeXt.

All follow DARTS's operation contract: ``(C, stride, affine) -> module`` mapping C channels to C
channels, ``stride`` 1 or 2 (the first depthwise convolution is strided, as in ``sep_conv``).
Unlike ConvNeXt's block, none adds its input back: a DARTS cell has ``skip_connect`` as an
operation of its own, and a stride-2 edge has no identity to add. Nor does ``convnext_KxK`` scale
its output by ConvNeXt's layer scale (``gamma``, initialised at 1e-6): without the residual it
would all but silence the candidate beside the others on its edge. ``affine`` switches the
norms' scales and shifts, as it does BatchNorm's in the DARTS ops (off in the search).
"""

from __future__ import annotations

import torch
from torch import nn

from raynas.ops.darts import OPS

# The ConvNeXt block's expansion ratio, and the pseudo-inverted bottleneck's (PIBConv: F = 2).
CONVNEXT_EXPANSION = 4
PIB_EXPANSION = 2


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of each pixel of an NCHW tensor (ConvNeXt's "channels_first"
    LayerNorm): the same as ``nn.LayerNorm(C)`` applied channels-last.

    Args:
        channels: Number of channels C.
        affine: Learn a per-channel scale and shift.
        eps: Added to the variance (1e-6 as in ConvNeXt).
    """

    def __init__(self, channels: int, affine: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps, elementwise_affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _depthwise(channels: int, kernel_size: int, stride: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(
        channels, channels, kernel_size, stride=stride, padding=kernel_size // 2, groups=channels,
        bias=bias,
    )


def _check(kernel_size: int, stride: int) -> None:
    if kernel_size % 2 == 0 or kernel_size < 1:
        raise ValueError(f"kernel size must be odd, got {kernel_size}")
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")


class ConvNeXtBlock(nn.Sequential):
    """Depthwise KxK -> LayerNorm -> 1x1 (C -> F*C) -> GELU -> 1x1 (F*C -> C), with biases as in
    ConvNeXt; the depthwise convolution carries the stride.

    Args:
        channels: Channels in and out.
        kernel_size: Size of the depthwise kernel (7 in ConvNeXt).
        stride: 1, or 2 to halve the resolution.
        affine: Learn the LayerNorm's scale and shift.
        expansion: F, the ratio of the hidden channels to C (4 in ConvNeXt).
    """

    def __init__(
        self, channels: int, kernel_size: int, stride: int, affine: bool = True,
        expansion: int = CONVNEXT_EXPANSION,
    ) -> None:
        _check(kernel_size, stride)
        hidden = expansion * channels
        super().__init__(
            _depthwise(channels, kernel_size, stride, bias=True),
            LayerNorm2d(channels, affine),
            nn.Conv2d(channels, hidden, 1),
            nn.GELU(),
            nn.Conv2d(hidden, channels, 1),
        )


class PseudoInvertedBottleneck(nn.Sequential):
    """Depthwise KxK -> BatchNorm -> 1x1 (C -> F*C) -> KxK (F*C -> C, C groups) -> GELU -> 1x1
    (C -> C), without biases, as the authors' ``PseudoInvBn`` (PIBConv ``cnn/operations.py``).

    Args:
        channels: Channels in and out.
        kernel_size: Size of both KxK kernels.
        stride: 1, or 2 to halve the resolution (the first, depthwise convolution).
        affine: Learn the BatchNorm's scale and shift.
        expansion: F, the ratio of the hidden channels to C (2 in PIBConv).
    """

    def __init__(
        self, channels: int, kernel_size: int, stride: int, affine: bool = True,
        expansion: int = PIB_EXPANSION,
    ) -> None:
        _check(kernel_size, stride)
        hidden = expansion * channels
        super().__init__(
            _depthwise(channels, kernel_size, stride, bias=False),
            nn.BatchNorm2d(channels, affine=affine),
            nn.Conv2d(channels, hidden, 1, bias=False),
            # each output channel reads its own F hidden channels: F*K*K*C weights
            nn.Conv2d(hidden, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False),
            nn.GELU(),
            nn.Conv2d(channels, channels, 1, bias=False),
        )


class SepConvGelu(nn.Sequential):
    """DARTS's ``sep_conv`` with GELU for ReLU and LayerNorm for BatchNorm: twice (GELU,
    depthwise KxK, 1x1, LayerNorm); only the first depthwise convolution is strided.

    Args:
        channels: Channels in and out.
        kernel_size: Size of the depthwise kernels.
        stride: 1 or 2.
        affine: Learn the LayerNorms' scales and shifts.
    """

    def __init__(self, channels: int, kernel_size: int, stride: int, affine: bool = True) -> None:
        _check(kernel_size, stride)
        layers: list[nn.Module] = []
        for s in (stride, 1):
            layers += [
                nn.GELU(),
                _depthwise(channels, kernel_size, s, bias=False),
                nn.Conv2d(channels, channels, 1, bias=False),
                LayerNorm2d(channels, affine),
            ]
        super().__init__(*layers)


for _k in (3, 5, 7):
    OPS.register(f"convnext_{_k}x{_k}")(
        lambda c, stride, affine, k=_k: ConvNeXtBlock(c, k, stride, affine)
    )
    OPS.register(f"pib_conv_{_k}x{_k}")(
        lambda c, stride, affine, k=_k: PseudoInvertedBottleneck(c, k, stride, affine)
    )
for _k in (3, 5):
    OPS.register(f"sep_conv_gelu_{_k}x{_k}")(
        lambda c, stride, affine, k=_k: SepConvGelu(c, k, stride, affine)
    )

# The PIBConv operation set for DARTS cells, the authors' final PRIMITIVES (mahdihosseini/PIBConv
# cnn/genotypes.py, commit 605fea4, the one whose DARTS_PseudoInvBn the README evaluates): DARTS's
# set with the pseudo-inverted bottleneck for its separable convolutions. The other operations
# here (the ConvNeXt block, the GELU separable convolutions, pib_conv_7x7, which the authors' OPS
# has but their set leaves out) are for space.primitives to list by name.
CONVNEXT_PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "pib_conv_3x3",
    "pib_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
