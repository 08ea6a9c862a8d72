"""ENAS's shared recurrent child (``melodyguan/enas``, ``src/ptb/ptb_enas_child.py`` with no
``fixed_arc``: ``_build_params``, ``_rhn_enas``, ``_model``).

Node 0 has a ``[2H, 2H]`` matrix for each activation (the code's ``w_prev`` rows ``f * 2H`` to
``(f + 1) * 2H``); node ``l`` an ``[H, 2H]`` matrix for each (input, activation) pair (``w_skip[l]``
rows ``(p * 4 + f) * H`` on). Every node's projection is BatchNormed before the highway, and so is
the mean of the loose ends: ``ptb_ops.batch_norm``, over the batch at every time step, epsilon 1,
moving statistics decaying by 0.999, the variance uncorrected (``tf.nn.moments``'s), and
``is_training=False`` reading them: the controller's rewards.
The language model around it is :class:`~raynas.spaces.enas_rnn.EnasRnnLanguageModel`'s.

The child trains one path at a time, the controller's (:meth:`EnasRnnSupernet.set_path`), and has
no architecture parameters. Its matrices grow with the square of the nodes: at the search's 720
units and 12 nodes, 289,245,600 parameters (BatchNorm's scales and offsets included), as the code's.
"""

from __future__ import annotations

import torch
from torch import nn

from raynas.spaces.base import expect_arch
from raynas.spaces.darts_rnn import RecurrentCell, activation
from raynas.spaces.enas_rnn import (
    ENAS_RNN_ACTIVATIONS,
    EnasRnnCell,
    EnasRnnLanguageModel,
    EnasRnnSpace,
    init_range,
)
from raynas.supernet.base import PathOnly
from raynas.supernet.registry import SUPERNETS
from raynas.types import DatasetInfo


class CodeBatchNorm(nn.BatchNorm1d):
    """``ptb_ops.batch_norm``: epsilon 1, moving averages with decay 0.999, and in training the
    batch's moments as ``tf.nn.moments`` gives them, the variance without Bessel's correction, in
    the moving variance too (torch's own BatchNorm moves it by the corrected one). Evaluation
    reads the moving statistics, as ``is_training=False`` does."""

    def __init__(self, size: int) -> None:
        super().__init__(size, eps=1.0, momentum=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        mean, var = x.mean(0), x.var(0, unbiased=False)  # (H,), (H,)
        with torch.no_grad():  # assign_moving_average: m -= (1 - decay) * (m - value)
            self.num_batches_tracked.add_(1)
            # (momentum None, as BatchNorm recalibration sets it: torch's cumulative average)
            factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean, factor)
            self.running_var.lerp_(var, factor)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


def code_batch_norm(size: int) -> CodeBatchNorm:
    """``ptb_ops.batch_norm`` over ``size`` features (:class:`CodeBatchNorm`)."""
    return CodeBatchNorm(size)


class SharedEnasRnnLayer(RecurrentCell):
    """``_rhn_enas``: any cell of ``nodes`` nodes, the path's (see the module's docstring)."""

    def __init__(self, *, nhid: int, nodes: int, dropoutx: float, dropouth: float) -> None:
        super().__init__(ninp=nhid, nhid=nhid, steps=0, dropouth=dropouth, dropoutx=dropoutx)
        funcs, bound = len(ENAS_RNN_ACTIVATIONS), init_range(nhid)
        # W0[f]: node 0's matrix for activation f; Ws[l - 1][p, f]: node l's on input p, activation f.
        self.W0 = nn.Parameter(torch.empty(funcs, 2 * nhid, 2 * nhid).uniform_(-bound, bound))
        self.Ws = nn.ParameterList(
            nn.Parameter(torch.empty(node, funcs, nhid, 2 * nhid).uniform_(-bound, bound))
            for node in range(1, nodes)
        )
        self.bns = nn.ModuleList(code_batch_norm(2 * nhid) for _ in range(nodes))
        self.out_bn = code_batch_norm(nhid)
        self.functions = [activation(name) for name in ENAS_RNN_ACTIVATIONS]
        self.path: EnasRnnCell | None = None

    def step(
        self, x: torch.Tensor, h_prev: torch.Tensor, x_mask: torch.Tensor | None, h_mask: torch.Tensor | None
    ) -> torch.Tensor:
        arch = self.path
        if arch is None:
            raise RuntimeError("the enas_rnn shared child runs one path: call set_path(arch) first")
        funcs = [ENAS_RNN_ACTIVATIONS.index(name) for name in arch.activations]
        if x_mask is not None and h_mask is not None:
            xs = torch.cat([x * x_mask, h_prev * h_mask], dim=-1)  # (B, 2H)
        else:
            xs = torch.cat([x, h_prev], dim=-1)
        h, t = torch.split(self.bns[0](xs.mm(self.W0[funcs[0]])), self.nhid, dim=-1)
        states = [h_prev + t.sigmoid() * (self.functions[funcs[0]](h) - h_prev)]
        for node, p in enumerate(arch.inputs, start=1):
            prev = states[p]
            read = prev if h_mask is None else prev * h_mask
            h, t = torch.split(self.bns[node](read.mm(self.Ws[node - 1][p, funcs[node]])), self.nhid, dim=-1)
            states.append(prev + t.sigmoid() * (self.functions[funcs[node]](h) - prev))
        return self.out_bn(torch.stack([states[i] for i in arch.loose_ends], -1).mean(-1))  # (B, H)


class EnasRnnSupernet(PathOnly, EnasRnnLanguageModel):
    """ENAS's shared recurrent child in its language model (see the module's docstring).

    Args:
        space: The space (its ``channels``, ``nodes`` and dropouts).
        dataset: ``num_classes`` is the vocabulary size.
    """

    def __init__(self, space: EnasRnnSpace, dataset: DatasetInfo) -> None:
        cfg = space.config
        layer = SharedEnasRnnLayer(
            nhid=cfg.channels, nodes=cfg.nodes, dropoutx=cfg.dropoutx, dropouth=cfg.dropouth
        )
        super().__init__(cell=layer, ntoken=dataset.num_classes, dropoute=cfg.dropoute)  # type: ignore[arg-type]
        self.nodes = cfg.nodes

    def set_path(self, arch: EnasRnnCell | None) -> None:
        """Run ``arch``'s cell from now on (training and scoring with inherited weights); ``None``
        clears it."""
        if arch is not None:
            arch = expect_arch(arch, EnasRnnCell)
            if arch.nodes != self.nodes:
                raise ValueError(f"the shared child's cells have {self.nodes} nodes, the path {arch.nodes}")
        self.cell.path = arch  # type: ignore[assignment]


@SUPERNETS.register("enas_rnn")
def enas_rnn_supernet(space: EnasRnnSpace, dataset: DatasetInfo) -> EnasRnnSupernet:
    """ENAS's shared recurrent child over ``space`` for ``dataset``."""
    return EnasRnnSupernet(space, dataset)
