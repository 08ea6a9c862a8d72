"""The DARTS recurrent search network (quark0/darts ``rnn/model_search.py``): a language model
whose cell mixes every candidate activation on every (node, predecessor) edge, weighted by the
softmax of the architecture parameters ``alpha`` (one row per edge, one column per activation).

Node ``i`` (0-based) has ``i + 1`` incoming edges, one from each earlier state; a state is the
weighted sum over its edges and their activations of ``s_j + sigmoid(c_j) * (f(h_j) - s_j)``, with
``[c_j, h_j] = s_j W_i`` (one matrix per node, shared by its edges), followed by a BatchNorm
without affine parameters, as in the code. ``none`` contributes nothing. The derived genotype keeps,
per node, the predecessor whose strongest non-``none`` activation is strongest, with that
activation (``RNNModelSearch.genotype``).

``set_path`` restricts the cell to one genotype (one predecessor and one activation per node) for
one-shot searches that share these weights among sampled cells (ENAS's recurrent cell on PTB, SPOS).

``bptt``, the nominal window length of the text it is searched on (``data.bptt``), is what the
gradient strategies scale the weights' learning rate by per batch (rnn/train_search.py); the
strategies carry the hidden state between consecutive batches of a stream.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raynas.errors import ArchitectureError
from raynas.spaces.darts_rnn import (
    DartsRnnGenotype,
    DartsRnnSpace,
    Node,
    RecurrentCell,
    RnnLanguageModel,
    activation,
)
from raynas.supernet.base import mean_entropy
from raynas.supernet.registry import SUPERNETS
from raynas.types import DatasetInfo


def num_edges(nodes: int) -> int:
    """Edges of a cell with ``nodes`` intermediate nodes: node i (0-based) has i + 1 inputs."""
    return nodes * (nodes + 1) // 2


class DartsRnnSearchCell(RecurrentCell):
    """``DARTSCellSearch``: the cell over all edges; ``weights`` (edges, activations) is set by
    the supernet before every forward pass."""

    def __init__(
        self, *, ninp: int, nhid: int, nodes: int, activations: Sequence[str], dropouth: float,
        dropoutx: float,
    ) -> None:
        super().__init__(ninp=ninp, nhid=nhid, steps=nodes, dropouth=dropouth, dropoutx=dropoutx)
        self.nodes = nodes
        self.bn = nn.BatchNorm1d(nhid, affine=False)
        self.candidates = [(k, activation(name)) for k, name in enumerate(activations) if name != "none"]
        self.weights: torch.Tensor | None = None
        self.path: tuple[Node, ...] | None = None  # a single path: see DartsRnnSupernet.set_path

    def step(
        self, x: torch.Tensor, h_prev: torch.Tensor, x_mask: torch.Tensor | None, h_mask: torch.Tensor | None
    ) -> torch.Tensor:
        if self.path is not None:
            return self.single_path_step(x, h_prev, x_mask, h_mask)
        assert self.weights is not None, "the supernet sets the edge weights before a forward pass"
        probs = self.weights  # (edges, activations)
        s0 = self.bn(self.init_state(x, h_prev, x_mask, h_mask))  # (B, nhid)
        states = s0.unsqueeze(0)  # (1, B, nhid)
        offset = 0
        for i in range(self.nodes):
            masked = states if h_mask is None else states * h_mask.unsqueeze(0)
            ch = masked.reshape(-1, self.nhid).mm(self.Ws[i]).view(i + 1, -1, 2 * self.nhid)
            c, h = torch.split(ch, self.nhid, dim=-1)  # each (i+1, B, nhid)
            c = c.sigmoid()
            s = torch.zeros_like(s0)
            for k, fn in self.candidates:
                unweighted = states + c * (fn(h) - states)  # (i+1, B, nhid)
                s = s + (probs[offset : offset + i + 1, k].view(-1, 1, 1) * unweighted).sum(0)
            states = torch.cat([states, self.bn(s).unsqueeze(0)], 0)
            offset += i + 1
        return states[-self.nodes :].mean(0)  # (B, nhid): mean of nodes 1..nodes

    def single_path_step(
        self, x: torch.Tensor, h_prev: torch.Tensor, x_mask: torch.Tensor | None, h_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """The step of the path's cell only: node ``i`` from its one predecessor through its one
        activation, with the shared weights (what the mixture computes with one-hot weights)."""
        assert self.path is not None
        states = [self.bn(self.init_state(x, h_prev, x_mask, h_mask))]  # each (B, nhid)
        for i, (name, j) in enumerate(self.path):
            masked = states[j] if h_mask is None else states[j] * h_mask
            c, h = torch.split(masked.mm(self.Ws[i]), self.nhid, dim=-1)
            states.append(self.bn(states[j] + c.sigmoid() * (activation(name)(h) - states[j])))
        return torch.stack(states[1:]).mean(0)  # (B, nhid)


class DartsRnnSupernet(RnnLanguageModel):
    """``RNNModelSearch``: the search language model and its architecture parameters.

    Args:
        ntoken: Vocabulary size.
        nhid: Embedding and hidden size (300 in rnn/train_search.py).
        nodes: Intermediate nodes (8).
        activations: Candidate activations, ``none`` included in the paper's set.
        dropout, dropouth, dropoutx, dropouti, dropoute: As in :class:`RnnLanguageModel` and
            :class:`~raynas.spaces.darts_rnn.RecurrentCell`.
        bptt: The nominal window length of the training text (35); a batch's learning rate is
            scaled by its length over it (0: not scaled).
    """

    def __init__(
        self, *, ntoken: int, nhid: int, nodes: int, activations: Sequence[str], dropout: float,
        dropouth: float, dropoutx: float, dropouti: float, dropoute: float, bptt: int = 0,
    ) -> None:
        cell = DartsRnnSearchCell(
            ninp=nhid, nhid=nhid, nodes=nodes, activations=activations, dropouth=dropouth,
            dropoutx=dropoutx,
        )
        super().__init__(cell=cell, ntoken=ntoken, dropout=dropout, dropouti=dropouti, dropoute=dropoute)
        self.search_cell = [cell]  # a plain list: the cell is registered once, as ``cell``
        self.nodes = nodes
        self.activations = tuple(activations)
        self.bptt = bptt
        # Small random initial alphas, as in the code: 1e-3 * N(0, 1), (edges, activations).
        self.alpha = nn.Parameter(1e-3 * torch.randn(num_edges(nodes), len(self.activations)))

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture parameters, optimised on the held-out half."""
        return [self.alpha]

    def weights(self) -> Iterator[nn.Parameter]:
        """Every parameter but ``alpha`` (the tied embedding counted once)."""
        return (p for p in self.parameters() if p is not self.alpha)

    def edge_weights(self) -> torch.Tensor:
        """Softmax of alpha over each edge's activations: (edges, activations)."""
        return F.softmax(self.alpha, dim=-1)

    def set_path(self, genotype: DartsRnnGenotype | None) -> None:
        """Run only ``genotype``'s cell from now on (single-path one-shot training and evaluation
        with inherited weights, as ENAS's shared recurrent cell); ``None`` goes back to the mixture.

        Raises:
            ArchitectureError: The genotype has another number of nodes, or an activation that is
                not a candidate here.
        """
        if genotype is not None:
            if genotype.nodes != self.nodes or any(a not in self.activations for a, _ in genotype.recurrent):
                raise ArchitectureError(
                    f"{genotype} is no path of this supernet ({self.nodes} nodes, activations "
                    f"{', '.join(self.activations)})"
                )
            genotype_path: tuple[Node, ...] | None = tuple(genotype.recurrent)
        else:
            genotype_path = None
        self.search_cell[0].path = genotype_path

    def run_outputs(
        self, tokens: torch.Tensor, hidden: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cell = self.search_cell[0]
        if cell.path is not None:
            return super().run_outputs(tokens, hidden)
        cell.weights = self.edge_weights()
        try:
            return super().run_outputs(tokens, hidden)
        finally:
            cell.weights = None  # no graph kept alive between passes

    def genotype(self) -> DartsRnnGenotype:
        """The discrete cell the current alphas stand for (the code's derivation)."""
        return DartsRnnGenotype(
            derive_recurrent(self.edge_weights(), self.activations, self.nodes),
            tuple(range(1, self.nodes + 1)),
        )

    def arch_state(self) -> dict[str, list[Any]]:
        """The raw architecture parameters as nested lists (for tracking)."""
        return {"alpha": self.alpha.detach().cpu().tolist()}

    def arch_entropy(self) -> float:
        """Mean entropy of the edges' activation distributions (nats)."""
        return mean_entropy(self.edge_weights())

    def max_entropy(self) -> float:
        """Entropy of a uniform distribution over the candidates."""
        return math.log(len(self.activations))


def derive_recurrent(weights: torch.Tensor, activations: Sequence[str], nodes: int) -> tuple[Node, ...]:
    """Discretise the cell as ``RNNModelSearch.genotype`` does: per node, the predecessor whose
    strongest non-``none`` activation is strongest (ties: the lower index), with that activation.

    Args:
        weights: (edges, activations) normalised weights, edges ordered node by node.
        activations: Names of the columns.
        nodes: Intermediate nodes.
    """
    w = weights.detach().cpu().tolist()
    candidates = [k for k, a in enumerate(activations) if a != "none"]
    out: list[Node] = []
    start = 0
    for i in range(nodes):
        rows = w[start : start + i + 1]  # the node's incoming edges, (i+1, activations)
        # The first maximum wins ties, as the code's sorted(...)[0] and strict '>' do.
        best = [max(candidates, key=lambda k, r=r: (r[k], -k)) for r in rows]
        j = max(range(i + 1), key=lambda e: (rows[e][best[e]], -e))
        out.append((activations[best[j]], j))
        start += i + 1
    return tuple(out)


@SUPERNETS.register("darts_rnn")
def darts_rnn_supernet(space: DartsRnnSpace, dataset: DatasetInfo) -> DartsRnnSupernet:
    """The search language model: every (node, predecessor) edge mixes every activation."""
    cfg = space.config
    return DartsRnnSupernet(
        ntoken=dataset.num_classes, nhid=cfg.channels, nodes=cfg.nodes, activations=cfg.activations,
        dropout=cfg.dropout, dropouth=cfg.dropouth, dropoutx=cfg.dropoutx, dropouti=cfg.dropouti,
        dropoute=cfg.dropoute, bptt=dataset.image_size,  # a text's image_size: its bptt
    )
