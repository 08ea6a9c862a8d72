"""The base of every gradient strategy: alternate an architecture step on validation data with a
weight step on training data (Liu et al., DARTS, Algorithm 1).

A variant overrides one method: :meth:`GradientStrategy.arch_backward` (how the architecture
gradient is computed: first order, unrolled second order, mixed level), or
:meth:`GradientStrategy.loss` (for example a latency term). Everything else (optimisers, the
learning-rate schedule, gradient clipping, checkpoints) is shared.

On a recurrent language model (a supernet with ``run_outputs``, the DARTS recurrent cell) the
steps follow ``rnn/train_search.py``: the hidden state is carried from one batch to the next of
the same stream (the training text's for the weights, the validation text's for the
architecture; PTB's search loaders read both in order), detached, and reset every epoch; the
weights' loss adds the temporal activation regularisation ``tar * mean((h_{t+1} - h_t)^2)`` of
the cell's outputs (``--beta 1e-3``; its activation regularisation ``--alpha`` is 0 there); and
the weights' learning rate of every step is scaled by the training window's length over the
nominal ``bptt`` (:meth:`GradientStrategy.lr_factor`), the unrolled step's included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import torch
from torch import nn

from raynas.config import Check, Rule, TrainConfig, check_rules
from raynas.errors import ConfigError
from raynas.train.distributed import average_gradients_
from raynas.train.schedules import search_schedule
from raynas.train.segmentation import labelled, mean_cross_entropy
from raynas.train.step import Batch, StepResult


@dataclass(frozen=True)
class GradientConfig:
    """Architecture optimisation (defaults: DARTS ``train_search.py``: Adam, lr 3e-4, wd 1e-3).

    ``arch_start_epoch`` trains only the weights for that many epochs first (PC-DARTS warms up 15).
    ``random_features`` trains only the BatchNorm scales and shifts of the supernet; convolutions
    and the classifier keep their random initialisation (RF-DARTS, Zhang et al., CVPR 2023).
    ``tar`` weighs the temporal activation regularisation of recurrent language models (DARTS's
    ``rnn/train_search.py``: 1e-3); other supernets ignore it.
    ``arch_grad_clip`` clips the norm of alpha's gradient before its step (PC-DARTS's
    ``train_search_imagenet.py``: 5); 0: unclipped, as DARTS's ``architect.py``.
    ``arch_follows_schedule``: alpha's rate is scaled each epoch as the weights' schedule scales
    theirs (relax's ``examples/resnet/trainer.py``: one ``LambdaLR`` over its ``MixedOptimizer``
    of both); off, it stays at ``arch_learning_rate`` (DARTS).
    """

    arch_learning_rate: Annotated[float, Rule(gt=0)] = 3e-4
    arch_weight_decay: float = 1e-3
    arch_betas: Annotated[tuple[float, ...], Rule(ge=0, lt=1)] = (0.5, 0.999)
    arch_start_epoch: Annotated[int, Rule(ge=0)] = 0
    random_features: bool = False
    tar: Annotated[float, Rule(ge=0)] = 1e-3
    arch_grad_clip: Annotated[float, Rule(ge=0)] = 0.0
    arch_follows_schedule: bool = False

    checks: ClassVar[tuple[Check, ...]] = (
        Check(
            "len(arch_betas) == 2 and all(0 <= b < 1 for b in arch_betas)",
            "strategy.arch_betas must be two numbers in [0, 1)",
        ),
    )

    def __post_init__(self) -> None:
        check_rules(self, "strategy")  # a subclass's checks too


def batchnorm_affine_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The scales and shifts of every affine BatchNorm layer of ``model``."""
    return [
        p
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine
        for p in (m.weight, m.bias)
    ]


