"""End-to-end searches: in-process, resumed after a crash, and through a real Ray cluster into a
real MLflow tracking server."""

from __future__ import annotations

import json
import logging
import re
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import BIN, RAY_CLIENT_PORTS, ray_client_logs, tiny_job, write_job
from mlflow.tracking import MlflowClient

from raynas.errors import ConfigError
from raynas.execution.ray_actors import _quiet_ray_client_relay
from raynas.runs import run_search
from raynas.runs.jobs import parse_job
from raynas.spaces import SPACES
from raynas.spaces.darts_genotype import DartsGenotype
from raynas.train.checkpoint import load_checkpoint
from raynas.types import Architecture


class Crash(Exception):
    pass


def test_local_search_records_every_epoch_in_mlflow(tmp_path: Path) -> None:
    config = parse_job(tiny_job(tmp_path, tracking={"pictures": True}))
    lines: list[str] = []
    result = run_search(config, echo=lines.append)

    assert isinstance(result.architecture, DartsGenotype) and result.architecture.nodes == 2
    assert [line.split()[1] for line in lines if line.startswith("epoch")] == ["1/2", "2/2"]
    assert all("eta" in line for line in lines if line.startswith("epoch"))

    client = MlflowClient(config.tracking.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["raynas.space"] == "darts"
    assert run.data.tags["raynas.strategy"] == "darts"
    assert run.data.tags["raynas.dataset"] == "digits"
    assert run.data.params["space.channels"] == "4"
    for metric in ("train_loss", "train_acc", "valid_loss", "valid_acc", "alpha_entropy"):
        assert [m.step for m in client.get_metric_history(result.run_id, metric)] == [0, 1]
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"genotype.json", "arch_weights.json", "config.json", "genotypes"} <= artifacts
    epochs = {a.path for a in client.list_artifacts(result.run_id, "genotypes")}
    assert epochs == {"genotypes/epoch_000.json", "genotypes/epoch_001.json"}
    weights = {a.path for a in client.list_artifacts(result.run_id, "arch_weights")}
    assert weights == {"arch_weights/epoch_000.json", "arch_weights/epoch_001.json"}
    local = client.download_artifacts(result.run_id, "genotype.json", str(tmp_path))
    assert Architecture.from_json(Path(local).read_text()) == result.architecture
    # Every epoch's candidate (child run) holds its architecture's picture.
    children = client.search_runs([run.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'")
    assert sorted(c.info.run_name for c in children) == ["epoch 000", "epoch 001"]
    for child in children:
        folder = tmp_path / child.info.run_id
        png = Path(client.download_artifacts(child.info.run_id, "architecture.png", str(folder)))
        assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        # ... and its cells' width and depth (Shu et al.), as the space measures them.
        local = client.download_artifacts(child.info.run_id, "architecture.json", str(folder))
        arch = Architecture.from_json(Path(local).read_text())
        shape = SPACES.create("darts", config.space.config).cell_shape(arch)
        assert {k: child.data.metrics[k] for k in shape} == shape
    assert "cell_shapes.png" in artifacts  # the epochs' cells against random cells of the space


def test_crashed_search_resumes_where_it_stopped(tmp_path: Path) -> None:
    job = tiny_job(tmp_path, train={"epochs": 3})
    reference = run_search(parse_job({**job, "name": "reference"}), echo=lambda _: None)

    config = parse_job(job)

    def crash_after_first_epoch(line: str) -> None:
        if line.startswith("epoch   1/"):
            raise Crash

    with pytest.raises(Crash):
        run_search(config, echo=crash_after_first_epoch)
    state = load_checkpoint(tmp_path / "runs" / "tiny" / "checkpoint.pt")
    assert len(state["history"]) == 1 and not state["finished"]
    client = MlflowClient(config.tracking.tracking_uri)
    assert client.get_run(state["run_id"]).info.status == "FAILED"

    lines: list[str] = []
    resumed = run_search(config, echo=lines.append)
    assert lines[0].startswith("Resuming 'tiny' after epoch 1")
    assert [line.split()[1] for line in lines if line.startswith("epoch")] == ["2/3", "3/3"]
    # Same MLflow run, every epoch recorded once per step, and exactly the uninterrupted result.
    assert resumed.run_id == state["run_id"]
    assert client.get_run(resumed.run_id).info.status == "FINISHED"
    assert sorted({m.step for m in client.get_metric_history(resumed.run_id, "valid_acc")}) == [0, 1, 2]
    assert resumed.architecture == reference.architecture
    for a, b in zip(
        load_checkpoint(resumed.checkpoint)["history"][-1]["arch_weights"].values(),
        load_checkpoint(reference.checkpoint)["history"][-1]["arch_weights"].values(),
        strict=True,
    ):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b))


