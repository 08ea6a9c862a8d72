"""Ray deaths as the user of ``raynas search`` sees them: a Ray worker process running the
search's work is SIGKILLed (as by the OOM killer) under the real command on a loopback Ray head,
and the console holds raynas's one line naming the folder of Ray's logs, none of Ray's own report
of the death; the search goes on, or stops with status 1 when no restart is allowed."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import yaml
from conftest import (
    BIN,
    _process_tree,
    signalled,
    start_ray_head,
    stop_ray_cluster,
    tiny_job,
    write_job,
)
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.integration

# What Ray's driver prints of a dead worker when it is not kept off the console: its raylet's
# report (prefixed "(raylet)"), the paragraph about the worker's exit, the node's process table.
RAY_REPORT = ("(raylet)", "Worker exit type", "Worker exit detail", "PID\tMEM", "ray::_WorkerActor",
              # and Tune's: its failed trial's traceback, last result table, experiment table
              "Trial task failed", "errored after", "Traceback", "ImplicitFunc", "│",
              "Configuration for experiment", "View detailed results", "WARNING", "ERROR")


def workers_running(gcs_address: str, title: str) -> list[int]:
    """The pids of the Ray worker processes of the head at ``gcs_address`` whose title (Ray names
    a worker after the actor method it runs) starts with ``title``."""
    procs = _process_tree()
    port = gcs_address.rsplit(":", 1)[1]  # the head names itself by its node's address, not loopback's
    raylets = {pid for pid, (_, cmd) in procs.items()
               if cmd.split(" ")[0].endswith("/raylet") and re.search(rf"--gcs-address=\S+:{port}\s", cmd)}
    return sorted(pid for pid, (ppid, cmd) in procs.items() if ppid in raylets and cmd.startswith(title))


def worker_running(gcs_address: str, title: str) -> int | None:
    """The first of :func:`workers_running`, or None."""
    return min(workers_running(gcs_address, title), default=None)


def kill_mid_search(
    command: list[str], cwd: Path, gcs_address: str, title: str, after: tuple[str, ...]
) -> tuple[int, str]:
    """Run ``command``; each time it prints a line that holds the next of ``after``, SIGKILL the
    Ray worker process titled ``title``. Returns the exit status and everything it printed."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    said: list[str] = []
    triggers = list(after)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            said.append(line)
            if triggers and triggers[0] in line:
                triggers.pop(0)
                os.kill(wait_for_worker(proc, gcs_address, title, said), signal.SIGKILL)
        assert not triggers, "".join(said)
        return proc.wait(timeout=60), "".join(said)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


T = TypeVar("T")
SETTING_UP = "ray::_EvaluatorActor.setup"  # an evaluator actor's title while it is set up


def wait_until(value: Callable[[], T], said: list[str], proc: subprocess.Popen | None = None) -> T:
    """``value()`` once it is truthy (polled every 50 ms); fails the test with what the search
    ``said`` after 120 s, or once ``proc`` has ended."""
    deadline = time.monotonic() + 120
    while not (got := value()):
        assert time.monotonic() < deadline and (proc is None or proc.poll() is None), "".join(said)
        time.sleep(0.05)
    return got


def wait_for_worker(proc: subprocess.Popen, gcs_address: str, title: str, said: list[str]) -> int:
    return wait_until(lambda: worker_running(gcs_address, title), said, proc)


def killing(gcs_address: str, title: str, timeout: float = 120) -> Callable[[], int | None]:
    """SIGKILL, from a thread, the first Ray worker process titled ``title`` (of the head at
    ``gcs_address``) once one runs. Returns what waits for that: the pid killed (None: none ran
    within ``timeout`` seconds)."""
    killed: list[int] = []

    def kill() -> None:
        deadline = time.monotonic() + timeout
        while (pid := worker_running(gcs_address, title)) is None:
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    thread = threading.Thread(target=kill, name=f"killing {title}", daemon=True)
    thread.start()

    def killed_pid() -> int | None:
        thread.join()
        return killed[0] if killed else None

    return killed_pid


class WorkerLosses:
    """Loses the Ray worker (``ray::_WorkerActor``) of a search, retraining or study run in this
    process at the first line that starts with ``at`` (idle, between two calls); with
    ``in_setup``, also while it sets up as the command starts, and its replacement while that
    sets up. :meth:`echo` is the command's ``echo``."""

    def __init__(self, gcs_address: str, at: str, *, in_setup: bool = True) -> None:
        self.gcs_address, self.at, self.in_setup = gcs_address, at, in_setup
        self.lines: list[str] = []
        self.kills = [killing(gcs_address, "ray::_WorkerActor.setup")] if in_setup else []
        self.lost = False

    def echo(self, line: str) -> None:
        self.lines.append(line)
        if line.startswith(self.at) and not self.lost:
            self.lost = True
            idle = worker_running(self.gcs_address, "ray::_WorkerActor")
            assert idle is not None, self.lines
            os.kill(idle, signal.SIGKILL)
            if self.in_setup:
                self.kills.append(killing(self.gcs_address, "ray::_WorkerActor.setup"))

    def said(self) -> list[str]:
        """What the command said of each loss (all made): "starting the worker again (1 of at
        most 10 restarts)", "restarting the worker from epoch 1 (2 of ...)"."""
        assert self.lost and all(kill() is not None for kill in self.kills), self.lines
        told = [re.search(r"((re)?starting the worker .*restarts\)); Ray's logs are in ", line)
                for line in self.lines]
        return [found.group(1) for found in told if found]


