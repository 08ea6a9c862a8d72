"""Partial channel connections (Xu et al., "PC-DARTS: Partial Channel Connections for
Memory-Efficient Architecture Search", ICLR 2020; ``model_search.py`` of yuhuixu1993/PC-DARTS).

Only ``1/k`` of an edge's channels go through the candidate operations; the rest bypass them
(max-pooled on reduction edges), and a channel shuffle mixes the two parts for the next edge.
Activation memory of the mixed op drops by about ``k``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from raynas.ops.mixed import MIXED_OPS, WeightedMixedOp


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` equal channel groups (ShuffleNet): (B, C, H, W) -> (B, C, H, W)."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


@MIXED_OPS.register("partial")
class PartialChannelMixedOp(nn.Module):
    """A weighted mixed op over the first ``channels / k`` channels; the rest pass by.

    Args:
        channels: Channels in and out of the edge; must be divisible by ``k``.
        stride: 2 on reduction edges from the cell inputs, else 1.
        primitives: Candidate operation names.
        k: The inverse share of channels sent through the candidates (4 in the paper on CIFAR).
        affine: Learnable BatchNorm scale and shift.
    """

    def __init__(
        self, *, channels: int, stride: int, primitives: Sequence[str], k: int, affine: bool = False
    ) -> None:
        super().__init__()
        if k < 1 or channels % k:
            raise ValueError(f"partial channels: {channels} channels are not divisible by k={k}")
        self.k = k
        self.mixed = WeightedMixedOp(
            channels=channels // k, stride=stride, primitives=primitives, affine=affine
        )
        self.bypass = nn.MaxPool2d(2, 2) if stride == 2 else nn.Identity()

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The channels for the candidates (B, C/k, H, W) and the others (B, C - C/k, H, W)."""
        c = x.shape[1] // self.k
        return x[:, :c], x[:, c:]

    def merge(self, processed: torch.Tensor, bypassed: torch.Tensor) -> torch.Tensor:
        """Concatenate and shuffle, so the next edge sees a mix of both parts."""
        return channel_shuffle(torch.cat([processed, bypassed], dim=1), self.k)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        active, passive = self.split(x)
        return self.merge(self.mixed(active, weights), self.bypass(passive))

    @staticmethod
    def forward_shared(
        x: torch.Tensor, edges: Sequence[PartialChannelMixedOp], weights: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """``[edge(x, w) ...]`` for edges with one input (see
        :func:`raynas.ops.mixed.forward_edges`): every edge splits ``x`` the same way, so the split,
        the bypass and what the candidates share are computed once."""
        active, passive = edges[0].split(x)
        bypassed = edges[0].bypass(passive)  # (B, C - C/k, H/s, W/s)
        processed = WeightedMixedOp.forward_shared(active, [e.mixed for e in edges], weights)
        return [edge.merge(p, bypassed) for edge, p in zip(edges, processed, strict=True)]