def test_resuming_with_another_config_is_refused_naming_what_changed(tmp_path: Path) -> None:
    job = tiny_job(tmp_path, train={"epochs": 2})

    def interrupt(line: str) -> None:
        if line.startswith("epoch"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(parse_job(job), echo=interrupt)
    state = load_checkpoint(tmp_path / "runs" / "tiny" / "checkpoint.pt")
    assert MlflowClient(job["tracking"]["tracking_uri"]).get_run(state["run_id"]).info.status == "KILLED"
    changed = parse_job({**job, "seed": 1, "data": {**job["data"], "limit": 64}})
    with pytest.raises(ConfigError, match=re.escape(
            "with another config (data.limit was 96, is 64; seed was 0, is 1); pass --fresh to start "
            "over, give the job another name, or undo the change to resume it")):
        run_search(changed, echo=lambda _: None)
    assert run_search(changed, fresh=True, echo=lambda _: None).metrics


@pytest.mark.integration
@pytest.mark.parametrize("join", ["gcs", "ray_client"])
def test_search_on_a_ray_cluster_into_an_mlflow_server(
    tmp_path: Path, ray_head: str, mlflow_server: str, join: str
) -> None:
    """Joined at the head's GCS address or through Ray Client (``ray://``, the README's example),
    the search runs on the cluster and nothing of Ray's reaches the console."""
    job = tiny_job(
        tmp_path,
        execution={"backend": "ray", "cpus_per_worker": 1},
        tracking={"tracking_uri": None, "experiment": "ray-e2e"},
    )
    path = write_job(tmp_path, job)
    address = ray_head if join == "gcs" else f"ray://127.0.0.1:{RAY_CLIENT_PORTS[ray_head]}"
    command = [str(BIN / "raynas"), "search", str(path), "--address", address,
               "--tracking-uri", mlflow_server]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    if join == "ray_client" and "Starting Ray client server failed" in proc.stderr:
        # Ray Client's proxy now and then loses the server it starts for each client: the process
        # exits at once and leaves empty logs (2 of 3 full suites here, 1 of ~40 runs alone; Ray
        # 2.60's proxier.py). Not raynas's doing; the same command once more (noted for a fix).
        proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:] + ray_client_logs(ray_head)
    assert proc.stderr == ""
    assert "Ray actor on" in proc.stdout
    run_id = proc.stdout.split("MLflow run: ")[1].split()[0]
    assert f"{mlflow_server}/#/experiments/" in proc.stdout

    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run_id, "valid_acc")) == 2
    assert run.data.metrics["alpha_entropy"] > 0
    genotype = json.loads(Path(client.download_artifacts(run_id, "genotype.json", str(tmp_path))).read_text())
    assert genotype["space"] == "darts" and len(genotype["normal"]) == 4


def test_ray_clients_relay_of_its_servers_sigterm_warning_stays_off_the_console(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Ray Client's server joins the cluster in a thread and warns that it cannot set its SIGTERM
    handler there; Ray Client relays it to the client's logger (now and then: it races the relay's
    start, so the search above shows it only sometimes). Kept off; the relay's other records not."""
    from ray.util.client.logsclient import logger as relay  # (the relay's own logger: not propagated)

    _quiet_ray_client_relay()
    _quiet_ray_client_relay()  # (once per process as many times as Ray is joined)
    assert len(relay.filters) == 1
    level = relay.level
    relay.setLevel(logging.INFO)  # as Ray Client sets it on connecting
    try:
        relay.warning("SIGTERM handler is not set because current thread is not the main thread.")
        relay.warning("Log channel is reconnecting.")
    finally:
        relay.setLevel(level)
    assert capfd.readouterr().err == "Log channel is reconnecting.\n"