def assert_quiet(console: str) -> list[str]:
    """None of Ray's reports in ``console``; returns raynas's lines that name Ray's logs, each
    naming the folder of a live Ray session."""
    lines = console.splitlines()
    leaked = [line for line in lines if any(report in line for report in RAY_REPORT)]
    assert leaked == [], console[-3000:]
    named = [line for line in lines if "Ray's logs are in " in line]
    for line in named:
        logs = Path(line.split("Ray's logs are in ")[1].split(")")[0].split(";")[0])
        assert (logs / "raylet.out").is_file(), line
    return named


def test_a_killed_ray_worker_is_one_raynas_line_and_none_of_rays_reports(
    tmp_path: Path, ray_head: str
) -> None:
    """The search's actor killed twice with one restart allowed: the first time the search goes
    on, the second it stops with status 1; each time raynas says so in one line naming Ray's logs."""
    job = tiny_job(tmp_path, train={"epochs": 3},
                   execution={"backend": "ray", "address": ray_head, "max_restarts": 1})
    command = [str(BIN / "raynas"), "search", str(write_job(tmp_path, job))]
    status, console = kill_mid_search(
        command, tmp_path, ray_head, "ray::_WorkerActor.run_epoch",
        after=("epoch   1/3", "restarting the worker from epoch 1"),
    )
    named = assert_quiet(console)
    assert len(named) == 2, console[-3000:]
    assert named[0].startswith("a Ray actor was lost (")
    assert "restarting the worker from epoch 1 (1 of at most 1 restarts)" in named[0]
    assert named[1].startswith("raynas: error: the worker's Ray actors were lost 2 times")
    assert named[1].endswith("run the same command again to resume")
    assert status == 1, console[-3000:]
    assert "epoch   2/3" not in console  # the epoch the actor died in twice


