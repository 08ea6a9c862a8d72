"""Training from scratch with a budget: the stand-alone network of a candidate, trained for a few
epochs on the search split's training half and scored on its validation half.

:meth:`ScratchEvaluator.train` yields after every epoch, so a Ray Tune trial can report each epoch
and ASHA / HyperBand / PBT can stop or perturb it (``raynas.execution.tune``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import torch

from raynas.config import Rule, SearchConfig, check_rules
from raynas.data import DATASETS, search_loaders, search_objective
from raynas.evaluators.registry import EVALUATORS
from raynas.profile import count_params
from raynas.spaces import SPACES
from raynas.train.accel import pick_device, prepare
from raynas.train.loop import fit
from raynas.types import Architecture, EvalResult


@dataclass(frozen=True)
class ScratchConfig:
    """The training budget of one candidate.

    Attributes:
        epochs: Epochs of training (Tune's schedulers may stop it sooner).
        channels: Initial channels of the network (0: the job's ``space.channels``, else the
            space's build default).
        layers: Cells or layers of the network (0: the job's ``space.layers`` or
            ``space.cells_per_stage``, else the space's build default).
        learning_rate: SGD learning rate, cosine-annealed to 0 over ``epochs``.
        momentum: SGD momentum.
        weight_decay: L2 weight decay.
        grad_clip: Gradient-norm clip.
    """

    epochs: Annotated[int, Rule(ge=1)] = 3
    channels: Annotated[int, Rule(ge=0, says="must be >= 0 (0: the space's default)")] = 0
    layers: Annotated[int, Rule(ge=0, says="must be >= 0 (0: the space's default)")] = 0
    learning_rate: Annotated[float, Rule(gt=0)] = 0.05
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0

    def __post_init__(self) -> None:
        check_rules(self, "evaluator")


def network_size(search: SearchConfig, *, channels: int = 0, layers: int = 0) -> dict[str, int | None]:
    """The size a job's stand-alone networks are built at, as ``build``'s keyword arguments:
    ``channels`` and ``layers`` where given (non-zero), else the job's space section's
    (``space.channels``; ``space.layers`` or ``space.cells_per_stage``), else None (the space's
    build default, the paper's network).

    Args:
        search: The job.
        channels: An evaluator's or retraining's own initial channels (0: the space's).
        layers: Its own cells or layers (0: the space's).
    """
    cfg = search.space.config
    own_layers = getattr(cfg, "layers", None) or getattr(cfg, "cells_per_stage", None)
    own_channels = getattr(cfg, "channels", None)
    return {"channels": channels or own_channels or None, "layers": layers or own_layers or None}


def candidate_seed(seed: int, arch: Architecture) -> int:
    """A seed for one candidate's training: the same architecture trains the same way."""
    return (seed * 1_000_003 + int(hashlib.sha1(arch.key().encode()).hexdigest()[:8], 16)) % 2**31


@EVALUATORS.register("scratch", config=ScratchConfig)
class ScratchEvaluator:
    """Trains each candidate's network from scratch for ``config.epochs`` epochs.

    Args:
        config: The budget.
        search: The search job (space, data, seed).
    """

    def __init__(self, config: ScratchConfig, *, search: SearchConfig) -> None:
        self.config = config
        self.search = search
        self.space = SPACES.create(search.space.name, search.space.config)
        self.data = DATASETS.create(search.data.name, search.data.config)
        self.device = pick_device(search.execution.device)
        self.objective = search_objective(search.data.name)  # what its results are ranked by
        self.network: torch.nn.Module | None = None  # the last network trained (retraining keeps it)
        self.valid_batches: int | None = None  # the batches the last network is evaluated on

    def initial_network(self, arch: Architecture) -> torch.nn.Module:
        """The network ``arch``'s training starts from: freshly built (an evaluator that inherits
        weights overrides this)."""
        cfg = self.config
        # The network the job's space describes (its channels and cells), at the evaluator's own
        # size where it sets one: the one recorded, registered and retrained.
        return self.space.build(
            arch, self.data.info, **network_size(self.search, channels=cfg.channels, layers=cfg.layers)
        )

    def train(
        self, arch: Architecture, *, state: dict[str, Any] | None = None
    ) -> Iterator[tuple[dict[str, float], dict[str, Any]]]:
        """Train ``arch``, yielding ``(metrics, state)`` after each epoch.

        Args:
            arch: The candidate.
            state: A state yielded earlier (a resumed or, under PBT, cloned trial) to continue from.

        Yields:
            The epoch's metrics (``epoch``, ``train_loss``, ``train_acc``, ``valid_loss``,
            ``valid_acc``, ``params``) and the state to continue from.
        """
        cfg = self.config
        torch.manual_seed(candidate_seed(self.search.seed, arch))
        model = self.initial_network(arch)
        self.network = model
        train_loader, valid_loader = search_loaders(self.data, seed=candidate_seed(self.search.seed, arch))
        self.valid_batches = len(valid_loader)
        params = float(count_params(model))  # as every size raynas records is counted
        execution = self.search.execution
        network = prepare(
            model, self.device, channels_last=execution.channels_last, compile=execution.compile
        )
        for metrics, new_state in fit(
            network, train_loader, valid_loader, self.device, epochs=cfg.epochs,
            learning_rate=cfg.learning_rate, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            grad_clip=cfg.grad_clip, state=state, precision=execution.precision,
        ):
            del metrics["lr"]  # a candidate reports its own learning rate where it varies (PBT)
            metrics["params"] = params
            yield metrics, new_state

    def evaluate(self, arch: Architecture, *, trial_id: str = "") -> EvalResult:
        """Train ``arch`` for the whole budget and report its last epoch."""
        start = time.perf_counter()
        *_, (metrics, _) = self.train(arch)  # the last epoch's
        return EvalResult(
            architecture=arch, metrics=metrics, objective=self.objective, trial_id=trial_id,
            budget=metrics["epoch"], seconds=time.perf_counter() - start,
        )
