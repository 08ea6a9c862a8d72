"""The search entry point: a job runs as a gradient search or a sampling search, once or once per
seed; running it again resumes it where it stopped."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from raynas.config import SearchConfig
from raynas.errors import ConfigError
from raynas.execution.ray_actors import head_watched
from raynas.runs.common import SearchResult, finished_result, run_path, sole_writer
from raynas.runs.gradient import run_gradient_search
from raynas.runs.sampling import run_sampling_search
from raynas.runs.selection import Selection, per_seed_final, select_among_seeds, selects_among_seeds


def run_search(
    config: SearchConfig, *, fresh: bool = False, echo: Callable[[str], None] = print
) -> SearchResult:
    """Run (or resume) the search described by ``config``, once, with ``config.seed`` (a job's
    ``seeds`` are :func:`run_seeds`'s).

    Args:
        config: The validated job (see :func:`raynas.runs.jobs.load_job`).
        fresh: Ignore an unfinished checkpoint of the same job and start over.
        echo: Where progress lines go.

    Returns:
        The final architecture, its metrics, its size and where the MLflow run is; of a search
        that already finished with this config, what it recorded (``fresh`` starts a new one).
    """
    # One search of a job that chooses among its seeds' searches retrains nothing itself.
    config = dataclasses.replace(config, final=per_seed_final(config))
    if not fresh and (done := finished_result(config, echo=echo)) is not None:
        echo(f"Search {config.name!r} already finished (MLflow run {done.run_id}): its result is below; "
             "--fresh starts a new search")
        return done
    # A head lost at any moment (in Tune's loop, or after it, recording the search) stops the
    # search with raynas's line, not with Ray's core ending the process a minute later.
    with head_watched(), sole_writer(run_path(config, "checkpoint.pt"), f"the search {config.name!r}"):
        if config.evaluator is not None:  # a sampling strategy: ask/tell over evaluated candidates
            return run_sampling_search(config, fresh=fresh, echo=echo)
        return run_gradient_search(config, fresh=fresh, echo=echo)


@dataclass(frozen=True)
class SeedsResult:
    """The searches of a job's seeds.

    Attributes:
        results: Each seed's search result, in the order of ``seeds``.
        summary: For every metric they all report, its mean and sample standard deviation (0 for
            a single seed).
        selection: The choice among them, where ``final`` makes one (:mod:`raynas.runs.selection`).
    """

    results: list[SearchResult]
    summary: dict[str, tuple[float, float]]
    selection: Selection | None = None


def run_seeds(
    config: SearchConfig, *, fresh: bool = False, echo: Callable[[str], None] = print
) -> SeedsResult:
    """Run the search once per seed of ``config.seeds`` (as ``<name>-seed<N>``, each resumable on
    its own) and summarise them, as the DARTS authors urge for reporting; where ``final`` asks
    for it, choose the best seed's architecture by retraining them (as DARTS does).
    """
    if not config.seeds:
        raise ConfigError("run_seeds needs config.seeds, e.g. seeds: [0, 1, 2]")
    results = []
    # Every seed's result is a version of the job's one registered model, not a model of its own.
    tracking = dataclasses.replace(
        config.tracking, registered_model=config.tracking.registered_model or f"raynas-{config.name}"
    )
    for seed in config.seeds:
        echo(f"--- seed {seed} ---")
        one = dataclasses.replace(config, seed=seed, seeds=(), name=f"{config.name}-seed{seed}",
                                  tracking=tracking, final=per_seed_final(config))
        results.append(run_search(one, fresh=fresh, echo=echo))
    shared = set.intersection(*(set(r.metrics) for r in results))
    summary = {}
    for key in sorted(shared):
        values = [float(r.metrics[key]) for r in results]
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
        summary[key] = (mean, var**0.5)
    selection = None
    if selects_among_seeds(config):
        selection = select_among_seeds(dataclasses.replace(config, tracking=tracking), config.seeds,
                                       results, fresh=fresh, echo=echo)
    return SeedsResult(results=results, summary=summary, selection=selection)


__all__ = ["SeedsResult", "run_search", "run_seeds"]
