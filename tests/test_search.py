"""End-to-end searches: in-process, resumed after a crash, and through a real Ray cluster into a
real MLflow tracking server."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import (
    BIN,
    RAY_CLIENT_PORTS,
    ray_client_logs,
    start_ray_head,
    stop_ray_cluster,
    tiny_job,
    write_job,
)
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
    assert proc.returncode == 0, proc.stderr[-3000:] + ray_client_logs(ray_head)
    # (Now and then Ray Client's proxy loses the server it starts for the driver, which connects
    # again and says so: the test below.)
    assert all(LOST_CLIENT_SERVER in line for line in proc.stderr.splitlines()), proc.stderr
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


LOST_CLIENT_SERVER = "lost the server it started for this driver before it answered; connecting again"

# Ray Client's proxy starts a server process for each driver. A Python startup hook in the head's
# proxy kills the first `lose` (a file beside it) of those servers the moment they are started, as
# they are lost here now and then: the process gone at once, its logs empty, and the proxy answering
# the driver "Starting Ray client server failed" (Ray 2.60's proxier.py, start_specific_server).
LOSING_HOOK = """
import os
with open("/proc/self/cmdline", "rb") as f:
    _cmd = f.read()
if b"ray.util.client.server" in _cmd and b"--mode=proxy" in _cmd:
    import ray._private.services as _services

    _start = _services.start_ray_client_server
    _here = os.path.dirname(os.path.abspath(__file__))

    def _losing(*args, **kwargs):
        started = _start(*args, **kwargs)
        with open(os.path.join(_here, "lose")) as f:
            lose = int(f.read())
        for n in range(lose):
            try:
                os.close(os.open(os.path.join(_here, f"lost-{n}"), os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                continue
            started.process.kill()
            while True:  # dead before the proxy looks at it (and left for it to reap)
                try:
                    with open(f"/proc/{started.process.pid}/stat") as f:
                        if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                            break
                except OSError:
                    break
            break
        return started

    _services.start_ray_client_server = _losing
"""


# Ray Client waits out its reconnection grace period (30 s) before it gives up on a lost server.
QUICK_TO_GIVE_UP = {**os.environ, "RAY_CLIENT_RECONNECT_GRACE_PERIOD": "2"}


@contextlib.contextmanager
def losing_head(folder: Path, lose: int, channel_timeout: int) -> Iterator[str]:
    """A Ray head whose Ray Client proxy loses the first ``lose`` servers it starts for drivers
    (each loss leaves a ``lost-<n>`` file in ``folder``); yields its Ray Client address. The
    proxy's log stream to a driver may wait for the lost server's channel (Ray's
    ``RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S``, 30 s by default; here ``channel_timeout``), then
    retry for 10 s, before the driver hears of the loss."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(LOSING_HOOK)
    (folder / "lose").write_text(str(lose))
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    address, temp_dir = start_ray_head(
        env={"PYTHONPATH": path, "RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S": str(channel_timeout)}
    )
    try:
        yield f"ray://127.0.0.1:{RAY_CLIENT_PORTS[address]}"
    finally:
        stop_ray_cluster(temp_dir)


@pytest.mark.integration
def test_a_ray_client_server_lost_at_its_start_is_asked_for_again_with_one_line(
    tmp_path: Path, mlflow_server: str
) -> None:
    """Ray Client's proxy loses the server process it starts for the driver (it exits at its
    start, its logs empty; Ray's client gives up with a traceback): the driver connects again,
    says so in one line, and the search runs to its end."""
    path = write_job(tmp_path, tiny_job(tmp_path, execution={"backend": "ray", "cpus_per_worker": 1},
                                        tracking={"tracking_uri": None, "experiment": "ray-lost"}))
    hook = tmp_path / "hook"
    # (12 s: twice a healthy server's start here, which the second try waits for)
    with losing_head(hook, lose=1, channel_timeout=12) as address:
        proc = subprocess.run([str(BIN / "raynas"), "search", str(path), "--address", address,
                               "--tracking-uri", mlflow_server], capture_output=True, text=True,
                              timeout=600, cwd=tmp_path, env=QUICK_TO_GIVE_UP)
    assert (hook / "lost-0").exists()  # the first server was lost
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and LOST_CLIENT_SERVER in lines[0] and "(try 2 of 3)" in lines[0], proc.stderr
    run_id = proc.stdout.split("MLflow run: ")[1].split()[0]
    assert MlflowClient(mlflow_server).get_run(run_id).info.status == "FINISHED"


@pytest.mark.integration
def test_a_ray_client_that_loses_every_server_is_one_line_naming_the_logs(tmp_path: Path) -> None:
    """Every try's server lost: one line naming the head's logs that say why, exit status 2."""
    path = write_job(tmp_path, tiny_job(tmp_path, execution={"backend": "ray", "cpus_per_worker": 1}))
    hook = tmp_path / "hook"
    with losing_head(hook, lose=3, channel_timeout=1) as address:  # (no server to wait for)
        proc = subprocess.run([str(BIN / "raynas"), "search", str(path), "--address", address],
                              capture_output=True, text=True, timeout=600, cwd=tmp_path, env=QUICK_TO_GIVE_UP)
    assert [(hook / f"lost-{n}").exists() for n in range(3)] == [True] * 3
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 3 and all(LOST_CLIENT_SERVER in line for line in lines[:2]), proc.stderr
    assert lines[2] == (
        f"raynas: error: Ray Client at {address} lost the server it starts for this driver 3 times in a "
        "row; its reasons are in the head node's Ray logs (ray_client_server.err and "
        "ray_client_server_<port>.err)"
    )


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
