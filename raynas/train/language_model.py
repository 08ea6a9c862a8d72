"""Training a recurrent language model from scratch as DARTS's ``rnn/train.py`` does (Liu et al.,
ICLR 2019, Sec. 3.4; the training recipe of Merity et al.'s AWD-LSTM, ICLR 2018).

Every training window goes on from the hidden state the previous window of the same streams
ended in, detached (``repackage_hidden``), from zeros at the start of every epoch; the window
lengths vary (:class:`raynas.data.ptb.TrainingWindows`) and each step's learning rate is scaled
by the window's length over ``bptt``; the loss adds the activation regularisation
``ar * mean(dropped_h ** 2)`` of the output-dropped cell outputs and the temporal activation
regularisation ``tar * mean((h_{t+1} - h_t) ** 2)`` of the raw ones (``--alpha``, ``--beta``);
gradients are clipped to ``grad_clip`` (0.25). Plain SGD switches to averaged SGD
(``torch.optim.ASGD(t0=0, lambd=0)``) once the validation loss is worse than the best of all
but the last ``nonmono`` epochs; from then on the model is evaluated with the averaged weights.
Validation and test texts are read as streams whose hidden state carries from window to window
(``evaluate``'s ``carry_state``). The network with the lowest validation loss so far is kept (the
averaged weights after the switch), as rnn/train.py saves it whenever ``val_loss < stored_loss``;
after the last epoch the model holds it, and its test scores are the training's (rnn/train.py
loads the best saved model and tests that). An epoch whose training loss is not finite rolls back
as rnn/train.py does: the network kept and its optimizer's state come back, and training repeats
the epoch they were kept after and goes on from there.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from raynas.errors import RaynasError
from raynas.train.accel import autocast, unwrap
from raynas.train.distributed import average_gradients_
from raynas.train.loop import _global_means, _to, decay_into_gradients_, evaluate, stepped_params
from raynas.train.segmentation import labelled
from raynas.train.step import Batch

log = logging.getLogger(__name__)


def switches_to_asgd(history: Sequence[float], loss: float, nonmono: int) -> bool:
    """rnn/train.py's switch to averaged SGD after an epoch of plain SGD: more than ``nonmono``
    validation losses recorded before this one, and ``loss`` worse than the best of them all but
    the last ``nonmono`` (``len(best_val_loss) > nonmono and val_loss > min(best_val_loss[:-nonmono])``);
    ``nonmono`` 0 never switches."""
    return nonmono > 0 and len(history) > nonmono and loss > min(history[:-nonmono])


def regularised_loss(
    loss: torch.Tensor, outputs: torch.Tensor, dropped: torch.Tensor, *, ar: float, tar: float
) -> torch.Tensor:
    """``loss`` plus AR on the dropped outputs and TAR on the raw ones, each (T, B, H)."""
    total = loss + tar * (outputs[1:] - outputs[:-1]).pow(2).mean()
    return total + ar * dropped.pow(2).mean() if ar else total


def train_language_model_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    device: torch.device,
    *,
    bptt: int,
    grad_clip: float,
    ar: float = 0.0,
    tar: float = 0.0,
    precision: str = "fp32",
    decay_in_loss: float = 0.0,
) -> dict[str, float]:
    """One pass over consecutive windows of the training streams (rnn/train.py's ``train()``).

    Args:
        model: A recurrent language model (its ``run_dropped(tokens, hidden)``); put in train mode.
        optimizer: SGD or ASGD over its weights; each step's rate is scaled by the window's
            length over ``bptt`` and restored after it.
        batches: Windows (tokens (B, T), targets (B, T)) in order through the same B streams.
        device: Where the batches go.
        bptt: The nominal window length.
        grad_clip: Gradient-norm clip.
        ar: Weight of the activation regularisation.
        tar: Weight of the temporal activation regularisation.
        precision: ``fp32``, or ``bf16`` for the forward pass and loss under bf16 autocast.
        decay_in_loss: If set, ``decay_in_loss * w`` is added to every weight's gradient before
            the clip (:func:`~raynas.train.loop.decay_into_gradients_`).

    Returns:
        ``train_loss`` (cross-entropy, without the regularisation) and ``train_acc``.
    """
    model.train()
    net: Any = unwrap(model)
    hidden: torch.Tensor | None = None
    stepped = stepped_params(optimizer)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count: torch.Tensor | int = 0
    for batch in batches:
        x, y = _to(batch, device)  # (B, T) each
        rates = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * x.shape[1] / bptt  # lr2 * seq_len / args.bptt
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            logits, outputs, dropped = net.run_dropped(x, hidden)  # (B, V, T), (T, B, H), (T, B, H)
            loss = nn.functional.cross_entropy(logits.float(), y)
            total = regularised_loss(loss, outputs.float(), dropped.float(), ar=ar, tar=tar)
        total.backward()
        average_gradients_(stepped)
        if decay_in_loss:
            decay_into_gradients_(stepped, decay_in_loss)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        for group, rate in zip(optimizer.param_groups, rates, strict=True):
            group["lr"] = rate
        hidden = outputs[-1].detach()  # (B, H): the next window goes on from here
        n = labelled(y)
        loss_sum += loss.detach() * n
        correct += (logits.detach().argmax(1) == y).sum()
        count += n
    loss_mean, acc = _global_means(loss_sum, correct, count)
    return {"train_loss": loss_mean, "train_acc": acc}


@contextlib.contextmanager
def averaged_weights(model: nn.Module, optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Inside, ``model``'s parameters hold ASGD's averages (its ``ax``); after, their own values
    again (rnn/train.py swaps ``prm.data`` with ``optimizer.state[prm]['ax']`` to evaluate)."""
    saved = []
    with torch.no_grad():
        for p in model.parameters():
            saved.append(p.detach().clone())
            p.copy_(optimizer.state[p]["ax"])
    try:
        yield
    finally:
        with torch.no_grad():
            for p, value in zip(model.parameters(), saved, strict=True):
                p.copy_(value)


def _asgd(model: nn.Module, learning_rate: float, weight_decay: float) -> torch.optim.Optimizer:
    # rnn/train.py: torch.optim.ASGD(model.parameters(), lr=args.lr, t0=0, lambd=0., weight_decay=args.wdecay)
    return torch.optim.ASGD(model.parameters(), lr=learning_rate, t0=0, lambd=0.0, weight_decay=weight_decay)


def _roll_back(
    model: nn.Module, best: dict[str, Any] | None, epoch: int, learning_rate: float, weight_decay: float,
) -> tuple[torch.optim.Optimizer, int]:
    """After an epoch whose training loss is not finite: ``model`` back to the network kept (the
    best so far) and a new optimizer of its kind with its state, and the epochs done to go on from.

    rnn/train.py: ``train()`` raises on a NaN loss; the loop then loads ``model.pt`` and
    ``optimizer.pt`` (an ASGD when the saved state has ``t0``, else SGD) and sets ``epoch`` to
    ``misc.pt``'s, the epoch they were saved after, so that epoch is trained again. (It stops the
    epoch at the first NaN window; here the epoch runs out first, its result thrown away the same.)

    Raises:
        RaynasError: Nothing was kept yet (the first epoch): rnn/train.py has no model.pt to load.
    """
    if best is None:
        raise RaynasError(
            f"the training loss was not finite in epoch {epoch + 1}, before any network was kept to go "
            "back to (rnn/train.py rolls back to the best one); lower retrain.learning_rate or "
            "retrain.grad_clip"
        )
    model.load_state_dict(best["weights"])
    saved = best.get("optimizer")  # (states kept by raynas before the rollback have none: a fresh SGD)
    asgd = saved is not None and "t0" in saved["param_groups"][0]  # as rnn/train.py tells them apart
    optimizer = (_asgd(model, learning_rate, weight_decay) if asgd else
                 torch.optim.SGD(model.parameters(), lr=learning_rate, weight_decay=weight_decay))
    if saved is not None:
        optimizer.load_state_dict(copy.deepcopy(saved))
    kept = int(best["scores"]["epoch"])
    log.warning("training loss not finite in epoch %d: rolling back to the network kept after epoch "
                "%d and training on from it (rnn/train.py)", epoch + 1, kept)
    return optimizer, kept - 1


def fit_language_model(
    model: nn.Module,
    train_batches: Iterable[Batch],
    valid_batches: Iterable[Batch],
    test_batches: Iterable[Batch] | None,
    device: torch.device,
    *,
    epochs: int,
    learning_rate: float,
    weight_decay: float,
    grad_clip: float,
    bptt: int,
    ar: float = 0.0,
    tar: float = 0.0,
    nonmono: int = 5,
    state: dict[str, Any] | None = None,
    generator: torch.Generator | None = None,
    precision: str = "fp32",
    lr_gamma: float = 0.0,
    decay_start: int = 0,
    min_learning_rate: float = 0.0,
    decay_in_loss: bool = False,
) -> Iterator[tuple[dict[str, float], dict[str, Any]]]:
    """Train a recurrent language model epoch by epoch as rnn/train.py does (module docstring),
    at a constant ``learning_rate``, or one decaying by ``lr_gamma`` an epoch (ENAS's
    ``ptb_final.sh``).

    Args:
        model: The language model, on ``device``.
        train_batches: The training text's windows, in order (iterated once per epoch).
        valid_batches: The validation text's windows, in order: they decide the switch to ASGD.
        test_batches: The test text's windows, in order (None: no test scores, as when
            architectures are chosen by their validation scores alone).
        device: Where the batches go.
        epochs: Epochs in all (a resumed state counts the ones done).
        learning_rate: The rate of SGD and of the ASGD it switches to.
        weight_decay: L2 weight decay of both.
        grad_clip: Gradient-norm clip.
        bptt: The nominal window length.
        ar: Weight of the activation regularisation.
        tar: Weight of the temporal activation regularisation.
        nonmono: Epochs of the non-monotonic trigger (0: SGD throughout).
        state: A state yielded earlier, to continue from.
        generator: The training windows' length generator, saved in the state and restored.
        precision: ``fp32``, or ``bf16`` for forward passes under bf16 autocast.
        lr_gamma: If set, epoch ``e`` runs at ``max(learning_rate * lr_gamma ** max(e -
            decay_start, 0), min_learning_rate)`` (ENAS's ``get_train_ops``), ASGD too.
        decay_start: The epochs the decay waits.
        min_learning_rate: The decay's floor.
        decay_in_loss: ``weight_decay`` added to every weight's gradient before the clip (ENAS's
            L2 term of the loss), not by the optimisers after it.

    Returns:
        The epochs left, each yielding its metrics (``train_loss``, ``train_acc``, ``lr``,
        ``asgd`` (1 once averaging), ``valid_*`` and ``test_*`` with ``_loss``, ``_acc``, ``_ppl``,
        ``epoch``; and ``best_epoch`` with the ``best_valid_*`` and ``best_test_*`` scores of the
        network of the lowest validation loss so far) and the state to continue from. After the
        last epoch the model holds that network's weights. ``state`` is loaded before this
        returns: the model holds its weights at once (the best network's, for the last epoch's).
    """
    plain = unwrap(model)
    in_loss = weight_decay if decay_in_loss else 0.0
    weight_decay = 0.0 if decay_in_loss else weight_decay  # the optimisers'
    optimizer = torch.optim.SGD(plain.parameters(), lr=learning_rate, weight_decay=weight_decay)
    epoch, history = 0, []
    best: dict[str, Any] | None = None  # the network of the lowest validation loss: its weights, scores
    if state is not None:
        plain.load_state_dict(state["model"])
        if state["asgd"]:
            optimizer = _asgd(plain, learning_rate, weight_decay)
        optimizer.load_state_dict(state["optimizer"])
        epoch, history = int(state["epoch"]), list(state["valid_history"])
        best = state.get("best")
        if generator is not None:
            generator.set_state(state["loader_rng"])
        if epoch >= epochs and best is not None:  # the last epoch's state: its network is the best one
            plain.load_state_dict(best["weights"])

    def epochs_from(epoch: int, optimizer: torch.optim.Optimizer, best: dict[str, Any] | None
                    ) -> Iterator[tuple[dict[str, float], dict[str, Any]]]:
        while epoch < epochs:
            rate = (max(learning_rate * lr_gamma ** max(epoch - decay_start, 0), min_learning_rate)
                    if lr_gamma else learning_rate)
            for group in optimizer.param_groups:
                group["lr"] = rate
            metrics = train_language_model_epoch(
                model, optimizer, train_batches, device, bptt=bptt, grad_clip=grad_clip, ar=ar, tar=tar,
                precision=precision, decay_in_loss=in_loss,
            )
            if not math.isfinite(metrics["train_loss"]):
                optimizer, epoch = _roll_back(plain, best, epoch, learning_rate, weight_decay)
                continue
            asgd = isinstance(optimizer, torch.optim.ASGD)
            metrics.update(lr=rate, asgd=float(asgd))
            with averaged_weights(plain, optimizer) if asgd else contextlib.nullcontext():
                scores = evaluate(model, valid_batches, device, precision=precision, carry_state=True)
                tested = ({} if test_batches is None else
                          evaluate(model, test_batches, device, precision=precision, carry_state=True))
                # rnn/train.py: val_loss < stored_loss
                if best is None or scores["valid_loss"] < best["scores"]["valid_loss"]:
                    tested_as = {f"test_{key[6:]}": value for key, value in tested.items()}
                    best = {"weights": {k: v.detach().clone() for k, v in plain.state_dict().items()},
                            "scores": {**scores, **tested_as, "epoch": float(epoch + 1)},
                            # rnn/train.py's save_checkpoint keeps the optimizer beside the model
                            "optimizer": copy.deepcopy(optimizer.state_dict())}
            metrics.update(scores)
            metrics.update({f"test_{key[6:]}": value for key, value in tested.items()})
            if not asgd:
                if switches_to_asgd(history, scores["valid_loss"], nonmono):
                    optimizer = _asgd(plain, learning_rate, weight_decay)
                history.append(scores["valid_loss"])
            epoch += 1
            metrics["epoch"] = float(epoch)
            metrics.update({f"best_{key}": value for key, value in best["scores"].items()})
            new_state = {
                "model": plain.state_dict(), "optimizer": optimizer.state_dict(),
                "asgd": isinstance(optimizer, torch.optim.ASGD), "valid_history": list(history),
                "epoch": epoch,
                "best": best,
            }
            if epoch == epochs:  # the trained network is the best one (rnn/train.py loads it to test)
                new_state["model"] = {k: v.clone() for k, v in new_state["model"].items()}
                plain.load_state_dict(best["weights"])
            if generator is not None:
                new_state["loader_rng"] = generator.get_state()
            yield metrics, new_state

    return epochs_from(epoch, optimizer, best)
