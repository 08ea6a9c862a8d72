"""The NAS-Bench-201 search network (AutoDL-Projects ``xautodl/models/cell_searchs/``:
``TinyNetworkDarts``, ``TinyNetworkGDAS``): the benchmark's skeleton with every edge of every cell a
mixed operation over the five candidates, and one architecture tensor ``alpha`` of shape (6, 5)
shared by all cells.

The interface is that of :class:`raynas.supernet.darts.DartsSupernet`, so the DARTS family (DARTS
first and second order, GDAS's sampled edges, PC-DARTS's partial channels and edge weights) runs on
it unchanged. The derived cell keeps every edge with its strongest operation, ``none`` included,
as AutoDL's DARTS and GDAS do on NAS-Bench-201.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from raynas.ops.mixed import forward_edges, mixed_op_factory, takes_partial_k
from raynas.ops.nb201 import stage_cells
from raynas.spaces.nb201 import EDGES, NB201_OPS, NODES, Nb201Arch, Nb201Space
from raynas.supernet.base import mean_entropy, node_softmax
from raynas.supernet.path_dropout import PathDropout
from raynas.supernet.registry import SUPERNETS
from raynas.types import DatasetInfo


class Nb201SearchCell(nn.Module):
    """A cell with a mixed op on each of its six edges.

    Args:
        channels: Channels in and out.
        mixed_op: Name of the mixed op in ``raynas.ops.MIXED_OPS``.
        partial_k: For mixed ops over a share of the channels (``partial``, ``attention``): 1/k of
            the channels go through the candidates.
        affine: Learnable BatchNorm scale and shift in the candidates (off in AutoDL's search
            cells; on for RF-DARTS).
    """

    def __init__(
        self, *, channels: int, mixed_op: str, partial_k: int = 1, affine: bool = False
    ) -> None:
        super().__init__()
        edge = mixed_op_factory(mixed_op, primitives=NB201_OPS, partial_k=partial_k, affine=affine)
        self.edges = nn.ModuleList(edge(channels, 1) for _ in EDGES)
        # Compute the edges leaving each node together (forward_edges); False: one edge at a
        # time through each mixed op's own forward, the plain form (same outputs and gradients).
        self.fused = True

    def forward(
        self, x: torch.Tensor, weights: torch.Tensor, edge_scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        # x: (B, C, H, W); weights: (6, 5), one row per edge; edge_scale: (6,) or None
        if self.fused:
            return self._forward_fused(x, weights, edge_scale)
        nodes = [x]
        for dst in range(1, NODES):
            node = 0
            for k, (src, to) in enumerate(EDGES):
                if to == dst:
                    out = self.edges[k](nodes[src], weights[k])
                    node = node + (out if edge_scale is None else out * edge_scale[k])
            nodes.append(node)  # type: ignore[arg-type]
        return nodes[-1]  # (B, C, H, W)

    def _forward_fused(
        self, x: torch.Tensor, weights: torch.Tensor, edge_scale: torch.Tensor | None
    ) -> torch.Tensor:
        """The same cell, node by node: the edges that leave a node are computed together as
        soon as the node is known (EDGES lists each node's inputs in order, so every sum adds
        up in the plain order)."""
        nodes: list[torch.Tensor | None] = [x, *([None] * (NODES - 1))]
        for src in range(NODES - 1):
            rows = [k for k, (s, _) in enumerate(EDGES) if s == src]
            outs = forward_edges(nodes[src], [self.edges[k] for k in rows], [weights[k] for k in rows])  # type: ignore[arg-type]
            for k, out in zip(rows, outs, strict=True):
                if edge_scale is not None:
                    out = out * edge_scale[k]
                dst = EDGES[k][1]
                node = nodes[dst]
                nodes[dst] = out if node is None else node + out
        return nodes[-1]  # type: ignore[return-value]  # (B, C, H, W)


class Nb201Supernet(nn.Module):
    """The NAS-Bench-201 supernet: stem, three stages of search cells joined by residual
    reduction blocks, BatchNorm + ReLU, global pooling and a linear classifier.

    Args:
        channels: Channels of the first stage (16 in the benchmark).
        cells_per_stage: Search cells per stage (5 in the benchmark).
        mixed_op: Name of the mixed op in ``raynas.ops.MIXED_OPS``.
        num_classes: Output classes.
        in_channels: Image channels.
        partial_k: For mixed ops over a share of the channels (``partial``, ``attention``): 1/k
            of the channels go through the candidates; must divide ``channels``.
        edge_normalization: Learn a weight per edge, normalised over each node's inputs
            (PC-DARTS's ``beta``). Every edge is kept in the derived cell, so it changes the
            forward pass only.
        bn_affine: Learnable BatchNorm scale and shift in the cells' candidates (RF-DARTS trains
            only BatchNorm parameters).
    """

    def __init__(
        self, *, channels: int, cells_per_stage: int, mixed_op: str, num_classes: int,
        in_channels: int = 3, partial_k: int = 1, edge_normalization: bool = False,
        bn_affine: bool = False,
    ) -> None:
        super().__init__()
        if channels < 1 or cells_per_stage < 1:
            raise ValueError(
                f"channels and cells_per_stage must be >= 1, got {channels} and {cells_per_stage}"
            )
        if takes_partial_k(mixed_op) and (partial_k < 1 or channels % partial_k):
            raise ValueError(f"partial channels: k={partial_k} must divide channels={channels}")
        self.primitives = NB201_OPS
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        )
        self.cells, c = stage_cells(
            channels,
            cells_per_stage,
            lambda c: Nb201SearchCell(channels=c, mixed_op=mixed_op, partial_k=partial_k, affine=bn_affine),
        )
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        # Small random initial alphas, as AutoDL: 1e-3 * N(0, 1).
        self.alpha = nn.Parameter(1e-3 * torch.randn(len(EDGES), len(NB201_OPS)))
        self.beta: nn.Parameter | None = (
            nn.Parameter(1e-3 * torch.randn(len(EDGES))) if edge_normalization else None
        )
        # GDAS: when set, training passes sample one op per edge (hard Gumbel-softmax, this tau).
        self.gumbel_tau: float | None = None
        # Single-path mode (SPOS, ENAS, ...): fixed one-hot op weights, or None.
        self.path: torch.Tensor | None = None
        # Path dropout (drop_paths): masks drawn per ghost batch and cell in every pass, or None.
        self.path_dropout: PathDropout | None = None
        # Activations channels-last, (B, H, W, C) in memory: faster convolutions and pooling on
        # CPU (oneDNN); the values are the same.
        self.channels_last = True

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture parameters, optimised on validation data: ``alpha`` (and ``beta``)."""
        return [self.alpha] if self.beta is None else [self.alpha, self.beta]

    def weights(self) -> Iterator[nn.Parameter]:
        """Every parameter except the architecture parameters, optimised on training data."""
        arch = {id(p) for p in self.arch_parameters()}
        return (p for p in self.parameters() if id(p) not in arch)

    def edge_weights(self, reduction: bool = False) -> torch.Tensor:
        """The normalised weights of every candidate on every edge: (6, 5).

        ``reduction`` is accepted for the DARTS interface; NAS-Bench-201 searches one cell and
        its reductions are fixed blocks, so it must be False.
        """
        _check_no_reduction(reduction)
        return F.softmax(self.alpha, dim=-1)

    def edge_scale(self, reduction: bool = False) -> torch.Tensor | None:
        """PC-DARTS's edge weights: softmax of beta over each node's incoming edges, (6,)."""
        _check_no_reduction(reduction)
        if self.beta is None:
            return None
        # EDGES lists each node's inputs together: rows [0], [1, 2], [3, 4, 5].
        return node_softmax(self.beta, range(1, NODES))

    def set_path(self, arch: Nb201Arch | None) -> None:
        """Run only ``arch``'s op on every edge from now on (single-path one-shot training and
        evaluation with inherited weights); ``None`` goes back to the weighted mixture. Either
        ends path dropout."""
        self.path_dropout = None
        if arch is None:
            self.path = None
            return
        onehot = torch.zeros(self.alpha.shape)  # (6, 5), on the host: see fixed_choices
        for k, op in enumerate(arch.ops):
            onehot[k, NB201_OPS.index(op)] = 1.0
        self.path = onehot

    def drop_paths(
        self, rate: float, generator: torch.Generator | None = None, *, ghost_batch: int = 0
    ) -> None:
        """Sum every candidate of every edge from now on, each pass with fresh path-dropout masks
        (Bender et al., 2018: :class:`PathDropout`): one per ghost batch of ``ghost_batch``
        examples and per search cell, each op dropped with probability ``rate ** (1 / k)``, ``k``
        the candidates into its node, and at least one kept per node; ``set_path`` ends it.

        Args:
            rate: Probability that a node would lose all its incoming paths, in [0, 1].
            generator: Random stream of the masks; None: torch's global one.
            ghost_batch: Examples per ghost batch; 0: the whole batch is one.
        """
        candidates = torch.tensor([op != "none" for op in NB201_OPS]).expand(self.alpha.shape)
        cells = sum(isinstance(cell, Nb201SearchCell) for cell in self.cells)
        self.path = None
        self.path_dropout = PathDropout(
            rate=rate, candidates=candidates.expand(cells, *candidates.shape),
            nodes=[dst for _, dst in EDGES], ghost_batch=ghost_batch, generator=generator,
        )

    def forward_weights(self, reduction: bool = False) -> torch.Tensor:
        """The op weights a forward pass uses: the fixed path if one is set, else ``edge_weights``,
        or a hard Gumbel-softmax sample with straight-through gradients when ``gumbel_tau`` is set
        and the model is training."""
        if self.path is not None:
            return self.path
        if self.gumbel_tau is None or not self.training:
            return self.edge_weights(reduction)
        _check_no_reduction(reduction)
        return F.gumbel_softmax(self.alpha.log_softmax(-1), tau=self.gumbel_tau, hard=True, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in, H, W) -> (B, classes)
        if self.path_dropout is not None:  # each ghost batch with a mask per search cell
            return self.path_dropout.forward(lambda chunk, masks: self._run(chunk, list(masks), None), x)
        weights = self.forward_weights()  # one sample for all cells
        scale = None if self.path is not None else self.edge_scale()
        return self._run(x, [weights] * len(self.cells), scale)

    def _run(
        self, x: torch.Tensor, cell_weights: Sequence[torch.Tensor], scale: torch.Tensor | None
    ) -> torch.Tensor:
        """The network with each search cell's op weights (6, 5), in order, and edge scale (6,)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)  # every op keeps the layout
        feature = self.stem(x)  # (B, C, H, W)
        weights = iter(cell_weights)
        for cell in self.cells:
            searched = isinstance(cell, Nb201SearchCell)  # else a reduction: (B, 2C, H/2, W/2)
            feature = cell(feature, next(weights), scale) if searched else cell(feature)
        out = self.global_pooling(self.lastact(feature)).flatten(1)  # (B, 4C)
        return self.classifier(out)

    def genotype(self) -> Nb201Arch:
        """The cell the current alphas stand for: the strongest op of every edge, ``none`` too."""
        best = self.alpha.detach().argmax(dim=-1).tolist()
        return Nb201Arch(tuple(NB201_OPS[i] for i in best))

    def arch_state(self) -> dict[str, list[float]]:
        """The raw architecture parameters as nested lists, by name (for tracking)."""
        state = {"alpha": self.alpha.detach().cpu().tolist()}
        if self.beta is not None:
            state["beta"] = self.beta.detach().cpu().tolist()
        return state

    def skip_connects(self) -> int:
        """Skip connections in the derived cell (DARTS's sign of collapse)."""
        return sum(op == "skip_connect" for op in self.genotype().ops)

    def arch_entropy(self) -> float:
        """Mean entropy of the edges' operation distributions (nats; log(5) is uniform)."""
        return mean_entropy(self.edge_weights())

    def max_entropy(self) -> float:
        """Entropy of a uniform distribution over the five candidates."""
        return math.log(len(NB201_OPS))


def _check_no_reduction(reduction: bool) -> None:
    if reduction:
        raise ValueError("nb201 has no searched reduction cell: its reductions are fixed ResNet blocks")


@SUPERNETS.register("nb201")
def nb201_supernet(space: Nb201Space, dataset: DatasetInfo) -> Nb201Supernet:
    """The weight-sharing network: every edge of every cell mixes the five candidates."""
    cfg = space.config
    return Nb201Supernet(
        channels=cfg.channels,
        cells_per_stage=cfg.cells_per_stage,
        mixed_op=cfg.mixed_op,
        num_classes=dataset.num_classes,
        in_channels=dataset.in_channels,
        partial_k=cfg.partial_k,
        edge_normalization=cfg.edge_normalization,
        bn_affine=cfg.bn_affine,
    )
