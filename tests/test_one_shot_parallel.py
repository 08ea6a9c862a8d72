"""Every GPU works: the replicas of a one-shot supernet train it together, data-parallel (one path per
global step on every replica, each on its slice of the global batch), and end with what one
replica training alone on the whole batches computes; then they score candidates apart."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import ray
import torch
from conftest import tiny_job

from raynas.execution.pool import LocalPool, RayPool
from raynas.runs.jobs import parse_job
from raynas.spaces import SPACES

pytestmark = pytest.mark.integration


def one_shot_job(tmp_path: Path, evaluator: dict, **execution: object) -> dict:
    job = tiny_job(
        tmp_path, space={"name": "nb201", "channels": 4, "cells_per_stage": 1},
        data={"name": "digits", "batch_size": 16, "limit": 96},
        execution={"cpus_per_worker": 1, **execution},
    )
    for key in ("layers", "nodes"):
        job["space"].pop(key)
    job["strategy"] = {"name": "spos", "population_size": 2, "sample_size": 2, "evaluations": 2}
    job["evaluator"] = {"name": "supernet", "bn_batches": 1, "valid_batches": 2, **evaluator}
    return job


@pytest.mark.parametrize(
    "evaluator",
    [
        {},
        # Bender et al.'s one-shot model: each global batch of 16 in two ghost batches of 8, each
        # with masks and BatchNorm statistics of its own; a ghost batch spans both replicas (4
        # examples on each), as one replica alone has it.
        {"path_dropout": 0.5, "ghost_batch": 8},
    ],
    ids=["single_paths", "path_dropout"],
)
def test_two_replicas_training_together_match_one_on_the_same_global_batches(
    evaluator: dict, tmp_path: Path, ray_head: str
) -> None:
    alone = LocalPool(parse_job(one_shot_job(tmp_path, evaluator)))
    space = SPACES.create("nb201", alone.evaluator.search.space.config)
    rng = random.Random(0)
    paths = [space.sample(rng) for _ in range(alone.steps_per_epoch)]
    together = RayPool(parse_job(
        one_shot_job(tmp_path, evaluator, backend="ray", address=ray_head, concurrency=2)
    ))
    try:
        assert together.together and together.location.endswith("training the supernet together")
        # One epoch: a global batch on each of the paths. Equal up to float32 summation order
        # (global BatchNorm statistics are sums over the replicas); operations off a step's path
        # are left alone on every replica.
        expected = alone.train_epoch(paths)
        got = together.train_epoch(paths)
        assert got["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-5)
        assert got["train_acc"] == pytest.approx(expected["train_acc"], abs=1e-9)
        weights = [ray.get(actor.weights.remote()) for actor in together.actors]
        for name, value in alone.evaluator.weights().items():
            torch.testing.assert_close(weights[0][name], value, rtol=1e-5, atol=1e-5, msg=name)
            torch.testing.assert_close(weights[1][name], weights[0][name], rtol=0, atol=0)
        # Then they score apart, concurrently, as one replica scores alone.
        candidates = [space.sample(rng) for _ in range(2)]
        for i, arch in enumerate(candidates):
            together.submit(arch, f"t{i}")
        scored = {r.trial_id: r for r in (together.next_result() for _ in candidates)}
        for i, arch in enumerate(candidates):
            expected = alone.evaluator.evaluate(arch)
            assert scored[f"t{i}"].metrics["valid_acc"] == pytest.approx(expected.metrics["valid_acc"])
    finally:
        together.close()
        ray.shutdown()
