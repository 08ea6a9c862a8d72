"""``raynas search`` through Ray Tune on a real local Ray, as users run it, with ASHA, HyperBand and
PBT (their quick-start job files, made small): the driver process is killed (SIGKILL) once its
first result is journaled, and the same command run again finishes the search, whose MLflow
child runs and Parquet rows hold every evaluation exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import BIN, signalled
from mlflow.tracking import MlflowClient

from raynas.execution.tune import last_pbt_state, last_trial_state
from raynas.runs.journal import Journal
from raynas.runs.sampling import search_state
from raynas.tracking import ResultsStore
from raynas.types import Architecture

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[1]
SHRINK = {
    "space": {"channels": 4}, "data": {"limit": 96, "batch_size": 16},
    "evaluator": {"channels": 4, "layers": 1},
    "execution": {"cpus_per_worker": 1},
}


def shrunk(job: str, tmp_path: Path, address: str, **sections: dict) -> Path:
    """The job file, made small, on the test's Ray head and stores."""
    raw = yaml.safe_load((ROOT / "jobs" / job).read_text())
    for key, value in {**SHRINK, **sections}.items():
        raw[key] = {**raw.get(key, {}), **value}
    raw["name"] = "tune-cli"
    raw["execution"]["address"] = address
    raw["tracking"] = {"experiment": "tune-cli", "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                       "output_dir": str(tmp_path / "runs"), "pictures": False}
    path = tmp_path / job
    path.write_text(yaml.safe_dump(raw))
    return path


def results_told(tmp_path: Path) -> int:
    events = Journal(str(tmp_path / "runs" / "tune-cli" / "journal.jsonl")).events
    return sum(e["e"] == "result" for e in events)


def checkpointed_in_flight(tmp_path: Path) -> dict[str, str]:
    """Trials asked and not told that have a checkpoint, with their candidate's architecture (a
    PBT candidate's checkpoint is that of the trial training it in the latest round)."""
    events = Journal(str(tmp_path / "runs" / "tune-cli" / "journal.jsonl")).events
    asked: dict[str, str] = {}
    for e in events:  # a result settles its trial's ask, else the earliest ask of its candidate
        if e["e"] == "ask":
            asked[e["trial"]] = e["arch"]
        elif e["e"] == "result" and asked.pop(e["result"]["trial_id"], None) is None:
            key = Architecture.from_json(e["result"]["architecture"]).key()
            same = [t for t, a in asked.items() if Architecture.from_json(a).key() == key]
            if same:
                del asked[same[0]]
    tune = str(tmp_path / "runs" / "tune-cli" / "tune")
    return {
        t: a for t, a in asked.items()
        if (last_pbt_state(tune, "tune-cli", Architecture.from_json(a).key()) if t.startswith("pbt")
            else last_trial_state(tune, "tune-cli", t))
    }


def stopped_with_a_checkpointed_trial_in_flight(
    driver: subprocess.Popen, tmp_path: Path, timeout: float = 300
) -> dict[str, str]:
    """Stop (SIGSTOP) the search ``driver`` at a moment when it has journaled a result and a trial
    it has not told has a checkpoint; those trials. The driver is stopped before the journal is
    read for the last time, so no result is told between that reading and its death."""
    deadline = time.monotonic() + timeout
    while driver.poll() is None and time.monotonic() < deadline:
        if results_told(tmp_path) >= 1 and checkpointed_in_flight(tmp_path):
            driver.send_signal(signal.SIGSTOP)
            if in_flight := checkpointed_in_flight(tmp_path):
                return in_flight
            driver.send_signal(signal.SIGCONT)  # told between the two readings: wait for another
        time.sleep(0.1)
    raise AssertionError(
        f"the search finished, or ran {timeout:.0f} s, before a trial in flight had a checkpoint"
    )


def trial_results(tmp_path: Path) -> set[Path]:
    """Every trial's ``result.json``, in every experiment (PBT runs one per round)."""
    return set((tmp_path / "runs" / "tune-cli" / "tune").glob("*/*/result.json"))


def assert_recorded_once(tmp_path: Path) -> list[str]:
    state = search_state(str(tmp_path / "runs" / "tune-cli" / "checkpoint.pt"))
    assert state["finished"]
    told = [r["trial_id"] for r in state["results"] + state["retrained"]]
    assert len(told) == len(set(told))  # no evaluation told twice
    rows = ResultsStore(tmp_path / "runs" / "results").read_table().column("trial_id").to_pylist()
    assert sorted(rows) == sorted(told)  # one row each
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tune-cli")
    parents = [r for r in client.search_runs([experiment.experiment_id])
               if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'"
    )
    assert sorted(c.data.tags["raynas.trial_id"] for c in children) == sorted(told)  # one run each
    return told


@pytest.mark.parametrize(
    ("job", "strategy", "tune"),
    [
        # ASHA from the second rung (epoch 2) of three: with its first rung at epoch 1, a whole
        # second generation could be stopped there, and no trial was ever in flight past its
        # first epoch once a result had been told (one run of five here).
        ("evolution_quickstart.yaml", {"population_size": 2, "sample_size": 2, "evaluations": 4},
         {"grace_period": 2}),
        ("hyperband_quickstart.yaml", {"evaluations": 4}, {}),
        ("pbt_quickstart.yaml", {"population_size": 2, "sample_size": 2, "evaluations": 4}, {}),
    ],
    ids=["asha", "hyperband", "pbt"],
)
def test_a_tune_search_killed_with_sigkill_resumes_and_records_each_evaluation_once(
    job: str, strategy: dict, tune: dict, tmp_path: Path, ray_head: str
) -> None:
    # PBT tells its first result mid-round: three epochs leave time to kill it with a trial past
    # its first epoch (the others tell theirs only at the end of a trial); ASHA's three, to stop
    # trials at its rung at epoch 2.
    epochs = 2 if job.startswith("hyperband") else 3
    path = shrunk(job, tmp_path, ray_head, strategy=strategy, evaluator={"epochs": epochs}, tune=tune)
    command = [str(BIN / "raynas"), "search", str(path)]
    env = {**os.environ, "RAY_ADDRESS": ray_head}
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        in_flight = stopped_with_a_checkpointed_trial_in_flight(driver, tmp_path, timeout=200)
        before = trial_results(tmp_path)
    finally:  # the driver dies, a result journaled, a trial mid-training (or the test failed)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    # Well within the test's own timeout: a resumed search that hangs is killed by subprocess.run,
    # and the test fails with its output, instead of pytest-timeout ending the worker with the
    # search still running.
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=360)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Resuming 'tune-cli'" in done.stdout
    # Tune's result loggers' warning for each restored trial (PBT's copies too) is kept off.
    assert "Remote file not found" not in done.stdout + done.stderr, done.stderr[-2000:]
    told = assert_recorded_once(tmp_path)
    # Every candidate the controller asked for was evaluated (PBT also records a trial's copies).
    assert len({r for r in told if "~" not in r}) >= strategy["evaluations"]
    # A trial training when the driver died went on from its checkpoint: the new trial of its
    # candidate starts after its first epoch.
    first_epochs = {
        json.loads(line)["arch"]: json.loads(line)["epoch"]
        for result in trial_results(tmp_path) - before
        if (line := result.read_text().partition("\n")[0])
    }
    keys = {Architecture.from_json(arch).key() for arch in in_flight.values()}
    assert keys and all(first_epochs.get(key, 0) > 1 for key in keys)


