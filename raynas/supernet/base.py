"""What the supernets share: the entropy of their architecture distributions and PC-DARTS's edge
normalisation (Xu et al., "PC-DARTS: Partial Channel Connections for Memory-Efficient
Architecture Search", ICLR 2020)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F


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
