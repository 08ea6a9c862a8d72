"""Candidate training as Ray Tune trials, driven by a raynas controller.

Ray Tune (Liaw et al., "Tune: A Research Platform for Distributed Model Selection and Training",
2018) runs each candidate's training from scratch as a trial with its own resources (CPUs, GPUs,
and the custom resource of an accelerator type), ``execution.concurrency`` at a time. Its
schedulers act on ``valid_acc`` after every epoch:

- ASHA (Li et al., "A System for Massively Parallel Hyperparameter Tuning", MLSys 2020) and
  HyperBand (Li et al., "Hyperband: A Novel Bandit-Based Approach to Hyperparameter
  Optimization", JMLR 2018) stop the weaker candidates early;
- PBT (Jaderberg et al., "Population Based Training of Neural Networks", 2017) replaces a weak
  trial by a copy of a strong one (its architecture and weights, from its checkpoint) and
  perturbs the learning rate.

:class:`ControllerSearcher` is the Tune searcher that lets any sampling strategy (or a proxy of a
controller actor) choose the candidates: Tune's ``suggest`` is the controller's ``ask``, and every
finished, stopped or failed trial becomes one :class:`raynas.types.EvalResult` told to the
controller and passed to the search driver's ``on_result``, so no evaluated candidate is lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import ray
import torch
from ray import tune
from ray.tune.result import AUTO_RESULT_KEYS
from ray.tune.schedulers import (
    ASHAScheduler,
    FIFOScheduler,
    HyperBandScheduler,
    PopulationBasedTraining,
    TrialScheduler,
)
from ray.tune.search import Searcher

from raynas.config import SearchConfig
from raynas.data import search_objective
from raynas.errors import ClusterLostError, ConfigError, RaynasError, memory_refused
from raynas.evaluators.scratch import ScratchConfig, ScratchEvaluator
from raynas.evaluators.supernet import SupernetEvalConfig, SupernetEvaluator
from raynas.execution.ray_actors import (
    ClusterGone,
    check_head,
    head_watched,
    init_ray,
    node_type,
    out_of_memory,
    ray_logs,
)
from raynas.execution.tune_resources import placement_groups_removed_once_placed
from raynas.train.checkpoint import load_checkpoint
from raynas.types import Architecture, EvalResult

logger = logging.getLogger(__name__)

# What the trainable reports besides the evaluator's metrics (strings, not metrics).
_PLACE_KEYS = ("node", "node_id", "arch")
# Reported, with raynas's error message, by a trial whose candidate cannot be trained.
FAILED_KEY = "raynas_error"
# The Ray label that names a node's accelerator type (the cluster files in cluster/ set it).
# PBT's learning-rate perturbations stay within this factor of the configured rate.
PBT_LR_RANGE = 10.0
# The file next to a trial checkpoint's state.pt that names its candidate, epoch and node.
CANDIDATE_FILE = "candidate.json"


class Controller(Protocol):
    """What the searcher needs of a controller: a sampling strategy or a proxy of its actor."""

    def ask(self) -> Architecture | None: ...

    def tell(self, result: EvalResult) -> None: ...

    @property
    def done(self) -> bool: ...


@dataclass
class _Pending:
    """A candidate a trial trains, not yet told to the controller."""

    record_id: str  # the EvalResult's trial id: Tune's, with ~N for the Nth PBT copy in the trial
    architecture: Architecture
    last: dict[str, Any] | None = None  # its latest result
    seconds: float = 0.0  # training time over its results
    curve: dict[float, float] = field(default_factory=dict)  # the objective by epoch


class CandidateLedger:
    """The candidates of running trials; tells each evaluation to the controller exactly once.

    Args:
        controller: Told every result.
        epochs: The full training budget of a candidate (a trial that ends sooner was stopped early).
        on_result: Also called with every result told (the driver records and checkpoints there).
        objective: The metric the controller maximises.

    A trial ends in one of three ways, and each becomes one :class:`EvalResult`: it trained its
    full budget; a scheduler stopped it early (``stopped_early``, with the metrics of its last
    epoch); or it failed (told without metrics, so its score is ``-inf``). When PBT copies another
    trial into a trial, the candidate that trial trained so far is told as stopped early, and the
    copy, which goes on from the other candidate's checkpoint with a perturbed learning rate, is a
    new evaluation of that candidate (trial id ``<trial>~1``, ``~2``, ...), told when it ends.
    """

    def __init__(
        self, *, controller: Controller, epochs: int, on_result: Callable[[EvalResult], None] | None = None,
        objective: str = "valid_acc",
    ) -> None:
        if epochs < 1:
            raise ConfigError(f"evaluator.epochs must be at least 1, got {epochs}")
        self.controller = controller
        self.epochs = epochs
        self.on_result = on_result
        self.objective = objective
        self.pending: dict[str, _Pending] = {}
        self.told: list[EvalResult] = []
        self._started: set[str] = set()
        self._copies: dict[str, int] = {}
        self._architectures: dict[str, Architecture] = {}
        # What telling a result raised (the driver could not record it): the search stops, and
        # run_tune_search raises it once Tune has stopped.
        self.failure: BaseException | None = None

    def start(self, trial_id: str, arch: Architecture) -> None:
        """Note that ``trial_id`` trains ``arch`` (a restart of the same trial is ignored)."""
        if trial_id not in self._started:
            self._started.add(trial_id)
            self._architectures[arch.key()] = arch
            self.pending[trial_id] = _Pending(record_id=trial_id, architecture=arch)

    def observe(self, trial_id: str, result: dict[str, Any]) -> None:
        """Take in one epoch's result of ``trial_id`` (a repeat of the latest is ignored)."""
        pending = self.pending.get(trial_id)
        if pending is None or result.get("trial_id", trial_id) != trial_id:
            # A result of another trial: PBT hands the trial it copied into that trial's last
            # result, which stays the trial's own if it ends before training any further.
            return
        key = result.get("arch", pending.architecture.key())
        if key != pending.architecture.key():  # PBT copied another trial into this one
            self._tell(pending, error=False)
            if key not in self._architectures:
                raise RaynasError(f"trial {trial_id} reports candidate {key}, which no trial started with")
            copy = self._copies[trial_id] = self._copies.get(trial_id, 0) + 1
            pending = self.pending[trial_id] = _Pending(
                record_id=f"{trial_id}~{copy}", architecture=self._architectures[key]
            )
        last = pending.last or {}
        if (result.get("training_iteration"), result.get("epoch")) == (
            last.get("training_iteration"), last.get("epoch")
        ):
            return
        pending.seconds += float(result.get("time_this_iter_s", 0.0))
        pending.last = result
        if self.objective in result and "epoch" in result:
            pending.curve[float(result["epoch"])] = float(result[self.objective])

    def finish(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        """Tell the controller and ``on_result`` how ``trial_id`` ended (once; repeats are ignored)."""
        if result is not None:
            self.observe(trial_id, result)
            error = error or FAILED_KEY in result
        pending = self.pending.pop(trial_id, None)
        if pending is not None:  # None: not started here, or already told
            self._tell(pending, error)

    def _tell(self, pending: _Pending, error: bool) -> None:
        last = pending.last or {}
        budget = float(last.get("epoch", 0.0))
        # The learning curve, where the trial saw every epoch (a PBT copy went on from another
        # trial's epoch: it has none).
        epochs = [float(e) for e in range(1, int(budget) + 1)]
        curve = () if error or list(pending.curve) != epochs else tuple(pending.curve[e] for e in epochs)
        evaluation = EvalResult(
            architecture=pending.architecture, metrics={} if error else _metrics(last),
            objective=self.objective, trial_id=pending.record_id, budget=budget, seconds=pending.seconds,
            node=str(last.get("node", "unknown")), stopped_early=not error and budget < self.epochs,
            curve=curve,
        )
        self.told.append(evaluation)
        try:
            self.controller.tell(evaluation)
            if self.on_result is not None:
                self.on_result(evaluation)
        except BaseException as exc:  # Tune logs a searcher's errors and goes on: stop it instead
            self.failure = self.failure or exc

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its config (this included) next to the experiment; the controller and the
        # driver's callback stay in this process, and the search driver checkpoints them itself.
        return {**self.__dict__, "controller": None, "on_result": None}


class ControllerSearcher(Searcher):
    """A Ray Tune searcher whose suggestions come from a raynas controller.

    Args:
        controller: A sampling strategy, or a proxy of a controller actor; only ``ask``,
            ``tell`` and ``done`` are called.
        epochs: The full training budget of a candidate (a trial that ends sooner was stopped early).
        on_result: Called with every result told to the controller (the driver records and
            checkpoints there).
        objective: The metric the controller maximises.
        trial_config: Values added to every trial's config.
        on_ask: Called with each trial's id and candidate when the controller has asked for it.
        resubmit: Candidates asked before a crash and never told, with their last checkpoints:
            trained first, as new trials.
        retries: How many new trials a candidate gets when Tune could not recover its trial
            (see :class:`RetryLostTrials`, which must then be one of Tune's callbacks).
        last_state: The newest checkpoint a trial left (by trial id), where a new trial goes on.

    Every suggested trial is told to the controller exactly once (see :class:`CandidateLedger`),
    when it completes, is stopped early or fails.
    """

    def __init__(
        self, *, controller: Controller, epochs: int, on_result: Callable[[EvalResult], None] | None = None,
        objective: str = "valid_acc", trial_config: dict[str, Any] | None = None,
        on_ask: Callable[[str, Architecture], None] | None = None,
        resubmit: list[tuple[Architecture, str | None]] | None = None,
        retries: int = 0, last_state: Callable[[str], str | None] | None = None,
    ) -> None:
        super().__init__(metric=objective, mode="max")
        self.resubmit = list(resubmit or [])
        self.retries = retries
        self.last_state = last_state
        self._retried: dict[str, int] = {}  # new trials given to each candidate, by its key
        self._errored: set[str] = set()  # failed trials that RetryLostTrials has yet to judge
        self.ledger = CandidateLedger(
            controller=controller, epochs=epochs, on_result=on_result, objective=objective
        )
        self.objective = objective
        self.trial_config = dict(trial_config or {})
        self.on_ask = on_ask

    @property
    def controller(self) -> Controller:
        return self.ledger.controller

    @property
    def pending(self) -> dict[str, _Pending]:
        """Trials suggested and not yet told, by trial id."""
        return self.ledger.pending

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        if metric not in (None, self.objective) or mode not in (None, "max"):
            raise ConfigError(
                f"the controller maximises {self.objective!r}; Tune was given metric={metric!r}, "
                f"mode={mode!r}"
            )
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        """The controller's next candidate as a trial config; None while it waits for results,
        ``Searcher.FINISHED`` once it is done and no trial is pending."""
        if self.ledger.failure is not None:
            return Searcher.FINISHED
        if self.resubmit:  # asked before a crash and never told: trained on, not asked again
            arch, state = self.resubmit.pop(0)
            self.ledger.start(trial_id, arch)
            resume = {"resume_from": state} if state else {}
            return {"architecture": arch.to_json(), **resume, **self.trial_config}
        arch = self.controller.ask()
        if arch is None:
            if self.pending:
                return None
            if self.controller.done:
                return Searcher.FINISHED
            raise RaynasError(_WAITS_FOREVER)
        self.ledger.start(trial_id, arch)
        if self.on_ask is not None:
            self.on_ask(trial_id, arch)
        return {"architecture": arch.to_json(), **self.trial_config}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.ledger.observe(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        # Tune passes the result that made a scheduler stop the trial only here.
        if error and result is None and self.retries and trial_id in self.pending:
            # Tune gave up on the trial; RetryLostTrials (which must be among Tune's callbacks
            # when ``retries`` > 0), called next, says whether it was lost.
            self._errored.add(trial_id)
            return
        self.ledger.finish(trial_id, result, error)

    def trial_failed(self, trial_id: str, *, lost: bool) -> None:
        """End a trial Tune gave up on: a ``lost`` one (Tune could not recover it: its process or
        node went while the trial was starting or restoring) is trained again as a new trial
        from its last checkpoint, at most ``retries`` times per candidate; any other is told as
        failed."""
        if trial_id not in self._errored:
            return
        self._errored.discard(trial_id)
        pending = self.pending[trial_id]
        key = pending.architecture.key()
        if lost and self._retried.get(key, 0) < self.retries:
            self._retried[key] = self._retried.get(key, 0) + 1
            del self.pending[trial_id]
            state = self.last_state(trial_id) if self.last_state is not None else None
            self.resubmit.append((pending.architecture, state))
            logger.warning("trial %s was lost while it started; its candidate trains on in a new "
                           "trial%s", trial_id, f" from {state}" if state else "")
            return
        self.ledger.finish(trial_id, error=True)

    def __getstate__(self) -> dict[str, Any]:
        # As the ledger's: the driver's callback stays in this process.
        return {**self.__dict__, "on_ask": None}

    def save(self, checkpoint_path: str) -> None:
        # The controller's state is checkpointed by the search driver (on_result), not by Tune;
        # saving nothing (rather than raising) spares the console Tune's warning that it cannot.
        return

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError


class RetryLostTrials(tune.Callback):
    """Tells :class:`ControllerSearcher` how a trial Tune gave up on failed.

    Tune recovers a running trial whose process or node is lost (``FailureConfig``), but fails
    for good one that was starting or restoring when that happened; such a trial is ``lost`` (it
    would have been recovered had it been running), and its candidate trains on in a new trial.
    """

    def __init__(self, searcher: ControllerSearcher) -> None:
        self.searcher = searcher

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.searcher.trial_failed(trial.trial_id, lost=trial.should_recover())


class SayTrialFailures(tune.Callback):
    """Says in one line each time a trial fails (its Ray actor died, its node was lost): whether
    Tune trains it on from its last checkpoint, and where Ray's logs and Tune's report of the
    error are. Tune's own report of it (a traceback, the trial's last result) is kept off the
    console (see :func:`_quiet_tune_console`).

    Args:
        echo: Where the line goes.
        max_failures: The restarts Tune makes of one trial (``execution.max_restarts``).
    """

    def __init__(self, echo: Callable[[str], None], max_failures: int) -> None:
        self.echo = echo
        self.max_failures = max_failures

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with its config; the line goes where the driver says, and an
        # echo need not pickle (``print`` does not once Ray's driver has swapped builtins.print
        # for its tqdm-safe one, as it does on the first line a worker logs).
        return {**self.__dict__, "echo": None}

    def _say(self, trial: Any, then: str) -> None:
        error = _error_line(trial)
        report = f"; Tune's report of it: {trial.error_file}" if trial.error_file else ""
        self.echo(f"trial {trial.trial_id} failed{f' ({error})' if error else ''}: {then}; "
                  f"Ray's logs are in {ray_logs()}{report}")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _stop_if_the_head_is_gone()
        self._say(trial, f"it trains on from its last checkpoint ({trial.num_failures} of at most "
                         f"{self.max_failures} restarts)")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _stop_if_the_head_is_gone()
        self._say(trial, f"Tune gave up on it after {self.max_failures} restarts")


def _stop_if_the_head_is_gone() -> None:
    """A trial lost with its whole cluster stops the search, with raynas's line (see
    :func:`check_head`), instead of Tune trying again on a cluster that is gone."""
    try:
        check_head()
    except ClusterLostError as exc:
        raise ClusterGone(exc) from None


def _error_line(trial: Any) -> str:
    """The trial's latest error in a line, or ``""``: the first line of a lost actor's (``The
    actor died unexpectedly before finishing this task.``), the last of an error raised in the
    trial (Ray's remote traceback: ``ray::ImplicitFunc.train() (pid=...)``, its frames, then the
    error), what memory was refused where it was. Tune's error file holds each failure as
    ``Failure # N (occurred at ...)`` and the error's text below it."""
    try:  # the driver's copy: the trial's folder in storage receives it only at the next sync
        text = Path(trial.error_file).read_text() if trial.error_file else trial.get_error()
        lines = str(text or "").splitlines()
    except Exception:  # Tune's error file unreadable: the line goes without it
        return ""
    starts = [i for i, line in enumerate(lines) if line.startswith("Failure # ")]
    after = [line.strip() for line in (lines[starts[-1] + 1:] if starts else lines) if line.strip()]
    text = "\n".join(after)
    killed, refused = out_of_memory(text), memory_refused(text)  # Ray's monitor; torch, in the trial
    if killed or refused:
        return killed or f"out of memory: {refused}"
    if after and "ray::" in after[0]:  # a remote traceback
        return after[-1][:200]
    return after[0][:200] if after else ""


def _quiet_tune_console() -> None:
    """Keep Ray Tune's own reports off the driver's console, as raynas does for Ray's: Tune's
    output engine prints the experiment's configuration table and, for every failed trial, its
    error and last result, whatever ``verbose`` says; its controller logs each failure's traceback.
    raynas says each in one line (:class:`SayTrialFailures`); Tune keeps its report in the trial's
    error file. Either variable set by the user wins."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's legacy reporter, silent at verbose=0
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")


class PopulationCallback(tune.Callback):
    """Tells the controller how each trial of a PBT population ended.

    PBT works on a population that Tune's variant generator creates (it refuses search
    algorithms), so the candidates the controller asked for are the trials' initial configs,
    and this callback, not a searcher, reports their results through a :class:`CandidateLedger`.
    """

    def __init__(self, ledger: CandidateLedger) -> None:
        self.ledger = ledger

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # The first start sees the config the controller asked for; PBT rewrites it when it exploits.
        self.ledger.start(trial.trial_id, Architecture.from_json(trial.config["architecture"]))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.ledger.observe(trial.trial_id, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ledger.finish(trial.trial_id, trial.last_result)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ledger.finish(trial.trial_id, error=True)


_WAITS_FOREVER = (
    "the controller waits for results, but no candidate is being evaluated: it would wait forever"
)


def _metrics(result: dict[str, Any]) -> dict[str, float]:
    """The numbers the trainable reported (Tune's own bookkeeping left out)."""
    return {
        key: float(value) for key, value in result.items()
        if key not in AUTO_RESULT_KEYS and key not in _PLACE_KEYS
        and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def with_learning_rate(state: dict[str, Any], learning_rate: float) -> dict[str, Any]:
    """A training state whose cosine schedule starts from ``learning_rate`` instead.

    The optimizer's current rate and the schedule's base rates are scaled by one factor: the
    cosine schedule's recursive step multiplies the current rate, so the rest of training follows
    the schedule of the new base rate.
    """
    factor = learning_rate / float(state["schedule"]["base_lrs"][0])
    if factor == 1.0:
        return state
    schedule = dict(state["schedule"])
    schedule["base_lrs"] = [lr * factor for lr in schedule["base_lrs"]]
    if "_last_lr" in schedule:
        schedule["_last_lr"] = [lr * factor for lr in schedule["_last_lr"]]
    optimizer = dict(state["optimizer"])
    optimizer["param_groups"] = [
        {**group, "lr": group["lr"] * factor, "initial_lr": group.get("initial_lr", group["lr"]) * factor}
        for group in optimizer["param_groups"]
    ]
    return {**state, "schedule": schedule, "optimizer": optimizer}


def candidate_trainable(
    config: SearchConfig, inherited: str | None = None
) -> Callable[[dict[str, Any]], None]:
    """The Tune function trainable that trains one candidate, as ``config`` says: from scratch
    (``evaluator: scratch``), or (``evaluator: supernet``) fine-tuned from the weights it inherits
    from the one-shot supernet saved at ``inherited``.

    The trial config holds ``architecture`` (JSON) and, under PBT, ``learning_rate``. Every epoch
    it reports the evaluator's metrics, the learning rate, ``node`` (accelerator type or ``cpu``),
    ``node_id`` and ``arch`` (the candidate's key), with a checkpoint of the training state, so a
    trial can be restored, and PBT can copy a trial into another.
    """
    settings = _training(config)
    if config.evaluator is not None and config.evaluator.name == "supernet" and not inherited:
        raise ConfigError("fine-tuning candidates under Tune needs the trained supernet's checkpoint")
    threads = max(1, int(config.execution.cpus_per_worker))
    accelerator = config.execution.accelerator

    def epochs_of(arch: Architecture, learning_rate: float, state: dict[str, Any] | None) -> Iterator[Any]:
        """The candidate's training, epoch by epoch: ``(metrics, state)``."""
        rated = dataclasses.replace(settings, learning_rate=learning_rate)
        if isinstance(rated, ScratchConfig):
            return ScratchEvaluator(rated, search=config).train(arch, state=state)
        supernet = SupernetEvaluator(rated, search=config)
        if state is None:  # a new trial: the weights the candidate inherits
            assert inherited is not None
            supernet.load_weights(load_checkpoint(inherited)["weights"])
        return supernet.finetune(arch, state=state)

    def train_candidate(trial: dict[str, Any]) -> None:
        torch.set_num_threads(threads)
        arch_json, state, saved = trial["architecture"], None, None
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:  # a restored trial, or under PBT a copy of another trial
            with checkpoint.as_directory() as folder:
                saved = torch.load(Path(folder) / "state.pt", weights_only=True)
            arch_json, state = saved["architecture"], saved["state"]
        elif resume := _resume_from(trial):  # a trial of a search whose driver died: its last epoch
            saved = load_checkpoint(resume)
            state = saved["state"]
        learning_rate = float(trial.get("learning_rate", settings.learning_rate))
        if state is not None:
            state = with_learning_rate(state, learning_rate)
        arch = Architecture.from_json(arch_json)
        place = {
            "node": node_type(accelerator), "node_id": ray.get_runtime_context().get_node_id(),
            "arch": arch.key(),
        }
        if saved is not None and int(saved["state"]["epoch"]) >= settings.epochs and "metrics" in saved:
            # Trained to its budget before the driver died: its last epoch's result, as it was.
            tune.report({**saved["metrics"], "learning_rate": learning_rate, **place})
            return
        try:
            for metrics, new_state in epochs_of(arch, learning_rate, state):
                with tempfile.TemporaryDirectory() as folder:
                    torch.save({"architecture": arch_json, "state": new_state, "metrics": metrics},
                               Path(folder) / "state.pt")
                    # Which candidate this is and where it trains, readable without loading the
                    # state, while the trial runs (see last_pbt_state).
                    (Path(folder) / CANDIDATE_FILE).write_text(json.dumps(
                        {"arch": arch.key(), "epoch": float(new_state["epoch"]), "node_id": place["node_id"]}
                    ))
                    tune.report(
                        {**metrics, "learning_rate": learning_rate, **place},
                        checkpoint=tune.Checkpoint.from_directory(folder),
                    )
        except RaynasError as exc:
            # The candidate cannot be trained (it does not fit the space, the data...): a failure
            # that trying again would repeat, so it ends the trial instead of being retried like a
            # lost node; the ledger tells it as failed.
            # (The metric Tune's scheduler expects, at its worst, keeps Tune's checks quiet.)
            tune.report({FAILED_KEY: str(exc)[:1000], search_objective(config.data.name): float("-inf"),
                         "epoch": 0.0, **place})

    return train_candidate


def _resume_from(trial: dict[str, Any]) -> str | None:
    """The checkpoint a new trial goes on from: ``resume_from``, or under PBT (one config for the
    whole population) ``resume_from``'s entry for the trial's candidate."""
    resume = trial.get("resume_from")
    if isinstance(resume, dict):
        return resume.get(Architecture.from_json(trial["architecture"]).key())  # type: ignore[no-any-return]
    return resume  # type: ignore[no-any-return]


def trial_resources(config: SearchConfig) -> dict[str, float]:
    """What each trial asks Ray for: CPUs, GPUs and ``execution.accelerator``'s custom resource."""
    execution = config.execution
    resources = {"cpu": execution.cpus_per_worker, "gpu": execution.gpus_per_worker}
    if execution.accelerator:
        # The config requires gpus_per_worker > 0 with an accelerator: one unit per GPU.
        resources[execution.accelerator] = execution.gpus_per_worker
    return resources


class RunningLimitedHyperBand(HyperBandScheduler):
    """HyperBand that trains at most ``running`` trials at a time.

    HyperBand pauses each trial at a rung until its bracket has caught up, so Tune's
    ``max_concurrent_trials`` (which counts paused trials too) would keep a bracket from ever
    filling; here only running trials count: a pending or paused trial is started only while
    fewer than ``running`` train.
    """

    def __init__(self, *, running: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if running < 1:
            raise ConfigError(f"execution.concurrency must be at least 1, got {running}")
        self.running = running

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        trials = tune_controller.get_trials()
        busy = sum(trial.status == "RUNNING" for trial in trials)
        if busy >= self.running:
            return None
        chosen = super().choose_trial_to_run(tune_controller)
        if chosen is None and busy == 0 and not any(trial.status == "PENDING" for trial in trials):
            # Nothing runs or waits to run, yet a bracket may hold paused trials: Tune skips
            # processing a bracket when a trial completes while the bracket is marked as being
            # processed (hyperband.py: on_trial_remove), and its paused trials then wait for peers
            # that are gone, forever (seen after a resumed search: a trial paused at max_t). Process
            # such a bracket now, as HyperBand does after each result.
            for band in self._hyperbands:
                for bracket in band:
                    if bracket is not None and any(t.status == "PAUSED" for t in bracket.current_trials()):
                        bracket.is_being_processed = False
                        self._process_bracket(tune_controller, bracket)
            chosen = super().choose_trial_to_run(tune_controller)
        return chosen


class PeerlessSynchronousPBT(PopulationBasedTraining):
    """Synchronous PBT that lets a paused trial go on once nothing runs or waits to run.

    Synchronous PBT offers a paused trial only while it is behind the next perturbation point,
    which moves once every trial has reached it; a peer that completed before reaching it (in a
    resumed search) leaves the paused trial waiting forever, and the search with it.
    """

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        chosen = super().choose_trial_to_run(tune_controller)
        trials = tune_controller.get_trials()
        if chosen is None and not any(trial.status in ("RUNNING", "PENDING") for trial in trials):
            paused = [trial for trial in trials if trial.status == "PAUSED"]
            if paused:
                return min(paused, key=lambda trial: self._trial_state[trial].last_train_time)
        return chosen


def make_scheduler(config: SearchConfig) -> TrialScheduler:
    """The Tune scheduler that ``config.tune.scheduler`` names, over ``evaluator.epochs`` epochs."""
    settings = config.tune
    epochs = _training(config).epochs
    if settings.scheduler == "asha":
        return ASHAScheduler(
            time_attr="training_iteration", max_t=epochs, grace_period=min(settings.grace_period, epochs),
            reduction_factor=settings.reduction_factor,
        )
    if settings.scheduler == "hyperband":
        return RunningLimitedHyperBand(
            running=config.execution.concurrency, time_attr="training_iteration", max_t=epochs,
            reduction_factor=settings.reduction_factor,
        )
    if settings.scheduler == "pbt":
        lr = _training(config).learning_rate
        return PeerlessSynchronousPBT(
            time_attr="training_iteration", perturbation_interval=settings.perturbation_interval,
            # Synchronous: the population waits for its slowest trial at each perturbation step, so
            # the weaker trials are always copied from a checkpoint of the stronger ones.
            synch=True,
            hyperparam_mutations={"learning_rate": tune.loguniform(lr / PBT_LR_RANGE, lr * PBT_LR_RANGE)},
        )
    return FIFOScheduler()


def run_tune_search(
    config: SearchConfig, controller: Controller, *, on_result: Callable[[EvalResult], None],
    storage_path: str, max_trials: int | None = None,
    on_ask: Callable[[str, Architecture], None] | None = None,
    resubmit: list[tuple[Architecture, str | None]] | None = None,
    inherited: str | None = None, echo: Callable[[str], None] = logger.warning,
) -> None:
    """Evaluate the candidates ``controller`` asks for as Tune trials until it is done.

    With ASHA, HyperBand or no scheduler, :class:`ControllerSearcher` asks the controller for a
    candidate whenever a trial slot is free. PBT refuses search algorithms and works on a population
    that trains side by side: the search then runs in rounds, each a PBT run over the next
    ``execution.concurrency`` candidates the controller gives (fewer when it waits for results).

    Args:
        config: The search job: ``evaluator`` (must be ``scratch``), ``tune`` (the scheduler),
            ``execution`` (resources per trial, ``concurrency`` trials at a time).
        controller: A sampling strategy, or a proxy of a controller actor.
        on_result: Called in this process with every candidate's result, once each.
        on_ask: Called with each trial's id and candidate when the controller has asked for it.
        resubmit: Candidates the controller asked for before a crash and was never told of, each
            with the training state its trial had reached (the URI of its last checkpoint, or
            None): trained on from there first (as new trials; PBT trains them again from the
            start), before the controller is asked for more.
        storage_path: Where Tune keeps the experiments and the trials' checkpoints (a folder or
            an ``s3://`` URI).
        max_trials: Stop after this many trials even if the controller is not done.
        inherited: With ``evaluator: supernet``, the trained supernet's checkpoint (a path or
            ``s3://`` URI the nodes can read), whose weights every candidate starts from.
        echo: Where a line about each failed trial goes (Tune's own report stays off the console).

    Raises:
        ConfigError: The evaluator neither trains from scratch nor fine-tunes, or
            ``max_trials`` is below 1.
    """
    training = _training(config)
    if max_trials is not None and max_trials < 1:
        raise ConfigError(f"max_trials must be at least 1, got {max_trials}")
    init_ray(config.execution)
    _quiet_tune_console()
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    objective = search_objective(config.data.name)
    if config.tune.scheduler != "pbt":
        searcher = ControllerSearcher(
            controller=controller, epochs=training.epochs, on_result=on_result, on_ask=on_ask,
            objective=objective, resubmit=resubmit,
            retries=config.execution.max_restarts,
            last_state=lambda trial: last_trial_state(storage_path, config.name, trial),
        )
        _fit(config, storage_path, name=config.name, ledger=searcher.ledger, search_alg=searcher,
             num_samples=max_trials if max_trials is not None else -1,
             callbacks=[RetryLostTrials(searcher)], inherited=inherited, echo=echo)
        return
    ledger = CandidateLedger(controller=controller, epochs=training.epochs, on_result=on_result,
                             objective=objective)
    # A resumed search's rounds go on after the rounds already run (each an experiment of its own).
    trials, generation = 0, len(pbt_rounds(storage_path, config.name))
    while not controller.done and (max_trials is None or trials < max_trials):
        population: list[Architecture] = []
        resume: dict[str, str] = {}
        room = config.execution.concurrency if max_trials is None else min(
            config.execution.concurrency, max_trials - trials
        )
        while len(population) < room:
            if resubmit:
                arch, state = resubmit.pop(0)
                population.append(arch)
                if state:
                    resume[arch.key()] = state
                continue
            arch = controller.ask()
            if arch is None:
                break
            population.append(arch)
            if on_ask is not None:
                on_ask(f"pbt{generation:03d}-{len(population)}", arch)
        if not population:
            raise RaynasError(_WAITS_FOREVER)
        _fit(
            config, storage_path, name=f"{config.name}_pbt{generation:03d}", ledger=ledger,
            param_space={
                "architecture": tune.grid_search([arch.to_json() for arch in population]),
                "learning_rate": training.learning_rate,
                **({"resume_from": resume} if resume else {}),
            },
            callbacks=[PopulationCallback(ledger)], inherited=inherited, echo=echo,
        )
        trials, generation = trials + len(population), generation + 1


class _StopOnFailure(tune.Stopper):
    """Stops every trial once the driver could not record a result (see ``CandidateLedger``)."""

    def __init__(self, ledger: CandidateLedger) -> None:
        self.ledger = ledger

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return self.ledger.failure is not None

    def stop_all(self) -> bool:
        return self.ledger.failure is not None


def _fit(
    config: SearchConfig, storage_path: str, *, name: str, ledger: CandidateLedger,
    search_alg: Searcher | None = None, num_samples: int = 1, param_space: dict[str, Any] | None = None,
    callbacks: list | None = None, inherited: str | None = None,
    echo: Callable[[str], None] = logger.warning,
) -> None:
    # A trial restored from a checkpoint (PBT's copies every round, a resumed search's) has Tune's
    # result loggers look for its result.json and progress.csv in storage, where the driver has
    # not synced them yet: a "Remote file not found" WARNING per trial and file (25 lines in the
    # PBT quick start), and the files started anew, which raynas does not read.
    logging.getLogger("ray.tune.logger.logger").setLevel(logging.ERROR)
    # PBT copies checkpoints between trials: deleting old ones can pull one from under it.
    keep = None if config.tune.scheduler == "pbt" else 2
    # HyperBand's own scheduler bounds the running trials (RunningLimitedHyperBand): a limit that
    # counted its paused trials would keep a bracket from ever filling.
    concurrency = None if config.tune.scheduler == "hyperband" else config.execution.concurrency
    with _interrupts_not_taken_by_tune() as signals:
        tuner = tune.Tuner(
            tune.with_resources(candidate_trainable(config, inherited), trial_resources(config)),
            param_space=param_space,
            tune_config=tune.TuneConfig(
                search_alg=search_alg, scheduler=make_scheduler(config),
                metric=ledger.objective, mode="max",
                max_concurrent_trials=concurrency,
                num_samples=num_samples,
                # One worker process trains many candidates: Python, torch and the data load once.
                reuse_actors=True,
                trial_dirname_creator=lambda trial: trial.trial_id,
            ),
            run_config=tune.RunConfig(
                name=name, storage_path=_storage(storage_path), verbose=0,
                callbacks=[*(callbacks or []), SayTrialFailures(echo, config.execution.max_restarts),
                           signals, *_result_loggers()],
                checkpoint_config=tune.CheckpointConfig(num_to_keep=keep),
                # A trial whose node is lost (or whose process dies) goes on from its last epoch's
                # checkpoint on another node; the controller hears of it once, when it ends.
                failure_config=tune.FailureConfig(max_failures=config.execution.max_restarts),
                stop=_StopOnFailure(ledger),
            ),
        )
        with head_watched(), placement_groups_removed_once_placed(), \
                _environment(TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1"):
            tuner.fit()
    if ledger.failure is not None:
        raise ledger.failure


class _KeepSignals(tune.Callback):
    """Puts back the SIGUSR1 disposition the process had before ``tune.run``, which installs a
    handler of its own for it unconditionally (see :func:`_interrupts_not_taken_by_tune`);
    callbacks are set up after it, in the same (main) thread."""

    def __init__(self, usr1: Any) -> None:
        self.usr1 = usr1

    def __getstate__(self) -> dict[str, Any]:
        # The handler is this process's (Tune's own, left by a Tune run outside raynas, closes
        # over a threading.Event and does not pickle); Tune pickles its callbacks with its config.
        return {**self.__dict__, "usr1": None}

    def setup(self, **info: Any) -> None:
        if self.usr1 is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGUSR1, self.usr1)


@contextlib.contextmanager
def _interrupts_not_taken_by_tune() -> Iterator[_KeepSignals]:
    """Ctrl-C (and SIGUSR1, which SLURM sends before it preempts a job) stop a Tune search as they
    stop any other search, the search resuming from its journal and its trials' checkpoints.
    Tune's own handlers for them ended the experiment as if it were done, and the search answered
    with the candidates evaluated so far and was recorded as finished. SIGINT's is off by
    ``TUNE_DISABLE_SIGINT_HANDLER`` (read as ``tune.run`` starts); SIGUSR1's is taken back by the
    callback this yields, and after the search."""
    usr1 = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
    try:
        with _environment(TUNE_DISABLE_SIGINT_HANDLER="1"):
            yield _KeepSignals(usr1)
    finally:
        if usr1 is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGUSR1, usr1)


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """``os.environ`` with ``values`` while the block runs (Tune reads its switches as it starts),
    as it was after."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _result_loggers() -> list[tune.Callback]:
    """Tune's result loggers a Tune search keeps: each trial's ``result.json`` and
    ``progress.csv``. Not the TensorBoard logger Tune adds by default (off while
    ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS`` is 1, the other two given here instead): raynas records
    in MLflow, and its tensorboardX writers run a thread and a queue per trial whose exit handler
    joins them; after a search stopped by a signal, that join hung the command for good (a writer
    whose queue had no feeding thread left)."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return [JsonLoggerCallback(), CSVLoggerCallback()]


def last_trial_state(storage_path: str, experiment: str, trial_id: str) -> str | None:
    """The newest whole checkpoint (``.../<trial>/checkpoint_NNNNNN/state.pt``) a trial of
    ``experiment`` left in ``storage_path`` (a folder or ``s3://``), or None when it left none.

    A trial writes a checkpoint's folder first and its files after (Ray's
    ``StorageContext.persist_current_checkpoint``): one whose process died meanwhile leaves the
    newest folder without its ``state.pt``, or with part of it; the one before it is taken then.
    """
    import pyarrow.fs as pafs

    from raynas import storage

    root = storage.join(storage_path, experiment, trial_id)
    fs, path = storage.filesystem(root)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    folders = sorted(i.base_name for i in infos
                     if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_"))
    for folder in reversed(folders):
        if _whole_archive(fs, f"{path}/{folder}/state.pt"):
            return storage.join(root, folder, "state.pt")
    return None


def _whole_archive(fs: Any, path: str) -> bool:
    """Whether ``path`` holds a whole ``torch.save`` file: a zip archive whose central directory,
    written last, is there (reading only the end of the file)."""
    try:
        with fs.open_input_file(path) as stream, zipfile.ZipFile(stream):
            return True
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def pbt_rounds(storage_path: str, name: str) -> list[str]:
    """The experiments of the PBT rounds of search ``name`` in ``storage_path``, in order."""
    import pyarrow.fs as pafs

    from raynas import storage

    fs, path = storage.filesystem(storage_path)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory
                  and i.base_name.startswith(f"{name}_pbt") and i.base_name[len(name) + 4:].isdigit())


def last_pbt_state(storage_path: str, name: str, key: str) -> str | None:
    """The newest checkpoint of candidate ``key`` in the PBT rounds of search ``name``: in the
    latest round that trained it, that of the trial whose newest checkpoint holds the candidate
    (a trial PBT copied another candidate into trains that one), the furthest trained; or None.

    Checkpoints are written by the trials straight to ``storage_path``, so this holds while the
    search runs and after its driver died (Tune's ``result.json`` files are written by the driver
    into a staging folder and reach ``storage_path`` only when Tune syncs them).
    """
    import pyarrow.fs as pafs

    from raynas import storage

    for experiment in reversed(pbt_rounds(storage_path, name)):
        fs, path = storage.filesystem(storage.join(storage_path, experiment))
        best: tuple[float, str] | None = None
        for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
            if info.type != pafs.FileType.Directory:
                continue
            state = last_trial_state(storage_path, experiment, info.base_name)
            if state is None:
                continue
            try:
                with fs.open_input_stream(f"{info.path}/{state.split('/')[-2]}/{CANDIDATE_FILE}") as stream:
                    candidate = json.loads(stream.read().decode())
            except (OSError, ValueError):  # a checkpoint being written
                continue
            if candidate.get("arch") == key and (best is None or candidate["epoch"] > best[0]):
                best = (float(candidate["epoch"]), state)
        if best is not None:
            return best[1]
    return None


def _training(config: SearchConfig) -> ScratchConfig | SupernetEvalConfig:
    """The settings of the training Tune schedules: ``scratch``'s, or ``supernet``'s fine-tuning."""
    evaluator = config.evaluator
    if evaluator is not None and evaluator.name == "scratch":
        return evaluator.config  # type: ignore[no-any-return]
    if evaluator is not None and evaluator.name == "supernet" and evaluator.config.epochs >= 1:
        return evaluator.config  # type: ignore[no-any-return]
    name = None if evaluator is None else evaluator.name
    raise ConfigError(
        f"config key 'evaluator.name' is {name!r}; Ray Tune schedules candidates that train: use "
        "evaluator 'scratch', or 'supernet' with evaluator.epochs >= 1 (fine-tuning), or set "
        "tune.enabled: false"
    )


def _storage(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())
