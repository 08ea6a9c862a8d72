"""Knowledge embeddings of the Stacked BCNN (Ding et al., "Stacked BNAS: Rethinking Broad
Convolutional Neural Network for Neural Architecture Search", 2021).

A knowledge embedding carries a cell's output to where a mini-BCNN fuses it (its enhancement cell
or its output node): it maps the cell's channels to the block's width and, from a deep cell, halves
the resolution to the broad cell's. BNAS designed one by hand: a 1x1 ReLU-conv-BN and, where the
resolution halves, a factorized reduction (BNAS-v2's ``model.py``: ``restricted_convs_*`` then
``reduction_convs_*``); that is ``conv_1x1`` here. Knowledge Embedding Search (KES) replaces the
hand-made choice by a softmax-weighted mixture of every candidate (:class:`MixedKnowledge`), whose
weights are architecture parameters learnt by gradient, as DARTS learns an edge's operation.

Candidates are ``(c_in, c_out, stride) -> nn.Module`` factories, ``KNOWLEDGE_OPS``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from raynas.ops.darts import DilConv, FactorizedReduce, ReLUConvBN, SepConv

KnowledgeFactory = Callable[[int, int, int], nn.Module]  # (c_in, c_out, stride) -> module


def _conv_1x1(c_in: int, c_out: int, stride: int) -> nn.Module:
    conv = ReLUConvBN(c_in, c_out, 1, 1, 0)
    return conv if stride == 1 else nn.Sequential(conv, FactorizedReduce(c_out, c_out))


def _pool(kind: type[nn.Module]) -> KnowledgeFactory:
    def make(c_in: int, c_out: int, stride: int) -> nn.Module:
        pool = (
            nn.MaxPool2d(3, stride=stride, padding=1)
            if kind is nn.MaxPool2d
            else nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
        )
        return nn.Sequential(pool, ReLUConvBN(c_in, c_out, 1, 1, 0))

    return make


KNOWLEDGE_OPS: dict[str, KnowledgeFactory] = {
    # BNAS's hand-designed embedding: 1x1 ReLU-conv-BN, then a factorized reduction to halve.
    "conv_1x1": _conv_1x1,
    # DARTS's separable and dilated convolutions, the pointwise conv mapping the channels.
    "sep_conv_3x3": lambda c_in, c_out, stride: SepConv(c_in, c_out, 3, stride, 1),
    "dil_conv_3x3": lambda c_in, c_out, stride: DilConv(c_in, c_out, 3, stride, 2, 2),
    # Parameter-free resampling, then the 1x1 ReLU-conv-BN that maps the channels.
    "max_pool_3x3": _pool(nn.MaxPool2d),
    "avg_pool_3x3": _pool(nn.AvgPool2d),
}
KNOWLEDGE_PRIMITIVES: tuple[str, ...] = tuple(KNOWLEDGE_OPS)


def knowledge_op(name: str, c_in: int, c_out: int, stride: int) -> nn.Module:
    """The knowledge embedding ``name`` from ``c_in`` to ``c_out`` channels at ``stride`` (1 or 2).

    Raises:
        ValueError: An unknown name (listing the candidates) or a stride other than 1 or 2.
    """
    if name not in KNOWLEDGE_OPS:
        raise ValueError(f"unknown knowledge embedding {name!r}; choose from: {', '.join(KNOWLEDGE_OPS)}")
    if stride not in (1, 2):
        raise ValueError(f"a knowledge embedding has stride 1 or 2, got {stride}")
    return KNOWLEDGE_OPS[name](c_in, c_out, stride)


class MixedKnowledge(nn.Module):
    """KES's over-parameterised knowledge embedding: every candidate, weighted.

    Args:
        c_in: Channels of the cell output it embeds.
        c_out: Channels it delivers (the mini-BCNN's width).
        stride: 2 from a deep cell (to the broad cell's resolution), else 1.
        primitives: The candidates, in the column order of the weights.
    """

    def __init__(self, *, c_in: int, c_out: int, stride: int, primitives: Sequence[str]) -> None:
        super().__init__()
        self.ops = nn.ModuleList(knowledge_op(p, c_in, c_out, stride) for p in primitives)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        # x: (B, c_in, H, W); weights: (num_candidates,) summing to 1 -> (B, c_out, H/stride, W/stride)
        return sum(w * op(x) for w, op in zip(weights, self.ops, strict=True))  # type: ignore[return-value]
