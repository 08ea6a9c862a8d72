"""Searches that outlive their nodes, on a real multi-node Ray cluster (``ray.cluster_utils.Cluster``):
a CPU head and worker nodes of one pretend GPU type ``W`` that a test removes in the middle of a
search, as a spot node vanishes, and replaces, as an autoscaler does.

- a gradient search goes on from its last checkpoint on the new node, by itself, and ends with the
  genotype and metrics of an undisturbed run, each epoch recorded once;
- a one-shot sampling search with two supernet replicas loses a replica while they train the
  supernet together (the pair is rebuilt from the last epoch and the epoch trained again), then a
  replica and its controller during the search: both are replaced (the controller rebuilt from the
  checkpoint and the journal), and every candidate is evaluated and recorded exactly once;
- a Ray Tune search loses the node of a running trial: the trial goes on from its checkpoint, and
  every candidate is told and recorded once;
- two evaluations overlap in time with ``execution.concurrency: 2``, and every result says when
  and where it ran (results store and MLflow).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from conftest import stop_ray_cluster, tiny_job
from mlflow.tracking import MlflowClient
from ray.cluster_utils import Cluster

from raynas.execution.tune import CANDIDATE_FILE
from raynas.runs import run_search
from raynas.runs.jobs import parse_job
from raynas.runs.sampling import search_state
from raynas.tracking import ResultsStore

pytestmark = pytest.mark.integration

MEMORY = 80 * 1024 * 1024
# The worker nodes' pretend GPU type: one GPU each, and room for a controller (0.01) beside it.
KIND = "W"


class Elastic:
    """The cluster and what a test does to it."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def add_worker(self) -> Any:
        node = self.cluster.add_node(num_cpus=1, num_gpus=1, resources={KIND: 2}, object_store_memory=MEMORY)
        self.cluster.wait_for_nodes()
        return node

    def node_of(self, class_name: str) -> Any:
        """The worker node that runs the live actor of ``class_name``."""
        from ray._private import state

        for info in state.actors().values():
            if info["ActorClassName"] == class_name and info["State"] == "ALIVE":
                node_id = info["Address"]["NodeID"]
                for node in self.cluster.worker_nodes:
                    if node.node_id == node_id:
                        return node
        raise AssertionError(f"no live {class_name} actor on a worker node")

    def replace(self, node: Any) -> None:
        """The node vanishes (no graceful shutdown) and a new one of its type joins."""
        self.cluster.remove_node(node, allow_graceful=False)
        self.add_worker()


@pytest.fixture(scope="module")
def elastic() -> Iterator[Elastic]:
    temp_dir = tempfile.mkdtemp(prefix="re", dir="/tmp")  # short: Ray's socket paths are limited
    patch = pytest.MonkeyPatch()
    patch.setenv("RAY_TMPDIR", temp_dir)
    patch.setenv("RAY_AUTH_MODE", "disabled")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1, "resources": {"head": 1}, "object_store_memory": MEMORY,
            "include_dashboard": False,
            # A lost node is noticed within about three seconds (the default takes half a
            # minute); a raylet busy on CI's two cores still answers in time.
            "_system_config": {
                "health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                "health_check_failure_threshold": 6,
            },
        },
    )
    try:
        pool = Elastic(cluster)
        for _ in range(2):
            pool.add_worker()
        ray.shutdown()  # a connection an earlier test left (no-op otherwise)
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        yield pool
    finally:
        ray.shutdown()
        cluster.shutdown()
        stop_ray_cluster(temp_dir)
        patch.undo()
        shutil.rmtree(temp_dir, ignore_errors=True)


def on_workers(address: str, **execution: Any) -> dict[str, Any]:
    return {
        "backend": "ray", "address": address, "cpus_per_worker": 1, "gpus_per_worker": 1,
        "accelerator": KIND, **execution,
    }


