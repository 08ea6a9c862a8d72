"""The over-parameterised Stacked BCNN (Ding et al., "Stacked BNAS", 2021): mini-BCNNs whose cell
edges are mixed operations (DARTS's continuous relaxation, as BNAS-v2 searches BCNN) and whose five
knowledge embeddings are over-parameterised knowledge embedding modules, the softmax-weighted
mixture of every candidate embedding (Knowledge Embedding Search, KES).

Architecture parameters: ``alpha_normal`` (deep cells) and ``alpha_reduce`` (broad and
enhancement cells), optionally the edge weights ``beta_*`` (PC-DARTS's edge normalisation, which
BNAS-v2's search network keeps with its partial channels), and ``gamma`` (one row per knowledge
embedding, one column per candidate), all shared by every mini-BCNN. The cells are derived by
DARTS's rule (:func:`~raynas.supernet.darts.derive_cell`), each knowledge embedding as its
strongest candidate.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raynas.ops.bnas import MixedKnowledge
from raynas.ops.mixed import mixed_op_factory
from raynas.spaces.darts_genotype import DartsGenotype
from raynas.spaces.stacked_bnas import CONNECTIONS, STRIDES, StackedBnasArch, StackedBnasSpace
from raynas.supernet.base import mean_entropy, node_softmax
from raynas.supernet.darts import EdgeFactory, SearchCell, derive_cell, num_edges
from raynas.supernet.registry import SUPERNETS
from raynas.types import DatasetInfo


class SearchMiniBcnn(nn.Module):
    """A mini-BCNN of mixed-op cells and mixed knowledge embeddings (see :class:`~raynas.spaces.
    stacked_bnas.MiniBcnn`, its discrete counterpart)."""

    def __init__(
        self,
        *,
        c_in: int,
        channels: int,
        deep_cells: int,
        nodes: int,
        edge: EdgeFactory,
        knowledge_ops: tuple[str, ...],
    ) -> None:
        super().__init__()
        wide = 2 * channels

        def cell(c_pp: int, c_p: int, width: int, reduction: bool) -> SearchCell:
            return SearchCell(
                nodes=nodes,
                c_prev_prev=c_pp,
                c_prev=c_p,
                channels=width,
                reduction=reduction,
                reduction_prev=False,
                edge=edge,
            )

        self.deep = nn.ModuleList()
        c_prev_prev = c_prev = c_in
        for _ in range(deep_cells):
            self.deep.append(cell(c_prev_prev, c_prev, channels, False))
            c_prev_prev, c_prev = c_prev, nodes * channels
        c_deep = c_prev
        self.broad = cell(c_prev_prev, c_prev, wide, True)
        # The broad cell's topology at stride 1: built as a normal cell, given the reduce weights.
        self.enhancement = cell(wide, wide, wide, False)
        c_sources = (c_deep, nodes * wide, c_deep, nodes * wide, nodes * wide)
        self.knowledge = nn.ModuleList(
            MixedKnowledge(c_in=c, c_out=wide, stride=stride, primitives=knowledge_ops)
            for c, stride in zip(c_sources, STRIDES, strict=True)
        )
        self.out_channels = 3 * wide

    def forward(
        self,
        x: torch.Tensor,
        cells: dict[bool, tuple[torch.Tensor, torch.Tensor | None]],
        knowledge: torch.Tensor,
    ) -> torch.Tensor:
        # x: (B, c_in, H, W); cells: per reduction flag (op weights (edges, ops), edge scale or None);
        # knowledge: (5, candidates) -> (B, 6 * channels, H/2, W/2)
        s0 = s1 = x
        for cell in self.deep:
            s0, s1 = s1, cell(s0, s1, *cells[False])
        deep = s1
        broad = self.broad(s0, s1, *cells[True])
        ke = self.knowledge
        enhanced = self.enhancement(ke[0](deep, knowledge[0]), ke[1](broad, knowledge[1]), *cells[True])
        return torch.cat(
            [ke[2](deep, knowledge[2]), ke[3](broad, knowledge[3]), ke[4](enhanced, knowledge[4])], dim=1
        )


class StackedBnasSupernet(nn.Module):
    """The Stacked BCNN search network.

    Args:
        space: The space (sizes, cell candidates, knowledge candidates, mixed op).
        dataset: Input channels and classes.
    """

    def __init__(self, *, space: StackedBnasSpace, dataset: DatasetInfo) -> None:
        super().__init__()
        c = space.config
        self.space = space
        self.primitives = tuple(c.primitives)
        self.knowledge_ops = tuple(c.knowledge_ops)
        self.nodes = c.nodes
        edge = mixed_op_factory(c.mixed_op, primitives=self.primitives, partial_k=c.partial_k, affine=False)
        c_stem = c.stem_multiplier * c.channels
        self.stem = nn.Sequential(
            nn.Conv2d(dataset.in_channels, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem)
        )
        self.blocks = nn.ModuleList()
        c_in, width = c_stem, c.channels
        for _ in range(c.blocks):
            block = SearchMiniBcnn(
                c_in=c_in,
                channels=width,
                deep_cells=c.deep_cells,
                nodes=c.nodes,
                edge=edge,
                knowledge_ops=self.knowledge_ops,
            )
            self.blocks.append(block)
            c_in, width = block.out_channels, 2 * width
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, dataset.num_classes)
        shape = (num_edges(c.nodes), len(self.primitives))
        # Small random initial parameters, as DARTS: 1e-3 * N(0, 1).
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(shape))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(shape))
        self.beta_normal: nn.Parameter | None = None
        self.beta_reduce: nn.Parameter | None = None
        if c.edge_normalization:
            self.beta_normal = nn.Parameter(1e-3 * torch.randn(shape[0]))
            self.beta_reduce = nn.Parameter(1e-3 * torch.randn(shape[0]))
        # KES's parameters; with a single candidate (no KES) there is nothing to learn.
        self.gamma: nn.Parameter | None = None
        if len(self.knowledge_ops) > 1:
            self.gamma = nn.Parameter(1e-3 * torch.randn(len(CONNECTIONS), len(self.knowledge_ops)))

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture parameters, optimised on validation data."""
        names = ("alpha_normal", "alpha_reduce", "beta_normal", "beta_reduce", "gamma")
        return [getattr(self, n) for n in names if getattr(self, n) is not None]

    def weights(self) -> Iterator[nn.Parameter]:
        """Every parameter except the architecture parameters, optimised on training data."""
        arch = {id(p) for p in self.arch_parameters()}
        return (p for p in self.parameters() if id(p) not in arch)

    def edge_weights(self, reduction: bool) -> torch.Tensor:
        """The softmax of ``alpha`` of a cell type: (edges, num_ops)."""
        return F.softmax(self.alpha_reduce if reduction else self.alpha_normal, dim=-1)

    def edge_scale(self, reduction: bool) -> torch.Tensor | None:
        """PC-DARTS's edge weights: softmax of ``beta`` over each node's incoming edges, (edges,)."""
        beta = self.beta_reduce if reduction else self.beta_normal
        if beta is None:
            return None
        return node_softmax(beta, range(2, 2 + self.nodes))

    def knowledge_weights(self) -> torch.Tensor:
        """The softmax of ``gamma``: (5 knowledge embeddings, candidates); ones without KES."""
        if self.gamma is None:
            return torch.ones(len(CONNECTIONS), 1, device=self.alpha_normal.device)
        return F.softmax(self.gamma, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in, H, W) -> (B, classes)
        cells = {r: (self.edge_weights(r), self.edge_scale(r)) for r in (False, True)}
        knowledge = self.knowledge_weights()
        s = self.stem(x)
        for block in self.blocks:
            s = block(s, cells, knowledge)
        return self.classifier(self.global_pooling(s).flatten(1))

    def ranking_weights(self, reduction: bool) -> torch.Tensor:
        """The weights the cells are derived from: op weights, times edge weights if learnt."""
        weights, scale = self.edge_weights(reduction), self.edge_scale(reduction)
        return weights if scale is None else weights * scale[:, None]

    def genotype(self) -> StackedBnasArch:
        """The discrete architecture the current parameters stand for."""
        concat = tuple(range(2, 2 + self.nodes))
        cells = DartsGenotype(
            derive_cell(self.ranking_weights(False), self.primitives, self.nodes),
            concat,
            derive_cell(self.ranking_weights(True), self.primitives, self.nodes),
            concat,
        )
        best = self.knowledge_weights().argmax(dim=-1).tolist()
        return StackedBnasArch(cells, tuple(self.knowledge_ops[i] for i in best))

    def arch_state(self) -> dict[str, list[Any]]:
        """The raw architecture parameters as nested lists, by name (for tracking)."""
        names = ("alpha_normal", "alpha_reduce", "beta_normal", "beta_reduce", "gamma")
        return {n: getattr(self, n).detach().cpu().tolist() for n in names if getattr(self, n) is not None}

    def skip_connects(self) -> int:
        """Skip connections the current alphas choose in the deep cell (DARTS's sign of collapse)."""
        normal = derive_cell(self.ranking_weights(False), self.primitives, self.nodes)
        return sum(op == "skip_connect" for op, _ in normal)

    def arch_entropy(self) -> float:
        """Mean entropy (nats) of the cell edges' and the knowledge embeddings' distributions."""
        rows = [self.edge_weights(False), self.edge_weights(True), self.knowledge_weights()]
        return sum(mean_entropy(p) for p in rows) / len(rows)

    def max_entropy(self) -> float:
        """The mean entropy of uniform distributions over the same candidates."""
        return (2 * math.log(len(self.primitives)) + math.log(len(self.knowledge_ops))) / 3


@SUPERNETS.register("stacked_bnas")
def stacked_bnas_supernet(space: StackedBnasSpace, dataset: DatasetInfo) -> StackedBnasSupernet:
    """The over-parameterised Stacked BCNN of the space."""
    space.check_fits(dataset)
    return StackedBnasSupernet(space=space, dataset=dataset)
