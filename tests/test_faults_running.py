"""Faults injected into running searches, with real parts on loopback: the driver SIGKILLed at
random moments and in every phase, and resumed; the MLflow server and the S3 server gone together
for 30 s in the middle of a search."""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch
from conftest import S3Server, driver_processes, tiny_job, write_job
from mlflow.tracking import MlflowClient
from test_sampling_search import SPOS, sampling_job
from test_tracking import CuttableLink

from raynas import storage
from raynas.cli import main
from raynas.runs import run_search
from raynas.runs.jobs import parse_job
from raynas.runs.sampling import search_state
from raynas.tracking import ResultsStore
from raynas.train.checkpoint import load_checkpoint, previous_checkpoint


def metric_steps(client: MlflowClient, run_id: str) -> dict[str, list[int]]:
    """Every metric of the run and the steps MLflow holds it at (repeats kept)."""
    return {m: sorted(h.step for h in client.get_metric_history(run_id, m))
            for m in client.get_run(run_id).data.metrics}


def assert_each_epoch_once(client: MlflowClient, run_id: str, epochs: int) -> None:
    """Per-epoch metrics at steps 0..epochs-1 once each; ``final.*`` metrics once."""
    held = metric_steps(client, run_id)
    assert {"train_loss", "valid_acc", "alpha_entropy", "epoch_seconds", "step_seconds"} <= set(held)
    wrong = {m: s for m, s in held.items() if s != ([0] if m.startswith("final.") else list(range(epochs)))}
    assert not wrong, wrong


def child_runs(client: MlflowClient, run_id: str) -> list[str]:
    experiment = client.get_run(run_id).info.experiment_id
    runs = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
    return sorted(r.data.tags["raynas.trial_id"] for r in runs)


def result_rows(output_dir: Path) -> list[str]:
    files = sorted((output_dir / "results").rglob("part-*.parquet"))
    return sorted(t for f in files for t in pq.read_table(f).column("trial_id").to_pylist())


def parent_runs(client: MlflowClient, run_id: str) -> list[str]:
    """The search runs (not candidates) of the run's experiment."""
    experiment = client.get_run(run_id).info.experiment_id
    runs = client.search_runs([experiment])
    return [r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags]


def final_state(config: Any) -> tuple[str, dict[str, float], dict[str, list[float]]]:
    """The genotype, final metrics and architecture weights a finished search recorded."""
    last = load_checkpoint(Path(config.tracking.output_dir) / config.name / "checkpoint.pt")["history"][-1]
    return last["architecture"], last["metrics"], last["arch_weights"]


def epochs_done(checkpoint: Path) -> int:
    """Epochs a search's checkpoint records (0 while there is none)."""
    try:
        return len(load_checkpoint(checkpoint)["history"])
    except Exception:  # not written yet (or being replaced: the rename is atomic, a read may race)
        return 0


def exit_with(argv: list[str]) -> None:
    """``raynas ARGV`` as a process of its own: its exit status is the command's."""
    sys.exit(main(argv))


