"""Every GPU works for retraining too: ``raynas train`` with ``execution.workers: 2`` trains on two
data-parallel Ray actors (each on its slice of every global batch, testing on its slice of the
test split) and ends with what one worker computes alone: the same metrics and the same trained
network, registered in MLflow (one epoch of six global batches of 16: every gradient and every
BatchNorm sum averaged)."""

from __future__ import annotations

from pathlib import Path

import mlflow.pytorch
import pytest
import ray
import torch
from conftest import tiny_job

from raynas.runs.jobs import parse_retrain_job
from raynas.runs.retrain import run_retrain

pytestmark = pytest.mark.integration


def retrain_job(tmp_path: Path, **execution: object) -> dict:
    job = tiny_job(tmp_path)
    return {
        "name": "retrain-parallel", "seed": 0, "architecture": "DARTS_V2",
        "space": {"name": "darts"},
        "data": {"name": "digits", "batch_size": 16, "limit": 128, "train_portion": 0.75},
        "retrain": {"epochs": 1, "channels": 4, "layers": 3, "learning_rate": 0.05},
        "execution": {"cpus_per_worker": 1, **execution},
        "tracking": job["tracking"],
    }


def test_two_workers_retrain_as_one_does(tmp_path: Path, ray_head: str) -> None:
    alone = run_retrain(parse_retrain_job(retrain_job(tmp_path / "alone")), echo=lambda _: None)
    lines: list[str] = []
    try:
        two = run_retrain(
            parse_retrain_job(retrain_job(tmp_path / "two", backend="ray", address=ray_head, workers=2)),
            echo=lines.append,
        )
    finally:
        ray.shutdown()
    assert any("2 data-parallel Ray actors" in line for line in lines)
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        assert two.metrics[key] == pytest.approx(alone.metrics[key], rel=1e-5, abs=1e-6), key
    assert two.params == alone.params
    state = {}
    for result, root in ((alone, tmp_path / "alone"), (two, tmp_path / "two")):
        mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
        model = mlflow.pytorch.load_model(f"models:/raynas-retrain-parallel/{result.registered_version}")
        state[root.name] = model.state_dict()
    for name, value in state["alone"].items():
        torch.testing.assert_close(state["two"][name], value, rtol=1e-5, atol=1e-5, msg=name)
