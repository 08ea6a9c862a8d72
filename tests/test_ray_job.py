"""A search whose driver runs as a Ray job (``ray job submit``) with a local MLflow store or output
folder says, in one line at start, where they are, that they go with the cluster and how to keep
them. The job's environment is Ray's (``RAY_JOB_CONFIG_JSON_ENV_VAR``, as ray's job supervisor
sets it); tests/test_job_submit.py sees the line in a real job's log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_job, write_job

from raynas.cli import main
from raynas.config import TrackingConfig
from raynas.ray_job import JOB_CONFIG_VARIABLE, local_results_warning, ray_job


def job_environment(*, working_dir: bool, submission_id: str = "raysubmit_abc") -> dict[str, str]:
    """The variable Ray's job supervisor gives a driver: the runtime env and the job's metadata."""
    runtime_env = {"working_dir": "gcs://_ray_pkg_0123456789abcdef.zip"} if working_dir else {}
    config = {"runtime_env": runtime_env,
              "metadata": {"job_submission_id": submission_id, "job_name": submission_id}}
    return {JOB_CONFIG_VARIABLE: json.dumps(config), "RAY_ADDRESS": "127.0.0.1:6379"}


def test_a_process_outside_a_ray_job_is_told_nothing(tmp_path: Path) -> None:
    assert ray_job({}) is None
    assert ray_job({JOB_CONFIG_VARIABLE: "not json"}) is None
    assert local_results_warning(TrackingConfig(), environ={}, cwd=tmp_path) is None


def test_defaults_in_a_working_dir_are_lost_with_the_cluster(tmp_path: Path) -> None:
    assert ray_job(job_environment(working_dir=True)) == ("raysubmit_abc", True)
    line = local_results_warning(TrackingConfig(), environ=job_environment(working_dir=True), cwd=tmp_path)
    assert line is not None and "\n" not in line
    assert line.startswith(
        f"Ray job 'raysubmit_abc' keeps its MLflow store (sqlite:///{tmp_path / 'mlflow.db'}), "
        f"checkpoints, results inside the job's working directory ({tmp_path}), Ray's temporary copy, "
        "deleted with the cluster; keep them with --set tracking.tracking_uri=http://MLFLOW-HOST:5000 "
        "and --set tracking.output_dir=s3://BUCKET/runs"
    )


def test_paths_elsewhere_on_the_node_are_named(tmp_path: Path) -> None:
    tracking = TrackingConfig(tracking_uri="http://mlflow:5000", output_dir=str(tmp_path / "runs"))
    line = local_results_warning(tracking, environ=job_environment(working_dir=False), cwd=Path("/"))
    assert line is not None
    assert line.startswith(f"Ray job 'raysubmit_abc' keeps its checkpoints, results on the disk of the "
                           f"node that runs the driver ({tmp_path / 'runs'}), lost with the cluster "
                           "unless that is a persistent volume;")
    # The store named by MLFLOW_TRACKING_URI, the output on S3: only the store is named.
    env = {**job_environment(working_dir=True), "MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"}
    line = local_results_warning(TrackingConfig(output_dir="s3://b/runs"), environ=env, cwd=tmp_path)
    assert line is not None and "keeps its MLflow store (sqlite:///mlflow.db) inside" in line


def test_a_server_and_s3_keep_the_results(tmp_path: Path) -> None:
    environ = job_environment(working_dir=True)
    kept = TrackingConfig(tracking_uri="http://mlflow:5000", output_dir="s3://bucket/runs")
    assert local_results_warning(kept, environ=environ, cwd=tmp_path) is None
    env = {**environ, "MLFLOW_TRACKING_URI": "postgresql://mlflow-db/mlflow"}
    on_s3 = TrackingConfig(output_dir="s3://bucket/runs")
    assert local_results_warning(on_s3, environ=env, cwd=tmp_path) is None
    local_results = TrackingConfig(tracking_uri="http://mlflow:5000", output_dir="s3://bucket/runs",
                                   results=str(tmp_path / "results"))
    line = local_results_warning(local_results, environ=environ, cwd=tmp_path)
    assert line is not None and "keeps its results inside" in line


def test_the_cli_says_it_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in job_environment(working_dir=True, submission_id="raynas-quick").items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    job = tiny_job(tmp_path, data={"name": "cifar10", "path": str(tmp_path / "no-cifar"), "limit": 0},
                   tracking={"output_dir": "runs"})
    capsys.readouterr()
    assert main(["search", str(write_job(tmp_path, job))]) == 2  # stops at the missing data
    first, error = capsys.readouterr().err.splitlines()
    assert first.startswith("raynas: warning: Ray job 'raynas-quick' keeps its MLflow store (sqlite:///")
    assert f"inside the job's working directory ({tmp_path.resolve()})" in first
    assert error.startswith("raynas: error: config key 'data.path' is ")
