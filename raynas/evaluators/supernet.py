"""Inherited weights of a one-shot supernet (Bender et al., ICML 2018; SPOS, Guo et al., ECCV 2020;
ENAS, Pham et al., ICML 2018).

The supernet is first trained on single paths, one sampled architecture per step
(:meth:`SupernetEvaluator.train_epoch`; the strategy decides how paths are sampled), or, with
``evaluator.path_dropout``, as Bender et al.'s one-shot model: every candidate of every edge
summed, each dropped at random with a probability that grows step by step over training, a mask
per cell and per ghost batch (:func:`scheduled_rate`, :mod:`raynas.supernet.path_dropout`). A
candidate is then scored with the weights it inherits: the path is fixed, BatchNorm statistics are
recomputed on a few training batches (they belong to no single path otherwise), and the accuracy on
the validation half is measured. Replicas of a trained evaluator can score candidates concurrently.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import torch

from raynas.config import Check, Rule, SearchConfig, check_rules
from raynas.data import DATASETS, search_loaders, search_objective
from raynas.errors import ConfigError
from raynas.evaluators.registry import EVALUATORS
from raynas.evaluators.scratch import candidate_seed
from raynas.spaces import SPACES
from raynas.supernet import build_supernet
from raynas.train.accel import pick_device, prepare, unwrap
from raynas.train.distributed import convert_batchnorm, local_only
from raynas.train.loop import evaluate, fit, recalibrate_batchnorm, train_epoch
from raynas.train.schedules import search_schedule
from raynas.types import Architecture, EvalResult

PATH_DROPOUT_SCHEDULES = ("linear", "constant")  # how the path-dropout rate follows the steps


@dataclass(frozen=True)
class SupernetEvalConfig:
    """Scoring with inherited weights.

    Attributes:
        bn_batches: Training batches that recompute BatchNorm statistics per candidate (0: keep
            the shared statistics).
        valid_batches: Validation batches each candidate is scored on (0: the whole half).
        epochs: Under Ray Tune (a ``tune`` section), each candidate starts from the weights it
            inherits and is fine-tuned for up to this many epochs as a trial that the scheduler
            may stop; 0 scores the inherited weights as they are (no Tune).
        learning_rate: The fine-tuning's initial SGD rate (cosine-annealed over ``epochs``;
            momentum, weight decay and gradient clipping as ``train``'s).
        path_dropout: Above 0, the supernet trains as Bender et al.'s one-shot model (all ops
            of every edge summed, the strategy's paths unused in training) with this largest
            path-dropout rate ``r``: each op is dropped with probability ``r_t ** (1 / k)``,
            ``k`` the ops into its node, at least one kept per node; 0: single paths.
        path_dropout_schedule: How ``r_t`` follows the training steps: ``linear`` (0 at the
            first step, ``path_dropout`` at the last, as the paper) or ``constant``.
        ghost_batch: Under path dropout, each training batch is split into ghost batches of
            this many examples, each with its own BatchNorm statistics and its own masks (32,
            unverified against the paper's text); 0: the whole batch is one.
    """

    bn_batches: Annotated[int, Rule(ge=0)] = 4
    valid_batches: Annotated[int, Rule(ge=0)] = 0
    epochs: Annotated[int, Rule(ge=0)] = 0
    learning_rate: Annotated[float, Rule(gt=0)] = 0.01
    path_dropout: Annotated[float, Rule(ge=0, le=1)] = 0.0
    path_dropout_schedule: Annotated[str, Rule(one_of=PATH_DROPOUT_SCHEDULES)] = "linear"
    ghost_batch: Annotated[int, Rule(ge=0)] = 32

    job_checks: ClassVar[tuple[Check, ...]] = (
        Check(
            "space_is['one_shot']",
            "evaluator 'supernet' needs a one-shot supernet (set_path); space {space!r} has none: "
            "use evaluator 'scratch'",
        ),
        Check(
            "not path_dropout or space_is['drop_paths']",
            "evaluator.path_dropout needs a supernet that sums every op of an edge (drop_paths); "
            "space {space!r} has none: spaces darts and nb201 do",
        ),
    )

    def __post_init__(self) -> None:
        check_rules(self, "evaluator")


def scheduled_rate(rate: float, schedule: str, *, step: int, steps: int) -> float:
    """The path-dropout rate of training step ``step`` (from 0) of ``steps``: Bender et al. raise
    it linearly over training from 0 to ``rate``.

    Args:
        rate: The largest rate, ``evaluator.path_dropout``.
        schedule: ``linear``: ``rate * step / (steps - 1)``, 0 at the first step and ``rate`` at
            the last (``rate`` for a single step); ``constant``: ``rate`` throughout.
        step: The step, counted from 0 over the whole training.
        steps: Steps of the supernet's training (epochs times steps per epoch).

    Returns:
        The probability that a node would lose all its incoming paths at that step.
    """
    if schedule == "constant":
        return rate
    if schedule != "linear":
        raise ValueError(f"unknown path dropout schedule {schedule!r}: {', '.join(PATH_DROPOUT_SCHEDULES)}")
    if steps <= 1:
        return rate
    return rate * min(step, steps - 1) / (steps - 1)


@EVALUATORS.register("supernet", config=SupernetEvalConfig)
class SupernetEvaluator:
    """A one-shot supernet trained on sampled paths, scoring candidates with inherited weights.

    Args:
        config: How candidates are scored.
        search: The search job: its space builds the supernet, ``train`` sets the SGD schedule
            (cosine over ``train.epochs``), ``data`` the search split.
    """

    # Replicas may train the supernet together, data-parallel (built with rank and world_size).
    data_parallel = True

    def __init__(
        self, config: SupernetEvalConfig, *, search: SearchConfig, rank: int = 0, world_size: int = 1
    ) -> None:
        if config.path_dropout > 0 and config.ghost_batch % world_size:
            raise ConfigError(
                f"evaluator.ghost_batch ({config.ghost_batch}) must be a multiple of the {world_size} "
                "replicas training the supernet together: each computes an equal share of every "
                "ghost batch"
            )
        self.config = config
        self.search = search
        # A ghost batch spans the replicas training together: each runs its share of it (the
        # sampler deals every global batch out in turn, so the replicas' i-th chunks are the i-th
        # ghost batch), all with the same masks (the same stream), its BatchNorm statistics
        # summed over them (GlobalBatchNorm2d): what one replica alone computes on the batch.
        self.ghost_chunk = config.ghost_batch // world_size
        self.device = pick_device(search.execution.device)
        self.objective = search_objective(search.data.name)  # what its results are ranked by
        self.precision = search.execution.precision
        torch.manual_seed(search.seed)  # the same initial weights on every replica
        space = SPACES.create(search.space.name, search.space.config)
        data = DATASETS.create(search.data.name, search.data.config)
        self.supernet = build_supernet(space, data.info)
        if not hasattr(self.supernet, "set_path"):
            raise ConfigError(
                f"evaluator 'supernet' needs a one-shot supernet (set_path); space "
                f"{search.space.name!r} has none: use evaluator 'scratch'"
            )
        if config.path_dropout > 0 and not hasattr(self.supernet, "drop_paths"):
            raise ConfigError(
                f"evaluator.path_dropout needs a supernet that sums every op of an edge (drop_paths); "
                f"space {search.space.name!r} has none: spaces darts and nb201 do"
            )
        if world_size > 1:  # BatchNorm over the global batch while the replicas train together
            self.supernet = convert_batchnorm(self.supernet)
        self.supernet = prepare(self.supernet, self.device, channels_last=search.execution.channels_last)
        # Replicas training together take a slice of every global batch each; scoring (BatchNorm
        # recalibration, validation) reads the whole halves, on one replica.
        self.train_loader, self.valid_loader = search_loaders(data, seed=search.seed)
        self.shard_loader = self.train_loader if world_size == 1 else search_loaders(
            data, seed=search.seed, rank=rank, world_size=world_size
        )[0]
        train = search.train
        arch_ids = {id(p) for p in self.supernet.arch_parameters()}
        self.optimizer = torch.optim.SGD(
            [p for p in self.supernet.parameters() if id(p) not in arch_ids],
            lr=train.learning_rate, momentum=train.momentum,
            weight_decay=0.0 if train.decay_in_loss else train.weight_decay, nesterov=train.nesterov,
        )
        self.schedule = search_schedule(self.optimizer, train)
        self.epoch = 0

    @property
    def steps_per_epoch(self) -> int:
        """Training steps (batches) in one supernet epoch."""
        return len(self.shard_loader)

    def train_epoch(self, paths: Sequence[Architecture]) -> dict[str, float]:
        """One epoch of single-path training: step ``i`` trains ``paths[i % len(paths)]``; with
        ``path_dropout``, step ``i`` trains every op but those its path-dropout masks drop, at
        the rate of its step in the whole training (recorded as ``path_dropout``: the epoch's
        last step's)."""
        if not paths:
            raise ValueError("train_epoch needs at least one path")
        steps = self.steps_per_epoch
        rates: list[float] = []

        def before_step(step: int) -> None:
            if self.config.path_dropout > 0:
                rates.append(scheduled_rate(
                    self.config.path_dropout, self.config.path_dropout_schedule,
                    step=self.epoch * steps + step, steps=self.search.train.epochs * steps,
                ))
                # A stream per (seed, epoch, step): the same masks on every replica, and on resume.
                seed = hash((self.search.seed, self.epoch, step)) & 0x7FFF_FFFF_FFFF_FFFF
                self.supernet.drop_paths(
                    rates[-1], generator=torch.Generator().manual_seed(seed),
                    ghost_batch=self.ghost_chunk,
                )
            else:
                self.supernet.set_path(paths[step % len(paths)])

        metrics = train_epoch(  # data-parallel replicas: one path per global step on every rank
            self.supernet, self.optimizer, self.shard_loader, self.device,
            grad_clip=self.search.train.grad_clip, before_step=before_step, precision=self.precision,
            # A supernet with an auxiliary head weighs its loss so (ENAS's shared child: 0.4).
            auxiliary_weight=getattr(self.supernet, "auxiliary_weight", 0.0),
            # A language model's training streams go on from batch to batch, paths changing.
            carry_state=hasattr(unwrap(self.supernet), "run_outputs"),
            decay_in_loss=self.search.train.weight_decay if self.search.train.decay_in_loss else 0.0,
        )
        self.supernet.set_path(None)
        metrics["lr"] = self.schedule.get_last_lr()[0]
        if rates:
            metrics["path_dropout"] = rates[-1]
        self.schedule.step()
        self.epoch += 1
        return metrics

    def evaluate(self, arch: Architecture, *, trial_id: str = "") -> EvalResult:
        """Score ``arch`` with the weights it inherits (BatchNorm recalibrated first)."""
        start = time.perf_counter()
        state = torch.get_rng_state()
        generators = [loader.batch_sampler.generator for loader in (self.train_loader, self.valid_loader)]
        loader_states = [g.get_state() for g in generators]  # type: ignore[union-attr]
        for g in generators:  # the same batches whichever replica scores it, in whatever order
            g.manual_seed(candidate_seed(self.search.seed, arch))  # type: ignore[union-attr]
        self.supernet.set_path(arch)
        try:
            with local_only():  # a replica scores alone, whatever the group it trained in
                if self.config.bn_batches:
                    batches = itertools.islice(self.train_loader, self.config.bn_batches)
                    recalibrate_batchnorm(self.supernet, batches, self.device)
                valid = self.valid_loader
                if self.config.valid_batches:
                    valid = itertools.islice(valid, self.config.valid_batches)  # type: ignore[assignment]
                metrics = evaluate(self.supernet, valid, self.device, precision=self.precision)
        finally:
            self.supernet.set_path(None)
            torch.set_rng_state(state)  # scoring leaves the training's random streams alone
            for g, saved in zip(generators, loader_states, strict=True):
                g.set_state(saved)  # type: ignore[union-attr]
        return EvalResult(
            architecture=arch, metrics=metrics, objective=self.objective, trial_id=trial_id, budget=0.0,
            seconds=time.perf_counter() - start,
        )

    def finetune(
        self, arch: Architecture, *, state: dict[str, Any] | None = None
    ) -> Iterator[tuple[dict[str, float], dict[str, Any]]]:
        """Fine-tune ``arch`` from the weights it inherits (those of this supernet now), yielding
        ``(metrics, state)`` after each of ``config.epochs`` epochs.

        The path is fixed to ``arch``: only its operations' weights train (SGD from
        ``config.learning_rate``, cosine-annealed, its weight decay SGD's own whatever
        ``train.decay_in_loss`` says: an L2 term of the loss would decay the weights off the path
        too), and BatchNorm statistics follow its batches; a language model's windows go on from
        the state the last one ended in, as in the supernet's training.
        Every epoch is scored on the whole validation half, with the BatchNorm statistics the
        fine-tuning gathered (no recalibration, unlike :meth:`evaluate`).

        Args:
            arch: The candidate.
            state: A state yielded earlier (a restored or, under PBT, cloned trial), whose
                weights replace the inherited ones.
        """
        train = self.search.train
        torch.manual_seed(candidate_seed(self.search.seed, arch))
        loaders = search_loaders(DATASETS.create(self.search.data.name, self.search.data.config),
                                 seed=candidate_seed(self.search.seed, arch))
        self.supernet.set_path(arch)
        try:
            for metrics, new_state in fit(
                self.supernet, loaders[0], loaders[1], self.device, epochs=self.config.epochs,
                learning_rate=self.config.learning_rate, momentum=train.momentum,
                weight_decay=train.weight_decay, grad_clip=train.grad_clip, state=state,
                precision=self.precision,
                # A language model trains as the supernet did: its streams' state carried on.
                carry_state=hasattr(unwrap(self.supernet), "run_outputs"),
            ):
                del metrics["lr"]  # a candidate reports its own learning rate where it varies (PBT)
                yield metrics, new_state
        finally:
            self.supernet.set_path(None)

    def weights(self) -> dict[str, torch.Tensor]:
        """The supernet's weights (for replicas)."""
        return {k: v.detach().cpu() for k, v in self.supernet.state_dict().items()}

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Take another evaluator's weights (a replica serving evaluations)."""
        self.supernet.load_state_dict(weights)

    def state_dict(self) -> dict[str, Any]:
        """Weights, optimiser, schedule, epoch and random streams, for an exact resume."""
        return {
            "weights": self.weights(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "epoch": self.epoch,
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "loaders": [  # the training stream (a replica's slices follow the same one)
                loader.batch_sampler.generator.get_state()  # type: ignore[union-attr]
                for loader in (self.shard_loader, self.valid_loader)
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output."""
        self.supernet.load_state_dict(state["weights"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.epoch = int(state["epoch"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        for loader, rng in zip((self.shard_loader, self.valid_loader), state["loaders"], strict=True):
            loader.batch_sampler.generator.set_state(rng)  # type: ignore[union-attr]
