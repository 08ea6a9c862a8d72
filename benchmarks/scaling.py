"""How a sampling search scales with nodes: candidates per minute on a real multi-node Ray cluster
(``ray.cluster_utils.Cluster``) of 1, 2 and 4 worker nodes, each with one pretend GPU of one type,
one evaluator actor per node (``execution.concurrency`` = nodes), and the scaling efficiency
(candidates per minute per node, relative to one node). Candidates per minute are those of the
search itself, from the first candidate's start to the last one's end (start-up is reported
apart, as the wall time).

Two kinds of candidate:

* ``naswot``: the training-free NASWOT score of a NAS-Bench-201 network, a real CPU-bound
  evaluation; on a machine with fewer cores than nodes it measures the machine, not raynas;
* ``gpu:<seconds>``: an evaluation that holds its node for a fixed time without using this
  machine's CPU (as a candidate trained on a node's GPU does), so the figures show what the
  driver, the controller and the pool add per candidate as nodes are added.

It also measures, on the one-node cluster, the round trip of one ``ask`` and one ``tell`` to the
controller actor (on the head, as a search places it), the controller's bound on candidates per
second whatever the number of nodes.

Usage::

    python benchmarks/scaling.py --nodes 1,2,4 --candidates 40 --work gpu:0.5
    python benchmarks/scaling.py --nodes 1,2 --candidates 40 --work naswot
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.cluster_utils import Cluster

from raynas.evaluators.registry import EVALUATORS
from raynas.execution.controller import start_controller
from raynas.runs import parse_job, run_search
from raynas.runs.sampling import search_state
from raynas.types import Architecture, EvalResult

KIND = "B"  # the worker nodes' pretend accelerator type
MEMORY = 80 * 1024 * 1024


@dataclass(frozen=True)
class HoldConfig:
    """``seconds``: how long each evaluation holds its node (a GPU's work, not this CPU's)."""

    seconds: float = 0.5


@EVALUATORS.register("benchmark_hold", config=HoldConfig)
class HoldEvaluator:
    """Scores a candidate by its key after holding its node ``seconds``: the load model of an
    evaluation done on the node's accelerator. Registered by this benchmark only."""

    def __init__(self, config: HoldConfig, *, search: Any) -> None:
        self.config = config

    def evaluate(self, arch: Architecture, *, trial_id: str = "") -> EvalResult:
        time.sleep(self.config.seconds)
        score = int(arch.key().rsplit("-", 1)[1][:6], 16) / 16**6
        return EvalResult(architecture=arch, metrics={"valid_acc": score}, trial_id=trial_id,
                          seconds=self.config.seconds)


def registered() -> None:
    """Ray's worker set-up hook: importing this module has registered the evaluator."""


def job(root: Path, address: str, nodes: int, candidates: int, work: str) -> dict[str, Any]:
    if work.startswith("gpu:"):
        evaluator: dict[str, Any] = {"name": "benchmark_hold", "seconds": float(work[4:])}
    else:
        evaluator = {"name": "training_free", "proxy": "naswot", "batch_size": 32}
    return {
        "name": f"scaling-{nodes}", "seed": 0,
        "space": {"name": "nb201", "channels": 16, "cells_per_stage": 1},
        "strategy": {"name": "random", "evaluations": candidates},
        "evaluator": evaluator,
        "data": {"name": "digits", "batch_size": 32},
        "execution": {
            "backend": "ray", "address": address, "concurrency": nodes, "cpus_per_worker": 1,
            "gpus_per_worker": 1, "accelerator": KIND, "controller_resources": {"head": 0.01},
        },
        "tracking": {"experiment": "scaling", "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
                     "output_dir": str(root / "runs")},
    }


def controller_round_trips(root: Path, address: str, calls: int = 200) -> dict[str, float]:
    """Median and 95th percentile milliseconds of ``ask`` and of ``tell`` to the controller actor
    of a random search of ``calls`` candidates."""
    controller = start_controller(parse_job(job(root, address, 1, calls, "gpu:0")))
    asks, tells = [], []
    for i in range(calls):
        start = time.perf_counter()
        arch = controller.ask()
        asks.append(time.perf_counter() - start)
        result = EvalResult(architecture=arch, metrics={"valid_acc": i / calls}, trial_id=f"{i:05d}")
        start = time.perf_counter()
        controller.tell(result)
        tells.append(time.perf_counter() - start)

    def quantile(values: list[float], q: float) -> float:
        return 1000 * sorted(values)[min(len(values) - 1, int(q * len(values)))]

    return {"ask_ms": quantile(asks, 0.5), "ask_p95_ms": quantile(asks, 0.95),
            "tell_ms": quantile(tells, 0.5), "tell_p95_ms": quantile(tells, 0.95)}


def measure(nodes: int, candidates: int, work: str, latency: bool = False) -> dict[str, float]:
    temp = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    os.environ["RAY_TMPDIR"] = temp
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"head": 1}, "include_dashboard": False,
        "object_store_memory": 100 * 1024 * 1024,
    })
    try:
        for _ in range(nodes):
            cluster.add_node(num_cpus=1, num_gpus=1, resources={KIND: 2}, object_store_memory=MEMORY)
        cluster.wait_for_nodes()
        # The evaluator actors import this module too, which registers the benchmark's evaluator.
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR", runtime_env={
            "py_modules": [str(Path(__file__).parent)],
            "worker_process_setup_hook": "benchmarks.scaling.registered",
        })
        with tempfile.TemporaryDirectory() as folder:
            config = parse_job(job(Path(folder), cluster.address, nodes, candidates, work))
            start = time.perf_counter()
            result = run_search(config, echo=lambda _: None, fresh=True)
            seconds = time.perf_counter() - start
            results = search_state(result.checkpoint)["results"]
            # The search itself, start-up (actors, data, MLflow) and the final pictures left out.
            span = max(r["ended"] for r in results) - min(r["started"] for r in results)
            round_trips = controller_round_trips(Path(folder), cluster.address) if latency else {}
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    return {"nodes": nodes, "seconds": seconds, "search_seconds": span,
            "per_minute": 60 * candidates / span, **round_trips}


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="1,2,4")
    parser.add_argument("--candidates", type=int, default=40)
    parser.add_argument("--work", default="gpu:0.5", help="naswot, or gpu:<seconds> per evaluation")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    rows = [measure(int(n), args.candidates, args.work, latency=i == 0)
            for i, n in enumerate(args.nodes.split(","))]
    base = rows[0]["per_minute"] / rows[0]["nodes"]
    print(f"{args.candidates} candidates ({args.work}) on {os.cpu_count()} CPU cores")
    print(f"{'nodes':>5} {'wall s':>8} {'search s':>9} {'cand/min':>9} {'efficiency':>11}")
    for row in rows:
        row["efficiency"] = row["per_minute"] / row["nodes"] / base
        print(f"{row['nodes']:>5} {row['seconds']:8.1f} {row['search_seconds']:9.1f} "
              f"{row['per_minute']:9.1f} {row['efficiency']:11.0%}")
    first = rows[0]
    print(f"controller actor round trip: ask {first['ask_ms']:.1f} ms (p95 {first['ask_p95_ms']:.1f}), "
          f"tell {first['tell_ms']:.1f} ms (p95 {first['tell_p95_ms']:.1f})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
