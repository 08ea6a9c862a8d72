"""Credentials never reach what a search records: with AWS and MLflow secrets in the environment
and a password in the tracking URI, a real search on a real MLflow server leaves none of them in
MLflow's params, tags, metrics or artifacts, the Parquet rows, the journal and checkpoints'
readable records, or the console and log lines."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from conftest import tiny_job
from mlflow.tracking import MlflowClient

from raynas.runs import run_search
from raynas.runs.jobs import parse_job

SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "raynas-test-aws-secret-7f3a",
    "AWS_SESSION_TOKEN": "raynas-test-aws-token-91bc",
    "MLFLOW_TRACKING_PASSWORD": "raynas-test-mlflow-password-2d4e",
}
URI_PASSWORD = "raynas-test-uri-password-c0de"


def leaked(text: str) -> list[str]:
    return [s for s in (*SECRETS.values(), URI_PASSWORD) if s in text]


@pytest.mark.integration
def test_no_secret_reaches_mlflow_results_files_or_logs(
    tmp_path: Path, mlflow_server: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "raynas-test-key-id")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    uri = mlflow_server.replace("http://", f"http://alice:{URI_PASSWORD}@")
    job = tiny_job(tmp_path, train={"epochs": 1}, tracking={"tracking_uri": uri, "experiment": "secrets"})
    lines: list[str] = []
    with caplog.at_level(logging.DEBUG):
        result = run_search(parse_job(job), echo=lines.append)
    captured = capsys.readouterr()
    said = "\n".join(lines) + captured.out + captured.err + caplog.text
    assert leaked(said) == [], [line for line in said.splitlines() if leaked(line)][:5]

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("secrets")
    runs = client.search_runs([experiment.experiment_id])
    assert any(r.info.run_id == result.run_id for r in runs)
    for run in runs:
        data = run.data
        assert leaked(repr((data.params, data.tags, sorted(data.metrics)))) == [], run.info.run_id
        into = tmp_path / "artifacts" / run.info.run_id
        into.mkdir(parents=True)
        folder = Path(client.download_artifacts(run.info.run_id, "", str(into)))
        for file in (f for f in folder.rglob("*") if f.is_file()):
            assert leaked(file.read_bytes().decode("latin-1")) == [], file

    for file in (f for f in (tmp_path / "runs").rglob("*") if f.is_file()):
        assert leaked(file.read_bytes().decode("latin-1")) == [], file  # Parquet, journal, checkpoints


def test_a_uri_password_is_redacted_and_other_uris_are_left_alone() -> None:
    from raynas.config import redact_uri

    assert redact_uri("http://alice:pw@host:5000/path") == "http://alice:***@host:5000/path"
    assert redact_uri("https://alice:pw@host") == "https://alice:***@host"
    for uri in ("http://host:5000", "http://alice@host", "sqlite:////tmp/m.db", "s3://bucket/key", "http://h:x"):
        assert redact_uri(uri) == uri
