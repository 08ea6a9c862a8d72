"""The DARTS search network (``cnn/model_search.py`` of quark0/darts): cells whose every edge is a
mixed operation over all candidates, and the architecture parameters ``alpha`` that weigh them.

The supernet separates its two kinds of parameters (:meth:`DartsSupernet.weights` and
:meth:`DartsSupernet.arch_parameters`) and turns ``alpha`` into a genotype with
:func:`derive_cell`, the paper's rule: keep the two strongest incoming edges of each node, each
with its strongest operation, ``none`` ignored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raynas.errors import ArchitectureError
from raynas.ops.darts import FactorizedReduce, ReLUConvBN
from raynas.ops.mixed import cat_channels, forward_edges, mixed_op_factory, run_steps
from raynas.spaces.darts_cnn import DartsCnnSpace, DartsGenotype, Edge
from raynas.supernet.base import mean_entropy, node_softmax
from raynas.supernet.path_dropout import PathDropout
from raynas.supernet.registry import SUPERNETS
from raynas.types import DatasetInfo

EdgeFactory = Callable[[int, int], nn.Module]  # (channels, stride) -> a mixed op


def num_edges(nodes: int) -> int:
    """Edges of a cell with ``nodes`` intermediate nodes: node i has 2 + i inputs."""
    return sum(2 + i for i in range(nodes))


class SearchCell(nn.Module):
    """A cell with a mixed op on every edge; the weights of all edges are passed to forward."""
    def __init__(
        self, *, nodes: int, c_prev_prev: int, c_prev: int, channels: int, reduction: bool,
        reduction_prev: bool, edge: EdgeFactory, affine: bool = False,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.nodes = nodes
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(c_prev_prev, channels, affine=affine)
        else:
            self.preprocess0 = ReLUConvBN(c_prev_prev, channels, 1, 1, 0, affine=affine)
        self.preprocess1 = ReLUConvBN(c_prev, channels, 1, 1, 0, affine=affine)
        self.edges = nn.ModuleList(
            edge(channels, 2 if reduction and j < 2 else 1) for i in range(nodes) for j in range(2 + i)
        )
        # Compute the edges leaving each state together (forward_edges); False: one edge at a
        # time through each mixed op's own forward, the plain form (same outputs and gradients).
        self.fused = True

    def forward(
        self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
        edge_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # weights: (edges, num_ops), one row per edge in the order of self.edges;
        # edge_scale: (edges,) PC-DARTS's edge normalisation, or None
        if self.fused:
            return self._forward_fused(s0, s1, weights, edge_scale)
        states = [self.preprocess0(s0), self.preprocess1(s1)]  # each (B, C, H, W)
        offset = 0
        for _ in range(self.nodes):
            node = 0
            for j, h in enumerate(states):
                out = self.edges[offset + j](h, weights[offset + j])
                node = node + (out if edge_scale is None else out * edge_scale[offset + j])
            offset += len(states)
            states.append(node)  # type: ignore[arg-type]
        return torch.cat(states[2:], dim=1)  # (B, nodes*C, H', W')

    def _forward_fused(
        self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
        edge_scale: torch.Tensor | None,
    ) -> torch.Tensor:
        """The same cell, state by state: every edge that leaves a state is computed as soon as
        the state is known, together with the others that read it."""
        states = [run_steps(self.preprocess0, s0), run_steps(self.preprocess1, s1)]  # (B, C, H, W)
        nodes: list[torch.Tensor | None] = [None] * self.nodes
        for j in range(self.nodes + 1):  # state j feeds nodes max(0, j - 1) ... nodes - 1
            targets = range(max(0, j - 1), self.nodes)
            rows = [num_edges(i) + j for i in targets]
            outs = forward_edges(states[j], [self.edges[r] for r in rows], [weights[r] for r in rows])
            for i, row, out in zip(targets, rows, outs, strict=True):
                if edge_scale is not None:
                    out = out * edge_scale[row]
                node = nodes[i]
                nodes[i] = out if node is None else node + out  # same order as the plain sum
            if j >= 1:  # node j - 1 has all its inputs now
                states.append(nodes[j - 1])  # type: ignore[arg-type]
        return cat_channels(states[2:])  # (B, nodes*C, H', W')


class DartsSupernet(nn.Module):
    """The DARTS supernet: a stem, ``layers`` search cells and a linear classifier.

    Args:
        channels: Initial channels (16 in the paper's search).
        layers: Number of cells (8 in the paper's search); reduction at 1/3 and 2/3 depth.
        nodes: Intermediate nodes per cell (4).
        stem_multiplier: The stem outputs ``stem_multiplier * channels`` channels (3).
        primitives: Candidate operations on every edge.
        mixed_op: Name of the mixed op in ``raynas.ops.MIXED_OPS``.
        num_classes: Output classes.
        in_channels: Image channels of the input.
        partial_k: For ``mixed_op="partial"``: 1/k of the channels go through the candidates.
        edge_normalization: Learn a weight per edge, normalised over each node's inputs
            (PC-DARTS's ``beta``); the derived genotype ranks edges by op weight times edge weight.
        max_skip_connect: At most this many skip connections in the derived normal cell.
        bn_affine: Learnable BatchNorm scale and shift in the cells (RF-DARTS trains only these).
        edge_ops: The candidates of every edge of the normal and of the reduction cell, where
            edges differ (RobustDARTS's S1): the others get weight 0 (their alpha masked out).
        imagenet_stem: PC-DARTS's ImageNet stems (``model_search_imagenet.py``): ``stem``, two
            stride-2 convolutions, gives the first cell's ``s0``; ``stem1``, a third, its ``s1``;
            the first cell reduces ``s0`` to ``s1``'s size as after a reduction cell.
    """

    def __init__(
        self, *, channels: int, layers: int, nodes: int, stem_multiplier: int,
        primitives: Sequence[str], mixed_op: str, num_classes: int, in_channels: int = 3,
        partial_k: int = 1, edge_normalization: bool = False, max_skip_connect: int | None = None,
        bn_affine: bool = False, edge_ops: tuple[Sequence[Sequence[str]], ...] | None = None,
        imagenet_stem: bool = False,
    ) -> None:
        super().__init__()
        self.max_skip_connect = max_skip_connect
        self.primitives = tuple(primitives)
        self.nodes = nodes
        c_curr = stem_multiplier * channels
        self.stem1: nn.Module | None = None
        if imagenet_stem:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, c_curr // 2, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_curr // 2),
                nn.ReLU(inplace=True),
                nn.Conv2d(c_curr // 2, c_curr, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_curr),
            )
            # The code's ReLU here is in place, so it rectifies s0 too; the first cell's reduction
            # of s0 starts with a ReLU: the same outputs.
            self.stem1 = nn.Sequential(
                nn.ReLU(),
                nn.Conv2d(c_curr, c_curr, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_curr),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr)
            )
        edge = mixed_op_factory(
            mixed_op, primitives=self.primitives, partial_k=partial_k, affine=bn_affine
        )

        c_prev_prev, c_prev, c_curr = c_curr, c_curr, channels
        self.cells = nn.ModuleList()
        reduction_prev = imagenet_stem
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                c_curr *= 2
            self.cells.append(
                SearchCell(
                    nodes=nodes, c_prev_prev=c_prev_prev, c_prev=c_prev, channels=c_curr,
                    reduction=reduction, reduction_prev=reduction_prev, edge=edge,
                    affine=bn_affine,
                )
            )
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, nodes * c_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)
        shape = (num_edges(nodes), len(self.primitives))
        # Small random initial alphas, as in DARTS: 1e-3 * N(0, 1).
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(shape))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(shape))
        self.allowed: dict[bool, torch.Tensor] | None = None  # (edges, num_ops) per cell type
        if edge_ops is not None:
            self.allowed = {
                r: torch.tensor([[p in ops for p in self.primitives] for ops in edge_ops[int(r)]])
                for r in (False, True)
            }
        # GDAS: when set, training passes sample one op per edge (hard Gumbel-softmax, this tau).
        self.gumbel_tau: float | None = None
        # Single-path mode (SPOS, ENAS, ...): fixed one-hot op weights per cell type, or None.
        self.path: dict[bool, torch.Tensor] | None = None
        # Path dropout (drop_paths): masks drawn per ghost batch and cell in every pass, or None.
        self.path_dropout: PathDropout | None = None
        # Activations channels-last, (B, H, W, C) in memory: depthwise convolutions and pooling
        # run several times faster so on CPU (oneDNN); the values are the same.
        self.channels_last = True
        self.beta_normal: nn.Parameter | None = None
        self.beta_reduce: nn.Parameter | None = None
        if edge_normalization:
            self.beta_normal = nn.Parameter(1e-3 * torch.randn(shape[0]))
            self.beta_reduce = nn.Parameter(1e-3 * torch.randn(shape[0]))

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture parameters, optimised on validation data."""
        betas = [self.beta_normal, self.beta_reduce] if self.beta_normal is not None else []
        return [self.alpha_normal, self.alpha_reduce, *betas]  # type: ignore[list-item]

    def weights(self) -> Iterator[nn.Parameter]:
        """Every parameter except the architecture parameters, optimised on training data."""
        arch = {id(p) for p in self.arch_parameters()}
        return (p for p in self.parameters() if id(p) not in arch)

    def edge_weights(self, reduction: bool) -> torch.Tensor:
        """The normalised weights of every candidate on every edge: (edges, num_ops)."""
        return F.softmax(self.masked_alpha(reduction), dim=-1)

    def masked_alpha(self, reduction: bool) -> torch.Tensor:
        """``alpha`` of a cell type, -inf where an edge lacks a candidate (``edge_ops``)."""
        alpha = self.alpha_reduce if reduction else self.alpha_normal
        if self.allowed is None:
            return alpha
        return alpha.masked_fill(~self.allowed[reduction].to(alpha.device), float("-inf"))

    def edge_scale(self, reduction: bool) -> torch.Tensor | None:
        """PC-DARTS's edge weights: softmax of beta over each node's incoming edges, (edges,)."""
        beta = self.beta_reduce if reduction else self.beta_normal
        if beta is None:
            return None
        return node_softmax(beta, range(2, 2 + self.nodes))

    def set_path(self, genotype: DartsGenotype | None) -> None:
        """Run only ``genotype``'s edges and ops from now on (single-path one-shot training and
        evaluation with inherited weights); ``None`` goes back to the weighted mixture. Either
        ends path dropout."""
        self.path_dropout = None
        if genotype is None:
            self.path = None
            return
        self.path = {}
        for reduction, edges in ((False, genotype.normal), (True, genotype.reduce)):
            if len(edges) != 2 * self.nodes:
                raise ArchitectureError(f"the supernet has {self.nodes} nodes per cell; got {genotype}")
            onehot = torch.zeros(self.alpha_normal.shape)  # (edges, num_ops), on the host: see fixed_choices
            for i, (op, j) in enumerate(edges):
                node = i // 2
                if op not in self.primitives or not 0 <= j < node + 2:
                    raise ArchitectureError(f"edge ({op!r}, {j}) of node {node + 2} is not in this supernet")
                onehot[num_edges(node) + j, self.primitives.index(op)] += 1.0
            self.path[reduction] = onehot

    def drop_paths(
        self, rate: float, generator: torch.Generator | None = None, *, ghost_batch: int = 0
    ) -> None:
        """Sum every candidate of every edge from now on, each pass with fresh path-dropout masks
        (Bender et al., 2018: :class:`PathDropout`): one per ghost batch of ``ghost_batch``
        examples and per cell, each op dropped with probability ``rate ** (1 / k)``, ``k`` the
        candidates into its node, and at least one kept per node; ``set_path`` ends it.

        Args:
            rate: Probability that a node would lose all its incoming paths, in [0, 1].
            generator: Random stream of the masks; None: torch's global one.
            ghost_batch: Examples per ghost batch; 0: the whole batch is one.
        """
        candidates = torch.tensor([p != "none" for p in self.primitives]).expand(self.alpha_normal.shape)
        per_cell = torch.stack([
            candidates if self.allowed is None else candidates & self.allowed[cell.reduction]
            for cell in self.cells
        ])  # (cells, edges, num_ops)
        self.path = None
        self.path_dropout = PathDropout(
            rate=rate, candidates=per_cell, nodes=[i for i in range(self.nodes) for _ in range(2 + i)],
            ghost_batch=ghost_batch, generator=generator,
        )

    def forward_weights(self, reduction: bool) -> torch.Tensor:
        """The op weights a forward pass uses: the fixed path if one is set, else ``edge_weights``,
        or a hard Gumbel-softmax sample with straight-through gradients when ``gumbel_tau`` is set
        and the model is training."""
        if self.path is not None:
            return self.path[reduction]
        if self.gumbel_tau is None or not self.training:
            return self.edge_weights(reduction)
        alpha = self.masked_alpha(reduction)
        return F.gumbel_softmax(alpha.log_softmax(-1), tau=self.gumbel_tau, hard=True, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in, H, W) -> (B, classes)
        if self.path_dropout is not None:  # each ghost batch with a mask per cell
            return self.path_dropout.forward(
                lambda chunk, masks: self._run(chunk, [(m, None) for m in masks]), x
            )
        weights = {
            r: (self.forward_weights(r), None if self.path is not None else self.edge_scale(r))
            for r in (False, True)
        }
        return self._run(x, [weights[cell.reduction] for cell in self.cells])

    def _run(
        self, x: torch.Tensor, cell_weights: Sequence[tuple[torch.Tensor, torch.Tensor | None]]
    ) -> torch.Tensor:
        """The network with each cell's op weights (edges, num_ops) and edge scale (edges,) or None."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)  # every op keeps the layout
        s0 = s1 = self.stem(x)  # (B, C, H, W)
        if self.stem1 is not None:
            s1 = self.stem1(s0)
        for cell, (weights, scale) in zip(self.cells, cell_weights, strict=True):
            s0, s1 = s1, cell(s0, s1, weights, scale)
        return self.classifier(self.global_pooling(s1).flatten(1))

    def ranking_weights(self, reduction: bool) -> torch.Tensor:
        """The weights the genotype is derived from: op weights, times edge weights if learnt."""
        weights = self.edge_weights(reduction)
        scale = self.edge_scale(reduction)
        return weights if scale is None else weights * scale[:, None]

    def genotype(self) -> DartsGenotype:
        """The discrete architecture the current alphas stand for (the paper's derivation)."""
        concat = tuple(range(2, 2 + self.nodes))
        return DartsGenotype(
            normal=derive_cell(
                self.ranking_weights(False), self.primitives, self.nodes, self.max_skip_connect
            ),
            normal_concat=concat,
            reduce=derive_cell(self.ranking_weights(True), self.primitives, self.nodes),
            reduce_concat=concat,
        )

    def arch_state(self) -> dict[str, list[Any]]:
        """The raw architecture parameters as nested lists, by name (for tracking)."""
        names = ("alpha_normal", "alpha_reduce", "beta_normal", "beta_reduce")
        return {
            name: getattr(self, name).detach().cpu().tolist()
            for name in names
            if getattr(self, name) is not None
        }

    def skip_connects(self) -> int:
        """Skip connections the current alphas choose in the normal cell, with no limit applied
        (DARTS's sign of collapse)."""
        normal = derive_cell(self.ranking_weights(False), self.primitives, self.nodes)
        return sum(op == "skip_connect" for op, _ in normal)

    def arch_entropy(self) -> float:
        """Mean entropy of the edges' operation distributions (nats; log(num_ops) is uniform)."""
        return sum(mean_entropy(self.edge_weights(reduction)) for reduction in (False, True)) / 2

    def max_entropy(self) -> float:
        """Entropy of a uniform distribution over the candidates."""
        return math.log(len(self.primitives))


def derive_cell(
    weights: torch.Tensor, primitives: Sequence[str], nodes: int, max_skip: int | None = None
) -> tuple[Edge, ...]:
    """Discretise one cell: per node, the two inputs whose best non-``none`` op is strongest.

    Args:
        weights: (edges, num_ops) normalised operation weights.
        primitives: Operation names, in the column order of ``weights``.
        nodes: Intermediate nodes in the cell.
        max_skip: Keep at most this many ``skip_connect`` edges (P-DARTS's guard against
            collapse): the weakest skip edges give way to their next best op, repeatedly.

    Returns:
        Two (op, input) edges per node, strongest first, as in DARTS's ``genotype()``.
    """
    w = weights.detach().cpu()
    allowed = torch.tensor([p != "none" for p in primitives])
    masked = w.masked_fill(~allowed, float("-inf"))  # (edges, num_ops)
    edges = _derive(masked, primitives, nodes)
    if max_skip is None or "skip_connect" not in primitives:
        return edges
    skip = primitives.index("skip_connect")
    while sum(op == "skip_connect" for op, _ in edges) > max_skip:
        chosen = _edge_rows(edges, nodes)
        rows = [row for row, (op, _) in zip(chosen, edges, strict=True) if op == "skip_connect"]
        weakest = min(rows, key=lambda r: float(masked[r, skip]))
        masked[weakest, skip] = float("-inf")
        edges = _derive(masked, primitives, nodes)
    return edges


def _edge_rows(edges: tuple[Edge, ...], nodes: int) -> list[int]:
    """Row of the weight matrix of each derived edge."""
    starts = [sum(2 + j for j in range(i)) for i in range(nodes)]
    return [starts[k // 2] + index for k, (_, index) in enumerate(edges)]


def _derive(masked: torch.Tensor, primitives: Sequence[str], nodes: int) -> tuple[Edge, ...]:
    edges: list[Edge] = []
    start = 0
    for i in range(nodes):
        block = masked[start : start + 2 + i]  # the node's incoming edges
        best_value, best_op = block.max(dim=1)
        # Stable sort so ties keep DARTS's order (lower input first).
        order = sorted(range(2 + i), key=lambda j: -float(best_value[j]))[:2]
        edges.extend((primitives[int(best_op[j])], j) for j in order)
        start += 2 + i
    return tuple(edges)


@SUPERNETS.register("darts")
def darts_supernet(space: DartsCnnSpace, dataset: DatasetInfo) -> DartsSupernet:
    """The weight-sharing search network over every edge and candidate op."""
    cfg = space.config
    return DartsSupernet(
        channels=cfg.channels,
        layers=cfg.layers,
        nodes=cfg.nodes,
        stem_multiplier=cfg.stem_multiplier,
        primitives=cfg.primitives,
        mixed_op=cfg.mixed_op,
        num_classes=dataset.num_classes,
        in_channels=dataset.in_channels,
        partial_k=cfg.partial_k,
        edge_normalization=cfg.edge_normalization,
        max_skip_connect=None if cfg.max_skip_connect < 0 else cfg.max_skip_connect,
        bn_affine=cfg.bn_affine,
        edge_ops=(cfg.edge_ops(False), cfg.edge_ops(True)) if cfg.robust == "s1" else None,
        imagenet_stem=cfg.stem == "imagenet",
    )
