"""Where a long sampling search spends its time: scoring candidates, or keeping books.

A training-free random search (NASWOT on NAS-Bench-201 cells, the fastest real candidates raynas
has: no training at all) runs ``--candidates`` evaluations through ``raynas.runs.run_search``
in this process, with a local SQLite MLflow store and a local results store, as a user's search
would. The driver's time is split, by timers around the calls (this script wraps them; raynas is
unchanged), into:

* ``scoring``: the evaluator's ``evaluate`` (the work itself);
* ``controller``: the strategy's ``ask`` and ``tell``;
* ``bookkeeping``: what makes the search resumable and its results durable: the journal (appends
  and batched fsyncs), the checkpoints, the Parquet results rows;
* ``mlflow``: what the driver waits for MLflow: the run's own records, handing each candidate to
  the thread that sends the child runs (``CandidateLane``), and waiting at the end for that thread
  to send what is left;
* ``other``: everything else (start-up, the final pictures and model).

The lane's own sending, in a thread beside the search, is reported apart (``mlflow lane``): it
overlaps with the search and is not part of the total.

Bookkeeping is O(1) per result: the fraction it takes does not grow with the search. Usage::

    python benchmarks/bookkeeping.py --candidates 10000
    python benchmarks/bookkeeping.py --candidates 500 --json out.json   # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from raynas.evaluators.training_free import TrainingFreeEvaluator
from raynas.runs import journal as journal_module
from raynas.runs import parse_job, run_search, sampling
from raynas.strategies.sampling.random_search import RandomSearch
from raynas.tracking.mlflow_tracker import CandidateLane, MlflowTracker
from raynas.tracking.results import ResultsStore

SECONDS: dict[str, float] = defaultdict(float)
LANE: dict[str, float] = defaultdict(float)  # time spent in other threads (the MLflow lane)
_active: list[str] = []  # the timer running now (nested timers charge the innermost)


@contextlib.contextmanager
def timer(name: str) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # the lane's thread
        start = time.perf_counter()
        try:
            yield
        finally:
            LANE[name] += time.perf_counter() - start
        return
    _active.append(name)
    start = time.perf_counter()
    try:
        yield
    finally:
        spent = time.perf_counter() - start
        _active.pop()
        SECONDS[name] += spent
        if _active:
            SECONDS[_active[-1]] -= spent  # charged to the inner timer only


def wrap(owner: Any, attribute: str, name: str) -> None:
    original: Callable[..., Any] = getattr(owner, attribute)

    def timed(*args: Any, **kwargs: Any) -> Any:
        with timer(name):
            return original(*args, **kwargs)

    setattr(owner, attribute, timed)


def job(root: Path, candidates: int) -> dict[str, Any]:
    return {
        "name": "bookkeeping", "seed": 0,
        "space": {"name": "nb201", "channels": 16, "cells_per_stage": 1},
        "strategy": {"name": "random", "evaluations": candidates},
        "evaluator": {"name": "training_free", "proxy": "naswot", "batch_size": 32},
        "data": {"name": "digits", "batch_size": 32},
        "execution": {"backend": "local", "cpus_per_worker": 1},
        "tracking": {
            "experiment": "bookkeeping", "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
            "output_dir": str(root / "runs"),
        },
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=10_000)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    torch.set_num_threads(1)

    wrap(TrainingFreeEvaluator, "evaluate", "scoring")
    wrap(RandomSearch, "ask", "controller")
    wrap(RandomSearch, "tell", "controller")
    wrap(journal_module.Journal, "append", "bookkeeping")
    wrap(journal_module.Journal, "sync", "bookkeeping")
    wrap(sampling, "save_checkpoint", "bookkeeping")
    wrap(ResultsStore, "append", "bookkeeping")
    for method in ("log_candidate", "log_epoch", "log_figure", "finish", "register_model", "start", "flush"):
        wrap(MlflowTracker, method, "mlflow")
    wrap(CandidateLane, "log_candidate", "mlflow")
    wrap(CandidateLane, "close", "mlflow")

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        result = run_search(parse_job(job(Path(folder), args.candidates)), echo=lambda _: None, fresh=True)
        total = time.perf_counter() - start
    spent = dict(SECONDS)
    spent["other"] = total - sum(spent.values())
    figures = {
        "candidates": args.candidates, "total_seconds": total,
        "seconds": spent, "fractions": {k: v / total for k, v in spent.items()},
        "per_candidate_ms": {k: 1000 * v / args.candidates for k, v in spent.items()},
        "lane_seconds": LANE.get("mlflow", 0.0),
        "best": result.metrics,
    }
    print(f"{args.candidates} candidates in {total:.1f} s")
    print(f"{'part':<12} {'seconds':>9} {'share':>7} {'ms/candidate':>13}")
    for name in ("scoring", "controller", "bookkeeping", "mlflow", "other"):
        print(f"{name:<12} {spent.get(name, 0.0):9.1f} {spent.get(name, 0.0) / total:7.1%} "
              f"{1000 * spent.get(name, 0.0) / args.candidates:13.2f}")
    print(f"{'mlflow lane':<12} {LANE.get('mlflow', 0.0):9.1f}  (in its own thread, beside the search)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
