"""ENAS's shared child over its macro space (``melodyguan/enas``, ``src/cifar10/general_child.py``
with no ``fixed_arc`` and whole channels: ``_model``, ``_enas_layer``, ``_conv_branch``,
``_pool_branch``).

Every layer has every branch, with weights of its own (:class:`~raynas.ops.enas.MacroBranch`: a
1x1 convolution, BatchNorm and ReLU, then the op); the layer's output is its path's branch on the
state before it, and where the layer takes skips, BatchNorm of that output plus the skipped
states (``tf.add_n``, no convolution). The channels stay ``C`` throughout: after the two pool
layers every state so far is reduced to ``C`` channels at half the resolution (a factorised
reduction of its own for every (pool layer, state)). Global average pooling, dropout and a linear
layer without bias. BatchNorm keeps moving statistics, used where the code scores with
``is_training=False`` (the controller's reward, ``build_valid_rl``).

The released ``_enas_layer`` builds ``branches[tf.equal(count, b)] = lambda: y`` for every
branch, each lambda reading the variable ``y`` when ``tf.case`` calls it, after the last branch
was assigned: every path runs the last branch (max pooling with six branches). Here a path runs
the branch it names, as the paper describes.

The child trains one path at a time, the controller's (:meth:`EnasMacroSupernet.set_path`), and
has no architecture parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from raynas.ops.enas import FactorizedReduction, MacroBranch, code_batch_norms
from raynas.spaces.base import expect_arch
from raynas.spaces.enas_macro import EnasMacroLayers, EnasMacroSpace, pool_layers
from raynas.supernet.base import PathOnly
from raynas.supernet.registry import SUPERNETS
from raynas.types import DatasetInfo


class EnasMacroSupernet(PathOnly, nn.Module):
    """ENAS's macro shared child (see the module's docstring).

    Args:
        space: The space (its ``channels``, ``layers``, ``branches``, ``dropout``).
        dataset: Input channels and classes.
    """

    def __init__(self, space: EnasMacroSpace, dataset: DatasetInfo) -> None:
        super().__init__()
        cfg = space.config
        c = cfg.channels
        self.op_names = space.op_names
        self.layers = cfg.layers
        self.stem = nn.Sequential(
            nn.Conv2d(dataset.in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        )
        # branches[layer][op]
        self.branches = nn.ModuleList(
            nn.ModuleList(MacroBranch(op, c) for op in self.op_names) for _ in range(cfg.layers)
        )
        self.skip_bns = nn.ModuleList([nn.Identity(), *(nn.BatchNorm2d(c) for _ in range(cfg.layers - 1))])
        self.pools = nn.ModuleDict({  # pools[layer][state]
            str(i): nn.ModuleList(FactorizedReduction(c, c) for _ in range(i + 2))
            for i in pool_layers(cfg.layers)
        })
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(c, dataset.num_classes, bias=False)
        code_batch_norms(self)
        self.path: EnasMacroLayers | None = None

    def set_path(self, arch: EnasMacroLayers | None) -> None:
        """Run ``arch``'s network from now on (training and scoring with inherited weights);
        ``None`` clears it."""
        if arch is not None:
            arch = expect_arch(arch, EnasMacroLayers)
            if arch.layers != self.layers or any(op not in self.op_names for op in arch.ops):
                raise ValueError(
                    f"the shared child has {self.layers} layers of ops {list(self.op_names)}; the path "
                    f"{arch.layers} layers of {sorted(set(arch.ops))}"
                )
        self.path = arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes) of the path's network."""
        if self.path is None:
            raise RuntimeError("the enas_macro shared child runs one path: call set_path(arch) first")
        states = [self.stem(x)]  # (B, C, H, W) each; the stem's output first
        for i, (op, skips) in enumerate(zip(self.path.ops, self.path.skips, strict=True)):
            out = self.branches[i][self.op_names.index(op)](states[-1])
            if i > 0:
                out = self.skip_bns[i](sum((states[j] for j in skips), out))
            states.append(out)
            if str(i) in self.pools:  # (B, C, H / 2, W / 2) each
                states = [reduce(s) for reduce, s in zip(self.pools[str(i)], states, strict=True)]
        return self.classifier(self.dropout(states[-1].mean((2, 3))))


@SUPERNETS.register("enas_macro")
def enas_macro_supernet(space: EnasMacroSpace, dataset: DatasetInfo) -> EnasMacroSupernet:
    """ENAS's macro shared child over ``space`` for ``dataset``."""
    return EnasMacroSupernet(space, dataset)
