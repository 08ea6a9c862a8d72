"""RobustDARTS's reduced DARTS spaces S1-S4 and its ``noise`` operation (Zela et al.,
"Understanding and Robustifying Differentiable Architecture Search", ICLR 2020; the spaces as in
the authors' ``src/spaces.py``), on which RF-DARTS (Zhang et al., CVPR 2023) also reports.

- S1: every edge of the normal and of the reduction cell has its own two candidates (the ones
  DARTS ranked highest on it in the authors' preliminary runs), 14 pairs per cell type;
- S2: ``skip_connect`` and ``sep_conv_3x3`` on every edge;
- S3: ``none``, ``skip_connect`` and ``sep_conv_3x3`` on every edge;
- S4: ``noise`` and ``sep_conv_3x3`` on every edge, where ``noise`` outputs standard normal
  noise of the edge's output shape, whatever its input.

The spaces are defined for DARTS's cell of four intermediate nodes (14 edges, node by node, each
node's inputs in order).
"""

from __future__ import annotations

import torch
from torch import nn

from raynas.ops.darts import OPS


class NoiseOp(nn.Module):
    """RobustDARTS's ``noise``: N(mean, std^2) samples of the output shape (stride 2 halves H and
    W), whatever the input; its gradient to the input is zero (the graph stays connected).

    Args:
        stride: 1, or 2 on the strided edges of a reduction cell.
        mean: Mean of the noise (0).
        std: Standard deviation of the noise (1).
    """

    def __init__(self, stride: int, mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        self.stride = stride
        self.mean = mean
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H/s, W/s)
        sub = x[:, :, :: self.stride, :: self.stride]
        return sub.mul(0.0) + torch.empty_like(sub).normal_(self.mean, self.std)


OPS.register("noise")(lambda c, stride, affine: NoiseOp(stride))

EdgeOps = tuple[tuple[str, ...], ...]  # the candidates of each of a cell's 14 edges


def _pairs(text: str) -> EdgeOps:
    return tuple(tuple(pair.split("|")) for pair in text.split())


# S1's candidate pairs, edge by edge (node 0: inputs 0, 1; node 1: inputs 0, 1, 2; ...).
S1_NORMAL = _pairs(
    "skip_connect|dil_conv_3x3 skip_connect|dil_conv_5x5 "
    "skip_connect|dil_conv_5x5 skip_connect|sep_conv_3x3 skip_connect|dil_conv_3x3 "
    "max_pool_3x3|skip_connect skip_connect|sep_conv_3x3 skip_connect|sep_conv_3x3 "
    "skip_connect|dil_conv_3x3 "
    "skip_connect|sep_conv_3x3 max_pool_3x3|skip_connect skip_connect|dil_conv_3x3 "
    "dil_conv_3x3|dil_conv_5x5 dil_conv_3x3|dil_conv_5x5"
)
S1_REDUCE = _pairs(
    "max_pool_3x3|avg_pool_3x3 max_pool_3x3|dil_conv_3x3 "
    "max_pool_3x3|avg_pool_3x3 max_pool_3x3|avg_pool_3x3 skip_connect|dil_conv_5x5 "
    "max_pool_3x3|avg_pool_3x3 max_pool_3x3|sep_conv_3x3 skip_connect|dil_conv_3x3 "
    "skip_connect|dil_conv_5x5 "
    "max_pool_3x3|avg_pool_3x3 max_pool_3x3|avg_pool_3x3 skip_connect|dil_conv_5x5 "
    "skip_connect|dil_conv_5x5 skip_connect|dil_conv_5x5"
)
ROBUST_EDGES = 14


def _uniform(ops: tuple[str, ...]) -> tuple[EdgeOps, EdgeOps]:
    return (ops,) * ROBUST_EDGES, (ops,) * ROBUST_EDGES


ROBUST_SPACES: dict[str, tuple[EdgeOps, EdgeOps]] = {
    "s1": (S1_NORMAL, S1_REDUCE),
    "s2": _uniform(("skip_connect", "sep_conv_3x3")),
    "s3": _uniform(("none", "skip_connect", "sep_conv_3x3")),
    "s4": _uniform(("noise", "sep_conv_3x3")),
}
"""RobustDARTS's spaces by name: the candidates of every edge of the normal and reduction cell."""


def robust_primitives(name: str) -> tuple[str, ...]:
    """Every candidate of space ``name`` on some edge, in first-use order: the supernet's columns."""
    seen: dict[str, None] = {}
    for cell in ROBUST_SPACES[name]:
        for ops in cell:
            seen.update(dict.fromkeys(ops))
    return tuple(seen)
