"""Credentials never reach what a search records: with AWS and MLflow secrets in the environment
and a password in the tracking URI, a real search on a real MLflow server leaves none of them in
MLflow's params, tags, metrics or artifacts, the Parquet rows, the journal and checkpoints'
readable records, or the console and log lines."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import BIN, S3Server, stop_ray_cluster, tiny_job, write_job
from mlflow.tracking import MlflowClient

from raynas.runs import run_search
from raynas.runs.jobs import parse_job
from raynas.tracking.results import ResultsStore

SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "raynas-test-aws-secret-7f3a",
    "AWS_SESSION_TOKEN": "raynas-test-aws-token-91bc",
    "MLFLOW_TRACKING_PASSWORD": "raynas-test-mlflow-password-2d4e",
}
URI_PASSWORD = "raynas-test-uri-password-c0de"


def leaked(text: str) -> list[str]:
    return [s for s in (*SECRETS.values(), URI_PASSWORD) if s in text]


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["gradient", "sampling"])
def test_no_secret_reaches_mlflow_results_files_or_logs(
    kind: str, tmp_path: Path, mlflow_server: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    """A DARTS search, and a sampling search (which writes a journal too)."""
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "raynas-test-key-id")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    uri = mlflow_server.replace("http://", f"http://alice:{URI_PASSWORD}@")
    tracking = {"tracking_uri": uri, "experiment": f"secrets-{kind}"}
    job = tiny_job(tmp_path, train={"epochs": 1}, tracking=tracking)
    if kind == "sampling":
        job["strategy"] = {"name": "random", "evaluations": 2}
        job["evaluator"] = {"name": "supernet", "bn_batches": 1}
    lines: list[str] = []
    with caplog.at_level(logging.DEBUG):
        result = run_search(parse_job(job), echo=lines.append)
    captured = capsys.readouterr()
    said = "\n".join(lines) + captured.out + captured.err + caplog.text
    assert leaked(said) == [], [line for line in said.splitlines() if leaked(line)][:5]

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name(f"secrets-{kind}")
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

    files = [f for f in (tmp_path / "runs").rglob("*") if f.is_file()]
    assert any(f.name == "journal.jsonl" for f in files) == (kind == "sampling")
    for file in files:
        assert leaked(file.read_bytes().decode("latin-1")) == [], file  # journal, checkpoints, Parquet
    # The Parquet rows as read (their pages may be compressed, where the bytes would not show it).
    rows = ResultsStore(tmp_path / "runs" / "results").read_frame()
    assert len(rows) >= 1 and leaked(rows.to_csv()) == []


def test_a_uri_password_is_redacted_and_other_uris_are_left_alone() -> None:
    from raynas.config import redact_uri

    assert redact_uri("http://alice:pw@host:5000/path") == "http://alice:***@host:5000/path"
    assert redact_uri("https://alice:pw@host") == "https://alice:***@host"
    for uri in ("http://host:5000", "http://alice@host", "sqlite:////tmp/m.db", "s3://bucket/key", "http://h:x"):
        assert redact_uri(uri) == uri


@pytest.mark.integration
@pytest.mark.own_ray
def test_no_secret_reaches_rays_logs_or_the_s3_bucket_of_a_ray_search(
    tmp_path: Path, mlflow_server: str, s3_server: S3Server
) -> None:
    """``raynas search`` with the Ray backend (a local Ray the command starts, whose processes
    inherit the credentials in its environment, as a cluster node's do) and results and
    checkpoints on S3: none of the secrets in the command's console, in any file of Ray's
    session (worker and raylet logs among them), or in any object written to the bucket."""
    bucket = s3_server.create_bucket("raynas-secrets")
    # The S3 server's secret key is the AWS secret here: it must work, and must not be written
    # (a session token is left out: the server refuses credentials with one it did not issue).
    password = {"MLFLOW_TRACKING_PASSWORD": SECRETS["MLFLOW_TRACKING_PASSWORD"]}
    dropped = {"RAY_ADDRESS", "AWS_PROFILE", "AWS_SESSION_TOKEN"}
    secrets = [*password.values(), URI_PASSWORD, s3_server.secret_key]
    uri = mlflow_server.replace("http://", f"http://alice:{URI_PASSWORD}@")
    job = tiny_job(
        tmp_path, train={"epochs": 1}, execution={"backend": "ray", "object_store_mb": 80},
        tracking={"tracking_uri": uri, "experiment": "secrets-ray", "output_dir": f"{bucket}/runs"},
    )
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths are limited
    env = {
        **{k: v for k, v in os.environ.items() if k not in dropped},
        **password, **s3_server.env(), "MLFLOW_TRACKING_USERNAME": "alice", "RAY_TMPDIR": ray_tmp,
        "HOME": str(tmp_path / "home"),  # a machine where Ray never ran: no token of its own yet
    }
    try:
        proc = subprocess.run([str(BIN / "raynas"), "search", str(write_job(tmp_path, job))],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        console = proc.stdout + proc.stderr
        assert [s for s in secrets if s in console] == [], console[-3000:]
        # The search's own lines first: not Ray's news that it turned token authentication on.
        assert proc.stdout.startswith("Searching darts with darts"), console[-3000:]
        assert "Token authentication" not in console

        files = [f for f in Path(ray_tmp).rglob("*") if f.is_file()]
        assert any(f.name == "raylet.out" for f in files) and any(f.name.startswith("worker-") for f in files)
        for file in files:
            text = file.read_bytes().decode("latin-1")
            assert [s for s in secrets if s in text] == [], file

        import boto3

        s3 = boto3.client("s3", endpoint_url=s3_server.endpoint, aws_access_key_id=s3_server.access_key,
                          aws_secret_access_key=s3_server.secret_key, region_name="us-east-1")
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket[5:])["Contents"]]
        assert any(k.endswith("checkpoint.pt") for k in keys) and any(k.endswith(".parquet") for k in keys)
        for key in keys:
            data = s3.get_object(Bucket=bucket[5:], Key=key)["Body"].read().decode("latin-1")
            assert [s for s in secrets if s in data] == [], key
    finally:
        stop_ray_cluster(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