def stop_a_tune_search(tmp_path: Path, ray_head: str, signum: int) -> tuple[Path, list[str]]:
    """A small ASHA search run with `raynas search`, sent ``signum`` once a candidate is told: its
    job file and its lines. It stopped: not finished, its MLflow run killed."""
    path = shrunk("evolution_quickstart.yaml", tmp_path, ray_head, evaluator={"epochs": 2},
                  strategy={"population_size": 2, "sample_size": 2, "evaluations": 4})
    status, said = signalled([str(BIN / "raynas"), "search", str(path)], ("candidate    1 ",), signum)
    console = "".join(said)
    assert status == 128 + signum, console[-3000:]
    assert "Stop signal received" not in console and "Search finished" not in console, console[-3000:]
    assert not search_state(str(tmp_path / "runs" / "tune-cli" / "checkpoint.pt"))["finished"]
    run_id = console.split("MLflow run ")[1].split()[0]
    assert MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id).info.status == "KILLED"
    return path, said


def test_ctrl_c_stops_a_tune_search_in_one_line_and_the_same_command_evaluates_the_rest(
    tmp_path: Path, ray_head: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C to `raynas search` of a Tune search, once a candidate is told: Tune's own SIGINT
    handler ended the experiment as if it were done, and the search answered with that one
    candidate, recorded as finished (and run again, said it had finished). Now it stops as any
    search does: one line, status 130; and the same command evaluates the rest, each once."""
    from raynas.cli import main

    path, said = stop_a_tune_search(tmp_path, ray_head, signal.SIGINT)
    assert said[-1] == "raynas: interrupted; run the same command again to resume\n", "".join(said)[-3000:]
    assert main(["search", str(path)]) == 0
    assert "Resuming 'tune-cli'" in capsys.readouterr().out
    assert len(assert_recorded_once(tmp_path)) >= 4


def test_sigusr1_stops_a_tune_search_in_one_line_as_ctrl_c_does(tmp_path: Path, ray_head: str) -> None:
    """SIGUSR1 (SLURM's warning before it preempts a job): Tune installs a handler for it whatever
    it is told, which ended the experiment as if it were done, as Ctrl-C did; now the search
    stops in one line, status 138, to resume as after Ctrl-C (the test above)."""
    _, said = stop_a_tune_search(tmp_path, ray_head, signal.SIGUSR1)
    assert said[-1] == "raynas: stopped by SIGUSR1; run the same command again to resume\n", (
        "".join(said)[-3000:])


def test_a_result_the_driver_cannot_record_stops_the_tune_search_with_its_error(
    tmp_path: Path, ray_head: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tune logs a searcher's errors and goes on; raynas stops the search and raises the error
    # instead, so no result is told without being recorded.
    import raynas.runs.sampling as sampling
    from raynas.runs import load_job, run_search

    path = shrunk("evolution_quickstart.yaml", tmp_path, ray_head,
                  strategy={"population_size": 2, "sample_size": 2, "evaluations": 6},
                  evaluator={"epochs": 1})

    def disk_full(self: sampling.SamplingSearch, result: object, **kw: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sampling.SamplingSearch, "tell", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run_search(load_job(path), echo=lambda _: None)
    assert results_told(tmp_path) == 0


def test_a_tune_search_runs_whatever_its_echo_and_the_processs_sigusr1_handler_hold(
    tmp_path: Path, ray_head: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tune pickles its callbacks with its config. The driver's echo was the builtin ``print``,
    which does not pickle once Ray's driver has put its tqdm-safe print in builtins (it does on
    the first line a worker logs), and the SIGUSR1 handler kept to put back was Tune's own when a
    Tune run outside raynas had left it (a closure over a threading.Event): either failed the
    search before its first trial."""
    import builtins
    import threading

    from ray.experimental import tqdm_ray

    from raynas.runs import load_job, run_search

    path = shrunk("evolution_quickstart.yaml", tmp_path, ray_head,
                  strategy={"population_size": 2, "sample_size": 2, "evaluations": 2},
                  evaluator={"epochs": 1})
    interrupted = threading.Event()

    def tunes_own_handler(sig: int, frame: object) -> None:  # as tune.py's signal_interrupt_tune_run
        interrupted.set()

    before = signal.signal(signal.SIGUSR1, tunes_own_handler)
    try:
        monkeypatch.setattr(builtins, "print", tqdm_ray.safe_print)
        the_builtin_print = tqdm_ray._print  # the builtin, as raynas's default arguments hold it
        assert the_builtin_print is not builtins.print
        run_search(load_job(path), echo=the_builtin_print)
        assert results_told(tmp_path) == 2
        assert signal.getsignal(signal.SIGUSR1) is tunes_own_handler
    finally:
        signal.signal(signal.SIGUSR1, before)
