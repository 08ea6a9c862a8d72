"""Supernets whose architecture is one row of ``alpha`` per flat decision of their space (the macro
spaces' supernets: ConvNeXt, NEXcepTion): the rows, the weights one forward pass mixes by, the
single path, and what a search reads of them."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raynas.types import Architecture


class DecisionSupernet(nn.Module):
    """A supernet over ``space.decisions()``; a subclass sets ``self.space`` and
    ``self.decisions`` and calls :meth:`init_alphas` after building its weights (the order in which
    parameters are drawn from the seed).

    The space provides ``encode(arch) -> option indices`` and ``decode(indices) -> arch``.
    """

    space: Any
    decisions: Sequence[Any]

    def init_alphas(self) -> None:
        """Small random initial alpha, as the DARTS family: 1e-3 * N(0, 1) (near-uniform choice)."""
        self.alphas = nn.ParameterList(
            nn.Parameter(1e-3 * torch.randn(len(d.options))) for d in self.decisions
        )
        self.gumbel_tau: float | None = None  # set by a strategy: training passes sample
        self.path: tuple[int, ...] | None = None  # set for single-path training and evaluation

    def arch_parameters(self) -> list[nn.Parameter]:
        """One row of ``alpha`` per decision of the space."""
        return list(self.alphas)

    def weights(self) -> Iterator[nn.Parameter]:
        """Every parameter except ``alpha``."""
        arch = {id(p) for p in self.alphas}
        return (p for p in self.parameters() if id(p) not in arch)

    def set_path(self, arch: Architecture | None) -> None:
        """Run only ``arch``'s network from now on (its weights the supernet's own, shared);
        ``None`` goes back to the mixture."""
        self.path = None if arch is None else tuple(self.space.encode(arch))

    def forward_weights(self) -> list[torch.Tensor]:
        """Every decision's weights for one forward pass: the path's one-hot rows, the softmax of
        ``alpha``, or a soft Gumbel-softmax sample while ``gumbel_tau`` is set and training."""
        if self.path is not None:
            return [F.one_hot(torch.tensor(v), len(d.options)).float()
                    for v, d in zip(self.path, self.decisions, strict=True)]
        if self.gumbel_tau is not None and self.training:
            return [F.gumbel_softmax(a, tau=self.gumbel_tau, dim=-1) for a in self.alphas]
        return [F.softmax(a, dim=-1) for a in self.alphas]

    def genotype(self) -> Architecture:
        """The architecture ``alpha`` stands for: every decision's strongest option."""
        return self.space.decode([int(a.detach().argmax()) for a in self.alphas])

    def arch_state(self) -> dict[str, list[float]]:
        """``alpha`` by decision name (for tracking)."""
        return {d.name: a.detach().cpu().tolist() for d, a in zip(self.decisions, self.alphas, strict=True)}

    def arch_entropy(self) -> float:
        """Mean entropy of the decisions' distributions (nats)."""
        with torch.no_grad():
            values = [-(q * q.clamp_min(1e-12).log()).sum() for q in (F.softmax(a, -1) for a in self.alphas)]
            return float(torch.stack(values).mean())

    def max_entropy(self) -> float:
        """Mean entropy of uniform distributions over every decision's options."""
        return sum(math.log(len(d.options)) for d in self.decisions) / len(self.decisions)