def test_sigterm_stops_a_ray_search_as_ctrl_c_does_in_one_line_and_the_same_command_resumes(
    tmp_path: Path, ray_head: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGTERM (``ray job stop``, Kubernetes stopping a pod) to ``raynas search`` on Ray: it was
    Ray's handler's exit with status 1, a stack dump of addresses from Ray's core on the console
    and the run marked FAILED; now one line, status 143, the run KILLED, and the same command
    goes on after the last epoch in the same run."""
    from raynas.cli import main

    job = tiny_job(tmp_path, execution={"backend": "ray", "address": ray_head})  # 2 epochs
    path = write_job(tmp_path, job)
    status, said = signalled([str(BIN / "raynas"), "search", str(path)], ("epoch   1/2",), signal.SIGTERM,
                             cwd=tmp_path)
    console = "".join(said)
    assert status == 128 + signal.SIGTERM, console[-3000:]
    assert said[-1] == "raynas: stopped by SIGTERM; run the same command again to resume\n", console[-3000:]
    assert "SIGTERM received" not in console and assert_quiet(console) == []
    run_id = console.split("MLflow run ")[1].split()[0]
    client = MlflowClient(job["tracking"]["tracking_uri"])
    assert client.get_run(run_id).info.status == "KILLED"
    assert main(["search", str(path)]) == 0
    out = capsys.readouterr().out
    assert next(line for line in out.splitlines() if line.startswith("epoch")).startswith("epoch   2/2"), out
    assert out.split("MLflow run: ")[1].split()[0] == run_id
    assert client.get_run(run_id).info.status == "FINISHED"


def processes_marked(marker: str) -> list[int]:
    """The live processes whose environment holds ``marker`` (a process and all it started
    inherit it; a zombie's environment reads as empty)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:  # gone meanwhile, or not ours to read
                pass
    return found


@pytest.mark.own_ray
def test_a_worker_killed_by_rays_memory_monitor_is_one_raynas_line_saying_what_to_lower(
    tmp_path: Path,
) -> None:
    """Ray's memory monitor kills the newest task's worker when its node's memory passes its
    threshold (95%; set to 2% here, which any machine running Ray passes): the search's actor
    died with ``ray.exceptions.OutOfMemoryError``, which is not an actor error, and the command
    ended in a 90-line traceback holding Ray's report of the node's memory. Now it is a lost
    worker as any other, in one line that says the node ran out of memory and what to lower."""
    from test_sampling_search import sampling_job

    job = sampling_job(tmp_path, {"name": "random", "evaluations": 2}, {"name": "scratch", "epochs": 1},
                       execution={"backend": "ray", "cpus_per_worker": 1, "max_restarts": 0})
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray, started with:
    env.update(RAY_memory_usage_threshold="0.02", RAY_memory_monitor_refresh_ms="50")
    done = subprocess.run([str(BIN / "raynas"), "search", str(write_job(tmp_path, job))], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("raynas: error: "), done.stderr[-3000:]
    assert "Ray's memory monitor killed it, its node's memory running out: " in done.stderr
    assert "lower data.batch_size or execution.concurrency, or give the node more memory" in done.stderr
    assert_quiet(done.stdout + done.stderr)


def test_a_tune_trial_out_of_memory_is_told_as_such_in_its_line(tmp_path: Path) -> None:
    """A trial Ray's memory monitor killed: its line says so, not the first 200 characters of
    Ray's report (which spent them on the node's id); one whose torch refused memory, or that
    raised any error, says that, not the first line of Ray's traceback. Tune's error file as Tune
    writes it (``Trial.handle_error``: a header, then ``str(exc)``), with the report of
    ``ray.exceptions.OutOfMemoryError`` as Ray 2.60 words it (seen in a search its memory monitor
    ended)."""
    from types import SimpleNamespace

    from raynas.execution.tune import SayTrialFailures

    error = tmp_path / "error.txt"
    trial = SimpleNamespace(trial_id="a1b2_00001", error_file=str(error), num_failures=1)
    said: list[str] = []
    say = SayTrialFailures(said.append, max_failures=3)

    def failed(text: str) -> None:
        error.write_text(f"Failure # 1 (occurred at 2026-12-06_00-04-20)\n{text}\n")

    def raised(frame: str, line: str) -> str:
        """Ray's remote traceback of an error raised in the trial: its header, a frame, the error."""
        return (f"\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=23250, ip=192.0.2.2, actor_id=0af1)\n"
                f"  File \"/venv/lib/python3.11/site-packages/torch/{frame}\n{line}")

    failed("1 worker(s) were killed due to the node running low on memory. Memory on the node (IP: "
           "192.0.2.2, ID: f4bfc859e1a70fd905cedd442a5b635ade2e7360b10af684f75ce86b) was 1.24GB used / "
           "23.54GB limit (0.052594)\nOOM kill reason: Memory usage 1329459200B exceeded threshold of "
           "505523872B (2.0% of 25276194816B limit)\nTop 10 memory users: PID\tMEM(GB)\tCOMMAND")
    say.on_trial_recover(0, [], trial)
    assert said[0].startswith(
        "trial a1b2_00001 failed (Ray's memory monitor killed it, its node's memory running out: 1.24GB "
        "used / 23.54GB limit; lower data.batch_size or execution.concurrency, or give the node more "
        "memory): it trains on from its last checkpoint (1 of at most 3 restarts); Ray's logs are in "
    ), said
    # torch's allocator refusing, in the trial: what the trial asked for.
    failed(raised("nn/modules/conv.py\", line 170, in __init__",
                  "RuntimeError: [enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                  "allocate memory: you tried to allocate 43200000000 bytes. Error code 12 (Cannot allocate "
                  "memory)"))
    say.on_trial_error(0, [], trial)
    assert said[1].startswith(
        "trial a1b2_00001 failed (out of memory: torch could not allocate 43.2 GB of memory): Tune gave up "
        "on it after 3 restarts; Ray's logs are in "
    ), said
    # Any error raised in the trial: its own line, the traceback's last, not Ray's header.
    failed(raised("nn/functional.py\", line 2510, in linear",
                  "RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x16 and 32x10)"))
    say.on_trial_error(0, [], trial)
    assert said[2].startswith(
        "trial a1b2_00001 failed (RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x16 and 32x10)): "
    ), said


@pytest.mark.own_ray
def test_ctrl_c_again_while_a_search_stops_its_local_ray_is_one_line_and_the_stop_finishes(
    tmp_path: Path,
) -> None:
    """Ctrl-C, then Ctrl-C again while the search stops (its line printed, the local Ray it
    started being shut down): the second press cut Ray's exit handler short, with a traceback
    ("Exception ignored in atexit callback ... KeyboardInterrupt"), and left Ray's agents running
    for a minute; now it is one more line and the stop finishes: no process of the command left,
    status 130, the run recorded as killed with its first epoch checkpointed, from where the same
    command resumes as after one press (tests/test_cli.py: a third press ends at once)."""
    from raynas.train.checkpoint import load_checkpoint

    job = tiny_job(tmp_path, train={"epochs": 2}, execution={"backend": "ray"})  # a local Ray
    marker = f"RAYNAS_TEST_MARK={tmp_path.name}-{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAYNAS_TEST_MARK"] = marker.split("=", 1)[1]
    command = [str(BIN / "raynas"), "search", str(write_job(tmp_path, job))]
    # Ctrl-C after the first epoch, and again once the stop is under way (its line printed; the
    # local Ray's shutdown follows).
    status, said = signalled(command, ("epoch   1/2", "raynas: interrupted"), signal.SIGINT,
                             cwd=tmp_path, env=env)
    console = "".join(said)
    assert status == 130, console[-3000:]
    assert said[-2:] == [
        "raynas: interrupted; run the same command again to resume\n",
        "raynas: still stopping (the MLflow run's end, Ray's processes); press Ctrl-C again to end at once\n",
    ], console[-3000:]
    assert "Traceback" not in console and "Exception ignored" not in console, console[-3000:]
    assert processes_marked(marker) == []  # Ray's processes stopped with the command
    state = load_checkpoint(tmp_path / "runs" / "tiny" / "checkpoint.pt")
    assert len(state["history"]) == 1 and not state["finished"]
    run_id = console.split("MLflow run ")[1].split()[0]
    assert state["run_id"] == run_id
    assert MlflowClient(job["tracking"]["tracking_uri"]).get_run(run_id).info.status == "KILLED"


def on_a_terminal(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    """Start ``command`` in a process group of its own with a pseudo-terminal as its console (as
    a shell runs a job); returns the process and the terminal's other end, from which its lines
    are read and whose closing is the terminal closed."""
    master, console = pty.openpty()
    proc = subprocess.Popen(command, cwd=cwd, env={**env, "PYTHONUNBUFFERED": "1"}, stdin=console,
                            stdout=console, stderr=console, start_new_session=True)
    os.close(console)
    return proc, master


def hang_up(proc: subprocess.Popen, master: int) -> int:
    """The terminal of ``proc`` (:func:`on_a_terminal`) closed, a write to it failing from now on,
    and SIGHUP sent to the command's process group, as its shell does; the command's exit status."""
    os.close(master)
    os.killpg(proc.pid, signal.SIGHUP)
    return proc.wait(timeout=60)


def ended(proc: subprocess.Popen) -> None:
    """``proc`` killed if it still runs (a test that failed while it did)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def read_until(proc: subprocess.Popen, master: int, text: str, timeout: float = 120) -> str:
    """What ``proc`` printed on its terminal up to the first line holding ``text``."""
    said = b""
    deadline = time.monotonic() + timeout
    while text.encode() not in said:
        assert time.monotonic() < deadline and proc.poll() is None, said.decode(errors="replace")
        if select.select([master], [], [], 0.5)[0]:
            said += os.read(master, 65536)
    return said.decode(errors="replace")


@pytest.mark.own_ray
def test_a_closed_terminal_stops_a_search_as_ctrl_c_does_and_the_same_command_resumes(tmp_path: Path) -> None:
    """The terminal of `raynas search` (on the local Ray it starts) closed after epoch 1, and its
    shell's SIGHUP to the command's process group: the command died at once, its MLflow run left
    RUNNING; and Ray's processes (in that group) got the SIGHUP too. Now it stops as on Ctrl-C,
    its writes to the gone terminal dropped: status 129, the run KILLED, no process of the command
    left, and the same command goes on after epoch 1 in the same run."""
    from raynas.train.checkpoint import load_checkpoint

    job = tiny_job(tmp_path, train={"epochs": 2}, execution={"backend": "ray"})  # a local Ray
    path = write_job(tmp_path, job)
    marker = f"{tmp_path.name}-{os.getpid()}"
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAYNAS_TEST_MARK": marker}
    proc, master = on_a_terminal([str(BIN / "raynas"), "search", str(path)], tmp_path, env)
    try:
        console = read_until(proc, master, "epoch   1/2")
        assert hang_up(proc, master) == 128 + signal.SIGHUP
    finally:
        ended(proc)
    assert processes_marked(f"RAYNAS_TEST_MARK={marker}") == []  # Ray's processes stopped with it
    state = load_checkpoint(tmp_path / "runs" / "tiny" / "checkpoint.pt")
    assert len(state["history"]) == 1 and not state["finished"]
    run_id = console.split("MLflow run ")[1].split()[0]
    assert state["run_id"] == run_id
    client = MlflowClient(job["tracking"]["tracking_uri"])
    assert client.get_run(run_id).info.status == "KILLED"
    again = subprocess.run([str(BIN / "raynas"), "search", str(path)], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    epochs = [line for line in again.stdout.splitlines() if line.startswith("epoch")]
    assert [line.split()[1] for line in epochs] == ["2/2"], again.stdout
    assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.own_ray
def test_a_terminal_closed_while_the_local_ray_starts_stops_the_search_and_the_same_command_runs_it(
    tmp_path: Path,
) -> None:
    """The terminal closed (and its shell's SIGHUP to the command's group) while `raynas search`
    starts its local Ray, once Ray's GCS runs: the hangup was ignored in those seconds, to keep it
    from Ray's processes, and lost; the search went on. Now it stops the command as a later one
    does (status 129, none of Ray's processes left), and the same command runs the search."""
    job = tiny_job(tmp_path, train={"epochs": 1}, execution={"backend": "ray"})  # a local Ray
    path = write_job(tmp_path, job)
    marker = f"{tmp_path.name}-{os.getpid()}"
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAYNAS_TEST_MARK": marker}
    proc, master = on_a_terminal([str(BIN / "raynas"), "search", str(path)], tmp_path, env)
    said = b""
    try:
        deadline = time.monotonic() + 120
        while not any(_name(pid) == "gcs_server" for pid in processes_marked(f"RAYNAS_TEST_MARK={marker}")):
            assert time.monotonic() < deadline and proc.poll() is None, said.decode(errors="replace")
            if select.select([master], [], [], 0.02)[0]:
                said += os.read(master, 65536)
        assert b"Searching " not in said  # (Ray not started yet: the line follows its start)
        assert hang_up(proc, master) == 128 + signal.SIGHUP
    finally:
        ended(proc)
    assert processes_marked(f"RAYNAS_TEST_MARK={marker}") == []  # Ray's processes stopped with it
    client = MlflowClient(job["tracking"]["tracking_uri"])
    experiment = client.get_experiment_by_name("tests")
    assert experiment is None or client.search_runs([experiment.experiment_id]) == []  # (made after)
    again = subprocess.run([str(BIN / "raynas"), "search", str(path)], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [line.split()[1] for line in again.stdout.splitlines() if line.startswith("epoch")] == ["1/1"]


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def test_under_nohup_a_hangup_is_ignored_and_the_search_goes_on(tmp_path: Path) -> None:
    """`nohup raynas search ...`: SIGHUP, ignored by nohup, stays ignored (the command's own
    handler would have stopped it)."""
    job = tiny_job(tmp_path, train={"epochs": 2}, execution={"backend": "local"})
    command = ["nohup", str(BIN / "raynas"), "search", str(write_job(tmp_path, job))]
    status, said = signalled(command, ("epoch   1/2",), signal.SIGHUP, cwd=tmp_path)
    assert status == 0, "".join(said)[-3000:]
    assert any(line.startswith("epoch   2/2") for line in said), "".join(said)[-3000:]


def test_a_search_whose_terminal_is_gone_goes_on_to_its_end(tmp_path: Path) -> None:
    """The terminal closed with `raynas search` running in the background and no SIGHUP sent to
    it (bash's exit with huponexit off, a job disowned): its next line's write failed (EIO) and
    ended the search. Now its lines are dropped and it runs to its end, recorded as finished."""
    from raynas.train.checkpoint import load_checkpoint

    job = tiny_job(tmp_path, train={"epochs": 2}, execution={"backend": "local"})
    path = write_job(tmp_path, job)
    proc, master = on_a_terminal([str(BIN / "raynas"), "search", str(path)], tmp_path, dict(os.environ))
    try:
        console = read_until(proc, master, "epoch   1/2")
        os.close(master)
        status = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert status == 0
    run = MlflowClient(job["tracking"]["tracking_uri"]).get_run(console.split("MLflow run ")[1].split()[0])
    assert run.info.status == "FINISHED"
    state = load_checkpoint(tmp_path / "runs" / "tiny" / "checkpoint.pt")
    assert len(state["history"]) == 2 and state["finished"]


def test_a_killed_evaluator_actor_of_a_sampling_search_is_one_raynas_line_and_none_of_rays_reports(
    tmp_path: Path, ray_head: str
) -> None:
    """A one-shot sampling search's evaluator actor (the supernet replica scoring candidates)
    killed after the second candidate: it is replaced and the search ends with every candidate
    once; raynas says so in one line naming Ray's logs, and none of Ray's reports reach the
    console."""
    from test_sampling_search import sampling_job

    spos = {"name": "spos", "population_size": 4, "sample_size": 2, "evaluations": 4}
    job = sampling_job(tmp_path, spos, {"name": "supernet", "bn_batches": 1}, train={"epochs": 1},
                       execution={"backend": "ray", "address": ray_head, "cpus_per_worker": 1})
    command = [str(BIN / "raynas"), "search", str(write_job(tmp_path, job))]
    status, console = kill_mid_search(command, tmp_path, ray_head, "ray::_EvaluatorActor",
                                      after=("candidate    2 ",))
    assert status == 0, console[-3000:]
    named = assert_quiet(console)
    assert len(named) == 1 and "replaced evaluator actor 0; Ray's logs are in " in named[0], console[-3000:]
    candidates = [line.split()[1] for line in console.splitlines() if line.startswith("candidate")]
    assert candidates == [str(k) for k in range(1, spos["evaluations"] + 1)], console[-3000:]


@contextlib.contextmanager
def searching(tmp_path: Path, job: dict) -> Iterator[tuple[subprocess.Popen, list[str], list[int]]]:
    """``raynas search`` of ``job`` while the block runs: its process (stderr merged, unbuffered),
    the lines it printed (the block reads them into it) and the processes the block froze
    (SIGSTOP), which are continued at the end; the search is killed if it still runs then."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([str(BIN / "raynas"), "search", str(write_job(tmp_path, job))], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    said: list[str] = []
    frozen: list[int] = []
    try:
        yield proc, said, frozen
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def every_candidate_once(proc: subprocess.Popen, said: list[str], evaluations: int) -> str:
    """The console of a search that ended with status 0, each of its ``evaluations`` candidates
    printed once, in order."""
    console = "".join(said)
    assert proc.returncode == 0, console[-3000:]
    candidates = [line.split()[1] for line in console.splitlines() if line.startswith("candidate")]
    assert candidates == [str(k) for k in range(1, evaluations + 1)], console[-3000:]
    return console


def test_an_evaluator_actor_lost_while_it_is_set_up_is_started_again_and_the_search_goes_on(
    tmp_path: Path, ray_head: str
) -> None:
    """The evaluator actor killed while it sets up (its node gone as the search starts), and later
    the replacement of one lost mid-search killed while it sets up: the pool's start and its
    replacement let such a loss through, and the command ended whatever execution.max_restarts.
    Now the actors are started again after one line, a replacement is replaced in turn, and the
    search ends with every candidate once."""
    from test_sampling_search import sampling_job

    spos = {"name": "spos", "population_size": 4, "sample_size": 2, "evaluations": 4}
    job = sampling_job(tmp_path, spos, {"name": "supernet", "bn_batches": 1}, train={"epochs": 1},
                       execution={"backend": "ray", "address": ray_head, "cpus_per_worker": 1})
    with searching(tmp_path, job) as (proc, said, _):
        assert proc.stdout is not None
        # Its setup builds the data and the supernet: about a second on a worker of its own.
        os.kill(wait_for_worker(proc, ray_head, "ray::_EvaluatorActor.setup", said), signal.SIGKILL)
        for line in proc.stdout:
            said.append(line)
            if line.startswith("candidate    2 "):  # lost mid-search, then its replacement as it sets up
                os.kill(wait_for_worker(proc, ray_head, "ray::_EvaluatorActor", said), signal.SIGKILL)
                os.kill(wait_for_worker(proc, ray_head, "ray::_EvaluatorActor.setup", said), signal.SIGKILL)
        proc.wait(timeout=60)
    console = every_candidate_once(proc, said, spos["evaluations"])
    named = assert_quiet(console)
    assert len(named) == 2, console[-3000:]
    assert "starting the 1 evaluator actor(s) again; Ray's logs are in " in named[0], console[-3000:]
    assert "replaced evaluator actor 0; Ray's logs are in " in named[1], console[-3000:]


def test_an_evaluator_replacement_lost_before_it_has_its_peers_weights_is_replaced_in_turn(
    tmp_path: Path, ray_head: str
) -> None:
    """Two supernet replicas scoring candidates: one killed, and its peer frozen (SIGSTOP), so that
    the replacement, once set up, waits for the peer's weights; the replacement killed then, before
    it is given them (its node gone too). That loss went through and ended the search; now the
    replacement is replaced in turn, and the search ends with every candidate once."""
    from test_sampling_search import sampling_job

    spos = {"name": "spos", "population_size": 4, "sample_size": 2, "evaluations": 6}
    job = sampling_job(tmp_path, spos, {"name": "supernet", "bn_batches": 1}, train={"epochs": 1},
                       execution={"backend": "ray", "address": ray_head, "cpus_per_worker": 1,
                                  "concurrency": 2})
    with searching(tmp_path, job) as (proc, said, frozen):
        assert proc.stdout is not None
        for line in proc.stdout:
            said.append(line)
            if line.startswith("candidate    2 ") and not frozen:
                lost, peer = workers_running(ray_head, "ray::_EvaluatorActor")
                os.kill(lost, signal.SIGKILL)
                # Its replacement sets up (about a second: data, supernet); the peer frozen meanwhile.
                replacement = wait_for_worker(proc, ray_head, "ray::_EvaluatorActor.setup", said)
                os.kill(peer, signal.SIGSTOP)
                frozen.append(peer)
                wait_until(lambda pid=replacement: pid not in workers_running(ray_head, SETTING_UP), said)
                # Set up, it waits for the frozen peer's weights: lost before it is given them.
                os.kill(replacement, signal.SIGKILL)
                os.kill(peer, signal.SIGCONT)
        proc.wait(timeout=60)
    console = every_candidate_once(proc, said, spos["evaluations"])
    assert "replaced evaluator actor" in console, console[-3000:]


def test_replicas_lost_again_before_they_have_the_state_they_are_rebuilt_from_are_rebuilt_again(
    tmp_path: Path, ray_head: str
) -> None:
    """Two supernet replicas training together: one killed in epoch 2, so the group is rebuilt
    from epoch 1's state; the driver frozen (SIGSTOP) while the new replicas set up, and one of
    them, set up, killed before the driver gives them that state. That loss went through and ended
    the search; now the group is rebuilt again, and the search ends with every candidate once."""
    from test_sampling_search import sampling_job

    spos = {"name": "spos", "population_size": 4, "sample_size": 2, "evaluations": 4}
    job = sampling_job(tmp_path, spos, {"name": "supernet", "bn_batches": 1}, train={"epochs": 2},
                       execution={"backend": "ray", "address": ray_head, "cpus_per_worker": 1,
                                  "concurrency": 2})
    job["data"]["limit"] = 960  # epochs of a second or two, to be killed in
    with searching(tmp_path, job) as (proc, said, frozen):
        assert proc.stdout is not None
        for line in proc.stdout:
            said.append(line)
            if line.startswith("supernet epoch   1/2") and not frozen:
                first = workers_running(ray_head, "ray::_EvaluatorActor")
                os.kill(wait_for_worker(proc, ray_head, "ray::_EvaluatorActor.train_epoch", said),
                        signal.SIGKILL)
                wait_for_worker(proc, ray_head, "ray::_EvaluatorActor.setup", said)
                os.kill(proc.pid, signal.SIGSTOP)  # the driver, until the new replicas are set up
                frozen.append(proc.pid)

                def set_up(first: list[int] = first) -> list[int]:  # the two new replicas, set up
                    replicas = workers_running(ray_head, "ray::_EvaluatorActor")
                    new = [pid for pid in replicas if pid not in first]
                    busy = workers_running(ray_head, SETTING_UP)
                    return new if len(new) == 2 and not busy else []

                new = wait_until(set_up, said)
                os.kill(new[0], signal.SIGKILL)  # set up, and not yet given the state
                os.kill(proc.pid, signal.SIGCONT)
        proc.wait(timeout=60)
    console = every_candidate_once(proc, said, spos["evaluations"])
    assert "rebuilt the 2 replicas training together" in console, console[-3000:]


def test_a_killed_tune_trial_is_one_raynas_line_and_none_of_tunes_reports(
    tmp_path: Path, ray_head: str
) -> None:
    """A ``tune:`` search's trial actor killed after its first epoch: Tune trains it on from
    its checkpoint and the search ends; raynas says so in one line naming Ray's logs and Tune's
    error file, and none of Ray Tune's reports (a traceback, tables) reach the console."""
    from test_tune_cli import assert_recorded_once, shrunk

    path = shrunk("evolution_quickstart.yaml", tmp_path, ray_head,
                  strategy={"population_size": 2, "sample_size": 2, "evaluations": 2},
                  evaluator={"epochs": 4})  # time to find a trial in training
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([str(BIN / "raynas"), "search", str(path)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not any(r.read_text().strip() for r in (tmp_path / "runs").rglob("result.json")):
            assert time.monotonic() < deadline and proc.poll() is None, "no trial reported an epoch"
            time.sleep(0.05)
        # A trial training its second epoch (or starting it) dies.
        os.kill(wait_for_worker(proc, ray_head, "ray::ImplicitFunc.train", []), signal.SIGKILL)
        console, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, console[-3000:]
    named = assert_quiet(console)
    assert len(named) == 1, console[-3000:]
    assert named[0].startswith("trial ")
    assert "it trains on from its last checkpoint (1 of at most 10 restarts)" in named[0]
    error_file = Path(named[0].split("Tune's report of it: ")[1])
    assert "The actor died unexpectedly" in error_file.read_text()
    assert_recorded_once(tmp_path)


@pytest.mark.own_ray
def test_a_lost_ray_head_is_one_raynas_line_and_the_search_resumes_on_another_ray(tmp_path: Path) -> None:
    """The Ray head a search runs on is stopped mid-search: there is nothing to restart a worker
    on, so the command stops at once (before Ray's core would end it a minute later with its own
    report) with status 1 and one line naming Ray's logs; run again, on a local Ray, it resumes."""
    job = tiny_job(tmp_path, train={"epochs": 3}, execution={"backend": "ray"})
    command = [str(BIN / "raynas"), "search", str(write_job(tmp_path, job))]
    address, temp_dir = start_ray_head()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": address}
    try:
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        said: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            said.append(line)
            if line.startswith("epoch   1/3"):
                # The head's workers, and half a second later its GCS and raylet: the order in
                # which a node going down loses them, and the one that raced the check before.
                stop_ray_cluster(temp_dir, workers_first=0.5)
                stopped = time.monotonic()
        status = proc.wait(timeout=60)
        waited = time.monotonic() - stopped
        console = "".join(said)
        named = assert_quiet(console)  # (before the head's folder with Ray's logs goes)
    finally:
        stop_ray_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert status == 1, console[-3000:]
    assert len(named) == 1 and named[0].startswith("raynas: error: the Ray cluster at "), console[-3000:]
    assert "is gone" in named[0] and named[0].endswith("run the same command to resume")
    assert "restarting the worker" not in console and "Failed to connect to GCS" not in console
    assert said[0].startswith("Searching darts with darts")  # first, not MLflow's store creation
    assert waited < 45  # raynas's line, not Ray's core ending the process after its 60 s

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Resuming 'tiny' after epoch 1" in done.stdout
    epochs = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("epoch")]
    assert epochs == ["2/3", "3/3"]
    client = MlflowClient(job["tracking"]["tracking_uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id],
                                filter_string="tags.mlflow.runName = 'tiny'")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "valid_acc")] == [0, 1, 2]


def stop_head_and_wait(proc: subprocess.Popen, temp_dir: str, timeout: float) -> tuple[str, float]:
    """Stop the head under ``temp_dir`` (its workers, and half a second later its GCS and raylet:
    the order in which a node going down loses them) and wait for ``proc`` to end; returns what
    it printed and the seconds it took after the stop. ``proc`` is killed if it outlives that."""
    try:
        stop_ray_cluster(temp_dir, workers_first=0.5)
        stopped = time.monotonic()
        console, _ = proc.communicate(timeout=timeout)
        return console, time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


WATCHED = """
import os, sys, time
import ray
from raynas.execution.ray_actors import ClusterGone, watching_the_head

with watching_the_head(every=0.2):  # entered unconnected, as ``run_search`` enters it
    ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
    print("connected", flush=True)
    try:
        time.sleep(120)  # the main thread in Python, as a search recording its results after Tune
    except ClusterGone as gone:
        print(f"stopped: {gone.args[0]}", flush=True)
        os._exit(3)
os._exit(0)
"""


@pytest.mark.own_ray
def test_the_head_watch_starts_when_its_block_connects_and_stops_the_main_thread_when_the_head_goes(
    tmp_path: Path,
) -> None:
    """The watch a search runs under (``raynas.runs.search.run_search``) is entered before the
    search connects to Ray; from then on, a head that goes raises ``ClusterGone`` (raynas's line)
    in the main thread wherever it is, here outside any Tune run and any Ray call."""
    address, temp_dir = start_ray_head()
    try:
        proc = subprocess.Popen([str(BIN / "python"), "-c", WATCHED, address], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        said = [proc.stdout.readline()]
        if said != ["connected\n"]:
            proc.kill()
            raise AssertionError(said[0] + proc.communicate(timeout=60)[0])
        console, waited = stop_head_and_wait(proc, temp_dir, timeout=100)
    finally:
        stop_ray_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert proc.returncode == 3, console[-3000:]
    stopped_lines = [line for line in console.splitlines() if line.startswith("stopped: ")]
    assert len(stopped_lines) == 1, console[-3000:]
    assert stopped_lines[0].startswith("stopped: the Ray cluster at ") and "is gone" in stopped_lines[0]
    assert waited < 45  # the watch, not Ray's core ending the process after its 60 s


@pytest.mark.own_ray
def test_a_lost_ray_head_stops_a_tune_search_with_one_raynas_line_and_it_resumes_on_another_ray(
    tmp_path: Path,
) -> None:
    """The head of a ``tune:`` search's Ray goes while a trial trains: Tune would try the lost
    trials again and clean up through the dead head until Ray's core ended the process a minute
    later with its own report; raynas stops at once with status 1 and one line naming Ray's
    logs, and run again on a local Ray the search resumes and records every candidate once."""
    from test_tune_cli import assert_recorded_once, shrunk

    address, temp_dir = start_ray_head()
    path = shrunk("evolution_quickstart.yaml", tmp_path, address,
                  strategy={"population_size": 2, "sample_size": 2, "evaluations": 2},
                  evaluator={"epochs": 3})
    raw = yaml.safe_load(path.read_text())
    del raw["execution"]["address"]  # the head comes from RAY_ADDRESS, and the second run has none
    path.write_text(yaml.safe_dump(raw))
    command = [str(BIN / "raynas"), "search", str(path)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": address}
    try:
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        # A trial's first epoch checkpointed (trials write them to storage themselves, where
        # Tune's result files arrive only when the driver syncs, often at the end): 2 more to go.
        deadline = time.monotonic() + 300
        while not any((tmp_path / "runs").rglob("checkpoint_000000/state.pt")):
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise AssertionError("no trial checkpointed an epoch: " + proc.communicate(timeout=60)[0])
            time.sleep(0.05)
        console, waited = stop_head_and_wait(proc, temp_dir, timeout=120)
        named = assert_quiet(console)  # (before the head's folder with Ray's logs goes)
    finally:
        stop_ray_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert proc.returncode == 1, console[-3000:]
    assert len(named) == 1 and named[0].startswith("raynas: error: the Ray cluster at "), console[-3000:]
    assert "is gone" in named[0] and named[0].endswith("run the same command to resume")
    assert "trains on" not in console and "Failed to connect to GCS" not in console
    assert waited < 45  # raynas's line, not Ray's core ending the process after its 60 s

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Resuming 'tune-cli'" in done.stdout
    assert len(assert_recorded_once(tmp_path)) >= 2
