"""ENAS's shared child over its cell space (``melodyguan/enas``, ``src/cifar10/micro_child.py``
with no ``fixed_arc``: ``_model``, ``_enas_layer``, ``_enas_cell``, ``_enas_conv``).

Every node's two branches (``x``, ``y``) have weights of their own for every state they may read:
both separable convolutions (two stacks of depthwise, pointwise and BatchNorm scale and offset)
per (layer, node, branch, input), as the code indexes its ``w_depth``, ``w_point``, ``offset`` and
``scale`` by ``prev_cell``; pooling and the identity have none (every state has the layer's
channels). A layer's output is ReLU, a 1x1 convolution over the concatenated unused states whose
weight rows are those states' rows of one ``(nodes + 2, C, C)`` weight (``final_conv``), and
BatchNorm. A reduction layer first reduces the last output (a factorised reduction to twice the
channels, without ReLU) and reads it beside the last output, which ``_maybe_calibrate_size``
reduces too; every op then runs at stride 1. BatchNorm always normalises by the batch (the code
builds the child with ``is_training=True``, for training and for the controller's rewards alike),
so no statistics are kept or recalibrated.

The child trains one path at a time, the controller's (:meth:`EnasMicroSupernet.set_path`), and
has no architecture parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raynas.ops.darts import SepConv
from raynas.ops.enas import AuxiliaryHead, FactorizedReduction, batch_statistics_only, code_batch_norms
from raynas.spaces.base import expect_arch
from raynas.spaces.darts_genotype import Edge
from raynas.spaces.enas_micro import (
    EnasMicroCells,
    EnasMicroSpace,
    calibration,
    reduction_layers,
    unused_states,
)
from raynas.supernet.base import PathOnly
from raynas.supernet.registry import SUPERNETS
from raynas.types import DatasetInfo


class SharedLayer(nn.Module):
    """``_enas_layer``: one layer of the shared child, any cell of ``nodes`` nodes on its path.

    Args:
        nodes: Nodes per cell.
        c_prev_prev, c_prev: Channels of the two states the layer reads.
        halve_prev_prev: Whether the first is at twice the second's resolution.
        channels: The layer's ``out_filters``.
    """

    def __init__(
        self, *, nodes: int, c_prev_prev: int, c_prev: int, halve_prev_prev: bool, channels: int
    ) -> None:
        super().__init__()
        self.calibrate_x = calibration(c_prev_prev, channels, halve_prev_prev)
        self.calibrate_y = calibration(c_prev, channels, False)
        # convs[node][branch][input] = (sep_conv_3x3, sep_conv_5x5)
        self.convs = nn.ModuleList(
            nn.ModuleList(
                nn.ModuleList(
                    nn.ModuleList([SepConv(channels, channels, k, 1, k // 2) for k in (3, 5)])
                    for _ in range(k + 2)
                )
                for _ in range(2)
            )
            for k in range(nodes)
        )
        # (state, out, in): He's normal initialisation over one state's block of inputs.
        self.final_conv = nn.Parameter(torch.randn(nodes + 2, channels, channels) * (2 / channels) ** 0.5)
        self.final_bn = nn.BatchNorm2d(channels)

    def branch(self, x: torch.Tensor, node: int, branch: int, index: int, op: str) -> torch.Tensor:
        """``_enas_cell``: op ``op`` on state ``index`` for branch ``branch`` of node ``node``."""
        if op == "sep_conv_3x3":
            return self.convs[node][branch][index][0](x)
        if op == "sep_conv_5x5":
            return self.convs[node][branch][index][1](x)
        if op == "avg_pool_3x3":
            return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        if op == "max_pool_3x3":
            return F.max_pool2d(x, 3, stride=1, padding=1)
        return x

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, edges: tuple[Edge, ...]) -> torch.Tensor:
        states = [self.calibrate_x(s0), self.calibrate_y(s1)]  # each (B, C, H, W)
        for k in range(len(edges) // 2):
            (op_x, x), (op_y, y) = edges[2 * k], edges[2 * k + 1]
            states.append(self.branch(states[x], k, 0, x, op_x) + self.branch(states[y], k, 1, y, op_y))
        unused = list(unused_states(edges))
        out = torch.cat([states[i] for i in unused], dim=1)  # (B, C * unused, H, W)
        weight = self.final_conv[unused].permute(1, 0, 2).flatten(1)  # (C, unused * C)
        return self.final_bn(F.conv2d(F.relu(out), weight[:, :, None, None]))  # (B, C, H, W)


class EnasMicroSupernet(PathOnly, nn.Module):
    """ENAS's shared child (see the module's docstring).

    Args:
        space: The space (its ``channels``, ``layers``, ``nodes``, ``auxiliary_weight``, ``dropout``).
        dataset: Input channels, classes and image size.
    """

    def __init__(self, space: EnasMicroSpace, dataset: DatasetInfo) -> None:
        super().__init__()
        cfg = space.config
        c = cfg.channels
        self.nodes = cfg.nodes
        self.auxiliary_weight = cfg.auxiliary_weight  # read by the training loop
        self.stem = nn.Sequential(
            nn.Conv2d(dataset.in_channels, 3 * c, 3, padding=1, bias=False), nn.BatchNorm2d(3 * c)
        )
        self.reductions = reduction_layers(cfg.layers)
        total = cfg.layers + 2
        after = self.reductions[1] + 1  # the auxiliary head's layer (aux_head_indices)
        self.aux_index = after if cfg.auxiliary_weight > 0 and after < total else -1
        self.layers = nn.ModuleList()
        self.reduce_inputs = nn.ModuleDict()
        self.auxiliary_head: nn.Module | None = None
        c_pp, c_p, out, size = 3 * c, 3 * c, c, dataset.image_size
        for i in range(total):
            halve = False
            if i in self.reductions:  # the last output, reduced, becomes the layer's second input
                out *= 2
                size = (size + 1) // 2
                self.reduce_inputs[str(i)] = FactorizedReduction(c_p, out)
                c_pp, c_p, halve = c_p, out, True
            self.layers.append(SharedLayer(
                nodes=cfg.nodes, c_prev_prev=c_pp, c_prev=c_p, halve_prev_prev=halve, channels=out,
            ))
            c_pp, c_p = c_p, out
            if i == self.aux_index:
                self.auxiliary_head = AuxiliaryHead(out, size, dataset.num_classes, batch_stats=True)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(c_p, dataset.num_classes, bias=False)
        batch_statistics_only(code_batch_norms(self))
        self.path: EnasMicroCells | None = None

    def set_path(self, arch: EnasMicroCells | None) -> None:
        """Run ``arch``'s cells from now on (training and scoring with inherited weights); ``None``
        clears it."""
        if arch is not None:
            arch = expect_arch(arch, EnasMicroCells)
            if arch.nodes != self.nodes:
                raise ValueError(f"the shared child's cells have {self.nodes} nodes, the path {arch.nodes}")
        self.path = arch

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, classes) of the path's network; in training with the auxiliary head,
        (logits, aux_logits)."""
        if self.path is None:
            raise RuntimeError("the enas_micro shared child runs one path: call set_path(arch) first")
        s0 = s1 = self.stem(x)  # (B, 3C, H, W)
        aux = None
        for i, layer in enumerate(self.layers):
            if str(i) in self.reduce_inputs:
                s0, s1 = s1, self.reduce_inputs[str(i)](s1)
                edges = self.path.reduce
            else:
                edges = self.path.normal
            s0, s1 = s1, layer(s0, s1, edges)
            if i == self.aux_index and self.auxiliary_head is not None and self.training:
                aux = self.auxiliary_head(s1)
        logits = self.classifier(self.dropout(torch.relu(s1).mean((2, 3))))
        return (logits, aux) if aux is not None else logits


@SUPERNETS.register("enas_micro")
def enas_micro_supernet(space: EnasMicroSpace, dataset: DatasetInfo) -> EnasMicroSupernet:
    """ENAS's shared child over ``space`` for ``dataset``."""
    return EnasMicroSupernet(space, dataset)
