"""A DARTS cell transferred to semantic segmentation: DARTS's ImageNet network (Liu et al., ICLR
2019, ``cnn/model.py`` NetworkImageNet) as the encoder of a DeepLabv3+ (Chen et al., ECCV 2018),
as Auto-DeepLab (Liu et al., CVPR 2019, Sec. 5.2) pairs its own searched backbone with DeepLabv3+'s
ASPP and decoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raynas.ops.auto_deeplab import ASPP, Decoder, resize
from raynas.spaces.darts_genotype import DartsGenotype
from raynas.spaces.darts_nets import imagenet_stems, stack_cells

OUTPUT_STRIDE = 16
ASPP_RATES = (6, 12, 18)  # DeepLabv3 (Chen et al. 2017, Sec. 3.3) at output stride 16


class DartsSegmentationNet(nn.Module):
    """DARTS's ImageNet stems and cells at output stride 16, ASPP, the DeepLabv3+ decoder.

    The backbone is NetworkImageNet without its classifier: ``stem0`` (/4, C channels), ``stem1``
    (/8), then ``layers`` cells with reduction cells at one and two thirds of the depth. The last
    reduction cell keeps its ``reduce`` genotype and doubles the channels but runs at stride 1,
    so the cells after it stay at /16. This is DeepLab's way to output stride 16 (DeepLabv3,
    Chen et al. 2017, Sec. 3.1; DeepLabv3+ Sec. 3.2 for Xception): remove the striding of the last
    downsampling block rather than drop it, so the whole ImageNet-sized network, and its
    parameter count (that of NetworkImageNet less its classifier), is kept (the cell after it
    takes its s0 through a 1x1 ReLUConvBN instead of a FactorizedReduce of as many weights, since
    nothing is halved there). As DeepLab does, the cells after it run their convolutions at twice
    their dilation (and padding), so their receptive field is what it would have been at /32
    (``tensorflow/models`` ``research/deeplab``'s ``resnet_utils.stack_blocks_dense``: the unit
    whose stride is removed keeps its rate, the units after it multiply theirs by that stride); a
    ``dil_conv_3x3`` of the genotype (dilation 2) runs at 4 there. Pooling is not dilated.

    The encoder's output (after a ReLU, as Auto-DeepLab's) goes through the ASPP (1x1, three 3x3
    at rates 6, 12, 18, image pooling; ``filters`` each) of :mod:`raynas.ops.auto_deeplab`; the
    DeepLabv3+ decoder refines it with the low-level /4 feature, ``stem0``'s output (the one /4
    tensor of this network, as Auto-DeepLab takes its stem's when no cell runs at /4), and its
    logits are upsampled to the input size.

    The input is zero-padded (zero: the normalised mean) on the bottom and right to a multiple of
    16, as DeepLab pads its evaluation images (to 1025x2049), and the logits are cropped back:
    DARTS's FactorizedReduce needs even sizes at /4 and /8, and Cityscapes crops such as 769 are
    odd.

    Args:
        genotype: The cells.
        channels: Initial channels C (48 for DARTS on ImageNet).
        layers: Number of cells (14 for DARTS on ImageNet), at least 3.
        num_classes: Output classes.
        in_channels: Image channels.
        drop_path_prob: Drop-path probability on the cells' non-identity edges (training only).
        filters: Filters of the ASPP and the decoder (DeepLab's 256).
    """

    def __init__(
        self, *, genotype: DartsGenotype, channels: int = 48, layers: int = 14, num_classes: int,
        in_channels: int = 3, drop_path_prob: float = 0.0, filters: int = 256,
    ) -> None:
        super().__init__()
        if channels < 2 or channels % 2:
            raise ValueError(f"channels must be an even number >= 2 (the stem halves it), got {channels}")
        if layers < 3:
            raise ValueError(f"layers must be at least 3 (two reduction cells), got {layers}")
        self.drop_path_prob = drop_path_prob
        self.stem0, self.stem1 = imagenet_stems(in_channels, channels)
        self.cells, outputs = stack_cells(
            genotype=genotype, channels=channels, layers=layers, c_stem=channels, reduction_prev=True,
            keep_resolution={2 * layers // 3},
        )
        for cell in self.cells[2 * layers // 3 + 1 :]:
            dilate_(cell, 2)
        self.aspp = ASPP(outputs[-1], filters, ASPP_RATES, separable=False)
        self.decoder = Decoder(channels, filters, num_classes, filters=filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in, H, W) -> (B, classes, H, W)
        height, width = x.shape[2:]
        pad_h, pad_w = -height % OUTPUT_STRIDE, -width % OUTPUT_STRIDE
        padded = F.pad(x, (0, pad_w, 0, pad_h))  # (B, in, H', W'), multiples of 16
        # stem1's in-place ReLU rectifies ``low`` too, as it does s0 in DARTS's NetworkImageNet
        low = self.stem0(padded)  # (B, C, H'/4, W'/4)
        s0, s1 = low, self.stem1(low)  # s1: (B, C, H'/8, W'/8)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
        encoded = self.aspp(torch.relu(s1))  # (B, filters, H'/16, W'/16)
        logits = self.decoder(encoded, low)  # (B, classes, H'/4, W'/4)
        logits = resize(logits, tuple(padded.shape[2:]))  # type: ignore[arg-type]
        return logits[:, :, :height, :width]


def dilate_(module: nn.Module, rate: int) -> None:
    """Multiply the dilation and the padding of every spatial convolution in ``module`` by
    ``rate`` (a stride-1 convolution keeps its output size)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1:
            m.dilation = tuple(d * rate for d in m.dilation)  # type: ignore[assignment]
            m.padding = tuple(p * rate for p in m.padding)  # type: ignore[assignment]
