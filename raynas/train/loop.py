"""The one training loop: a search epoch of a gradient strategy, and evaluation."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from raynas.errors import ConfigError
from raynas.train.accel import autocast, unwrap
from raynas.train.distributed import average_gradients_, sum_
from raynas.train.mixing import MixUpCutMix, WeightAverage, mix, soft_loss, soft_targets
from raynas.train.optim import OptimizerName, build_optimizer
from raynas.train.schedules import (
    cosine_schedule,
    exponential_schedule,
    poly_lr,
    restart_schedule,
    stepwise_cosine_lr,
)
from raynas.train.segmentation import confusion_matrix, labelled, mean_cross_entropy, mean_iou
from raynas.train.step import Batch, SearchStep


def _to(batch: Batch, device: torch.device) -> Batch:
    x, y = batch
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def search_epoch(
    strategy: SearchStep,
    train_batches: Iterable[Batch],
    valid_batches: Iterable[Batch],
    device: torch.device,
    *,
    precision: str = "fp32",
) -> dict[str, float]:
    """One pass over the training half; each step also draws a batch of the validation half (a
    strategy that ``alternates_by_epoch``, FBNet, takes a weight step on every training batch,
    then an architecture step on every validation batch; one with ``same_batch`` draws none, its
    alpha stepping on the training batch),
    under ``precision``'s autocast (``bf16``: the strategy's forward and backward passes run the
    matmuls and convolutions in bf16; weights, gradients and optimiser states stay float32).

    Returns:
        ``train_loss`` and ``train_acc`` (fraction) over the epoch, the learning rate used, and
        where the epoch's time went: ``step_seconds`` in the strategy's steps, ``data_seconds``
        drawing batches from the loaders (a step's time includes moving its batches to the
        device; on a GPU, waiting for earlier kernels only where an operation synchronises).
    """
    lr = strategy.lr
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count: torch.Tensor | int = 0
    clock = {"step": 0.0, "data": 0.0}
    by_epoch = getattr(strategy, "alternates_by_epoch", False)
    same_batch = getattr(strategy, "same_batch", False)  # alpha steps on the training batch
    pairs = (
        ((b, None) for b in train_batches) if by_epoch or same_batch
        else zip(train_batches, _passes(valid_batches), strict=False)  # as many as training batches
    )
    for train_batch, valid_batch in _timed(pairs, clock):
        tic = time.perf_counter()
        with autocast(device, precision):
            if by_epoch:  # the weights only; the architecture after the epoch
                result = strategy.weight_step(_to(train_batch, device))  # type: ignore[attr-defined]
            else:
                valid = None if valid_batch is None else _to(valid_batch, device)
                result = strategy.step(_to(train_batch, device), valid)
        clock["step"] += time.perf_counter() - tic
        loss_sum += result.loss_sum
        correct += result.correct
        count += result.count
    if by_epoch:
        for valid_batch in _timed(valid_batches, clock):
            tic = time.perf_counter()
            with autocast(device, precision):
                strategy.arch_step(_to(valid_batch, device))  # type: ignore[attr-defined]
            clock["step"] += time.perf_counter() - tic
    strategy.end_epoch()
    loss, acc = _global_means(loss_sum, correct, count)
    return {"train_loss": loss, "train_acc": acc, "lr": lr, "step_seconds": clock["step"],
            "data_seconds": clock["data"]}


def _passes(batches: Iterable[Any]) -> Iterator[Any]:
    """``batches`` pass after pass, each pass anew (a loader reshuffles and augments again), none
    of them held: where ``itertools.cycle`` would keep the whole first pass in memory."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            return


def _timed(items: Iterable[Any], clock: dict[str, float]) -> Iterator[Any]:
    """``items``, the time spent drawing each added to ``clock["data"]``."""
    iterator = iter(items)
    while True:
        tic = time.perf_counter()
        item = next(iterator, _END)
        clock["data"] += time.perf_counter() - tic
        if item is _END:
            return
        yield item


