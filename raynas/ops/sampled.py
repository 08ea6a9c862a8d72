"""A mixed op that runs only the sampled candidate (GDAS: Dong and Yang, "Searching for A Robust
Neural Architecture in Four GPU Hours", CVPR 2019).

The edge weights are a hard one-hot sample with straight-through gradients; only the chosen
candidate is computed, and the other weights (zero in value) are added so that their gradients
are those of the relaxed sum.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from raynas.ops.darts import Zero
from raynas.ops.mixed import MIXED_OPS, Term, WeightedMixedOp


@MIXED_OPS.register("sampled")
class SampledMixedOp(WeightedMixedOp):
    """Computes ``w_i * op_i(x)`` for the chosen ``i = argmax(w)`` only.

    Args:
        channels: Channels in and out of the edge.
        stride: 2 on reduction edges from the cell inputs, else 1.
        primitives: Candidate operation names.
        affine: Learnable BatchNorm scale and shift.
    """

    def __init__(
        self, *, channels: int, stride: int, primitives: Sequence[str], affine: bool = False
    ) -> None:
        super().__init__(channels=channels, stride=stride, primitives=primitives, affine=affine)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        # weights: (num_ops,), one-hot in value when sampled (straight-through Gumbel)
        index = int(weights.argmax())
        if not self.training:  # evaluation: the discrete network of the strongest ops
            return self.ops[index](x)
        others = weights.sum() - weights[index]  # zero in value, carries the other gradients
        return weights[index] * self.ops[index](x) + others

    def terms(self, weights: torch.Tensor) -> tuple[list[Term], torch.Tensor | None]:
        """The chosen candidate (``none`` left out) and the added zero of ``forward``, for
        :func:`raynas.ops.mixed.forward_edges`: edges from one state that chose the same
        parameter-free candidate share it."""
        index = int(weights.argmax())
        chosen: list[Term] = [] if isinstance(self.ops[index], Zero) else [(index, 1.0)]
        if not self.training:
            return chosen, None
        return [(i, weights[index]) for i, _ in chosen], weights.sum() - weights[index]
