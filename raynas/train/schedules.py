"""Learning-rate schedules that torch's schedulers do not state the way the papers do.

A search's cosine with a linear warm-up (:func:`cosine_schedule`, PC-DARTS on ImageNet), and its
step decay at fractions of the epochs (:func:`step_schedule`, relax's XD trainer), its cosine with
warm restarts (:func:`restart_schedule`, ENAS), the one a job's ``train`` names
(:func:`search_schedule`); ConvNeXt's cosine and warm-up stepped every iteration
(:func:`stepwise_cosine_lr`).

DeepLab's "poly" policy (Chen et al., DeepLab, TPAMI 2018, Sec. 4.1; ``tensorflow/models``
``research/deeplab/utils/train_utils.py``, ``learning_policy='poly'``), which Auto-DeepLab
(Sec. 5.2) trains its networks with: ``lr = base * (1 - step / total) ** power``, power 0.9,
updated every iteration.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from raynas.config import TrainConfig


def poly_lr(base: float, step: int, total: int, power: float = 0.9) -> float:
    """The poly learning rate at iteration ``step`` of ``total`` (0 from ``total`` on).

    Args:
        base: The initial learning rate.
        step: Iterations done (0-based).
        total: Iterations in all.
        power: The exponent (DeepLab's 0.9).
    """
    if total <= 0:
        raise ValueError(f"poly schedule: total iterations must be positive, got {total}")
    return base * max(0.0, 1.0 - step / total) ** power


def stepwise_cosine_lr(base: float, final: float, step: int, total: int, warmup: int = 0) -> float:
    """ConvNeXt's rate at iteration ``step`` of ``total`` (``utils.cosine_scheduler``): the first
    ``warmup`` iterations rise linearly from 0 (``np.linspace(0, base, warmup)``), the rest follow
    a cosine from ``base`` to ``final`` (its ``--min_lr``), stepped every iteration.

    Args:
        base: The peak rate.
        final: The rate the cosine ends at.
        step: Iterations done (0-based).
        total: Iterations in all.
        warmup: Warm-up iterations.
    """
    if total <= warmup:
        raise ValueError(f"cosine schedule: {total} iterations leave none after {warmup} of warm-up")
    if step < warmup:
        return base * step / (warmup - 1) if warmup > 1 else 0.0
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def cosine_schedule(
    optimizer: torch.optim.Optimizer, *, epochs: int, eta_min: float, warmup_epochs: int = 0
) -> torch.optim.lr_scheduler.LRScheduler:
    """The weights' schedule of a search, stepped once an epoch: cosine annealing from each
    group's rate to ``eta_min`` over ``epochs`` (DARTS's ``CosineAnnealingLR``); with
    ``warmup_epochs`` the rate of epoch ``e`` (0-based) below it is also scaled by
    ``(e + 1) / warmup_epochs``, as PC-DARTS's ``train_search_imagenet.py`` warms up its large
    batches (``lr * (epoch + 1) / 5.0`` for its first 5 epochs)."""
    if not warmup_epochs:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=eta_min)

    def scale(base: float) -> Callable[[int], float]:
        def factor(epoch: int) -> float:
            cosine = eta_min + (base - eta_min) * (1 + math.cos(math.pi * epoch / epochs)) / 2
            return cosine / base * min(1.0, (epoch + 1) / warmup_epochs)

        return factor

    bases = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [scale(base) for base in bases])


def step_schedule(
    optimizer: torch.optim.Optimizer, *, epochs: int, milestones: Sequence[float], gamma: float
) -> torch.optim.lr_scheduler.LRScheduler:
    """A search's step decay, stepped once an epoch: each group's rate times ``gamma`` for every
    milestone reached, epoch ``e`` (0-based) having reached milestone ``m`` (a fraction of the
    epochs) once ``e >= int(m * epochs)``: relax's ``examples/resnet/trainer.py`` (``sched``:
    ``0.1 ** (epoch >= int(0.5 * epochs)) * 0.1 ** (epoch >= int(0.75 * epochs))``)."""
    starts = [int(m * epochs) for m in milestones]

    def factor(epoch: int) -> float:
        return gamma ** sum(epoch >= start for start in starts)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def restart_schedule(
    optimizer: torch.optim.Optimizer, *, period: int, mult: int, eta_min: float
) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine annealing with warm restarts, stepped once an epoch (Loshchilov and Hutter, SGDR):
    epoch ``e`` of a period of ``T`` epochs that began at epoch ``s`` has
    ``eta_min + (base - eta_min) (1 + cos(pi (e - s) / T)) / 2``; the first period is ``period``
    epochs, each next one ``mult`` times longer. ENAS's ``get_train_ops`` (``src/utils.py``,
    ``lr_cosine``) computes the rate so from the epoch, with ``lr_T_0`` and ``lr_T_mul``."""

    def scale(base: float) -> Callable[[int], float]:
        def factor(epoch: int) -> float:
            start, length = 0, period
            while epoch - start >= length:
                start, length = start + length, length * mult
            cosine = eta_min + (base - eta_min) * (1 + math.cos(math.pi * (epoch - start) / length)) / 2
            return cosine / base

        return factor

    bases = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [scale(base) for base in bases])


def exponential_schedule(
    optimizer: torch.optim.Optimizer, *, start: int, gamma: float, eta_min: float
) -> torch.optim.lr_scheduler.LRScheduler:
    """Exponential decay by epoch, stepped once an epoch: epoch ``e`` runs at
    ``max(base * gamma ** max(e - start, 0), eta_min)``: ENAS's ``get_train_ops`` (``src/utils.py``),
    ``exponential_decay`` of ``max(step - lr_dec_start, 0)`` with ``staircase=True`` every epoch,
    floored at ``lr_dec_min``."""

    def scale(base: float) -> Callable[[int], float]:
        return lambda epoch: max(base * gamma ** max(epoch - start, 0), eta_min) / base

    bases = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [scale(base) for base in bases])


def search_schedule(
    optimizer: torch.optim.Optimizer, train: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler:
    """The weights' schedule a search's ``train`` section names (``cosine``, ``step``,
    ``restarts`` or ``exponential``), stepped once an epoch."""
    if train.schedule == "step":
        return step_schedule(optimizer, epochs=train.epochs, milestones=train.milestones, gamma=train.gamma)
    if train.schedule == "exponential":
        return exponential_schedule(
            optimizer, start=train.decay_start, gamma=train.gamma, eta_min=train.learning_rate_min
        )
    if train.schedule == "restarts":
        return restart_schedule(
            optimizer, period=train.restart_epochs, mult=train.restart_mult, eta_min=train.learning_rate_min
        )
    return cosine_schedule(
        optimizer, epochs=train.epochs, eta_min=train.learning_rate_min, warmup_epochs=train.warmup_epochs
    )
