"""The choice among a job's searches of several seeds, as DARTS makes it (Liu et al., 2019,
Sec. 3.3 and 4.1): "we run DARTS four times and pick the best cell based on its validation
performance obtained by training from scratch for a short period (100 epochs on CIFAR-10)".

A job of a strategy that derives one architecture (the DARTS family) with ``seeds`` and ``final``
retrains the ``final.top`` best seeds' architectures (by their searches' scores) from scratch with
``final``'s budget, one after another, and answers with the one whose validation accuracy is
highest. They are scored on the held-out part of the training set, never on the test set, and
all with the job's seed, so that the architectures alone differ. The choice is its own MLflow run
(``<name>-selection``, a child run per retrained architecture, the chosen network registered as a
version of the job's model) and is checkpointed after every retraining: run again, it retrains
only those not yet done.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from raynas.config import FinalRetrain, SearchConfig
from raynas.data import search_objective
from raynas.runs.common import (
    CandidateCosts,
    SearchResult,
    attempt_id,
    example_input,
    final_evaluator,
    open_tracker,
    read_checkpoint,
    retrain_size,
    run_path,
    score_text,
    timed,
)
from raynas.strategies import STRATEGIES
from raynas.tracking.mlflow_tracker import TAG_PREFIX
from raynas.tracking.recorder import SearchRecorder
from raynas.train.checkpoint import save_checkpoint
from raynas.types import EpochReport, EvalResult


@dataclass(frozen=True)
class Selection:
    """The choice among the searches of a job's seeds.

    Attributes:
        seed: The seed whose architecture was chosen.
        result: Its retraining (scored after ``final.epochs`` epochs from scratch).
        retrained: Every retraining, by seed.
        run_id: The MLflow run of the choice.
        registered_version: The chosen network's version of the job's registered model.
    """

    seed: int
    result: EvalResult
    retrained: dict[int, EvalResult]
    run_id: str
    registered_version: str | None


def selects_among_seeds(config: SearchConfig) -> bool:
    """Whether ``config``'s ``final`` section chooses among its seeds' searches: a job with
    ``seeds`` whose strategy derives one architecture (no evaluator, nothing drawn), where
    ``final`` could retrain nothing inside one search."""
    if not (config.seeds and config.final.top):
        return False
    return config.evaluator is None and not hasattr(STRATEGIES.get(config.strategy.name), "draw_answers")


def per_seed_final(config: SearchConfig) -> FinalRetrain:
    """The ``final`` section each seed's search runs with: none when the job chooses among them."""
    return FinalRetrain() if selects_among_seeds(config) else config.final


