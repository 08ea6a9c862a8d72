"""DARTS, first and second order (Liu, Simonyan and Yang, ICLR 2019; ``cnn/architect.py``).

First order treats the weights as constant in the architecture gradient. Second order uses the
one-step unrolled weights ``w' = w - xi * dw`` (``dw`` the SGD step direction, momentum and
weight decay included, ``xi`` the current weight learning rate) and the paper's Eq. 7–8:

    grad_a L_val(w', a) - xi * (grad_a L_train(w+, a) - grad_a L_train(w-, a)) / (2 eps)

with ``a`` the architecture parameters alpha, ``w± = w ± eps * grad_w' L_val(w', a)`` and
``eps = r / ||grad_w' L_val(w', a)||``.

On recurrent language models (``rnn/architect.py``) the training gradient of the unrolled step is
clipped to norm ``train.grad_clip`` (0.25 in ``rnn/train_search.py``) before the weight decay is
added, as the weights' own steps are; the CNN's ``cnn/architect.py`` does not clip it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch

from raynas.config import Rule
from raynas.strategies.gradient.base import Batch, GradientConfig, GradientStrategy
from raynas.strategies.registry import STRATEGIES
from raynas.train.distributed import average_


@dataclass(frozen=True)
class DartsConfig(GradientConfig):
    """DARTS settings.

    Attributes:
        order: 1 for first order, 2 for the unrolled second-order gradient.
        hessian_r: ``r`` in the finite-difference step ``eps = r / ||v||`` (0.01 in the paper).
    """

    order: Literal[1, 2] = 1
    hessian_r: Annotated[float, Rule(gt=0)] = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()


@STRATEGIES.register("darts", config=DartsConfig)
class Darts(GradientStrategy):
    """DARTS; ``order: 2`` selects the unrolled (second-order) architecture gradient."""

    config: DartsConfig

    def arch_backward(self, train_batch: Batch, valid_batch: Batch) -> None:
        if self.config.order == 1:
            super().arch_backward(train_batch, valid_batch)
            return
        weights = self.weight_params
        buffers = [b.clone() for b in self.model.buffers()]  # BN statistics: the extra passes
        xi = self.lr                                          # must not move them
        backup = [w.detach().clone() for w in weights]

        # w' = w - xi * (momentum buffer * momentum + grad_w L_train + weight_decay * w)
        loss, _ = self.loss(train_batch)
        grads = torch.autograd.grad(loss, weights)
        average_(grads)  # data-parallel workers unroll the same step
        if hasattr(self.model, "run"):  # a recurrent language model: rnn/architect.py's _clip
            norm = torch.cat([g.flatten() for g in grads]).norm()
            scale = self.train.grad_clip / (norm + 1e-6)
            if scale < 1:
                grads = tuple(g * scale for g in grads)
        with torch.no_grad():
            momentum, decay = self.train.momentum, self.train.weight_decay
            for w, g in zip(weights, grads, strict=True):
                buf = self.w_optimizer.state.get(w, {}).get("momentum_buffer")
                direction = g + decay * w
                if buf is not None:
                    direction = direction + momentum * buf
                w.sub_(xi * direction)

        # grad_alpha and grad_w' of L_val at the unrolled weights.
        loss, _ = self.loss(valid_batch)
        grads = torch.autograd.grad(loss, [*self.arch_params, *weights])
        average_(grads)
        d_alpha, v = grads[: len(self.arch_params)], grads[len(self.arch_params) :]

        # Finite-difference Hessian-vector product grad^2_{alpha,w} L_train(w, alpha) . v
        eps = self.config.hessian_r / torch.cat([x.flatten() for x in v]).norm()
        hessian = self._finite_difference(train_batch, weights, backup, v, eps)
        with torch.no_grad():
            for w, b in zip(weights, backup, strict=True):
                w.copy_(b)
            for buffer, saved in zip(self.model.buffers(), buffers, strict=True):
                buffer.copy_(saved)
        for p, g, h in zip(self.arch_params, d_alpha, hessian, strict=True):
            p.grad = g - xi * h

    def _finite_difference(
        self, batch: Batch, weights: list[torch.Tensor], base: list[torch.Tensor],
        v: list[torch.Tensor], eps: torch.Tensor,
    ) -> list[torch.Tensor]:
        grads = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for w, b, d in zip(weights, base, v, strict=True):
                    w.copy_(b + sign * eps * d)
            loss, _ = self.loss(batch)
            grads.append(torch.autograd.grad(loss, self.arch_params))
        return [(gp - gn) / (2 * eps) for gp, gn in zip(*grads, strict=True)]