def test_a_search_killed_at_random_moments_ends_as_an_uninterrupted_one(tmp_path: Path) -> None:
    """The driver (``raynas search``, in a process of its own) is SIGKILLed at seeded random
    moments of a seeded 3-epoch DARTS search and the same command run again each time. The
    moments are spread over the search: the k-th kill waits until the checkpoint records
    ``k * (epochs + 1) // kills`` epochs (0, 0, 0, 1, 1, 1, 2, 2, 2, 3: the last during the
    search's end), then a random share of half an epoch's time: at least half of the kills land
    before the last epoch is checkpointed, in more than one epoch (timed instead, 9 of 10 used to
    land after the last epoch)."""
    epochs, kills = 3, 10
    (tmp_path / "reference").mkdir()
    (tmp_path / "killed").mkdir()
    reference_job = tiny_job(tmp_path / "reference", train={"epochs": epochs})
    reference = run_search(parse_job(reference_job), echo=lambda _: None)  # also warms up this process

    job = tiny_job(tmp_path / "killed", train={"epochs": epochs})
    argv = ["search", str(write_job(tmp_path / "killed", job))]
    # The driver is a process of its own, its imports done (it starts at once), killed as by the
    # OOM killer.
    processes = driver_processes()
    rng = random.Random(0)
    checkpoint = tmp_path / "killed" / "runs" / "tiny" / "checkpoint.pt"
    # An epoch's time in a warm process: the reference's last epoch (its first paid the warm-up).
    epoch_seconds = load_checkpoint(
        Path(reference_job["tracking"]["output_dir"]) / "tiny" / "checkpoint.pt"
    )["history"][-1]["seconds"]
    landed: list[int] = []  # the epochs the checkpoint recorded at each kill that landed
    for k in range(kills):
        target = k * (epochs + 1) // kills
        driver = processes.Process(target=exit_with, args=(argv,))
        driver.start()
        while driver.is_alive() and epochs_done(checkpoint) < target:
            time.sleep(0.05)
        driver.join(rng.uniform(0.0, epoch_seconds / 2))
        if driver.exitcode is None:
            os.kill(driver.pid, signal.SIGKILL)
            landed.append(epochs_done(checkpoint))
        driver.join()
        # Every run the kill missed ended by itself, and well: each resume works.
        assert driver.exitcode in (0, -signal.SIGKILL), f"run {k + 1} ended with {driver.exitcode}"
    driver = processes.Process(target=exit_with, args=(argv,))
    driver.start()
    driver.join()
    assert driver.exitcode == 0
    print(f"kills landed with the checkpoint at epochs {landed}")
    during = [e for e in landed if e < epochs]  # before the last epoch's checkpoint
    assert len(during) >= kills // 2 and len(set(during)) >= 2, f"kills bunched: {landed}"

    config = parse_job(job)
    client = MlflowClient(config.tracking.tracking_uri)
    # Both finished: run again, each shows what its MLflow run recorded.
    found = run_search(config, echo=lambda _: None)
    reference = run_search(parse_job(reference_job), echo=lambda _: None)
    assert client.get_run(found.run_id).info.status == "FINISHED"
    genotype, metrics, weights = final_state(config)
    ref_genotype, ref_metrics, ref_weights = final_state(parse_job(reference_job))
    assert genotype == ref_genotype and found.architecture == reference.architecture
    assert metrics == ref_metrics and found.metrics == reference.metrics
    for a, b in zip(weights.values(), ref_weights.values(), strict=True):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=0, atol=0)
    assert_each_epoch_once(client, found.run_id, epochs)
    trials = [f"epoch-{e:03d}" for e in range(epochs)]
    assert child_runs(client, found.run_id) == trials
    assert result_rows(Path(config.tracking.output_dir)) == trials
    versions = client.search_model_versions(f"run_id = '{found.run_id}'")
    assert len(versions) == 1, [v.version for v in versions]  # registered once
    assert parent_runs(client, found.run_id) == [found.run_id]  # resumed, never started again


def drive(
    config: Any, *, die_at: str = "", die_after_finish: bool = False, die_retraining: bool = False,
    die_after_making_its_run: bool = False,
) -> int | None:
    """Run (or resume) the search of ``config`` in a driver process of its own
    (:func:`conftest.driver_processes`) that SIGKILLs itself when it prints a line starting with
    ``die_at``; with ``die_after_finish``, right after it recorded its end in MLflow and the
    results store (before its last checkpoint); with ``die_retraining``, when a final candidate's
    retraining has trained it, before its result is kept or recorded; with
    ``die_after_making_its_run``, when it has made its MLflow run, before it checkpoints the run's
    id. Return the driver's exit code (-9: killed)."""
    failure = Path(tempfile.mkdtemp()) / "driver-failure.txt"
    process = driver_processes().Process(target=driver, args=(
        config, die_at, die_after_finish, die_retraining, die_after_making_its_run, failure))
    process.start()
    process.join()
    if process.exitcode not in (0, -signal.SIGKILL):  # neither finished nor killed: say why
        raise AssertionError(f"the driver exited with {process.exitcode}:\n"
                             + (failure.read_text() if failure.exists() else "(no traceback)"))
    return process.exitcode


