"""What the supernets share: the entropy of their architecture distributions, PC-DARTS's edge
normalisation (Xu et al., "PC-DARTS: Partial Channel Connections for Memory-Efficient
Architecture Search", ICLR 2020), the architecture parameters of a layer-wise space
(:class:`LayerwiseSupernet`: FBNet, RAN-e), and the lack of any in a shared child
(:class:`PathOnly`: ENAS's)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def mean_entropy(p: torch.Tensor) -> float:
    """The mean entropy (nats) of the distributions in the rows of ``p`` (..., options)."""
    with torch.no_grad():
        return float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean())


def node_softmax(beta: torch.Tensor, in_degrees: Iterable[int]) -> torch.Tensor:
    """PC-DARTS's edge weights: the softmax of ``beta`` (edges,) over each node's incoming edges,
    which stand together in ``beta``, ``in_degrees`` of them for each node in turn."""
    parts, start = [], 0
    for n in in_degrees:
        parts.append(F.softmax(beta[start : start + n], dim=-1))
        start += n
    return torch.cat(parts)


class PathOnly:
    """Mixed into a shared child without architecture parameters (ENAS's three: the controller holds
    the architecture distribution), which trains and scores the paths a sampling strategy sets."""

    def arch_parameters(self) -> list[nn.Parameter]:
        """None."""
        return []

    def weights(self: nn.Module) -> Iterator[nn.Parameter]:  # type: ignore[misc]
        """Every parameter."""
        return self.parameters()


class LayerwiseSupernet(nn.Module):
    """Base of the supernet of a layer-wise space (FBNet, RAN-e): every layer a mixture of the
    candidate blocks (:class:`raynas.ops.mixed.MixedBlocks`) and one row of architecture
    parameters ``theta`` per layer; the derived architecture takes each layer's strongest block.

    A subclass sets ``primitives`` (the candidates' names, ``theta``'s columns), ``arch_type``
    (the architecture record of a tuple of block names) and ``layers``, then calls
    :meth:`init_theta`; ``hard_gumbel`` makes Gumbel-softmax samples one-hot (GDAS).
    """

    primitives: tuple[str, ...]
    arch_type: type[Any]
    layers: nn.ModuleList
    hard_gumbel: bool = False

    def init_theta(self, num_layers: int) -> None:
        """Create ``theta`` (layers, candidates) and clear ``gumbel_tau`` and ``path``."""
        # Small random initial theta, as the DARTS family: 1e-3 * N(0, 1) (near-uniform choice).
        self.theta = nn.Parameter(1e-3 * torch.randn(num_layers, len(self.primitives)))
        # Set by a strategy: training passes use a Gumbel-softmax sample at this temperature.
        self.gumbel_tau: float | None = None
        # Set by single-path training and evaluation with inherited weights: one block per layer.
        self.path: tuple[int, ...] | None = None

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture parameters, optimised on validation data: ``theta`` (layers, candidates)."""
        return [self.theta]

    def weights(self) -> Iterator[nn.Parameter]:
        """Every parameter except ``theta``, optimised on training data."""
        return (p for p in self.parameters() if p is not self.theta)

    def _check_no_reduction(self, reduction: bool) -> None:
        if reduction:
            raise ValueError(
                f"{self.arch_type.space} has no reduction cell: every layer is searched on its own"
            )

    def edge_weights(self, reduction: bool = False) -> torch.Tensor:
        """The softmax of ``theta``: (layers, candidates). ``reduction`` must be False (no cells)."""
        self._check_no_reduction(reduction)
        return F.softmax(self.theta, dim=-1)

    def set_path(self, arch: Any | None) -> None:
        """Run only ``arch``'s block in every layer from now on (single-path one-shot training and
        evaluation with inherited weights); ``None`` goes back to the mixture."""
        if arch is not None and len(arch.blocks) != len(self.layers):
            raise ValueError(f"the supernet has {len(self.layers)} layers, the path {len(arch.blocks)}")
        self.path = None if arch is None else tuple(self.primitives.index(b) for b in arch.blocks)

    def forward_weights(self, reduction: bool = False) -> torch.Tensor:
        """The block weights a forward pass uses, (layers, candidates): the set path as one-hot
        rows, ``edge_weights``, or a Gumbel-softmax sample (one-hot with ``hard_gumbel``) when
        ``gumbel_tau`` is set and training."""
        if self.path is not None:
            # On the host: the mixed layers then run only the path's block (see fixed_choices).
            return F.one_hot(torch.tensor(self.path), len(self.primitives)).float()
        if self.gumbel_tau is None or not self.training:
            return self.edge_weights(reduction)
        self._check_no_reduction(reduction)
        return F.gumbel_softmax(self.theta, tau=self.gumbel_tau, hard=self.hard_gumbel, dim=-1)

    def genotype(self) -> Any:
        """The architecture ``theta`` stands for: the strongest block of every layer."""
        best = self.theta.detach().argmax(dim=-1).tolist()
        return self.arch_type(tuple(self.primitives[i] for i in best))

    def arch_state(self) -> dict[str, list[list[float]]]:
        """``theta`` as nested lists (for tracking)."""
        return {"theta": self.theta.detach().cpu().tolist()}

    def arch_entropy(self) -> float:
        """Mean entropy of the layers' block distributions (nats; log(candidates) is uniform)."""
        return mean_entropy(self.edge_weights())

    def max_entropy(self) -> float:
        """Entropy of a uniform distribution over the candidates."""
        return math.log(len(self.primitives))
