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

from collections.abc import Sequence

import torch
from torch import nn

from raynas.ops.fbnet import FBNET_BLOCKS, conv_bn, make_block
from raynas.ops.mixed import MixedBlocks
from raynas.spaces.fbnet import FbnetArch, FbnetSpace, FbnetSpaceConfig, LayerSpec, layer_specs
from raynas.supernet.base import LayerwiseSupernet
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


class FbnetSupernet(LayerwiseSupernet):
    """Stem, one :class:`FbnetMixedLayer` per searchable layer, head conv, pooling, classifier.

    Args:
        config: The space's macro layout and mixing (``mixed_op``, ``bn_affine``).
        num_classes: Output classes.
        in_channels: Image channels.
        image_size: Input resolution: the layers' shapes (and so their latency-table keys) depend on it.
    """

    arch_type = FbnetArch

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
        self.init_theta(len(self.specs))

    @property
    def hard_gumbel(self) -> bool:  # type: ignore[override]
        """One-hot Gumbel-softmax samples with ``mixed_op: sampled`` (GDAS); soft ones (FBNet) otherwise."""
        return self.config.mixed_op == "sampled"

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

    def layer_shapes(self) -> Sequence[LayerSpec]:
        """The shapes of every searchable layer (what a latency table is keyed by)."""
        return self.specs


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