class GradientStrategy:
    """Alternating bilevel optimisation of a supernet's weights ``w`` and architecture ``alpha``.

    Args:
        supernet: A module with ``weights()``, ``arch_parameters()`` and ``genotype()``.
        config: The architecture optimiser's settings.
        train: The weight optimiser's settings (SGD with momentum, cosine schedule, clipping).
    """

    trains_weights: ClassVar[bool] = True
    """Whether the search trains the supernet's weights (a training-free pruning does not: its
    supernet's accuracy is that of its random initialisation)."""

    weights_first: ClassVar[bool] = False
    """Whether a step moves the weights before alpha (DARTS moves alpha first)."""

    clips_weights: ClassVar[bool] = True
    """Whether the weights' gradient is clipped to ``train.grad_clip`` before their step (always on
    a recurrent cell, whose weights DARTS clips)."""

    def __init__(self, *, supernet: nn.Module, config: GradientConfig, train: TrainConfig) -> None:
        self.model = supernet
        self.config = config
        self.train = train
        self.criterion = mean_cross_entropy
        self.weight_params: list[nn.Parameter] = (
            batchnorm_affine_parameters(supernet)
            if config.random_features
            else list(supernet.weights())  # type: ignore[operator]
        )
        if not self.weight_params:
            raise ConfigError("the supernet has no weights to train (random features need affine BN)")
        self.w_optimizer = torch.optim.SGD(
            self.weight_params,
            lr=train.learning_rate,
            momentum=train.momentum,
            weight_decay=train.weight_decay,
            nesterov=train.nesterov,
        )
        self.scheduler = search_schedule(self.w_optimizer, train)
        self.arch_params: list[nn.Parameter] = list(supernet.arch_parameters())  # type: ignore[operator]
        self.a_optimizer = torch.optim.Adam(
            self.arch_params,
            lr=config.arch_learning_rate,
            betas=tuple(config.arch_betas),  # type: ignore[arg-type]
            weight_decay=config.arch_weight_decay,
        )
        self.epoch = 0
        # Recurrent language models: the hidden state each stream starts its next batch from.
        self.recurrent = hasattr(supernet, "run_outputs")
        self.hidden: dict[str, torch.Tensor] = {}
        self._ended: dict[str, torch.Tensor] = {}  # where this step's passes ended, per stream
        self._streams: dict[int, str] = {}  # id of a batch's inputs -> its stream
        self._outputs: torch.Tensor | None = None  # the cell outputs of the last pass (T, B, H)

    @classmethod
    def space_overrides(cls, config: GradientConfig) -> dict[str, Any]:
        """Space settings this strategy needs for its supernet (e.g. PC-DARTS's partial channels)."""
        return {"bn_affine": True} if config.random_features else {}

    @property
    def lr(self) -> float:
        """The current learning rate of the weights."""
        return float(self.w_optimizer.param_groups[0]["lr"])

    def loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss on a batch and the logits (B, classes)."""
        x, y = batch
        if not self.recurrent:
            logits = self.model(x)
            return self.criterion(logits, y), logits
        stream = self._streams.get(id(x), "train")
        start = self.hidden.get(stream)
        if start is not None and start.shape[0] != x.shape[0]:
            start = None  # another number of streams: start from zeros
        logits, outputs = self.model.run_outputs(x, start)  # type: ignore[operator]
        self._ended[stream] = outputs[-1].detach()  # (B, H): repackage_hidden
        self._outputs = outputs
        return self.criterion(logits, y), logits

    def lr_factor(self, train_batch: Batch) -> float:
        """What the weights' learning rate is multiplied by for one step (and restored after it):
        1, except on a recurrent language model that knows its nominal window length ``bptt``,
        where it is the training window's length over ``bptt`` (rnn/train_search.py:
        ``lr2 * seq_len / args.bptt``, set before ``architect.step``, so the unrolled step's
        ``eta`` is scaled too)."""
        bptt = getattr(self.model, "bptt", None)
        if not self.recurrent or not bptt:
            return 1.0
        return train_batch[0].shape[1] / bptt  # tokens (streams, seq_len)

    def step(self, train_batch: Batch, valid_batch: Batch | None) -> StepResult:
        """One search step, :meth:`updates` at the learning rate times :meth:`lr_factor`
        (``valid_batch`` None: a strategy that steps alpha on the training batch)."""
        self.model.train()
        if self.recurrent:
            self._streams = {id(train_batch[0]): "train"}
            if valid_batch is not None:
                self._streams[id(valid_batch[0])] = "valid"
        groups = self.w_optimizer.param_groups
        rates = [group["lr"] for group in groups]
        factor = self.lr_factor(train_batch)
        for group in groups:
            group["lr"] = group["lr"] * factor
        try:
            result = self.updates(train_batch, valid_batch)
        finally:
            for group, rate in zip(groups, rates, strict=True):
                group["lr"] = rate
        self.hidden.update(self._ended)  # the next batches go on from here
        self._ended, self._streams = {}, {}
        return result

    def updates(self, train_batch: Batch, valid_batch: Batch | None) -> StepResult:
        """A step's updates, at the step's rates: alpha on validation data (from
        ``arch_start_epoch`` on), then ``w`` on training data (the other way round with
        :attr:`weights_first`)."""
        if self.weights_first:
            result = self.weight_step(train_batch)
        if self.epoch >= self.config.arch_start_epoch:
            self.a_optimizer.zero_grad(set_to_none=True)
            self.arch_backward(train_batch, valid_batch)  # type: ignore[arg-type]
            self.arch_update()
        if not self.weights_first:
            result = self.weight_step(train_batch)
        return result

    def arch_update(self) -> None:
        """Alpha's step on the gradient :meth:`arch_backward` left: averaged over data-parallel
        workers (a no-op otherwise), clipped to ``arch_grad_clip`` where set, then Adam's step."""
        average_gradients_(self.arch_params)
        if self.config.arch_grad_clip:
            nn.utils.clip_grad_norm_(self.arch_params, self.config.arch_grad_clip)
        self.a_optimizer.step()

    def arch_backward(self, train_batch: Batch, valid_batch: Batch) -> None:
        """Put the architecture gradient in ``alpha.grad`` (first order: d L_val / d alpha)."""
        loss, _ = self.loss(valid_batch)
        loss.backward(inputs=self.arch_params)

    def weight_step(self, batch: Batch, *, with_arch: bool = False) -> StepResult:
        """One SGD step of the weights on a training batch, gradients clipped by norm
        (:attr:`clips_weights`); ``with_arch``: the same backward pass also leaves alpha's
        gradient of the training loss, for :meth:`arch_update` to step on."""
        self.w_optimizer.zero_grad(set_to_none=True)
        if with_arch:
            self.a_optimizer.zero_grad(set_to_none=True)
        loss, logits = self.loss(batch)
        total = loss
        if self.recurrent and self.config.tar and self._outputs is not None:
            h = self._outputs  # (T, B, H)
            total = loss + self.config.tar * (h[1:] - h[:-1]).pow(2).mean()
        total.backward(inputs=[*self.weight_params, *self.arch_params] if with_arch else self.weight_params)
        average_gradients_(self.weight_params)
        if self.clips_weights or self.recurrent:
            nn.utils.clip_grad_norm_(self.weight_params, self.train.grad_clip)
        self.w_optimizer.step()
        y = batch[1]
        count = labelled(y)  # every label, or the pixels not ignored (-100) in segmentation
        return StepResult(
            loss_sum=loss.detach() * count,
            correct=(logits.detach().argmax(1) == y).sum(),
            count=count,
        )

    def end_epoch(self) -> None:
        """Advance the learning-rate schedule (alpha's too with ``arch_follows_schedule``) and the
        epoch count."""
        self.scheduler.step()
        if self.config.arch_follows_schedule:
            group = self.w_optimizer.param_groups[0]
            for arch_group in self.a_optimizer.param_groups:  # the factor the schedule applies now
                arch_group["lr"] = self.config.arch_learning_rate * group["lr"] / group["initial_lr"]
        self.epoch += 1
        self.hidden = {}  # rnn/train_search.py starts every epoch from zero states

    def genotype(self) -> Any:
        """The architecture the supernet currently stands for."""
        return self.model.genotype()  # type: ignore[operator]

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the search exactly: supernet, optimisers, schedule."""
        return {
            "model": self.model.state_dict(),
            "w_optimizer": self.w_optimizer.state_dict(),
            "a_optimizer": self.a_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.model.load_state_dict(state["model"])
        self.w_optimizer.load_state_dict(state["w_optimizer"])
        self.a_optimizer.load_state_dict(state["a_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
