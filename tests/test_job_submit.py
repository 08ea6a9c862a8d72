"""The quick-start job submitted to a real Ray cluster with `ray job submit`, as users run it.

A Ray head is started with `ray start --head` (dashboard and job server on loopback) with one
pretend GPU of type A100 (the Ray resource {"A100": 1}, as the A100 groups of cluster/ declare);
the quick-start job file, shrunk with --set and asked to run on an A100, goes in a working
directory with `ray job submit --working-dir`; the job must succeed, its actor must have asked for
the A100, the search must be in MLflow with its metrics, and the driver must have said first that
its local MLflow store and output folder are on the head's disk.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BIN, free_port, mlflow_store, stop_ray_cluster

ROOT = Path(__file__).parents[1]


@pytest.fixture()
def ray_head_with_jobs() -> Iterator[tuple[str, dict[str, str]]]:
    """A Ray head with its dashboard (the job server); yields its address and the client's env."""
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths are limited
    dashboard = free_port()
    # The job's `raynas` is the one on the PATH of `ray start`; token authentication off for this
    # throwaway loopback cluster.
    env = {
        **os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_TMPDIR": temp_dir,
        "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
    }
    try:
        subprocess.run(
            [
                str(BIN / "ray"), "start", "--head", f"--port={free_port()}",
                "--node-ip-address=127.0.0.1", "--num-cpus=2", "--num-gpus=1",
                '--resources={"A100": 1}', "--object-store-memory=100000000",
                "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                # Its own agent port: with the default (52365) taken by another Ray on the machine
                # (the suite's other head), the agent cannot listen and no job is ever accepted.
                f"--dashboard-agent-listen-port={free_port()}",
                "--disable-usage-stats", f"--temp-dir={temp_dir}",
            ],
            check=True, env=env, cwd=temp_dir, timeout=120, capture_output=True,
        )
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        stop_ray_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.integration
@pytest.mark.own_ray
def test_quickstart_job_submitted_with_ray_job_submit(
    tmp_path: Path, ray_head_with_jobs: tuple[str, dict[str, str]]
) -> None:
    from mlflow.tracking import MlflowClient
    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.state import list_actors

    address, env = ray_head_with_jobs
    working_dir = tmp_path / "job"
    working_dir.mkdir()
    shutil.copy(ROOT / "jobs" / "quickstart.yaml", working_dir / "quickstart.yaml")
    tracking_uri = mlflow_store(tmp_path)
    overrides = [
        "space.channels=4", "space.layers=3", "space.nodes=2", "data.limit=64",
        "data.batch_size=16", "train.epochs=1", "execution.cpus_per_worker=1",
        "execution.gpus_per_worker=1", "execution.accelerator=A100",
        f"tracking.tracking_uri={tracking_uri}", f"tracking.output_dir={tmp_path / 'runs'}",
    ]
    command = [
        str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(working_dir),
        "--submission-id", "raynas-quickstart", "--",
        "raynas", "search", "quickstart.yaml", *(a for o in overrides for a in ("--set", o)),
    ]
    deadline = time.monotonic() + 120
    while True:
        submit = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
        # `ray start` returns before the head's dashboard agent has registered; the job server
        # refuses submissions until it has (no job was created: submitting again is safe).
        if "No available agent" not in submit.stderr or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert submit.returncode == 0, submit.stdout[-2000:] + submit.stderr[-1500:]

    client = JobSubmissionClient(address)
    assert client.get_job_status("raynas-quickstart") == JobStatus.SUCCEEDED
    logs = client.get_job_logs("raynas-quickstart")
    run_id = next(line.split()[-1] for line in logs.splitlines() if line.startswith("MLflow run:"))
    # The store and the output folder are on the head's disk: the driver said so first, and how
    # to keep them (raynas.ray_job; the job's environment is Ray's own).
    warning = next(line for line in logs.splitlines() if line.startswith("raynas: warning:"))
    assert warning.startswith(
        f"raynas: warning: Ray job 'raynas-quickstart' keeps its MLflow store ({tracking_uri}), "
        f"checkpoints, results on the disk of the node that runs the driver ({tmp_path / 'mlflow.db'}, "
        f"{tmp_path / 'runs'}), lost with the cluster unless that is a persistent volume; keep them with "
        "--set tracking.tracking_uri=http://MLFLOW-HOST:5000 and --set tracking.output_dir=s3://BUCKET/runs"
    ), warning
    assert logs.index(warning) < logs.index("MLflow run:")

    # The search's actor asked for the A100 (a GPU and the accelerator's resource).
    actors = list_actors(address=address, detail=True, filters=[("class_name", "=", "_WorkerActor")])
    assert [a.required_resources for a in actors] == [{"CPU": 1.0, "GPU": 1.0, "A100": 1.0}]

    run = MlflowClient(tracking_uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["raynas.strategy"] == "darts"
    assert 0.0 <= run.data.metrics["valid_acc"] <= 1.0
    assert run.data.params["execution.accelerator"] == "A100"
