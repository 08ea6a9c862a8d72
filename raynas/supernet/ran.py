"""The RAN-e supernet (Bhardwaj et al., "Restructurable Activation Networks", 2022): the RAN-e
layout with every layer a mixture of its candidates (the collapsed block and the inverted
bottlenecks, :mod:`raynas.ops.ran`), and one row of architecture parameters per layer.

The paper searches RAN-e by replacing blocks one at a time (``raynas.strategies.sampling.ran``);
the supernet lets the other strategies search the same space with shared weights: a layer's
output is ``sum_i m_i * block_i(x)`` with ``m`` the softmax of its row (a Gumbel-softmax sample
while a strategy sets ``gumbel_tau`` and the model trains), or only one block per layer on a
single path (``set_path``). Its interface is that of :class:`raynas.supernet.fbnet.FbnetSupernet`.
"""

from __future__ import annotations

import torch
from torch import nn

from raynas.ops.mixed import MixedBlocks
from raynas.ops.ran import conv_bn, make_block
from raynas.spaces.ran import LayerSpec, RanEArch, RanESpace, RanESpaceConfig, layer_specs
from raynas.supernet.base import LayerwiseSupernet
from raynas.supernet.registry import SUPERNETS
from raynas.types import DatasetInfo


class RanMixedLayer(MixedBlocks):
    """One layer: every candidate for the layer's shapes.

    Args:
        spec: The layer's channels, stride and whether it is halved.
        candidates: The candidate names.
        linear_expansion: How collapsed blocks train (see :class:`raynas.ops.ran.CollapsedBlock`).
        bn_momentum: torch's BatchNorm momentum.
    """

    def __init__(
        self, *, spec: LayerSpec, candidates: tuple[str, ...], linear_expansion: int, bn_momentum: float
    ) -> None:
        super().__init__(
            make_block(b, c_in=spec.c_in, c_out=spec.c_out, stride=spec.stride, halved=spec.halved,
                       linear_expansion=linear_expansion, bn_momentum=bn_momentum)
            for b in candidates
        )


class RanESupernet(LayerwiseSupernet):
    """Stem, one :class:`RanMixedLayer` per layer, head, pooling, classifier.

    Args:
        config: The space's layout and candidates.
        num_classes: Output classes.
        in_channels: Image channels.
    """

    arch_type = RanEArch

    def __init__(self, *, config: RanESpaceConfig, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.config = config
        self.primitives = config.candidates
        specs = layer_specs(config, 1)
        self.stem = nn.Conv2d(
            in_channels, config.stem_channels, 3, stride=config.stem_stride, padding=1, bias=False
        )
        self.layers = nn.ModuleList(
            RanMixedLayer(
                spec=s, candidates=config.candidates, linear_expansion=config.linear_expansion,
                bn_momentum=config.bn_momentum,
            )
            for s in specs
        )
        head, m = config.head_channels, config.bn_momentum
        self.head = nn.Sequential(
            conv_bn(specs[-1].c_out, head, 1, momentum=m),
            conv_bn(head, head, config.head_kernel, groups=head, momentum=m),
        )
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(head, num_classes)
        self.init_theta(len(specs))

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, classes) of images (B, in, H, W)."""
        feature = self.stem(x)  # (B, stem, H/2, W/2) on ImageNet
        weights = self.forward_weights() if weights is None else weights
        for layer, w in zip(self.layers, weights, strict=True):
            feature = layer(feature, w)
        feature = self.head(feature)  # (B, head, H/32, W/32) on ImageNet
        return self.classifier(self.dropout(feature.mean((2, 3))))

@SUPERNETS.register("ran_e")
def ran_e_supernet(space: RanESpace, dataset: DatasetInfo) -> RanESupernet:
    """The weight-sharing network: every layer mixes the space's candidates."""
    return RanESupernet(config=space.config, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