def select_among_seeds(
    config: SearchConfig, seeds: Sequence[int], results: Sequence[SearchResult], *,
    fresh: bool = False, echo: Callable[[str], None] = print,
) -> Selection:
    """Retrain the ``final.top`` best of ``results`` (one per seed of ``seeds``, ranked by the
    search's objective: ``valid_acc``, or on text ``valid_loglik``, the validation perplexity the
    DARTS paper picks its recurrent cell by) from scratch with ``final``'s budget and choose the
    best retrained.

    Args:
        config: The job (``seeds`` and ``final`` set; see :func:`selects_among_seeds`).
        seeds: The seed of each result.
        results: Each seed's search result.
        fresh: Choose again even if this job's choice was made (or begun) before.
        echo: Where progress lines go.
    """
    one = dataclasses.replace(config, name=f"{config.name}-selection", seeds=())
    checkpoint = run_path(one, "checkpoint.pt")
    objective = search_objective(config.data.name)
    ranked = sorted(zip(seeds, results, strict=True),
                    key=lambda pair: -float(pair[1].metrics.get(objective, float("-inf"))))
    chosen = ranked[: config.final.top]
    tracker = open_tracker(one)
    tags = {f"{TAG_PREFIX}kind": "selection", f"{TAG_PREFIX}space": config.space.name,
            f"{TAG_PREFIX}strategy": config.strategy.name, f"{TAG_PREFIX}dataset": config.data.name,
            f"{TAG_PREFIX}seed": str(config.seed)}
    sizes = CandidateCosts(config, size=retrain_size(config))
    recorder = SearchRecorder(config=one, tracker=tracker, node="local", costs=sizes.complete)
    prior = None if fresh else _prior(checkpoint, one)
    retrained = {int(s): EvalResult.from_dict(r) for s, r in (prior or {}).get("retrained", {}).items()}
    if prior is not None and prior["finished"]:
        best_seed = _best(retrained)
        echo(f"The choice among seeds was made before (MLflow run {prior['run_id']}): seed {best_seed}")
        return Selection(seed=best_seed, result=retrained[best_seed], retrained=retrained,
                         run_id=prior["run_id"], registered_version=prior.get("registered_version"))
    if prior is not None:
        run_id = tracker.start(one, run_id=prior["run_id"], tags=tags)
        recorder.opened(run_id)
        recorder.backfill(list(retrained.values()))  # what a crash may have kept from being recorded
        echo(f"Resuming the choice among seeds: {len(retrained)} of {len(chosen)} retrained")
    else:
        # Made once: a choice killed before its first checkpoint goes on in this run (start_run).
        run_id = tracker.start(one, tags={
            **tags, **{f"{TAG_PREFIX}seed{s}_run_id": r.run_id for s, r in ranked}},
            attempt=attempt_id(checkpoint, fresh=fresh))
        recorder.opened(run_id)

    # The best retrained network so far (its seed and weights): the one registered at the end.
    network: tuple[int, dict[str, Any]] | None = None
    if prior is not None and prior.get("network_seed") is not None:
        network = (int(prior["network_seed"]), prior["network"])

    def save(finished: bool, version: str | None = None) -> None:
        save_checkpoint({"config": one.to_dict(), "run_id": run_id, "finished": finished,
                         "registered_version": version,
                         "retrained": {str(s): r.to_dict() for s, r in retrained.items()},
                         "network_seed": None if network is None else network[0],
                         "network": None if network is None else network[1]}, checkpoint)

    evaluator = final_evaluator(config)  # the job's seed for every one: only the cells differ
    echo(f"Choosing among {len(chosen)} seeds' architectures: each trained from scratch for "
         f"{config.final.epochs} epochs and scored on the held-out data")
    try:
        for step, (seed, result) in enumerate(chosen):
            if seed in retrained:
                continue
            started = time.time()
            done = sizes.complete(timed(
                evaluator.evaluate(result.architecture, trial_id=f"select-seed{seed}"), started))
            retrained[seed] = done
            if evaluator.network is not None and _best(retrained) == seed:
                network = (seed, {k: v.detach().cpu().clone()
                                  for k, v in evaluator.network.state_dict().items()})
            save(False)
            recorder.candidate(done, step=step)
            searched = EvalResult(result.architecture, result.metrics, objective=objective)
            echo(f"seed {seed}: {result.architecture.key()} retrained: {objective} {score_text(done)} "
                 f"(searched {score_text(searched)})")
        best_seed = _best(retrained)
        best = retrained[best_seed]
        assert network is not None and network[0] == best_seed, "the best network is kept"
        trained = evaluator.initial_network(best.architecture)
        trained.load_state_dict(network[1])
        summary = {**best.metrics, "seed": best_seed, "seeds_retrained": len(retrained)}
        version = recorder.finish(
            EpochReport(epoch=config.final.epochs - 1, metrics=best.metrics, architecture=best.architecture),
            summary, weights_history=[], network=trained.eval(), trained=True, example=example_input(config),
        )
        save(True, version)
    except BaseException as error:
        recorder.abort()
        tracker.fail(error)
        raise
    return Selection(seed=best_seed, result=best, retrained=retrained, run_id=run_id,
                     registered_version=version)


def _best(retrained: dict[int, EvalResult]) -> int:
    """The seed of the best retrained architecture (the lowest seed of equals)."""
    return max(retrained, key=lambda s: (retrained[s].score, -s))


def _prior(checkpoint: str, one: SearchConfig) -> dict[str, Any] | None:
    """The choice's checkpoint, finished or not, if it is one of this job's."""
    from raynas import storage

    if not storage.exists(checkpoint):
        return None
    prior = read_checkpoint(checkpoint)
    return prior if prior.get("config") == one.to_dict() else None


__all__ = ["Selection", "per_seed_final", "select_among_seeds", "selects_among_seeds"]
