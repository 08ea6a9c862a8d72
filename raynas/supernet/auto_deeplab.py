"""The Auto-DeepLab search network (Liu et al., CVPR 2019, Sec. 4.1 and 5.1): every node of the
L-layer trellis at /4, /8, /16, /32, each the ``beta``-weighted sum of up to three cells (from the
finer, the same and the coarser rate of the layer before, Eq. 6), every cell over the mixed
operations weighted by the shared ``alpha`` (Eq. 2); an ASPP head at every rate of the last layer,
their logits upsampled to the input and summed.

``alpha`` (blocks' edges x operations) is decoded as in DARTS (:func:`raynas.supernet.darts.derive_cell`)
and ``beta`` (layers x 4 rates x 3 moves, normalised over each node's outgoing moves, Eq. 7) by the
Viterbi algorithm (:func:`raynas.spaces.auto_deeplab.viterbi_path`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raynas.ops.auto_deeplab import AdlMixedOp, Cell, SearchHead, Stem, half_size, resize
from raynas.spaces.auto_deeplab import (
    MOVES,
    RATES,
    AutoDeepLabArchitecture,
    AutoDeepLabSpace,
    layer_rates,
    source_rates,
    transition_probs,
    viterbi_path,
)
from raynas.supernet.base import mean_entropy
from raynas.supernet.darts import derive_cell, num_edges
from raynas.supernet.registry import SUPERNETS
from raynas.types import DatasetInfo


class AutoDeepLabSupernet(nn.Module):
    """The hierarchical search network.

    Args:
        filter_multiplier: F (8 in the paper's search): a node at rate s has ``B * F * s / 4``
            channels.
        layers: L (12).
        blocks: B (5).
        primitives: Candidate operations on every edge.
        num_classes: Output classes.
        in_channels: Image channels.
    """

    def __init__(
        self, *, filter_multiplier: int, layers: int, blocks: int, primitives: Sequence[str],
        num_classes: int, in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.primitives = tuple(primitives)
        self.blocks = blocks
        self.layers = layers
        self.stem = Stem(in_channels)
        width = [blocks * filter_multiplier * 2**r for r in range(len(RATES))]  # node channels
        # cells[f"{l}_{r}_{k}"]: layer l, rate r, reached by move MOVES[k] from rate r - MOVES[k]
        self.cells = nn.ModuleDict()
        for layer in range(layers):
            for r in range(layer_rates(layer)):
                for k, move in enumerate(MOVES):
                    src = r - move
                    if not 0 <= src < source_rates(layer):
                        continue
                    c_prev = self.stem.channels[1] if layer == 0 else width[src]
                    c_prev_prev = self._prev_prev_channels(layer, r, width)
                    channels = filter_multiplier * 2**r
                    edges = [
                        [(j, AdlMixedOp(channels=channels, stride=2 if move == 1 and j < 2 else 1,
                                        primitives=self.primitives, affine=False))
                         for j in range(b + 2)]
                        for b in range(blocks)
                    ]
                    self.cells[f"{layer}_{r}_{k}"] = Cell(
                        channels=channels, c_prev=c_prev, c_prev_prev=c_prev_prev, move=move,
                        edges=edges, affine=False,
                    )
        last = layer_rates(layers - 1)
        self.heads = nn.ModuleList(SearchHead(width[r], RATES[r], num_classes) for r in range(last))
        # Small random initial values, as the paper: N(0, 1) * 1e-3 (Sec. 5.1).
        self.alpha = nn.Parameter(1e-3 * torch.randn(num_edges(blocks), len(self.primitives)))
        self.beta = nn.Parameter(1e-3 * torch.randn(layers, len(RATES), len(MOVES)))

    def _prev_prev_rate(self, layer: int, r: int) -> int:
        """The rate of ``H^{l-2}`` for node (layer, r): the same rate two layers back, or the
        nearest that layer has (the stem's /2 and /4 tensors for layers 0 and 1)."""
        return min(r, layer_rates(layer - 2) - 1)

    def _prev_prev_channels(self, layer: int, r: int, width: list[int]) -> int:
        if layer < 2:
            return self.stem.channels[layer]  # layer 0: the /2 tensor, layer 1: the /4 one
        return width[self._prev_prev_rate(layer, r)]

    def arch_parameters(self) -> list[nn.Parameter]:
        """``alpha`` (cell) and ``beta`` (network), optimised on the trainB half."""
        return [self.alpha, self.beta]

    def weights(self) -> Iterator[nn.Parameter]:
        """Every parameter except the architecture parameters, optimised on the trainA half."""
        arch = {id(p) for p in self.arch_parameters()}
        return (p for p in self.parameters() if id(p) not in arch)

    def edge_weights(self) -> torch.Tensor:
        """Softmax of ``alpha`` over the operations of each edge: (edges, num_ops)."""
        return F.softmax(self.alpha, dim=-1)

    def transition_weights(self) -> torch.Tensor:
        """``beta`` normalised over each node's outgoing moves: (layers, 4, 3)."""
        return transition_probs(self.beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in, H, W) -> (B, classes, H, W)
        weights = self.edge_weights()  # (edges, num_ops)
        probs = self.transition_weights()  # (layers, 4, 3)
        half, stem = self.stem(x)  # (B, 64, H/2, W/2), (B, 128, H/4, W/4)
        sizes = [tuple(stem.shape[2:])]
        for _ in RATES[1:]:
            sizes.append((half_size(sizes[-1][0]), half_size(sizes[-1][1])))
        before: list[torch.Tensor] = [half]  # layer l - 2's nodes (the stem's /2 for layer 0)
        prev: list[torch.Tensor] = [stem]  # layer l - 1's nodes by rate (the stem for layer 0)
        for layer in range(self.layers):
            nodes = []
            for r in range(layer_rates(layer)):
                h_pp = before[min(r, len(before) - 1)]
                node = 0
                for k, move in enumerate(MOVES):
                    src = r - move
                    if not 0 <= src < len(prev):
                        continue
                    cell = self.cells[f"{layer}_{r}_{k}"]
                    out = cell(prev[src], h_pp, sizes[r], weights)  # (B, B*F*s/4, H/s, W/s)
                    node = node + probs[layer, src, k] * out
                nodes.append(node)
            before, prev = prev, nodes  # type: ignore[assignment]
        logits = [resize(head(h), tuple(x.shape[2:])) for head, h in zip(self.heads, prev, strict=True)]
        return torch.stack(logits).sum(0)  # type: ignore[arg-type]

    def genotype(self) -> AutoDeepLabArchitecture:
        """The architecture ``alpha`` and ``beta`` stand for: the DARTS cell rule (two strongest
        inputs per block, each with its best operation other than ``none``) and the Viterbi path."""
        cell = derive_cell(self.edge_weights(), self.primitives, self.blocks)
        return AutoDeepLabArchitecture(cell=cell, path=viterbi_path(self.transition_weights()))

    def arch_state(self) -> dict[str, list[Any]]:
        """The raw architecture parameters as (rows, columns) lists: ``alpha`` (edges, ops) and
        ``beta`` (layers * 4 rates, 3 moves)."""
        return {
            "alpha": self.alpha.detach().cpu().tolist(),
            "beta": self.beta.detach().cpu().reshape(-1, len(MOVES)).tolist(),
        }

    def arch_entropy(self) -> float:
        """Mean entropy of the edges' operation distributions (nats; log(num_ops) is uniform)."""
        return mean_entropy(self.edge_weights())

    def max_entropy(self) -> float:
        """Entropy of a uniform distribution over the candidates."""
        return math.log(len(self.primitives))


@SUPERNETS.register("auto_deeplab")
def auto_deeplab_supernet(space: AutoDeepLabSpace, dataset: DatasetInfo) -> AutoDeepLabSupernet:
    """The search network: every cell of the trellis with mixed ops, ``alpha`` and ``beta``."""
    cfg = space.config
    return AutoDeepLabSupernet(
        filter_multiplier=cfg.channels, layers=cfg.layers, blocks=cfg.blocks,
        primitives=cfg.primitives, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
    )
