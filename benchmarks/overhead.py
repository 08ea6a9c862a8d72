"""Where a gradient search's epochs go: the strategy's steps, or everything around them.

Runs a job (default: the quick start, ``jobs/quickstart.yaml``) through ``raynas.runs.run_search``
as ``raynas search`` does (a local Ray, a local MLflow store in a temporary folder), and splits
each epoch's time, measured in the driver from the call for the epoch to the end of its records:

* ``steps``: the strategy's steps (``step_seconds``, measured in the worker);
* ``evaluation``: scoring the supernet on the validation half (``eval_seconds``);
* ``data``: drawing batches from the loaders (``data_seconds``);
* ``worker other``: the rest of the worker's epoch (the derived genotype, alpha's entropy...);
* ``ray call``: the driver's wait beyond the worker's epoch (the call and its result's transfer);
* ``state``: fetching the worker's state (supernet, optimisers, random streams) for the checkpoint;
* ``checkpoint`` and ``mlflow``: writing the checkpoint, and the driver's records of the epoch.

Overhead is the time outside the steps and the evaluation, as a fraction of the epoch. The total
wall time, Ray's start-up included, is printed too. Usage::

    python benchmarks/overhead.py                                   # the quick start as it is
    python benchmarks/overhead.py --set train.epochs=3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", nargs="?", default=str(ROOT / "jobs" / "quickstart.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", help="also write the split here")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    import raynas.runs.gradient as gradient
    from raynas.runs import load_job, run_search

    folder = tempfile.mkdtemp(prefix="raynas-overhead-")
    config = load_job(args.job, [
        *args.overrides, f"tracking.output_dir={folder}/runs", f"tracking.tracking_uri=sqlite:///{folder}/mlflow.db",
    ])
    spent: dict[str, float] = defaultdict(float)
    epochs: list[dict[str, float]] = []

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*a: Any, **kw: Any) -> Any:
            tic = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[name] += time.perf_counter() - tic
        return wrapper

    real_start, real_recorder = gradient.start_worker, gradient.SearchRecorder
    gradient.save_checkpoint = timed("checkpoint", gradient.save_checkpoint)

    def start_worker(*a: Any, **kw: Any) -> Any:
        worker = real_start(*a, **kw)
        run_epoch = worker.run_epoch
        worker.state_dict = timed("state", worker.state_dict)

        def epoch() -> Any:
            spent.clear()
            spent["wall_start"] = time.perf_counter()
            report = timed("call", run_epoch)()
            spent["worker"] = report.seconds
            epochs.append({"report": report.timings})  # type: ignore[dict-item]
            return report
        worker.run_epoch = epoch
        return worker

    class Recorder(real_recorder):  # type: ignore[misc, valid-type]
        def epoch(self, report: Any, **kw: Any) -> None:
            timed("mlflow", super().epoch)(report, **kw)
            row = epochs[-1]
            m = row.pop("report")  # type: ignore[arg-type]
            wall = time.perf_counter() - spent["wall_start"]
            split = {
                "steps": m["step_seconds"], "evaluation": m["eval_seconds"], "data": m["data_seconds"],
                "worker other": spent["worker"] - m["step_seconds"] - m["eval_seconds"] - m["data_seconds"],
                "ray call": spent["call"] - spent["worker"], "state": spent["state"],
                "checkpoint": spent["checkpoint"],
                "mlflow": spent["mlflow"],
            }
            row.update({"wall": wall, **split})

    gradient.start_worker, gradient.SearchRecorder = start_worker, Recorder
    result = run_search(config, echo=lambda line: print(line, flush=True))
    total = time.perf_counter() - started
    keys = ["wall", "steps", "evaluation", "data", "worker other", "ray call", "state", "checkpoint",
            "mlflow"]
    print(f"\n{'epoch':>5} " + " ".join(f"{k:>12}" for k in keys) + "     overhead")
    for i, row in enumerate(epochs, 1):
        overhead = (row["wall"] - row["steps"] - row["evaluation"]) / row["wall"]
        print(f"{i:>5} " + " ".join(f"{row[k]:>12.2f}" for k in keys) + f"  {overhead:>10.1%}")
    sums = {k: sum(r[k] for r in epochs) for k in keys}
    overhead = (sums["wall"] - sums["steps"] - sums["evaluation"]) / sums["wall"]
    print(f"\nall epochs: {sums['wall']:.1f} s, of which steps {sums['steps'] / sums['wall']:.1%}, "
          f"evaluation {sums['evaluation'] / sums['wall']:.1%}, overhead {overhead:.1%}; valid_acc "
          f"{result.metrics['valid_acc']:.1%}; whole search, Ray start-up included: {total:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"epochs": epochs, "overhead": overhead, "total_seconds": total,
             "valid_acc": result.metrics["valid_acc"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
