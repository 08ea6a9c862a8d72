"""The driver of sampling searches: a controller asks for candidates, an evaluator scores them.

Phases, each checkpointed so that a crash loses nothing already evaluated:

1. ``supernet`` (only with the one-shot ``supernet`` evaluator): ``train.epochs`` epochs of
   single-path training, each step on the path the strategy samples (uniform for SPOS, the
   policy for ENAS); strategies that learn during training (ENAS) are asked for
   ``evaluations_per_epoch`` candidates after every epoch.
2. ``search``: ask/tell until the strategy is done, ``execution.concurrency`` candidates at a
   time (supernet replicas or evaluator actors), or as Ray Tune trials under ASHA / HyperBand /
   PBT when the evaluator trains candidates (``evaluator: scratch`` with ``tune.enabled``).
3. ``retrain``: the best ``final.top`` candidates trained from scratch (``final``'s budget).

Every result is recorded as it arrives (MLflow, checkpoint); running the same job again resumes
the phase it stopped in. Candidates that were in flight at a crash are asked for again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from raynas import storage
from raynas.config import SearchConfig
from raynas.errors import RaynasError
from raynas.evaluators.scratch import ScratchConfig, ScratchEvaluator
from raynas.execution.controller import RemoteController, build_controller, start_controller
from raynas.execution.pool import start_pool
from raynas.execution.ray_actors import init_ray
from raynas.runs.common import (
    SearchResult,
    job_space,
    network_sizes,
    open_tracker,
    read_prior,
    run_path,
    searched_network,
)
from raynas.spaces.drawing import picture
from raynas.tracking import MlflowTracker
from raynas.tracking.recorder import SearchRecorder
from raynas.train.checkpoint import load_checkpoint, save_checkpoint
from raynas.types import EpochReport, EvalResult

PHASES = ("supernet", "search", "retrain", "done")


class SamplingSearch:
    """One sampling search, resumable; see the module docstring for its phases.

    Args:
        config: The validated job (a sampling strategy and an evaluator).
        echo: Where progress lines go.
    """

    def __init__(self, config: SearchConfig, *, echo: Callable[[str], None] = print) -> None:
        assert config.evaluator is not None
        self.config = config
        self.echo = echo
        local = build_controller(config)
        local.check_search(supernet_epochs=config.train.epochs if config.evaluator.name == "supernet" else 0)
        # On Ray the controller is an actor of its own, placed by execution.controller_resources.
        self.strategy: Any = local
        if config.execution.backend == "ray":
            init_ray(config.execution)
            self.strategy = start_controller(config)
        self.one_shot = config.evaluator.name == "supernet"
        self.use_tune = (
            config.evaluator.name == "scratch" and config.tune.enabled and config.execution.backend == "ray"
        )
        self.phase = "supernet" if self.one_shot else "search"
        self.epoch = 0
        self.trials = 0
        self.results: list[EvalResult] = []  # every evaluation, in the order it was told
        self.retrained: list[EvalResult] = []

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Phase, counters, every result and the strategy's state (plain data)."""
        return {
            "phase": self.phase,
            "epoch": self.epoch,
            "trials": self.trials,
            "results": [r.to_dict() for r in self.results],
            "retrained": [r.to_dict() for r in self.retrained],
            "strategy": self.strategy.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output."""
        self.phase = state["phase"]
        self.epoch = int(state["epoch"])
        self.trials = int(state["trials"])
        self.results = [EvalResult.from_dict(r) for r in state["results"]]
        self.retrained = [EvalResult.from_dict(r) for r in state["retrained"]]
        self.strategy.load_state_dict(state["strategy"])

    def next_trial_id(self) -> str:
        """A fresh id for the next evaluation (unique within the search, never reused)."""
        self.trials += 1
        return f"{self.trials:05d}"


def run_sampling_search(
    config: SearchConfig, *, fresh: bool = False, echo: Callable[[str], None] = print
) -> SearchResult:
    """Run (or resume) the sampling search of ``config``."""
    started = time.perf_counter()
    checkpoint, supernet_file = run_path(config, "checkpoint.pt"), run_path(config, "supernet.pt")
    prior = read_prior(checkpoint, config, fresh=fresh)
    search = SamplingSearch(config, echo=echo)
    tracker = open_tracker(config)
    recorder = SearchRecorder(config=config, tracker=tracker, node=config.execution.backend)
    pool = start_pool(config) if not search.use_tune or search.one_shot else None
    try:
        run_id = tracker.start(config, run_id=prior["run_id"] if prior else None)
        recorder.opened(run_id)
        if prior is not None:
            search.load_state_dict(prior["search"])
            if search.results:  # checkpointed, perhaps not recorded, before the crash
                recorder.candidate(search.results[-1], step=len(search.results) - 1, resumed=True)
            if pool is not None and storage.exists(supernet_file):
                pool.load_state_dict(load_checkpoint(supernet_file))
            echo(
                f"Resuming {config.name!r} in phase {search.phase!r} with {len(search.results)} "
                f"candidates evaluated, from {checkpoint}"
            )
        where = pool.describe_location() if pool is not None else "Ray Tune trials"
        if isinstance(search.strategy, RemoteController):
            where += f", controller on node {search.strategy.node_id()[:12]}"
        echo(
            f"Searching {config.space.name} with {config.strategy.name} ({config.evaluator.name} "
            f"evaluator) on {config.data.name} in {where}; MLflow run {run_id}"
        )

        def save(finished: bool = False) -> None:
            save_checkpoint(
                {"config": config.to_dict(), "run_id": run_id, "search": search.state_dict(),
                 "finished": finished},
                checkpoint,
            )

        def record(result: EvalResult, *, told: bool = False) -> None:
            search.results.append(result)
            if not told:  # Tune's searcher tells the controller itself
                search.strategy.tell(result)
            save()
            recorder.candidate(result, step=len(search.results) - 1)
            echo(
                f"candidate {len(search.results):>4}  {result.objective} {_score_text(result):>7}  "
                f"budget {result.budget:g}{'  stopped early' if result.stopped_early else ''}  "
                f"{result.architecture}"
            )

        if search.phase == "supernet":
            assert pool is not None
            _train_supernet(search, pool, tracker, record, save, supernet_file)
        if search.phase == "search":
            if search.use_tune and not search.one_shot:
                _search_with_tune(search, record, run_path(config, "tune"))
            else:
                assert pool is not None
                pool.sync_replicas()
                _search(search, pool, record)
            search.phase = "retrain"
            save()
        if search.phase == "retrain":
            _retrain(search, save, recorder)
            search.phase = "done"
        best = _final(search)
        params, params_cifar = network_sizes(config, best.architecture)
        summary = {
            "params": params, "params_cifar10": params_cifar, "candidates": len(search.results),
            "stopped_early": sum(r.stopped_early for r in search.results), **best.metrics,
        }
        _log_pareto(search, tracker)
        recorder.finish(
            EpochReport(epoch=search.epoch, metrics=best.metrics, architecture=best.architecture),
            summary, weights_history=[], network=searched_network(config, best.architecture),
            picture=picture(job_space(config), best.architecture),
        )
        save(finished=True)
    except BaseException as error:
        tracker.fail(error)
        raise
    finally:
        if pool is not None:
            pool.close()
        if isinstance(search.strategy, RemoteController):
            search.strategy.close()
    return SearchResult(
        architecture=best.architecture, metrics=best.metrics, params=params, params_cifar10=params_cifar,
        run_id=run_id, run_link=tracker.run_link(), checkpoint=checkpoint,
        seconds=time.perf_counter() - started,
    )


def _train_supernet(
    search: SamplingSearch, pool: Any, tracker: MlflowTracker, record: Callable[[EvalResult], None],
    save: Callable[..., None], supernet_file: str,
) -> None:
    config, strategy = search.config, search.strategy
    steps = pool.steps_per_epoch
    while search.epoch < config.train.epochs:
        start = time.perf_counter()
        paths = strategy.sample_paths(steps)
        metrics = pool.train_epoch(paths)
        if strategy.evaluations_per_epoch:
            pool.sync_replicas()
            _search(search, pool, record, limit=strategy.evaluations_per_epoch)
        seconds = time.perf_counter() - start
        search.epoch += 1
        save_checkpoint(pool.state_dict(), supernet_file)  # before the small checkpoint points past it
        save()
        best = strategy.best()
        if best is not None:
            metrics["best_" + best.objective] = best.score
        tracker.log_epoch(EpochReport(
            epoch=search.epoch - 1, metrics=metrics, architecture=paths[-1], seconds=seconds,
        ))
        search.echo(
            f"supernet epoch {search.epoch:>3}/{config.train.epochs}  train loss "
            f"{metrics['train_loss']:.3f} acc {metrics['train_acc']:6.1%}  {seconds:.0f}s"
        )
    search.phase = "search"
    save()


def _search(search: SamplingSearch, pool: Any, record: Callable[[EvalResult], None],
            limit: int | None = None) -> None:
    """Ask/tell with up to ``pool.capacity`` candidates in flight; ``limit`` evaluations at most."""
    strategy = search.strategy
    told = 0
    while limit is None or told < limit:
        while pool.in_flight < pool.capacity and (limit is None or told + pool.in_flight < limit):
            arch = strategy.ask()
            if arch is None:
                break
            pool.submit(arch, search.next_trial_id())
        if pool.in_flight == 0:
            if strategy.done or limit is not None:
                return
            raise RaynasError(
                f"strategy {search.config.strategy.name!r} waits for results but none are in flight"
            )
        record(pool.next_result())
        told += 1


def _search_with_tune(
    search: SamplingSearch, record: Callable[[EvalResult], None], storage_path: str
) -> None:
    from raynas.execution.tune import run_tune_search

    run_tune_search(
        search.config, search.strategy, storage_path=storage_path,
        on_result=lambda result: record(result, told=True),
    )


def _retrain(search: SamplingSearch, save: Callable[..., None], recorder: SearchRecorder) -> None:
    """Train the best ``final.top`` candidates from scratch with ``final``'s budget; each is
    recorded like a candidate (trial ``retrain-<its search trial>``)."""
    config, final = search.config, search.config.final
    seen: set[str] = set()
    chosen = []
    for result in sorted(search.results, key=lambda r: r.score, reverse=True):
        if result.architecture.key() not in seen:
            seen.add(result.architecture.key())
            chosen.append(result)
    done = {r.architecture.key() for r in search.retrained}
    evaluator = ScratchEvaluator(
        ScratchConfig(epochs=final.epochs, channels=final.channels, layers=final.layers,
                      learning_rate=final.learning_rate),
        search=config,
    )
    for result in chosen[: final.top]:
        if result.architecture.key() in done:
            continue
        retrained = evaluator.evaluate(result.architecture, trial_id=f"retrain-{result.trial_id}")
        search.retrained.append(retrained)
        save()
        recorder.candidate(retrained, step=len(search.results) + len(search.retrained) - 1)
        search.echo(
            f"retrained {result.architecture.key()}: {retrained.objective} {_score_text(retrained)} "
            f"(searched {_score_text(result)})"
        )


def _score_text(result: EvalResult) -> str:
    """An accuracy as a percentage; other objectives (training-free proxies) as numbers."""
    return f"{result.score:.2%}" if result.objective.endswith("acc") else f"{result.score:.3f}"


def _log_pareto(search: SamplingSearch, tracker: MlflowTracker) -> None:
    """``pareto.png``: every candidate's score against its network's parameters at the search's
    size (the evaluator's count when it made one), with the Pareto front."""
    from raynas.profile import count_params
    from raynas.tracking.plots import plot_pareto

    sizes: dict[str, float] = {}
    costs, scores = [], []
    for result in search.results:
        if result.score == float("-inf"):
            continue
        key = result.architecture.key()
        if key not in sizes:
            sizes[key] = result.metrics.get("params") or float(
                count_params(searched_network(search.config, result.architecture))
            )
        costs.append(sizes[key])
        scores.append(result.score)
    if costs:
        tracker.log_figure(
            plot_pareto(costs, scores, score_label=search.results[0].objective,
                        title=f"{search.config.name}: {len(costs)} candidates"),
            "pareto.png",
        )


def _final(search: SamplingSearch) -> EvalResult:
    """The search's answer: the best retrained candidate if any were retrained, else the best."""
    pool = search.retrained or search.results
    if not pool:
        raise RaynasError(f"search {search.config.name!r} evaluated no candidate")
    return max(pool, key=lambda r: r.score)



__all__ = ["PHASES", "SamplingSearch", "run_sampling_search"]
