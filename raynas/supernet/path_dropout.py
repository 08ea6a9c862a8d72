"""Path dropout for one-shot models (Bender et al., "Understanding and Simplifying One-Shot
Architecture Search", ICML 2018).

The one-shot model sums every candidate of an edge; in training each candidate is zeroed out
independently with probability ``rate ** (1 / k)``, ``k`` the edge's candidates, so that the whole
edge goes dark with probability ``rate`` whatever its size. An edge that loses every candidate
keeps one drawn uniformly, so no edge is ever cut. The mask is a fixed host tensor of 0/1 op
weights, the form a supernet's single path takes, so the mixed ops compute only the kept ops.
"""

from __future__ import annotations

import torch


def path_dropout_mask(
    candidates: torch.Tensor, rate: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One draw of the ops kept on every edge.

    Args:
        candidates: (edges, num_ops) bool, the ops that may run on each edge (``none`` left out:
            it adds nothing when kept).
        rate: Probability that all of an edge's candidates would be dropped, in [0, 1].
        generator: Random stream of the draw (a host generator); None: torch's global one.

    Returns:
        (edges, num_ops) float on the host, 1.0 for a kept op and 0.0 elsewhere; every edge with a
        candidate keeps at least one.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"path dropout rate must be in [0, 1], got {rate}")
    candidates = candidates.to(device="cpu", dtype=torch.bool)
    k = candidates.sum(dim=1, keepdim=True).clamp_min(1)  # (edges, 1)
    drop = rate ** (1.0 / k.double())  # (edges, 1) per-op drop probability
    u = torch.rand(candidates.shape, generator=generator, dtype=torch.float64)  # (edges, num_ops)
    keep = candidates & (u >= drop)
    # Edges left with nothing keep one candidate, drawn uniformly among theirs.
    empty = candidates.any(dim=1) & ~keep.any(dim=1)  # (edges,)
    if bool(empty.any()):
        scores = torch.rand(candidates.shape, generator=generator).masked_fill(~candidates, -1.0)
        rescue = torch.zeros_like(keep)
        rescue[torch.arange(len(keep)), scores.argmax(dim=1)] = True
        keep |= rescue & empty[:, None]
    return keep.float()
