"""DARTS, first and second order (Liu, Simonyan and Yang, ICLR 2019; ``cnn/architect.py``).

First order treats the weights as constant in the architecture gradient. Second order uses the
one-step unrolled weights ``w' = w - xi * dw`` (``dw`` the SGD step direction, momentum and
weight decay included, ``xi`` the current weight learning rate) and the paper's Eq. 7–8:

    grad_a L_val(w', a) - xi * (grad_a L_train(w+, a) - grad_a L_train(w-, a)) / (2 eps)

with ``a`` the architecture parameters alpha, ``w± = w ± eps * grad_w' L_val(w', a)`` and
``eps = r / ||grad_w' L_val(w', a)||``.

On recurrent language models (``self.recurrent``) the step is ``rnn/architect.py``'s
(quark0/darts master), which differs from ``cnn/architect.py`` in three places: the training
gradient of ``w'`` is clipped to norm ``train.grad_clip`` (``--clip``, 0.25) before the weight decay
is added; ``v = grad_w' L_val(w', a)`` is clipped to the same norm (no weight decay added), so
``eps = r / ||v||`` of the clipped ``v``; and the implicit term is multiplied by ``xi * c``, with
``c = grad_clip / (||grad_w L_train|| + 1e-6)`` the training clip's coefficient, even where it is
over 1 (the gradient was not clipped). As there, the finite difference is taken around ``w`` (from
the training stream's hidden state), in place: ``w + eps v``, then ``- 2 eps v``, then ``+ eps v``
back, the code's own restoration (the CNN path here restores ``w`` from a copy).

``same_batch`` is the step of the XD-operations' official trainer (Roberts et al., NeurIPS 2021;
``mkhodak/relax``, ``examples/resnet/trainer.py`` with ``relax/nas.py``'s ``MixedOptimizer``):
one backward pass of the training loss, then both the weights' SGD and alpha's Adam step on it;
no validation batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

import torch

from raynas.config import Check, Rule
from raynas.strategies.gradient.base import Batch, GradientConfig, GradientStrategy
from raynas.strategies.registry import STRATEGIES
from raynas.train.distributed import average_
from raynas.train.step import StepResult


@dataclass(frozen=True)
class DartsConfig(GradientConfig):
    """DARTS settings.

    Attributes:
        order: 1 for first order, 2 for the unrolled second-order gradient.
        hessian_r: ``r`` in the finite-difference step ``eps = r / ||v||`` (0.01 in the paper).
        same_batch: relax's step: the weights and alpha both step on the gradient of one training
            batch's loss (first order only; with ``data.train_portion: 1`` on every training
            image, the epoch's validation on the official test split, as relax's).
    """

    order: Literal[1, 2] = 1
    hessian_r: Annotated[float, Rule(gt=0)] = 0.01
    same_batch: bool = False

    checks: ClassVar[tuple[Check, ...]] = (
        Check("not same_batch or order == 1",
              "strategy.same_batch is a first-order step (relax's); set strategy.order to 1"),
    )

    def __post_init__(self) -> None:
        super().__post_init__()


@STRATEGIES.register("darts", config=DartsConfig)
class Darts(GradientStrategy):
    """DARTS; ``order: 2`` selects the unrolled (second-order) architecture gradient."""

    config: DartsConfig

    @property
    def same_batch(self) -> bool:
        """Whether a step takes no validation batch (``same_batch``): the search loop draws none."""
        return self.config.same_batch

    def updates(self, train_batch: Batch, valid_batch: Batch | None) -> StepResult:
        if not self.config.same_batch:
            return super().updates(train_batch, valid_batch)
        joint = self.epoch >= self.config.arch_start_epoch
        result = self.weight_step(train_batch, with_arch=joint)
        if joint:
            self.arch_update()
        return result

    def arch_backward(self, train_batch: Batch, valid_batch: Batch) -> None:
        if self.config.order == 1:
            super().arch_backward(train_batch, valid_batch)
            return
        weights = self.weight_params
        buffers = [b.clone() for b in self.model.buffers()]  # BN statistics: the extra passes
        xi = self.lr                                          # must not move them
        backup = [w.detach().clone() for w in weights]
        if self.recurrent:
            self._unrolled_recurrent(train_batch, valid_batch, weights, buffers, xi, backup)
            return

        # w' = w - xi * (momentum buffer * momentum + grad_w L_train + weight_decay * w)
        loss, _ = self.loss(train_batch)
        grads = torch.autograd.grad(loss, weights)
        average_(grads)  # data-parallel workers unroll the same step
        self._unroll(weights, grads, xi)

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

    @torch.no_grad()
    def _unroll(self, weights: list[torch.Tensor], grads: tuple[torch.Tensor, ...], xi: float) -> None:
        """``w <- w - xi * (momentum buffer * momentum + grads + weight_decay * w)``, in place."""
        momentum, decay = self.train.momentum, self.train.weight_decay
        for w, g in zip(weights, grads, strict=True):
            buf = self.w_optimizer.state.get(w, {}).get("momentum_buffer")
            direction = g + decay * w
            if buf is not None:
                direction = direction + momentum * buf
            w.sub_(xi * direction)

    def _clip_coefficient(
        self, grads: tuple[torch.Tensor, ...]
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """rnn/architect.py's ``_clip``: ``c = clip / (||grads|| + 1e-6)``; the gradients times ``c``
        where ``c < 1``, as they are otherwise; ``c`` returned either way."""
        coef = self.train.grad_clip / (torch.cat([g.flatten() for g in grads]).norm() + 1e-6)
        if coef < 1:
            grads = tuple(g * coef for g in grads)
        return grads, coef

    def _unrolled_recurrent(
        self, train_batch: Batch, valid_batch: Batch, weights: list[torch.Tensor],
        buffers: list[torch.Tensor], xi: float, backup: list[torch.Tensor],
    ) -> None:
        """The second-order step of a recurrent language model, as rnn/architect.py's
        ``_backward_step_unrolled`` (quark0/darts master). Each pass reads its stream's hidden
        state (:meth:`loss`): L_train from the training stream's, L_val(w') from the validation
        stream's, whose end the validation stream goes on from (its ``hidden_next``)."""
        # rnn/architect.py _compute_unrolled_model: the training gradient clipped (coefficient c
        # kept), then w' = w - xi * (clipped gradient + weight_decay * w). Its SGD has no momentum;
        # a momentum set here is the weight step's, so its buffer is added, as on the CNN.
        loss, _ = self.loss(train_batch)
        grads = torch.autograd.grad(loss, weights)
        average_(grads)  # data-parallel workers unroll the same step
        grads, train_coef = self._clip_coefficient(grads)
        self._unroll(weights, grads, xi)

        # rnn/architect.py _backward_step_unrolled: grad_alpha and grad_w' of L_val(w'); the
        # latter clipped to the same norm (no weight decay added) is the vector v.
        loss, _ = self.loss(valid_batch)
        grads = torch.autograd.grad(loss, [*self.arch_params, *weights])
        average_(grads)
        d_alpha = grads[: len(self.arch_params)]
        v, _ = self._clip_coefficient(grads[len(self.arch_params) :])
        with torch.no_grad():  # back to w: the HVP is taken around the model's own weights
            for w, b in zip(weights, backup, strict=True):
                w.copy_(b)

        # rnn/architect.py _hessian_vector_product: R = r / ||v||; w += R v, w -= 2R v, w += R v
        # (in place, the weights put back by the last step), (g+ - g-) / 2R.
        eps = float(self.config.hessian_r / torch.cat([x.flatten() for x in v]).norm())
        sides = []
        for step in (eps, -2 * eps):
            with torch.no_grad():
                for w, d in zip(weights, v, strict=True):
                    w.add_(d, alpha=step)
            loss, _ = self.loss(train_batch)
            sides.append(torch.autograd.grad(loss, self.arch_params))
        with torch.no_grad():
            for w, d in zip(weights, v, strict=True):
                w.add_(d, alpha=eps)
            for buffer, saved in zip(self.model.buffers(), buffers, strict=True):
                buffer.copy_(saved)
        # rnn/architect.py: dalpha - eta * clip_coef * HVP, clip_coef the training clip's.
        for p, g, gp, gn in zip(self.arch_params, d_alpha, *sides, strict=True):
            p.grad = g - (xi * train_coef) * ((gp - gn) / (2 * eps))

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
