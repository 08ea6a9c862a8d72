"""Auto-Keras on a real two-node Ray cluster (``ray.cluster_utils.Cluster``): a child evaluated on
another node than its parent starts from the parent's trained weights. The weights travel with
the work (the parent's result brings them to the driver, the child's candidate takes them to its
node), so no disk that both nodes can read is needed."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
import torch
from conftest import stop_ray_cluster, tiny_job
from ray.cluster_utils import Cluster

from raynas.evaluators.morphism import MorphismConfig, MorphismEvaluator, ParentWeights
from raynas.runs import run_search
from raynas.runs.jobs import parse_job
from raynas.runs.sampling import search_state
from raynas.train.checkpoint import load_checkpoint
from raynas.types import EvalResult

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[str]:
    """A head and one more node, one CPU each: two evaluator actors of one CPU land one per node."""
    temp_dir = tempfile.mkdtemp(prefix="rk", dir="/tmp")  # short: Ray's socket paths are limited
    patch = pytest.MonkeyPatch()
    patch.setenv("RAY_TMPDIR", temp_dir)
    patch.setenv("RAY_AUTH_MODE", "disabled")
    memory = 80 * 1024 * 1024
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": memory, "include_dashboard": False},
    )
    try:
        cluster.add_node(num_cpus=1, object_store_memory=memory)
        ray.shutdown()  # a connection an earlier test left (no-op otherwise)
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()
        stop_ray_cluster(temp_dir)  # anything the cluster left behind, and only this cluster's
        patch.undo()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_child_on_another_node_starts_from_its_parents_trained_weights(
    tmp_path: Path, two_nodes: str
) -> None:
    job = tiny_job(tmp_path)
    del job["train"]
    job.update(
        space={"name": "autokeras", "seed_width": 4, "seed_strides": [1, 2]},
        # The seed, then two children asked together once it is told: the first goes to the
        # actor that trained the seed (the pool's last idle one), the second to the other node.
        strategy={"name": "autokeras", "evaluations": 3},
        data={"name": "digits", "batch_size": 16, "limit": 64},
        evaluator={"name": "morphism", "epochs": 1, "noise": 0.0},
        execution={"backend": "ray", "cpus_per_worker": 1, "concurrency": 2},
    )
    config = parse_job(job)
    found = run_search(config, echo=lambda _: None)

    results = [EvalResult.from_dict(r) for r in search_state(found.checkpoint)["results"]]
    assert len(results) == 3 and all(r.handover is None for r in results)
    by_key = {r.architecture.key(): r for r in results}
    away = [r for r in results if getattr(r.architecture, "parent", "")
            and r.node_id != by_key[r.architecture.parent].node_id]
    assert len({r.node_id for r in results}) == 2 and away
    child = away[0]
    parent_key = child.architecture.parent

    # The same child trained here, in one thread as the actor trains, from the parent's weights
    # that the driver kept: the same losses and the same trained weights as on the other node.
    torch.set_num_threads(1)
    keeper = ParentWeights(config)
    kept = load_checkpoint(keeper.path(parent_key))
    assert kept["architecture"] == by_key[parent_key].architecture.to_json()
    evaluator = MorphismEvaluator(MorphismConfig(epochs=1, noise=0.0), search=config)
    evaluator.receive(keeper.given(child.architecture))
    here = evaluator.evaluate(child.architecture)
    assert here.metrics["train_loss"] == pytest.approx(child.metrics["train_loss"], rel=1e-5)
    assert here.metrics["valid_acc"] == pytest.approx(child.metrics["valid_acc"], abs=1e-9)
    there = load_checkpoint(keeper.path(child.architecture.key()))["state"]
    assert all(torch.allclose(here.handover["state"][k], there[k], atol=1e-5) for k in there)
    # Trained from fresh weights instead, the child ends elsewhere: the check above can fail.
    fresh = evaluator.evaluate(child.architecture.graph())
    assert fresh.metrics["train_loss"] != pytest.approx(child.metrics["train_loss"], rel=1e-3)
