"""Shared fixtures: real services started by the tests on loopback (a Ray head, an MLflow server)
and a tiny search config that finishes in seconds on 2 CPU cores."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

BIN = Path(sys.executable).parent
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# The tests' tensors are tiny: more intra-op threads only contend for CI's two cores.
torch.set_num_threads(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_job(tmp_path: Path, **sections: dict) -> dict:
    """A DARTS search small enough for a unit test: 2-node cells, 3 cells, 96 digits."""
    job = {
        "name": "tiny",
        "seed": 0,
        "space": {"name": "darts", "channels": 4, "layers": 3, "nodes": 2},
        "strategy": {"name": "darts", "order": 1, "arch_learning_rate": 0.01},
        "data": {"name": "digits", "batch_size": 16, "limit": 96},
        "train": {"epochs": 2, "learning_rate": 0.05},
        "execution": {"backend": "local", "cpus_per_worker": 1},
        "tracking": {
            "experiment": "tests",
            "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "output_dir": str(tmp_path / "runs"),
        },
    }
    for key, value in sections.items():
        job[key] = {**job[key], **value} if isinstance(value, dict) else value
    return job


def write_job(tmp_path: Path, job: dict) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.fixture(scope="session")
def ray_head() -> Iterator[str]:
    """A real Ray head started with ``ray start --head`` on loopback; yields its GCS address."""
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths are limited
    port = free_port()
    # Token authentication off for this throwaway loopback cluster: a client without the
    # cluster's token cannot connect otherwise.
    env = {**os.environ, "RAY_TMPDIR": temp_dir, "RAY_AUTH_MODE": "disabled"}
    subprocess.run(
        [
            str(BIN / "ray"), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
            "--num-cpus=2", "--object-store-memory=100000000", "--include-dashboard=false",
            "--disable-usage-stats", f"--temp-dir={temp_dir}",
        ],
        check=True, env=env, timeout=180, capture_output=True,
    )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server (SQLite store, artifacts served by the server)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1",
        ],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(
                    f"MLflow server did not start: {(root / 'server.log').read_text()}"
                ) from None
            time.sleep(0.5)
    try:
        yield uri
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
