"""Path dropout for one-shot models (Bender et al., "Understanding and Simplifying One-Shot
Architecture Search", ICML 2018).

The one-shot model sums every candidate path into a node; in training each path is zeroed out
independently with probability ``r ** (1 / k)``, ``k`` the node's incoming paths, so that the node
would lose all of them with probability ``r`` whatever ``k``; ``r`` rises linearly over the
training steps (the evaluator's schedule). The batch is split into ghost batches, each normalised
on its own statistics (ghost batch normalisation) and each with a dropout mask of its own, drawn
independently for every cell. These rules are read from summaries of the paper: its body could not
be read here and it has no official code, so the ghost batch of 32 and the per-cell masks are
unverified against its text (the per-step linear rate is also what TuNAS, by the same first author,
does: ``google-research/tunas`` ``mobile_search.py``); ``tests/test_path_dropout.py`` holds them.

raynas's adaptation to DARTS-style cells: a node's incoming paths are its incoming edges'
operations, ``none`` left out (it adds nothing when kept); a node that lost every path keeps one,
drawn uniformly among them, so no node is ever cut off (raynas's rule, as FractalNet's local
drop-path keeps one input of a join). A mask is a host tensor of 0/1 op weights, the form a
supernet's single path takes, so the mixed ops compute only the kept ops.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch


def path_dropout_mask(
    candidates: torch.Tensor, rate: float, nodes: Sequence[int], generator: torch.Generator | None = None
) -> torch.Tensor:
    """Independent draws of the ops kept on every edge.

    Args:
        candidates: (..., edges, num_ops) bool, the ops that may run on each edge (``none`` left
            out); every leading index (a cell, a ghost batch) gets a draw of its own.
        rate: Probability that a node would lose all its incoming paths, in [0, 1].
        nodes: (edges,) the node each edge feeds; ``k`` counts the candidates of a node's edges.
        generator: Random stream of the draw (a host generator); None: torch's global one.

    Returns:
        (..., edges, num_ops) float on the host, 1.0 for a kept op and 0.0 elsewhere; every node
        with a candidate keeps at least one.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"path dropout rate must be in [0, 1], got {rate}")
    shape = candidates.shape
    cand = candidates.to(device="cpu", dtype=torch.bool).reshape(-1, *shape[-2:])  # (D, E, O)
    node = torch.as_tensor(nodes, dtype=torch.long)  # (E,)
    if node.shape != shape[-2:-1]:
        raise ValueError(f"nodes names the node of each of {shape[-2]} edges, got {len(node)}")
    draws, _, ops = cand.shape
    width = int(node.max()) + 1

    def per_node(per_edge: torch.Tensor) -> torch.Tensor:  # (D, E) -> (D, nodes) sums
        return torch.zeros(draws, width, dtype=per_edge.dtype).index_add_(1, node, per_edge)

    k = per_node(cand.sum(2))  # (D, nodes) incoming paths of each node
    drop = rate ** (1.0 / k.clamp_min(1).double())[:, node, None]  # (D, E, 1) per-path drop probability
    u = torch.rand(cand.shape, generator=generator, dtype=torch.float64)  # (D, E, O)
    keep = cand & (u >= drop)
    # A node left with nothing keeps one of its paths, drawn uniformly among them.
    empty = (per_node(keep.sum(2)) == 0) & (k > 0)  # (D, nodes)
    scores = torch.rand(cand.shape, generator=generator, dtype=torch.float64).masked_fill(~cand, -1.0)
    path_node = node.repeat_interleave(ops).expand(draws, -1)  # (D, E*O) node of every path
    best = torch.full((draws, width), -2.0, dtype=torch.float64).scatter_reduce(
        1, path_node, scores.flatten(1), "amax"
    )  # (D, nodes)
    rescue = (scores == best[:, node, None]) & cand & empty[:, node, None]  # (D, E, O)
    return (keep | rescue).float().reshape(shape)


class PathDropout:
    """Path dropout in force on a supernet: each forward pass splits the batch into ghost batches
    and runs each with masks of its own, one per cell.

    Args:
        rate: The step's rate ``r_t``: probability that a node would lose all its paths.
        candidates: (cells, edges, num_ops) bool, the ops each cell's edges may run.
        nodes: (edges,) the node each edge feeds.
        ghost_batch: Examples per ghost batch; 0: the whole batch is one.
        generator: Random stream of the masks; None: torch's global one.
    """

    def __init__(
        self, *, rate: float, candidates: torch.Tensor, nodes: Sequence[int], ghost_batch: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"path dropout rate must be in [0, 1], got {rate}")
        if ghost_batch < 0:
            raise ValueError(f"ghost_batch must be >= 0, got {ghost_batch}")
        self.rate = rate
        self.candidates = candidates
        self.nodes = tuple(nodes)
        self.ghost_batch = ghost_batch
        self.generator = generator
        self.last: torch.Tensor | None = None  # (ghosts, cells, edges, num_ops): the last pass's masks

    def forward(
        self, run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor
    ) -> torch.Tensor:
        """``run(chunk, masks)`` on every ghost batch of ``x`` (B, ...) with its own masks (cells,
        edges, num_ops), the outputs concatenated in order: BatchNorm in training normalises each
        ghost batch on its own statistics."""
        size = self.ghost_batch or len(x)
        ghosts = max(1, math.ceil(len(x) / size))
        self.last = path_dropout_mask(
            self.candidates.expand(ghosts, *self.candidates.shape), self.rate, self.nodes, self.generator
        )
        return torch.cat([run(chunk, masks) for chunk, masks in zip(x.split(size), self.last, strict=True)])
