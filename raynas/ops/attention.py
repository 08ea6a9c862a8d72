"""Partial channel connections chosen by channel attention (Xue and Qin, "Partial Connection Based
on Channel Attention for Differentiable Neural Architecture Search", 2022: ADARTS).

Where PC-DARTS sends a fixed 1/k of an edge's channels through the candidates, ADARTS weighs the
channels with squeeze-and-excitation attention and sends the 1/k with the highest attention
(averaged over the batch); the other channels pass unprocessed. Every channel then goes back to
where it came from: channel ``c`` of an edge's output is what became of channel ``c`` of its
input, whichever channels the edge's attention chose, so the edges summed into one node add
aligned channels. (PC-DARTS's fixed split concatenates and shuffles instead; the same shuffle
after an attention-chosen, per-batch split would put different channels at one position on each
edge and each batch.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from raynas.ops.mixed import MIXED_OPS, WeightedMixedOp
from raynas.ops.partial import PartialChannelMixedOp


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation: global average pool, bottleneck MLP, sigmoid -> (B, C) in (0, 1)."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C)
        return self.mlp(x.mean(dim=(2, 3)))


@MIXED_OPS.register("attention")
class AttentionPartialMixedOp(PartialChannelMixedOp):
    """A weighted mixed op over the ``channels / k`` channels with the most attention.

    Args:
        channels: Channels in and out of the edge; must be divisible by ``k``.
        stride: 2 on reduction edges from the cell inputs, else 1.
        primitives: Candidate operation names.
        k: The inverse share of channels sent through the candidates.
        affine: Learnable BatchNorm scale and shift.
    """

    def __init__(
        self, *, channels: int, stride: int, primitives: Sequence[str], k: int, affine: bool = False
    ) -> None:
        super().__init__(channels=channels, stride=stride, primitives=primitives, k=k, affine=affine)
        self.attention = ChannelAttention(channels)

    def select(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attention-weighted input and the indices of the chosen and the other channels."""
        scores = self.attention(x)  # (B, C)
        order = scores.detach().mean(0).argsort(descending=True)  # (C,)
        c = x.shape[1] // self.k
        return x * scores[:, :, None, None], order[:c].sort().values, order[c:].sort().values

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weighted, chosen, rest = self.select(x)
        return weighted.index_select(1, chosen), weighted.index_select(1, rest)

    @staticmethod
    def restore(processed: torch.Tensor, bypassed: torch.Tensor, chosen: torch.Tensor,
                rest: torch.Tensor) -> torch.Tensor:
        """The channels back at the positions they were taken from: (B, C, H', W') where channel
        ``chosen[i]`` is ``processed[:, i]`` and channel ``rest[j]`` is ``bypassed[:, j]``."""
        order = torch.cat([chosen, rest])  # (C,): the input channel at each concatenated position
        return torch.cat([processed, bypassed], dim=1).index_select(1, order.argsort())

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        # x: (B, C, H, W); weights: (num_ops,)
        weighted, chosen, rest = self.select(x)
        processed = self.mixed(weighted.index_select(1, chosen), weights)  # (B, C/k, H', W')
        bypassed = self.bypass(weighted.index_select(1, rest))  # (B, C - C/k, H', W')
        return self.restore(processed, bypassed, chosen, rest)

    @staticmethod
    def forward_shared(
        x: torch.Tensor, edges: Sequence[AttentionPartialMixedOp], weights: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """``[edge(x, w) ...]``: each edge's attention picks its own channels, so nothing is
        shared between edges; each edge's candidates still run as
        :meth:`WeightedMixedOp.forward_shared` runs them (``none`` skipped, BatchNorm keeping its
        output)."""
        outs = []
        for edge, w in zip(edges, weights, strict=True):
            weighted, chosen, rest = edge.select(x)
            processed = WeightedMixedOp.forward_shared(weighted.index_select(1, chosen), [edge.mixed], [w])[0]
            outs.append(edge.restore(processed, edge.bypass(weighted.index_select(1, rest)), chosen, rest))
        return outs