def nb201_job(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    job = tiny_job(
        tmp_path, space={"name": "nb201", "channels": 4, "cells_per_stage": 1},
        data={"name": "digits", "batch_size": 32, "limit": 128},
    )
    for key in ("layers", "nodes"):
        job["space"].pop(key)
    job.update(sections)
    return job


def test_a_gradient_search_goes_on_by_itself_when_its_node_is_lost(tmp_path: Path, elastic: Elastic) -> None:
    job = tiny_job(tmp_path, train={"epochs": 3})
    undisturbed = run_search(parse_job(job), echo=lambda _: None)  # in-process, the same seed
    job = tiny_job(tmp_path / "elastic", train={"epochs": 3},
                   execution=on_workers(elastic.cluster.address))
    lines: list[str] = []

    def lose_the_node_after_the_first_epoch(line: str) -> None:
        lines.append(line)
        if line.startswith("epoch   1/"):
            elastic.replace(elastic.node_of("_WorkerActor"))

    result = run_search(parse_job(job), echo=lose_the_node_after_the_first_epoch)
    assert any("restarting the worker from epoch 1" in line for line in lines)
    assert [line.split()[1] for line in lines if line.startswith("epoch")] == ["1/3", "2/3", "3/3"]
    assert result.architecture == undisturbed.architecture
    assert result.metrics == undisturbed.metrics
    client = MlflowClient(job["tracking"]["tracking_uri"])
    assert [m.step for m in client.get_metric_history(result.run_id, "valid_acc")] == [0, 1, 2]


def test_a_one_shot_search_replaces_a_lost_replica_and_its_controller(
    tmp_path: Path, elastic: Elastic
) -> None:
    evaluations = 8
    job = nb201_job(
        tmp_path,
        strategy={"name": "spos", "population_size": 4, "sample_size": 2, "evaluations": evaluations},
        evaluator={"name": "supernet", "bn_batches": 1},
        train={"epochs": 2, "learning_rate": 0.05},
        execution=on_workers(elastic.cluster.address, concurrency=2, controller_resources={KIND: 0.01}),
    )
    lines: list[str] = []
    lost: list[str] = []

    def lose_a_node_in_training_and_one_in_the_search(line: str) -> None:
        lines.append(line)
        if line.startswith("supernet epoch   1/") and not lost:
            node = elastic.node_of("_EvaluatorActor")  # one of the replicas training together
            lost.append(node.node_id)
            elastic.replace(node)
        if line.startswith("candidate    2") and len(lost) == 1:
            node = elastic.node_of("ControllerActor")  # the controller and a replica live there
            lost.append(node.node_id)
            elastic.replace(node)

    result = run_search(parse_job(job), echo=lose_a_node_in_training_and_one_in_the_search)
    assert len(lost) == 2, "the search never reached its second candidate"
    assert any("rebuilt the 2 replicas training together; Ray's logs are in " in line for line in lines)
    assert [line.split()[2] for line in lines if line.startswith("supernet epoch")] == ["1/2", "2/2"]
    assert any("replaced evaluator actor" in line and "; Ray's logs are in " in line for line in lines)
    assert any("rebuilding the controller" in line for line in lines)
    state = search_state(result.checkpoint)
    trials = [r["trial_id"] for r in state["results"]]
    assert len(trials) == evaluations and len(set(trials)) == evaluations  # none lost, none twice
    rows = ResultsStore(Path(job["tracking"]["output_dir"]) / "results").read_table()
    assert sorted(rows.column("trial_id").to_pylist()) == sorted(trials)
    client = MlflowClient(job["tracking"]["tracking_uri"])
    children = client.search_runs(
        [client.get_run(result.run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'",
    )
    assert sorted(c.data.tags["raynas.trial_id"] for c in children) == sorted(trials)


def test_a_tune_search_resumes_a_trial_whose_node_is_lost(tmp_path: Path, elastic: Elastic) -> None:
    evaluations, epochs = 4, 6
    job = nb201_job(
        tmp_path,
        strategy={"name": "random", "evaluations": evaluations},
        evaluator={"name": "scratch", "epochs": epochs, "channels": 4, "layers": 1},
        tune={"scheduler": "none"},
        execution=on_workers(elastic.cluster.address, concurrency=2, controller_resources={"head": 0.01}),
    )
    job["data"]["limit"] = 1797  # every digit: epochs long enough that the node is lost before the trial ends
    del job["train"]
    trials = tmp_path / "runs" / "tiny" / "tune" / "tiny"
    lost: list[str] = []

    def lose_a_trial_node() -> None:  # once a trial has checkpointed its second epoch, its node vanishes
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not lost:
            # (Checkpoints reach the storage folder as they are written; Tune's result.json only
            # when the driver syncs its staging folder. A trial reports synchronously: it trains
            # its second epoch only after Tune's driver has taken its first report and registered
            # that checkpoint, so once the second checkpoint is being written the first is Tune's
            # to restore from. The first alone may be lost with the node before Tune records it,
            # and the trial rightly starts again from scratch.)
            for candidate in trials.glob(f"*/checkpoint_000001/{CANDIDATE_FILE}"):
                try:
                    node_id = json.loads(candidate.read_text())["node_id"]
                except ValueError:  # being written
                    continue
                node = next(n for n in elastic.cluster.worker_nodes if n.node_id == node_id)
                elastic.cluster.remove_node(node, allow_graceful=False)
                lost.append(candidate.parent.parent.name)
                return
            time.sleep(0.1)

    killer = threading.Thread(target=lose_a_trial_node, daemon=True)
    killer.start()
    try:
        result = run_search(parse_job(job), echo=lambda _: None)
    finally:
        killer.join(timeout=5)
        elastic.add_worker()  # the autoscaler's replacement, for the tests after this one
    assert lost, "no trial was running to lose"
    state = search_state(result.checkpoint)
    told = [r["trial_id"] for r in state["results"]]
    assert len(told) == evaluations and len(set(told)) == evaluations  # none lost, none twice
    assert all(r["budget"] == epochs for r in state["results"])  # each trained to its full budget
    reported = (trials / lost[0] / "result.json").read_text().splitlines()
    lines = [json.loads(line) for line in reported]
    told_epochs = [line["epoch"] for line in lines]
    # went on from a checkpoint, not from scratch: epoch 1 once, epoch 2 perhaps twice
    assert told_epochs.count(1.0) == 1 and told_epochs[-1] == epochs, told_epochs
    # ... after its node was lost, not finished before: Tune restored it past its first epoch
    assert any(line["iterations_since_restore"] == 1 and line["epoch"] > 1 for line in lines), [
        {k: line.get(k) for k in ("epoch", "iterations_since_restore", "time_this_iter_s")}
        for line in lines]
    rows = ResultsStore(Path(job["tracking"]["output_dir"]) / "results").read_table()
    assert sorted(rows.column("trial_id").to_pylist()) == sorted(told)


def test_two_evaluations_overlap_with_concurrency_two_and_say_when_and_where(
    tmp_path: Path, elastic: Elastic
) -> None:
    job = nb201_job(
        tmp_path,
        strategy={"name": "random", "evaluations": 4},
        evaluator={"name": "scratch", "epochs": 1, "channels": 4, "layers": 1},
        tune={"enabled": False},  # the candidate pool: two evaluator actors
        execution=on_workers(elastic.cluster.address, concurrency=2, controller_resources={"head": 0.01}),
    )
    del job["train"]
    result = run_search(parse_job(job), echo=lambda _: None)
    results = search_state(result.checkpoint)["results"]
    spans = sorted((r["started"], r["ended"]) for r in results)
    assert all(0 < start < end for start, end in spans)
    assert any(spans[i][1] > spans[i + 1][0] for i in range(len(spans) - 1))  # two at once
    workers = {node.node_id for node in elastic.cluster.worker_nodes}
    assert {r["node_id"] for r in results} <= workers and all(r["node"] == KIND for r in results)
    rows = ResultsStore(Path(job["tracking"]["output_dir"]) / "results").read_table().to_pylist()
    by_trial = {r["trial_id"]: r for r in results}
    for row in rows:
        assert row["started_at"].timestamp() == pytest.approx(by_trial[row["trial_id"]]["started"], abs=1e-3)
        assert row["ended_at"].timestamp() == pytest.approx(by_trial[row["trial_id"]]["ended"], abs=1e-3)
        assert row["node_id"] == by_trial[row["trial_id"]]["node_id"]
    client = MlflowClient(job["tracking"]["tracking_uri"])
    for child in client.search_runs(
        [client.get_run(result.run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'",
    ):
        trial = by_trial[child.data.tags["raynas.trial_id"]]
        assert child.info.start_time == int(trial["started"] * 1000)
        assert child.info.end_time == int(trial["ended"] * 1000)
