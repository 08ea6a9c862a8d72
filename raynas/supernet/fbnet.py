"""The FBNet supernet (Wu et al., "FBNet: Hardware-Aware Efficient ConvNet Design via
Differentiable Neural Architecture Search", CVPR 2019): the macro layout with every
searchable layer a mixture of the nine candidate blocks, and one row of architecture parameters
``theta`` per layer.

A layer's output is ``sum_i m_i * block_i(x)``, where ``m`` is the softmax of ``theta`` or, while
a strategy sets ``gumbel_tau`` and the model trains, a Gumbel-softmax sample at that temperature
(soft, as FBNet; one-hot with straight-through gradients when the space's ``mixed_op`` is
``sampled``, as GDAS). The interface is that of :class:`raynas.supernet.darts.DartsSupernet`, so the
gradient strategies run on it unchanged; the derived architecture takes each layer's strongest block.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from raynas.ops.fbnet import FBNET_BLOCKS, conv_bn, make_block
from raynas.ops.mixed import MixedBlocks
from raynas.spaces.fbnet import FbnetArch, FbnetSpace, FbnetSpaceConfig, LayerSpec, layer_specs
from raynas.supernet.base import mean_entropy
from raynas.supernet.registry import SUPERNETS
from raynas.types import DatasetInfo


class FbnetMixedLayer(MixedBlocks):
    """One searchable layer: all nine candidates for the shapes ``c_in -> c_out`` at ``stride``.

    Args:
        c_in: Input channels.
        c_out: Output channels.
        stride: Stride of the layer.
        sampled: Compute only the candidate with the largest weight while training (GDAS); the
            weights of the others (zero in value under a hard sample) still receive gradients.
        affine: Learnable BatchNorm scale and shift in the candidates.
    """

    def __init__(self, *, c_in: int, c_out: int, stride: int, sampled: bool, affine: bool) -> None:
        super().__init__(
            (make_block(b, c_in=c_in, c_out=c_out, stride=stride, affine=affine) for b in FBNET_BLOCKS),
            sampled=sampled,
        )


class FbnetSupernet(nn.Module):
    """Stem, one :class:`FbnetMixedLayer` per searchable layer, head conv, pooling, classifier.

    Args:
        config: The space's macro layout and mixing (``mixed_op``, ``bn_affine``).
        num_classes: Output classes.
        in_channels: Image channels.
        image_size: Input resolution: the layers' shapes (and so their latency-table keys) depend on it.
    """

    def __init__(
        self, *, config: FbnetSpaceConfig, num_classes: int, in_channels: int = 3, image_size: int = 224
    ) -> None:
        super().__init__()
        self.config = config
        self.primitives = FBNET_BLOCKS
        self.specs: tuple[LayerSpec, ...] = layer_specs(config, image_size)
        affine = config.bn_affine
        self.stem = conv_bn(in_channels, config.stem_channels, 3, stride=config.stem_stride, affine=affine)
        self.layers = nn.ModuleList(
            FbnetMixedLayer(
                c_in=s.c_in, c_out=s.c_out, stride=s.stride, sampled=config.mixed_op == "sampled",
                affine=affine,
            )
            for s in self.specs
        )
        self.head = conv_bn(self.specs[-1].c_out, config.head_channels, 1, affine=affine)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(config.head_channels, num_classes)
        # Small random initial theta, as the DARTS family: 1e-3 * N(0, 1) (near-uniform choice).
        self.theta = nn.Parameter(1e-3 * torch.randn(len(self.specs), len(FBNET_BLOCKS)))
        # Set by a strategy: training passes use a Gumbel-softmax sample at this temperature.
        self.gumbel_tau: float | None = None
        # Set by single-path training and evaluation with inherited weights: one block per layer.
        self.path: tuple[int, ...] | None = None

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture parameters, optimised on validation data: ``theta`` (layers, 9)."""
        return [self.theta]

    def weights(self) -> Iterator[nn.Parameter]:
        """Every parameter except ``theta``, optimised on training data."""
        return (p for p in self.parameters() if p is not self.theta)

    def edge_weights(self, reduction: bool = False) -> torch.Tensor:
        """The softmax of ``theta``: (layers, 9). ``reduction`` must be False (no cells here)."""
        _check_no_reduction(reduction)
        return F.softmax(self.theta, dim=-1)

    def set_path(self, arch: FbnetArch | None) -> None:
        """Run only ``arch``'s block in every layer from now on (single-path one-shot training and
        evaluation with inherited weights); ``None`` goes back to the mixture."""
        if arch is not None and len(arch.blocks) != len(self.layers):
            raise ValueError(f"the supernet has {len(self.layers)} layers, the path {len(arch.blocks)}")
        self.path = None if arch is None else tuple(FBNET_BLOCKS.index(b) for b in arch.blocks)

    def forward_weights(self, reduction: bool = False) -> torch.Tensor:
        """The block weights a forward pass uses, (layers, 9): the set path as one-hot rows,
        ``edge_weights``, or a Gumbel-softmax sample (soft; hard with ``mixed_op: sampled``) when
        ``gumbel_tau`` is set and training."""
        if self.path is not None:
            # On the host: the mixed layers then run only the path's block (see fixed_choices).
            return F.one_hot(torch.tensor(self.path), len(FBNET_BLOCKS)).float()
        if self.gumbel_tau is None or not self.training:
            return self.edge_weights(reduction)
        _check_no_reduction(reduction)
        hard = self.config.mixed_op == "sampled"
        return F.gumbel_softmax(self.theta, tau=self.gumbel_tau, hard=hard, dim=-1)

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, classes) of images (B, in, H, W).

        Args:
            x: The images.
            weights: (layers, 9) block weights; default: :meth:`forward_weights` (one sample).
        """
        feature = self.stem(x)  # (B, stem, H/2, W/2) in the paper's layout
        if weights is None and self.path is not None:  # only the path's blocks are computed
            for layer, index in zip(self.layers, self.path, strict=True):
                feature = layer.candidates[index](feature)
        else:
            weights = self.forward_weights() if weights is None else weights
            for layer, w in zip(self.layers, weights, strict=True):
                feature = layer(feature, w)
        feature = self.head(feature)  # (B, head, H/32, W/32)
        return self.classifier(self.global_pooling(feature).flatten(1))

    def genotype(self) -> FbnetArch:
        """The architecture ``theta`` stands for: the strongest block of every layer."""
        best = self.theta.detach().argmax(dim=-1).tolist()
        return FbnetArch(tuple(FBNET_BLOCKS[i] for i in best))

    def arch_state(self) -> dict[str, list[list[float]]]:
        """``theta`` as nested lists (for tracking)."""
        return {"theta": self.theta.detach().cpu().tolist()}

    def arch_entropy(self) -> float:
        """Mean entropy of the layers' block distributions (nats; log(9) is uniform)."""
        return mean_entropy(self.edge_weights())

    def max_entropy(self) -> float:
        """Entropy of a uniform distribution over the nine candidates."""
        return math.log(len(FBNET_BLOCKS))

    def layer_shapes(self) -> Sequence[LayerSpec]:
        """The shapes of every searchable layer (what a latency table is keyed by)."""
        return self.specs


def _check_no_reduction(reduction: bool) -> None:
    if reduction:
        raise ValueError("fbnet has no reduction cell: every layer is searched on its own")


@SUPERNETS.register("fbnet")
def fbnet_supernet(space: FbnetSpace, dataset: DatasetInfo) -> nn.Module:
    """The weight-sharing network: every searchable layer mixes the nine candidates (with
    ``mixed_op: prunode``, which strategy ``prunet`` sets, PruNet's layers of Prunodes instead)."""
    if space.config.mixed_op == "prunode":
        from raynas.supernet.prunet import PrunetSupernet

        return PrunetSupernet(
            config=space.config, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
            image_size=dataset.image_size,
        )
    return FbnetSupernet(
        config=space.config, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
        image_size=dataset.image_size,
    )
