"""Every job file in jobs/ is a valid config."""

from __future__ import annotations

from pathlib import Path

import pytest

from raynas.config import load_config

JOBS = sorted((Path(__file__).parents[1] / "jobs").glob("*.yaml"))


def test_there_are_jobs() -> None:
    assert any(p.name == "quickstart.yaml" for p in JOBS)


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_job_file_is_valid(path: Path) -> None:
    config = load_config(path)
    assert config.name and config.train.epochs >= 1


QUICK_JOBS = [p for p in JOBS if p.name.endswith("quickstart.yaml")]
SHRINK_SPACE = {
    "darts": ["space.channels=4", "space.layers=3", "space.nodes=2"],
    "nb201": ["space.channels=4", "space.cells_per_stage=1"],
}


@pytest.mark.parametrize("path", QUICK_JOBS, ids=lambda p: p.name)
def test_quickstart_job_runs_shrunk(path: Path, tmp_path: Path) -> None:
    """Each method's job file runs end to end (shrunk to seconds, in-process) and records the
    genotype of every epoch in MLflow."""
    from mlflow.tracking import MlflowClient

    from raynas.search import run_search

    space = load_config(path).space.name
    overrides = [
        *SHRINK_SPACE[space], "data.limit=64",
        "data.batch_size=16", "train.epochs=2", "execution.backend=local",
        "execution.cpus_per_worker=1", f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"tracking.output_dir={tmp_path / 'runs'}",
    ]
    config = load_config(path, overrides)
    result = run_search(config, echo=lambda _: None)
    client = MlflowClient(config.tracking.tracking_uri)
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "genotypes")}
    assert artifacts == {"genotypes/epoch_000.json", "genotypes/epoch_001.json"}
    assert client.get_run(result.run_id).data.tags["raynas.strategy"] == config.strategy.name
