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

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from raynas.ops.mixed import MixedBlocks
from raynas.ops.ran import conv_bn, make_block
from raynas.spaces.ran import LayerSpec, RanEArch, RanESpace, RanESpaceConfig, layer_specs
from raynas.supernet.base import mean_entropy
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


class RanESupernet(nn.Module):
    """Stem, one :class:`RanMixedLayer` per layer, head, pooling, classifier.

    Args:
        config: The space's layout and candidates.
        num_classes: Output classes.
        in_channels: Image channels.
    """

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
        # Small random initial weights, as the DARTS family: 1e-3 * N(0, 1) (near-uniform choice).
        self.theta = nn.Parameter(1e-3 * torch.randn(len(specs), len(config.candidates)))
        self.gumbel_tau: float | None = None
        self.path: tuple[int, ...] | None = None

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture parameters: ``theta`` (layers, candidates)."""
        return [self.theta]

    def weights(self) -> Iterator[nn.Parameter]:
        """Every parameter except ``theta``."""
        return (p for p in self.parameters() if p is not self.theta)

    def edge_weights(self, reduction: bool = False) -> torch.Tensor:
        """The softmax of ``theta``: (layers, candidates). ``reduction`` must be False (no cells)."""
        if reduction:
            raise ValueError("ran_e has no reduction cell: every layer is searched on its own")
        return F.softmax(self.theta, dim=-1)

    def set_path(self, arch: RanEArch | None) -> None:
        """Run only ``arch``'s block in every layer from now on; ``None`` goes back to the mixture."""
        if arch is not None and len(arch.blocks) != len(self.layers):
            raise ValueError(f"the supernet has {len(self.layers)} layers, the path {len(arch.blocks)}")
        self.path = None if arch is None else tuple(self.primitives.index(b) for b in arch.blocks)

    def forward_weights(self, reduction: bool = False) -> torch.Tensor:
        """The block weights a forward pass uses: the path as one-hot rows, the softmax, or a
        Gumbel-softmax sample while ``gumbel_tau`` is set and the model trains."""
        if self.path is not None:
            return F.one_hot(torch.tensor(self.path), len(self.primitives)).float()
        if self.gumbel_tau is None or not self.training:
            return self.edge_weights(reduction)
        return F.gumbel_softmax(self.theta, tau=self.gumbel_tau, dim=-1)

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, classes) of images (B, in, H, W)."""
        feature = self.stem(x)  # (B, stem, H/2, W/2) on ImageNet
        weights = self.forward_weights() if weights is None else weights
        for layer, w in zip(self.layers, weights, strict=True):
            feature = layer(feature, w)
        feature = self.head(feature)  # (B, head, H/32, W/32) on ImageNet
        return self.classifier(self.dropout(feature.mean((2, 3))))

    def genotype(self) -> RanEArch:
        """The strongest block of every layer."""
        return RanEArch(tuple(self.primitives[i] for i in self.theta.detach().argmax(dim=-1).tolist()))

    def arch_state(self) -> dict[str, list[list[float]]]:
        """``theta`` as nested lists (for tracking)."""
        return {"theta": self.theta.detach().cpu().tolist()}

    def arch_entropy(self) -> float:
        """Mean entropy of the layers' block distributions (nats)."""
        return mean_entropy(self.edge_weights())

    def max_entropy(self) -> float:
        """Entropy of a uniform choice among the candidates."""
        return math.log(len(self.primitives))


@SUPERNETS.register("ran_e")
def ran_e_supernet(space: RanESpace, dataset: DatasetInfo) -> RanESupernet:
    """The weight-sharing network: every layer mixes the space's candidates."""
    return RanESupernet(config=space.config, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