_END = object()


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterable[Batch], device: torch.device, *, precision: str = "fp32",
    carry_state: bool = False,
) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` (in eval mode, its forward passes under
    ``precision``'s autocast) over ``batches``; labels of
    -100 (ignored pixels) do not count. Dense predictions, (B, C, H, W) logits, also give the
    mean IoU of their classes (``valid_miou``); sequences, (B, vocabulary, T) logits, the
    perplexity ``exp(valid_loss)`` (``valid_ppl``) and the mean log-likelihood per token
    ``-valid_loss`` (``valid_loglik``: what searches on text rank by, the higher the better).

    With ``carry_state``, ``model`` is a recurrent language model (its ``run(tokens, hidden)``)
    and ``batches`` consecutive windows of the same streams: each batch starts from the hidden
    state the previous one ended in, the first from zeros (rnn/train_search.py's ``evaluate``)."""
    model.eval()
    hidden: torch.Tensor | None = None
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count: torch.Tensor | int = 0
    confusion: torch.Tensor | None = None
    sequences = False
    for batch in batches:
        x, y = _to(batch, device)
        with autocast(device, precision):
            if carry_state:
                out, hidden = unwrap(model).run(x, hidden)  # type: ignore[operator]
                logits = out.float()
            else:
                logits = model(x).float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum")
        pred = logits.argmax(1)
        correct += (pred == y).sum()
        count += labelled(y)
        if logits.dim() == 4:  # segmentation: (B, C, H, W) logits, (B, H, W) labels
            part = confusion_matrix(pred, y, logits.shape[1])
            confusion = part if confusion is None else confusion + part
        sequences = logits.dim() == 3  # language models: (B, vocabulary, T) logits, (B, T) labels
    loss, acc = _global_means(loss_sum, correct, count)
    metrics = {"valid_loss": loss, "valid_acc": acc}
    if confusion is not None:
        metrics["valid_miou"] = mean_iou(sum_(confusion))
    if sequences:
        metrics["valid_ppl"] = math.exp(min(loss, 700.0))  # exp overflows a float past ~709
        metrics["valid_loglik"] = -loss
    return metrics


def _global_means(
    loss_sum: torch.Tensor, correct: torch.Tensor, count: torch.Tensor | int
) -> tuple[float, float]:
    """Mean loss and accuracy over every data-parallel worker's samples."""
    n_local = torch.as_tensor(count, dtype=torch.float64, device=loss_sum.device)
    totals = sum_(torch.stack([loss_sum.double(), correct.double(), n_local]))
    n = max(float(totals[2]), 1.0)
    return float(totals[0]) / n, float(totals[1]) / n


def stepped_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The weights ``optimizer`` steps, every group's, in order (taken once an epoch: the gradient
    averaging and the L2 term of a step work on them)."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def decay_into_gradients_(params: Iterable[torch.Tensor], weight_decay: float) -> None:
    """Add ``weight_decay * w`` to every weight's gradient, in place; a weight without one (off
    the path a one-shot step trained) gets that alone: the gradient of the L2 term
    ``weight_decay / 2 * sum(w ** 2)`` of the loss over every weight, as ENAS's ``get_train_ops``
    adds ``l2_reg * sum(w ** 2)`` over all its variables to the loss it differentiates and clips."""
    for p in params:
        if p.grad is None:
            p.grad = weight_decay * p.detach()
        else:
            p.grad.add_(p.detach(), alpha=weight_decay)


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    device: torch.device,
    *,
    grad_clip: float = 5.0,
    auxiliary_weight: float = 0.0,
    label_smoothing: float = 0.0,
    before_step: Callable[[int], None] | None = None,
    precision: str = "fp32",
    mixing: MixUpCutMix | None = None,
    after_step: Callable[[], None] | None = None,
    bce_threshold: float | None = None,
    carry_state: bool = False,
    decay_in_loss: float = 0.0,
) -> dict[str, float]:
    """One pass of plain supervised training (a stand-alone network, or a one-shot supernet).

    Args:
        model: The network; put in train mode.
        optimizer: Steps the network's weights.
        batches: Training batches.
        device: Where the batches go.
        grad_clip: Gradient-norm clip (DARTS's 5; 0: none, as ConvNeXt's ``main.py``).
        auxiliary_weight: Weight of the auxiliary head's loss when the model returns one.
        label_smoothing: Label smoothing of both losses (0.1 in DARTS's ``train_imagenet.py``).
        before_step: Called with the step index before each forward pass (a one-shot supernet
            sets the path that step trains here).
        precision: ``fp32``, or ``bf16`` for the forward pass and loss under bf16 autocast.
        mixing: Mixup and CutMix of image classification batches: the losses are then taken
            against its soft targets (which carry the label smoothing), the accuracy against the
            unmixed labels.
        after_step: Called after each optimiser step (an average of the weights is updated there).
        bce_threshold: None: cross-entropy; a number: binary cross-entropy of every class's logit
            against its target, the (mixed, smoothed) targets set to 1 above the threshold and 0
            elsewhere when it is positive (timm's ``BinaryCrossEntropy(target_threshold=...)``,
            NEXcepTion's ``--bce-loss --bce-target-thresh 0.2``).
        carry_state: ``model`` is a recurrent language model (its ``run(tokens, hidden)``) and
            ``batches`` consecutive windows of the same streams: each batch starts from the
            hidden state the previous one ended in, cut from its graph, the first from zeros
            (ENAS's ``ptb_enas_child.py`` carries its ``start_h`` so through an epoch).
        decay_in_loss: If set, the gradient of the L2 term ``decay_in_loss / 2 * sum(w ** 2)``
            over every weight the optimiser steps is added before the clip
            (:func:`decay_into_gradients_`); the optimiser then has no weight decay of its own.

    Returns:
        ``train_loss`` and ``train_acc`` over the epoch.
    """
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count: torch.Tensor | int = 0
    hidden: torch.Tensor | None = None
    stepped = stepped_params(optimizer)
    for step, batch in enumerate(batches):
        if before_step is not None:
            before_step(step)
        x, y = _to(batch, device)
        mixed = mixing is not None and mixing.active
        soft = mixed or bce_threshold is not None  # a loss of per-class targets
        if soft and y.dim() != 1:
            raise ConfigError("retrain.mixup, retrain.cutmix and retrain.loss: bce take image classification "
                              f"labels; these have shape {tuple(y.shape)}: leave them at their defaults")
        lam = 1.0
        if mixed:
            lam, box = mixing.draw(x.shape[-2], x.shape[-1])  # type: ignore[union-attr]
            x = mix(x, lam, box)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            if carry_state:
                out, hidden = unwrap(model).run(x, hidden)  # type: ignore[operator]  # (B, V, T), (B, H)
            else:
                out = model(x)  # (B, classes), or (logits, auxiliary logits) from a network with a head
            logits, aux = out if isinstance(out, tuple) else (out, None)
            if soft:
                smoothing = mixing.label_smoothing if mixed else label_smoothing  # type: ignore[union-attr]
                targets = soft_targets(y, logits.shape[1], lam, smoothing)
                loss = soft_loss(logits, targets, bce_threshold)
                if aux is not None and auxiliary_weight:
                    loss = loss + auxiliary_weight * soft_loss(aux, targets, bce_threshold)
            else:
                loss = mean_cross_entropy(logits, y, label_smoothing)
                if aux is not None and auxiliary_weight:  # DARTS's train.py
                    loss = loss + auxiliary_weight * mean_cross_entropy(aux, y, label_smoothing)
        loss.backward()
        # Data-parallel replicas (a one-shot supernet's, a retraining's) average the gradients of
        # what they train; a no-op for one worker.
        average_gradients_(stepped)
        if decay_in_loss:
            decay_into_gradients_(stepped, decay_in_loss)
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if after_step is not None:
            after_step()
        if hidden is not None:
            hidden = hidden.detach()  # the next window goes on from here, its gradient cut
        n = labelled(y)
        loss_sum += loss.detach() * n
        correct += (logits.detach().argmax(1) == y).sum()
        count += n
    loss_mean, acc = _global_means(loss_sum, correct, count)
    return {"train_loss": loss_mean, "train_acc": acc}


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[Batch], device: torch.device) -> None:
    """Recompute every BatchNorm's running statistics on ``batches`` (SPOS: the shared statistics
    belong to no single path, so each candidate's are re-estimated before it is evaluated)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    model.train()
    for batch in batches:
        model(_to(batch, device)[0])
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum


def fit(
    model: nn.Module,
    train_batches: Iterable[Batch],
    eval_batches: Iterable[Batch],
    device: torch.device,
    *,
    epochs: int,
    learning_rate: float,
    momentum: float,
    weight_decay: float,
    grad_clip: float,
    auxiliary_weight: float = 0.0,
    drop_path_prob: float = 0.0,
    label_smoothing: float = 0.0,
    lr_gamma: float = 0.0,
    decay_start: int = 0,
    lr_power: float = 0.0,
    state: dict[str, Any] | None = None,
    generator: torch.Generator | None = None,
    precision: str = "fp32",
    optimizer_name: OptimizerName = "sgd",
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    warmup_epochs: int = 0,
    mixup: float = 0.0,
    cutmix: float = 0.0,
    mix_switch_prob: float = 0.5,
    ema_decay: float = 0.0,
    min_learning_rate: float = 0.0,
    lr_per_step: bool = False,
    bce_threshold: float | None = None,
    restart_epochs: int = 0,
    restart_mult: int = 2,
    nesterov: bool = False,
    decay_in_loss: bool = False,
    drop_path_per_step: bool = False,
    carry_state: bool = False,
) -> Iterator[tuple[dict[str, float], dict[str, Any]]]:
    """Train a stand-alone network epoch by epoch: SGD with momentum (or AdamW), cosine annealing
    to 0 over ``epochs`` (DARTS's ``train.py``) or a step decay (``train_imagenet.py``), evaluated
    after every epoch.

    Args:
        model: The network, on ``device`` (or it compiled: see ``accel.prepare``).
        train_batches: Training batches (iterated once per epoch).
        eval_batches: Batches it is evaluated on after every epoch.
        device: Where the batches go.
        epochs: Epochs in all (a resumed state counts the ones done).
        learning_rate: The optimiser's initial rate.
        momentum: SGD momentum.
        weight_decay: SGD's L2 weight decay, or AdamW's decoupled one (not on norms and biases).
        grad_clip: Gradient-norm clip (0: none).
        auxiliary_weight: Weight of the auxiliary head's loss.
        drop_path_prob: Drop-path probability, raised linearly from 0 over the epochs.
        label_smoothing: Label smoothing of the training loss.
        lr_gamma: If set, the rate is multiplied by it after every epoch past ``decay_start``
            (``StepLR`` with period 1 where that is 0: 0.97 in DARTS's ImageNet training), down to
            ``min_learning_rate``, instead of following the cosine
            (:func:`raynas.train.schedules.exponential_schedule`).
        decay_start: The epochs ``lr_gamma`` waits.
        lr_power: If set, DeepLab's poly schedule instead: the rate is
            ``learning_rate * (1 - iteration / iterations) ** lr_power`` at every iteration
            (0.9 in DeepLab and Auto-DeepLab; :func:`raynas.train.schedules.poly_lr`).
        state: A state yielded earlier, to continue from.
        generator: The training batches' shuffling generator, saved in the state and restored.
        precision: ``fp32``, or ``bf16`` for forward passes under bf16 autocast.
        optimizer_name: ``sgd`` or ``adamw`` (:func:`raynas.train.optim.build_optimizer`).
        betas: AdamW's betas.
        eps: AdamW's epsilon.
        warmup_epochs: The cosine's first epochs warm up linearly
            (:func:`raynas.train.schedules.cosine_schedule`).
        mixup: Mixup's alpha; with ``cutmix``, CutMix's, and ``mix_switch_prob``, the chance of
            CutMix when both are on (:class:`raynas.train.mixing.MixUpCutMix`; the label smoothing
            goes into its targets). 0 and 0: no mixing.
        ema_decay: If set, an exponential moving average of the weights is kept
            (:class:`raynas.train.mixing.WeightAverage`) and evaluated after every epoch too
            (``valid_ema_loss``, ``valid_ema_acc``), as ConvNeXt's ``--model_ema_eval``.
        min_learning_rate: Where the cosine ends (ConvNeXt's ``--min_lr`` 1e-6).
        lr_per_step: The cosine and its warm-up set the rate every iteration, the warm-up rising
            from 0 (:func:`raynas.train.schedules.stepwise_cosine_lr`, ConvNeXt's), instead of
            once an epoch.
        bce_threshold: The training loss: None cross-entropy, else binary cross-entropy
            (:func:`train_epoch`).
        restart_epochs: If set, the cosine restarts, its first period this many epochs, each
            next ``restart_mult`` times longer (:func:`raynas.train.schedules.restart_schedule`).
        restart_mult: The periods' growth.
        nesterov: SGD's Nesterov momentum.
        decay_in_loss: SGD's ``weight_decay`` added to every weight's gradient before the clip
            (:func:`decay_into_gradients_`, ENAS's L2 term of the loss), not by SGD after it.
        drop_path_per_step: The drop-path rate rises step by step, ``drop_path_prob * min(1,
            (step + 1) / steps)`` with ``step`` counted over the whole training (ENAS's
            ``_apply_drop_path``: ``(global_step + 1) / num_train_steps``), not epoch by epoch.
        carry_state: ``model`` is a recurrent language model trained on consecutive windows of
            its streams, each from the hidden state the last one ended in (:func:`train_epoch`);
            it is evaluated window by window from zeros.

    Returns:
        The epochs left, each yielding its metrics (``train_loss``, ``train_acc``, ``lr``,
        ``valid_loss``, ``valid_acc``, ``epoch``) and the state to continue from. ``state`` is
        loaded before this returns: the network holds its weights at once.
    """
    optimizer = build_optimizer(
        model, name=optimizer_name, learning_rate=learning_rate, momentum=momentum,
        weight_decay=0.0 if decay_in_loss else weight_decay, betas=betas, eps=eps, nesterov=nesterov,
    )
    per_step = bool(lr_power or lr_per_step)
    schedule: torch.optim.lr_scheduler.LRScheduler = (
        torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=lr_gamma)
        if lr_gamma and not (decay_start or min_learning_rate)  # (the schedule checkpoints hold)
        else exponential_schedule(optimizer, start=decay_start, gamma=lr_gamma, eta_min=min_learning_rate)
        if lr_gamma
        else torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0) if per_step  # set per step below
        else restart_schedule(optimizer, period=restart_epochs, mult=restart_mult, eta_min=min_learning_rate)
        if restart_epochs
        else cosine_schedule(optimizer, epochs=epochs, eta_min=min_learning_rate, warmup_epochs=warmup_epochs)
    )
    plain = unwrap(model)  # a compiled model's state is saved as its plain module's
    mixing = MixUpCutMix(mixup, cutmix, mix_switch_prob, label_smoothing)
    average = WeightAverage(plain, ema_decay) if ema_decay else None
    epoch = 0
    if state is not None:
        plain.load_state_dict(state["model"])
        if average is not None:
            average.model.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        epoch = int(state["epoch"])
        if generator is not None:
            generator.set_state(state["loader_rng"])

    def epochs_from(epoch: int) -> Iterator[tuple[dict[str, float], dict[str, Any]]]:
        while epoch < epochs:
            ramps = drop_path_prob and hasattr(plain, "drop_path_prob")
            if ramps:
                plain.drop_path_prob = drop_path_prob * epoch / epochs  # DARTS's linear ramp
            per_epoch = len(train_batches) if per_step else 0  # type: ignore[arg-type]
            steps = len(train_batches) if ramps and drop_path_per_step else 0  # type: ignore[arg-type]

            def rate(iteration: int, per_epoch: int = per_epoch) -> float:
                if lr_power:
                    return poly_lr(learning_rate, iteration, epochs * per_epoch, lr_power)
                return stepwise_cosine_lr(learning_rate, min_learning_rate, iteration, epochs * per_epoch,
                                          warmup_epochs * per_epoch)

            def before_step(step: int, epoch: int = epoch, per_epoch: int = per_epoch,
                            steps: int = steps) -> None:
                if per_epoch:
                    for group in optimizer.param_groups:
                        group["lr"] = rate(epoch * per_epoch + step)
                if steps:  # ENAS's ramp: (global_step + 1) / num_train_steps
                    done = (epoch * steps + step + 1) / (epochs * steps)
                    plain.drop_path_prob = drop_path_prob * min(1.0, done)

            metrics = train_epoch(
                model, optimizer, train_batches, device, grad_clip=grad_clip,
                auxiliary_weight=auxiliary_weight, label_smoothing=label_smoothing,
                before_step=before_step if per_epoch or steps else None, precision=precision, mixing=mixing,
                after_step=None if average is None else lambda: average.update(plain),  # type: ignore[union-attr]
                bce_threshold=bce_threshold, decay_in_loss=weight_decay if decay_in_loss else 0.0,
                carry_state=carry_state,
            )
            metrics["lr"] = rate(epoch * per_epoch) if per_step else schedule.get_last_lr()[0]
            schedule.step()
            metrics.update(evaluate(model, eval_batches, device, precision=precision))
            if average is not None:
                averaged = evaluate(average.model, eval_batches, device, precision=precision)
                metrics.update(
                    {f"valid_ema_{k[6:]}": v for k, v in averaged.items() if k.startswith("valid_")}
                )
            epoch += 1
            metrics["epoch"] = float(epoch)
            new_state = {
                "model": plain.state_dict(), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "epoch": epoch,
            }
            if average is not None:
                new_state["ema"] = average.model.state_dict()
            if generator is not None:
                new_state["loader_rng"] = generator.get_state()
            yield metrics, new_state

    return epochs_from(epoch)