@pytest.mark.integration
def test_a_worker_lost_while_it_is_set_up_is_started_again_and_the_search_ends_as_an_undisturbed_one(
    tmp_path: Path, ray_head: str
) -> None:
    """The worker killed while it sets up (its node gone as the search starts), and after epoch 1
    again, its replacement killed while it sets up: such a loss ended the search whatever
    execution.max_restarts. Now each is one line, the worker is started again (from the last
    epoch's checkpoint), each counted as a restart, and the search ends as the same search
    undisturbed (in this process) ends."""
    import ray
    from test_quiet_failures import WorkerLosses

    local = parse_job(tiny_job(tmp_path / "local", train={"epochs": 2}))
    undisturbed = run_search(local, echo=lambda _: None)
    job = tiny_job(tmp_path, train={"epochs": 2}, execution={"backend": "ray", "address": ray_head})
    losses = WorkerLosses(ray_head, at="epoch   1/")
    try:
        result = run_search(parse_job(job), echo=losses.echo)
    finally:
        ray.shutdown()
    assert losses.said() == [
        "starting the worker again (1 of at most 10 restarts)",
        "restarting the worker from epoch 1 (2 of at most 10 restarts)",
        "starting the worker again (3 of at most 10 restarts)",
    ]
    assert [line.split()[1] for line in losses.lines if line.startswith("epoch")] == ["1/2", "2/2"]
    assert result.architecture == undisturbed.architecture
    assert result.metrics == undisturbed.metrics


@pytest.mark.integration
def test_a_killed_actor_is_replaced_and_without_restarts_the_search_resumes(
    tmp_path: Path, ray_head: str, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    import os
    import signal

    import ray

    from raynas.errors import WorkerLostError
    from raynas.execution import ray_actors

    started: list[ray_actors.RayWorker] = []
    original = ray_actors.RayWorker.__init__

    def capture(self: ray_actors.RayWorker, *args: object) -> None:
        original(self, *args)  # type: ignore[arg-type]
        started.append(self)

    monkeypatch.setattr(ray_actors.RayWorker, "__init__", capture)
    job = tiny_job(tmp_path, train={"epochs": 3}, execution={"backend": "ray", "address": ray_head})
    lines: list[str] = []

    def kill_after_first_epoch(line: str) -> None:
        lines.append(line)
        if line.startswith("epoch   1/"):  # its process killed, as by the OOM killer
            actor = started[-1].actors[0]
            os.kill(ray.get(actor.__ray_call__.remote(lambda _: os.getpid())), signal.SIGKILL)

    try:  # elastic: the worker is rebuilt from the checkpoint of epoch 1 and the search goes on
        elastic = run_search(parse_job(job), echo=kill_after_first_epoch)
        assert any("restarting the worker from epoch 1 (1 of at most 10 restarts)" in line for line in lines)
        assert [line.split()[1] for line in lines if line.startswith("epoch")] == ["1/3", "2/3", "3/3"]
        # With no restarts allowed the search stops, and the same command resumes it.
        config = parse_job({**job, "name": "tiny-stop", "execution": {**job["execution"], "max_restarts": 0}})
        with pytest.raises(WorkerLostError, match="run the same command again to resume") as lost:
            run_search(config, echo=kill_after_first_epoch)
        logs = str(lost.value).split("Ray's logs are in ")[1].split(")")[0].split(";")[0]
        assert (Path(logs) / "raylet.out").is_file()
        lines = []
        result = run_search(config, echo=lines.append)
        undisturbed = run_search(parse_job({**job, "name": "tiny-whole"}), echo=lambda _: None)
    finally:
        ray.shutdown()
    # Both end as the same search undisturbed ends.
    for disturbed in (elastic, result):
        assert disturbed.architecture == undisturbed.architecture
        assert disturbed.metrics == undisturbed.metrics
    assert lines[0].startswith("Resuming 'tiny-stop' after epoch 1")
    assert [line.split()[1] for line in lines if line.startswith("epoch")] == ["2/3", "3/3"]
    client = MlflowClient(config.tracking.tracking_uri)
    for run_id in (elastic.run_id, result.run_id):
        assert client.get_run(run_id).info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run_id, "valid_acc")] == [0, 1, 2]
    # Two workers died: raynas said so in its lines; Ray's reports of it stayed in Ray's logs.
    console = "".join(capfd.readouterr())
    assert "(raylet)" not in console and "Worker exit type" not in console, console[-2000:]
