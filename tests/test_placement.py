"""Heterogeneous placement on a real multi-node Ray cluster (``ray.cluster_utils.Cluster``): a CPU
head and two GPU nodes of different accelerator types (pretend GPUs; torch trains on the CPU).

A search pinned to ``execution.accelerator: A100`` trains every candidate on the A100 node and
keeps its controller on the head (``controller_resources``); without the pin, concurrent trials
spread over both GPU node types."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray
from conftest import stop_ray_cluster, tiny_job
from ray.cluster_utils import Cluster

from raynas.config import SearchConfig
from raynas.execution.controller import start_controller
from raynas.execution.ray_actors import ACCELERATOR_LABEL
from raynas.execution.tune import run_tune_search
from raynas.runs import run_search
from raynas.runs.jobs import parse_job
from raynas.runs.sampling import search_state
from raynas.types import EvalResult

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Nodes:
    """The ids of the test cluster's nodes."""

    head: str
    a100: str
    t4: str


@pytest.fixture(scope="module")
def cluster() -> Iterator[Nodes]:
    temp_dir = tempfile.mkdtemp(prefix="rp", dir="/tmp")  # short: Ray's socket paths are limited
    patch = pytest.MonkeyPatch()
    patch.setenv("RAY_TMPDIR", temp_dir)
    patch.setenv("RAY_AUTH_MODE", "disabled")
    memory = 80 * 1024 * 1024
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {"cpu_node": 2}, "object_store_memory": memory,
                        "include_dashboard": False},
    )
    try:
        gpu_nodes = {
            kind: cluster.add_node(
                num_cpus=1, num_gpus=1, resources={kind: 1}, labels={ACCELERATOR_LABEL: kind},
                object_store_memory=memory,
            )
            for kind in ("A100", "T4")
        }
        ray.shutdown()  # a connection an earlier test left (no-op otherwise)
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        cluster.wait_for_nodes()
        yield Nodes(
            head=cluster.head_node.node_id, a100=gpu_nodes["A100"].node_id, t4=gpu_nodes["T4"].node_id
        )
    finally:
        ray.shutdown()
        cluster.shutdown()
        stop_ray_cluster(temp_dir)  # anything the cluster left behind, and only this cluster's
        patch.undo()
        shutil.rmtree(temp_dir, ignore_errors=True)


def search_config(tmp_path: Path, **execution: object) -> SearchConfig:
    job = tiny_job(tmp_path)
    job.update(
        space={"name": "nb201", "channels": 4, "cells_per_stage": 1},
        strategy={"name": "random", "evaluations": 2},
        data={"name": "digits", "batch_size": 32, "limit": 128},
        evaluator={"name": "scratch", "epochs": 1, "channels": 4, "layers": 1},
        tune={"scheduler": "none"},
        execution={"backend": "ray", "cpus_per_worker": 1, "gpus_per_worker": 1, "concurrency": 2,
                   "controller_resources": {"cpu_node": 0.1}, **execution},
    )
    del job["train"]  # candidates are trained from scratch: no supernet
    return parse_job(job)


def trial_nodes(experiment: Path) -> dict[str, set[str]]:
    """Trial id -> the ids of the nodes its epochs ran on, as the trials reported them."""
    return {
        trial.name: {json.loads(line)["node_id"] for line in (trial / "result.json").read_text().splitlines()}
        for trial in experiment.iterdir() if (trial / "result.json").is_file()
    }


def test_a_search_pinned_to_a100_trains_there_with_its_controller_on_the_head(
    tmp_path: Path, cluster: Nodes
) -> None:
    config = search_config(tmp_path, accelerator="A100")
    controller = start_controller(config)
    try:
        assert controller.node_id() == cluster.head
        recorded: list[EvalResult] = []
        run_tune_search(config, controller, on_result=recorded.append, storage_path=str(tmp_path / "tune"))
        best = controller.best()
    finally:
        controller.close()

    assert len(recorded) == 2 and {r.node for r in recorded} == {"A100"}
    nodes = trial_nodes(tmp_path / "tune" / "tiny")
    assert sorted(nodes) == sorted(r.trial_id for r in recorded)
    assert set().union(*nodes.values()) == {cluster.a100}
    assert best is not None and best.score == max(r.score for r in recorded)


def test_an_unpinned_search_spreads_over_both_gpu_node_types(tmp_path: Path, cluster: Nodes) -> None:
    config = search_config(tmp_path)
    controller = start_controller(config)
    try:
        recorded: list[EvalResult] = []
        run_tune_search(config, controller, on_result=recorded.append, storage_path=str(tmp_path / "tune"))
    finally:
        controller.close()

    # Two trials at a time, each with one GPU, on nodes with one GPU each: one on each type.
    assert len(recorded) == 2 and {r.node for r in recorded} == {"A100", "T4"}
    nodes = trial_nodes(tmp_path / "tune" / "tiny")
    assert set().union(*nodes.values()) == {cluster.a100, cluster.t4}


def test_one_shot_supernet_actors_go_to_the_pinned_gpu_type_and_the_controller_to_the_head(
    tmp_path: Path, cluster: Nodes
) -> None:
    job = tiny_job(tmp_path)
    job.update(
        space={"name": "nb201", "channels": 4, "cells_per_stage": 1},
        strategy={"name": "spos", "population_size": 2, "sample_size": 2, "evaluations": 3},
        data={"name": "digits", "batch_size": 32, "limit": 128},
        evaluator={"name": "supernet", "bn_batches": 1},
        train={"epochs": 1},
        execution={"backend": "ray", "cpus_per_worker": 1, "gpus_per_worker": 1, "concurrency": 1,
                   "accelerator": "A100", "controller_resources": {"cpu_node": 0.1}},
    )
    lines: list[str] = []
    result = run_search(parse_job(job), echo=lines.append)
    state = search_state(result.checkpoint)
    # Every candidate was scored on the A100 node (its accelerator label, read on the node itself).
    assert [r["node"] for r in state["results"]] == ["A100"] * 3
    assert f"controller on node {cluster.head[:12]}" in lines[0]
