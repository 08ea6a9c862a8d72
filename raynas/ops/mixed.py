"""Mixed operations: how a supernet edge combines its candidate operations.

The ``weighted`` op is DARTS's continuous relaxation: the output is the sum of every candidate's
output weighted by the softmax of the edge's architecture parameters. Variants (partial-channel,
sampled) register here under their own names.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from torch import nn

from raynas.ops.darts import OPS
from raynas.registry import Registry

MIXED_OPS: Registry[type[nn.Module]] = Registry("mixed op")


def takes_partial_k(mixed_op: str) -> bool:
    """Whether the mixed op registered as ``mixed_op`` sends 1/k of the channels (takes ``k``)."""
    return "k" in inspect.signature(MIXED_OPS.get(mixed_op)).parameters


def mixed_op_factory(
    mixed_op: str, *, primitives: Sequence[str], partial_k: int, affine: bool
) -> Callable[[int, int], nn.Module]:
    """``(channels, stride) -> mixed op`` for the op registered as ``mixed_op``, given the
    options it takes (``k`` for partial-channel ops), read from its signature so that mixed ops
    registered later plug in."""
    cls = MIXED_OPS.get(mixed_op)
    options = {"k": partial_k} if takes_partial_k(mixed_op) else {}

    def edge(channels: int, stride: int) -> nn.Module:
        return cls(channels=channels, stride=stride, primitives=primitives, affine=affine, **options)

    return edge


def fixed_choices(weights: torch.Tensor) -> list[tuple[int, float]] | None:
    """The candidates a fixed set of weights uses, as ``(index, weight)`` pairs, or None to mix all.

    Weights are fixed when they live on the host and need no gradient: a one-shot supernet's
    single path (the supernets' ``set_path`` keeps it on the CPU, so reading it costs no device
    sync). Candidates weighted exactly zero are then skipped; any other weights mix every candidate.
    """
    if weights.requires_grad or weights.device.type != "cpu":
        return None
    return [(i, w) for i, w in enumerate(weights.tolist()) if w != 0.0]


@MIXED_OPS.register("weighted")
class WeightedMixedOp(nn.Module):
    """All candidates on one edge, combined as ``sum_k w_k * op_k(x)``.

    Args:
        channels: Channels in and out of the edge.
        stride: 2 on the edges of a reduction cell that leave the cell's inputs, else 1.
        primitives: Names in :data:`raynas.ops.OPS`.
        affine: Learnable BatchNorm scale and shift (off in DARTS's search; on for RF-DARTS).
    """

    def __init__(
        self, *, channels: int, stride: int, primitives: Sequence[str], affine: bool = False
    ) -> None:
        super().__init__()
        self.stride = stride
        ops = []
        for name in primitives:
            op = OPS.get(name)(channels, stride, affine)
            if "pool" in name:  # as in DARTS: a BatchNorm after pooling in the search
                op = nn.Sequential(op, nn.BatchNorm2d(channels, affine=affine))
            ops.append(op)
        self.ops = nn.ModuleList(ops)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        # x: (B, C, H, W); weights: (num_ops,) already normalised
        chosen = fixed_choices(weights)
        if chosen is None:
            return sum(w * op(x) for w, op in zip(weights, self.ops, strict=True))  # type: ignore[return-value]
        if not chosen:  # an edge off the single path
            return x[:, :, :: self.stride, :: self.stride].mul(0.0)  # (B, C, H/s, W/s)
        return sum(w * self.ops[i](x) if w != 1.0 else self.ops[i](x) for i, w in chosen)  # type: ignore[return-value]