def driver(
    config: Any, die_at: str, die_after_finish: bool, die_retraining: bool, die_after_making_its_run: bool,
    failure: Path,
) -> None:
    """:func:`drive`'s driver: the search, with the deaths asked for; its traceback, if it fails,
    written to ``failure``."""
    if die_after_making_its_run:
        from raynas.tracking.mlflow_tracker import MlflowTracker

        start = MlflowTracker.start

        def start_and_die(self: MlflowTracker, *args: Any, **kwargs: Any) -> str:
            run_id = start(self, *args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
            return run_id

        MlflowTracker.start = start_and_die  # type: ignore[method-assign]
    if die_retraining:
        from raynas.runs import sampling

        make = sampling.final_evaluator

        def dying_evaluator(*args: Any, **kwargs: Any) -> Any:
            evaluator = make(*args, **kwargs)
            evaluate = evaluator.evaluate

            def evaluate_and_die(*a: Any, **kw: Any) -> Any:
                evaluate(*a, **kw)
                os.kill(os.getpid(), signal.SIGKILL)

            evaluator.evaluate = evaluate_and_die
            return evaluator

        sampling.final_evaluator = dying_evaluator  # type: ignore[assignment]
    if die_after_finish:
        from raynas.tracking.recorder import SearchRecorder

        finish = SearchRecorder.finish

        def finish_and_die(self: SearchRecorder, *args: Any, **kwargs: Any) -> Any:
            finish(self, *args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)

        SearchRecorder.finish = finish_and_die  # type: ignore[method-assign]

    def echo(line: str) -> None:
        if die_at and line.startswith(die_at):
            os.kill(os.getpid(), signal.SIGKILL)

    try:
        run_search(config, echo=echo)
    except BaseException:
        failure.write_text(traceback.format_exc())
        raise


def test_a_driver_killed_after_recording_its_end_finishes_on_the_next_run(tmp_path: Path) -> None:
    """Killed between its last MLflow records and its last checkpoint, a search resumed records
    its end once: one model version, each final metric once."""
    config = parse_job(tiny_job(tmp_path, train={"epochs": 1}))
    assert drive(config, die_after_finish=True) == -signal.SIGKILL
    assert drive(config) == 0
    client = MlflowClient(config.tracking.tracking_uri)
    (run_id,) = parent_runs(client, load_checkpoint(tmp_path / "runs" / "tiny" / "checkpoint.pt")["run_id"])
    assert client.get_run(run_id).info.status == "FINISHED"
    assert_each_epoch_once(client, run_id, 1)
    assert len(client.search_model_versions(f"run_id = '{run_id}'")) == 1
    assert child_runs(client, run_id) == ["epoch-000"]


@pytest.mark.parametrize("kind", ["gradient", "sampling"])
def test_a_driver_killed_between_making_its_run_and_checkpointing_it_goes_on_in_that_run(
    kind: str, tmp_path: Path
) -> None:
    """Killed once its MLflow run is made, before its first checkpoint names the run: the search
    run again finds that run by the attempt id kept beside the checkpoint and goes on in it, with
    no second parent run; ``--fresh`` makes a new one."""
    job = (tiny_job(tmp_path, train={"epochs": 1}) if kind == "gradient" else
           sampling_job(tmp_path, SPOS, {"name": "supernet", "bn_batches": 2}, train={"epochs": 1}))
    config = parse_job(job)
    checkpoint = tmp_path / "runs" / "tiny" / "checkpoint.pt"
    assert drive(config, die_after_making_its_run=True) == -signal.SIGKILL
    assert not checkpoint.exists()
    client = MlflowClient(config.tracking.tracking_uri)
    (made,) = client.search_runs([client.get_experiment_by_name(config.tracking.experiment).experiment_id])
    assert made.info.status == "RUNNING"
    assert drive(config) == 0
    run_id = load_checkpoint(checkpoint)["run_id"]
    assert run_id == made.info.run_id and parent_runs(client, run_id) == [run_id]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert client.get_run(run_id).data.params["name"] == "tiny"  # its config, logged once more
    again = run_search(config, fresh=True, echo=lambda _: None)
    assert again.run_id != run_id and sorted(parent_runs(client, run_id)) == sorted([run_id, again.run_id])


def test_a_sampling_search_killed_in_each_phase_records_every_candidate_once(tmp_path: Path) -> None:
    """SPOS on a one-shot supernet, its driver SIGKILLed in its supernet phase (after the first
    epoch), its search phase (after the third candidate) and its retrain phase (once while the
    first of the two final candidates is retrained, before its result is kept, and once after
    it is recorded), each time resumed: every candidate is one Parquet row and one child run."""
    job = sampling_job(tmp_path, SPOS, {"name": "supernet", "bn_batches": 2}, train={"epochs": 2},
                       final={"top": 2, "epochs": 1, "channels": 4, "layers": 1})
    config = parse_job(job)
    for moment in ("supernet epoch   1/", "candidate    3 "):
        assert drive(config, die_at=moment) == -signal.SIGKILL, moment
    assert drive(config, die_retraining=True) == -signal.SIGKILL
    assert drive(config, die_at="retrained ") == -signal.SIGKILL
    assert drive(config) == 0

    checkpoint = tmp_path / "runs" / "tiny" / "checkpoint.pt"
    state = search_state(str(checkpoint))
    assert state["finished"] and len(state["results"]) == SPOS["evaluations"]
    trials = sorted(r["trial_id"] for r in [*state["results"], *state["retrained"]])
    assert len(set(trials)) == SPOS["evaluations"] + 2 and trials[-2].startswith("retrain-")
    client = MlflowClient(config.tracking.tracking_uri)
    (run_id,) = parent_runs(client, load_checkpoint(checkpoint)["run_id"])
    assert client.get_run(run_id).info.status == "FINISHED"
    assert child_runs(client, run_id) == trials
    assert result_rows(tmp_path / "runs") == trials
    held = metric_steps(client, run_id)
    assert all(len(set(s)) == len(s) for s in held.values()), held  # no step twice, of any metric


OUTAGE_S = 30.0
"""How long the servers stay cut off in the middle of a search (issue 18: "stopped for 30 s")."""


class Outage:
    """The echo of a search that cuts ``links`` off once epoch 1 is recorded and restores them
    after epoch N-1 is, no sooner than :data:`OUTAGE_S` later: epochs 2 to N-1 are recorded while
    the servers are gone (each ends no sooner than its share of the outage, its line waiting for
    it: tiny epochs spread over the 30 s, slow ones on a loaded machine not held up), epoch N after
    they are back.
    """

    def __init__(self, links: list[CuttableLink], epochs: int) -> None:
        self.links, self.epochs = links, epochs
        self.lines: list[tuple[float, str]] = []
        self.down_at = self.up_at = 0.0

    def __call__(self, line: str) -> None:
        self.lines.append((time.monotonic(), line))
        if not line.startswith("epoch"):
            return
        epoch = int(line.split()[1].split("/")[0])
        if epoch == 1:
            for link in self.links:
                link.down()
            self.down_at = time.monotonic()
        elif 1 < epoch < self.epochs:
            share = self.down_at + OUTAGE_S * (epoch - 1) / (self.epochs - 2)
            time.sleep(max(0.0, share - time.monotonic()))
            if epoch == self.epochs - 1:
                for link in self.links:
                    link.up()
                self.up_at = time.monotonic()

    def check_it_spanned_the_search(self) -> None:
        """Every epoch's line in order; the servers gone for :data:`OUTAGE_S` at least, while
        epochs 2 to N-1 were recorded; the last one recorded after they were back."""
        epochs = [(t, line.split()[1]) for t, line in self.lines if line.startswith("epoch")]
        assert [e for _, e in epochs] == [f"{k}/{self.epochs}" for k in range(1, self.epochs + 1)]
        assert self.up_at - self.down_at >= OUTAGE_S
        assert self.down_at <= epochs[1][0] and epochs[-2][0] <= self.up_at < epochs[-1][0], epochs


@pytest.mark.integration
def test_the_mlflow_and_s3_servers_gone_for_30_s_of_a_running_search_lose_no_record_result_or_checkpoint(
    tmp_path: Path, mlflow_server: str, s3_env: S3Server, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The search is tracked on the MLflow server, its results and checkpoints on S3; both are cut
    off (connections refused, as when they are stopped) for 30 s from the end of epoch 1 of a
    4-epoch search, and come back at the same addresses with the same store and data. Each one's
    records take their own way back (MLflow's queue, the results' spool, the next checkpoint), so
    one outage of both shows each: one search instead of two keeps 30 s of the suite."""
    tracker = CuttableLink(mlflow_server)
    bucket = s3_env.create_bucket("raynas-outage-search")
    s3 = CuttableLink(s3_env.endpoint)
    for link in (tracker, s3):
        link.up()
    for name in ("AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.setenv(name, s3.uri)
    epochs = 4
    config = parse_job(tiny_job(tmp_path, train={"epochs": epochs}, tracking={
        "tracking_uri": tracker.uri, "experiment": "outage-search", "output_dir": f"{bucket}/runs",
    }))
    outage = Outage([tracker, s3], epochs)
    try:
        with caplog.at_level(logging.WARNING):
            result = run_search(config, echo=outage)
    finally:
        for link in (tracker, s3):
            link.down()
    outage.check_it_spanned_the_search()
    # The tracker met the outage: its records waited and were sent once it was back.
    said = "\n".join(r.getMessage() for r in caplog.records if r.name == "raynas.tracking.mlflow_tracker")
    assert "unreachable" in said and "reachable again" in said
    client = MlflowClient(mlflow_server)
    assert client.get_run(result.run_id).info.status == "FINISHED"
    assert_each_epoch_once(client, result.run_id, epochs)
    assert child_runs(client, result.run_id) == [f"epoch-{e:03d}" for e in range(epochs)]
    # So did the S3 store: an epoch's checkpoint skipped, its rows spooled, none lost.
    said = [r.getMessage() for r in caplog.records]
    assert any("not written, its storage is unreachable" in m for m in said)
    assert any(m.startswith("results store") and "unreachable" in m for m in said)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env.endpoint)
    state = load_checkpoint(result.checkpoint)
    assert state["finished"] and [h["epoch"] for h in state["history"]] == list(range(epochs))
    assert storage.exists(previous_checkpoint(result.checkpoint))
    rows = ResultsStore(f"{bucket}/runs/results").read_table().to_pylist()
    assert sorted(r["trial_id"] for r in rows if r["run_id"] == result.run_id) == [
        f"epoch-{e:03d}" for e in range(epochs)
    ]
