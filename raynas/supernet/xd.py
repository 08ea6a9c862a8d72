"""The XD-operation search's weight-sharing network (Roberts et al., NeurIPS 2021): the space's
first backbone at its first depth with every convolution an XD-operation, initialised as that
convolution. Its architecture parameters are the K, L and M twiddles of every XD-operation; a
gradient strategy trains them with its architecture optimiser (Adam) and the backbone's weights
with SGD, as relax's ``examples/resnet/trainer.py`` does (``--arch-adam --arch-lr 1e-3``). relax
steps both on the same training batches; raynas's gradient strategies step the architecture on the
validation half (first order: DARTS's alternation). ``strategy.arch_start_epoch`` is relax's
``--warmup-epochs``.

The search has no categorical choice: ``genotype()`` is the architecture it started from, and
what it found, the matrices, is the architecture state (saved with the supernet's weights);
:meth:`XdSupernet.distances` reports each XD-operation's relative distance from its initial
K, L and M.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from raynas.ops.xd import xd_arch_parameters, xd_modules
from raynas.spaces.xd import XdArch, XdSpace
from raynas.supernet.registry import SUPERNETS
from raynas.types import DatasetInfo


class XdSupernet(nn.Module):
    """The network of XD-operations a search trains.

    Args:
        space: The space (its first backbone and depth are converted).
        dataset: Input channels, classes and image size.
    """

    def __init__(self, *, space: XdSpace, dataset: DatasetInfo) -> None:
        super().__init__()
        c = space.config
        self.arch = XdArch(c.backbones[0], c.depth_choices[0])
        self.net = space.build(self.arch, dataset)
        self._arch = list(xd_arch_parameters(self.net))
        self._initial = [p.detach().clone() for p in self._arch]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        out = self.net(x)
        return out[0] if isinstance(out, tuple) else out

    def arch_parameters(self) -> list[nn.Parameter]:
        """The K, L and M twiddles of every XD-operation."""
        return list(self._arch)

    def weights(self) -> Iterator[nn.Parameter]:
        """Every other parameter: the backbone's weights (the XD-operations' kernels and biases included)."""
        arch = {id(p) for p in self._arch}
        return (p for p in self.parameters() if id(p) not in arch)

    def genotype(self) -> XdArch:
        """The architecture the search started from (the matrices found are its state)."""
        return self.arch

    def distances(self) -> dict[str, float]:
        """Per XD-operation, ``||theta - theta_0|| / ||theta_0||`` over its K, L and M twiddles: how
        far the search has moved it from the convolution it started as."""
        state: dict[str, float] = {}
        start = 0
        names = {m: n for n, m in self.net.named_modules()}
        with torch.no_grad():
            for module in xd_modules(self.net):
                count = len(module.arch_parameters())
                now = torch.cat([p.flatten() for p in self._arch[start : start + count]])
                then = torch.cat([p.flatten() for p in self._initial[start : start + count]]).to(now)
                state[names[module]] = float((now - then).norm() / then.norm())
                start += count
        return state

    def arch_state(self) -> dict[str, list[list[float]]]:
        """Nothing: the tracked architecture weights are (edge, option) matrices whose softmax is
        plotted, and the XD search has none (:meth:`distances` says how far it moved)."""
        return {}

    def arch_entropy(self) -> float:
        """0: the search has no categorical distribution to have entropy."""
        return 0.0

    def max_entropy(self) -> float:
        """0 (see :meth:`arch_entropy`)."""
        return 0.0


@SUPERNETS.register("xd")
def xd_supernet(space: XdSpace, dataset: DatasetInfo) -> XdSupernet:
    """The network of XD-operations of the space's first backbone."""
    return XdSupernet(space=space, dataset=dataset)
