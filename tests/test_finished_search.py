"""Running a search again: a finished one shows its result (``--fresh`` starts a new one), a crashed
one resumes with every epoch's metrics recorded once, and an unreadable latest checkpoint falls
back to the version before it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import S3Server, tiny_job, write_job
from mlflow.tracking import MlflowClient

from raynas.cli import main
from raynas.runs.jobs import parse_job
from raynas.runs.search import run_search
from raynas.train.checkpoint import load_checkpoint, previous_checkpoint, save_checkpoint

# Metrics every gradient search logs per epoch (among others, all checked).
EPOCH_METRICS = ("train_loss", "train_acc", "valid_loss", "valid_acc", "alpha_entropy", "epoch_seconds")


class Crash(Exception):
    """The driver dies (as if killed) right after an epoch was checkpointed and recorded."""


def crash_after(epoch: int) -> Any:
    def echo(line: str) -> None:
        if line.startswith(f"epoch {epoch:>3}/"):
            raise Crash

    return echo


def steps(client: MlflowClient, run_id: str) -> dict[str, list[int]]:
    """Every metric of the run and the steps MLflow holds it at (repeats kept)."""
    names = client.get_run(run_id).data.metrics
    assert set(EPOCH_METRICS) <= set(names)
    return {m: sorted(h.step for h in client.get_metric_history(run_id, m)) for m in names}


def scores(out: str) -> str:
    """What ``raynas search`` printed a search scored (its line after the duration)."""
    return out.split("Search finished in ")[1].split(": ", 1)[1].splitlines()[0]


def test_checkpoint_keeps_the_previous_version(tmp_path: Path) -> None:
    path = tmp_path / "run" / "checkpoint.pt"
    assert previous_checkpoint(path) == str(tmp_path / "run" / "checkpoint.prev.pt")
    assert previous_checkpoint("s3://bucket/runs/x/checkpoint.pt") == "s3://bucket/runs/x/checkpoint.prev.pt"
    save_checkpoint({"epoch": 1}, path)
    assert not Path(previous_checkpoint(path)).exists()
    save_checkpoint({"epoch": 2}, path)
    save_checkpoint({"epoch": 3}, path)
    assert load_checkpoint(path) == {"epoch": 3}
    assert load_checkpoint(previous_checkpoint(path)) == {"epoch": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt"]


def test_a_finished_search_run_again_shows_its_result_and_fresh_starts_a_new_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(write_job(tmp_path, tiny_job(tmp_path, train={"epochs": 1})))
    assert main(["search", path]) == 0
    first = capsys.readouterr().out
    run_id = first.split("MLflow run: ")[1].split()[0]

    assert main(["search", path]) == 0
    again = capsys.readouterr().out
    assert f"Search 'tiny' already finished (MLflow run {run_id})" in again
    assert "--fresh starts a new search" in again
    assert "epoch   1/1" not in again  # nothing trained
    for line in ("Genotype: ", "Parameters: ", "MLflow run: "):
        assert first.split(line)[1].splitlines()[0] == again.split(line)[1].splitlines()[0]
    assert scores(first) == scores(again)

    assert main(["search", path, "--fresh"]) == 0
    fresh = capsys.readouterr().out
    assert "epoch   1/1" in fresh and "already finished" not in fresh
    assert fresh.split("MLflow run: ")[1].split()[0] != run_id


def test_a_finished_search_whose_genotype_json_is_gone_or_damaged_is_one_line_with_fresh(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The finished search's result is its MLflow run's genotype.json: removed, it is one line; not
    an architecture (was a JSON traceback), one line too; each exit status 2, naming --fresh."""
    from urllib.parse import urlsplit

    job = tiny_job(tmp_path, train={"epochs": 1})
    path = str(write_job(tmp_path, job))
    assert main(["search", path]) == 0
    run_id = capsys.readouterr().out.split("MLflow run: ")[1].split()[0]
    artifacts = MlflowClient(job["tracking"]["tracking_uri"]).get_run(run_id).info.artifact_uri
    genotype = Path(urlsplit(artifacts).path) / "genotype.json"
    assert genotype.is_file(), artifacts

    genotype.write_text('{"normal": "not a cell"')
    assert main(["search", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"raynas: error: search 'tiny' finished, but the genotype.json of its MLflow "
                          f"run {run_id} is not an architecture (JSONDecodeError: ")
    assert len(err.splitlines()) == 1, err
    assert err.endswith("; --fresh starts a new search\n"), err
    genotype.unlink()
    assert main(["search", path]) == 2
    assert capsys.readouterr().err == (
        f"raynas: error: search 'tiny' finished, but its MLflow run {run_id} has no genotype.json "
        "(MlflowException); --fresh starts a new search\n")


def test_a_finished_sampling_search_run_again_shows_its_result_and_evaluates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_sampling_search import sampling_job

    from raynas.evaluators.training_free import TrainingFreeEvaluator

    job = sampling_job(tmp_path, {"name": "random", "evaluations": 3},
                       {"name": "training_free", "batch_size": 16, "channels": 4, "layers": 1})
    job["execution"]["concurrency"] = 1
    path = str(write_job(tmp_path, job))
    assert main(["search", path]) == 0
    first = capsys.readouterr().out
    run_id = first.split("MLflow run: ")[1].split()[0]

    evaluated: list[str] = []
    for method in ("evaluate", "evaluate_many"):
        monkeypatch.setattr(TrainingFreeEvaluator, method, lambda *a, **kw: evaluated.append(a[1]))
    assert main(["search", path]) == 0
    again = capsys.readouterr().out
    assert f"Search 'tiny' already finished (MLflow run {run_id})" in again
    assert "--fresh starts a new search" in again and evaluated == []
    for line in ("Genotype: ", "MLflow run: "):
        assert first.split(line)[1].splitlines()[0] == again.split(line)[1].splitlines()[0]
    assert scores(first) == scores(again)


def test_a_finished_search_run_again_with_another_config_starts_a_new_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(write_job(tmp_path, tiny_job(tmp_path, train={"epochs": 1})))
    assert main(["search", path]) == 0
    run_id = capsys.readouterr().out.split("MLflow run: ")[1].split()[0]
    assert main(["search", path, "--set", "seed=1"]) == 0
    out = capsys.readouterr().out
    assert "Search 'tiny' finished before with another config (seed was 0, is 1); starting a new " in out
    assert out.split("MLflow run: ")[1].split()[0] != run_id


def test_a_crashed_search_resumes_with_each_epoch_recorded_once(tmp_path: Path) -> None:
    config = parse_job(tiny_job(tmp_path, train={"epochs": 3}))
    with pytest.raises(Crash):
        run_search(config, echo=crash_after(2))
    resumed = run_search(config, echo=lambda _: None)
    client = MlflowClient(config.tracking.tracking_uri)
    held = steps(client, resumed.run_id)
    assert all(held[m] == [0, 1, 2] for m in EPOCH_METRICS), held
    assert all(len(set(v)) == len(v) for v in held.values()), held  # no step twice, of any metric


def test_an_unreadable_latest_checkpoint_falls_back_to_the_previous_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    job = tiny_job(tmp_path, train={"epochs": 3})
    reference = run_search(parse_job({**job, "name": "reference"}), echo=lambda _: None)
    config = parse_job(job)
    with pytest.raises(Crash):
        run_search(config, echo=crash_after(2))
    checkpoint = tmp_path / "runs" / "tiny" / "checkpoint.pt"
    assert len(load_checkpoint(previous_checkpoint(checkpoint))["history"]) == 1
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])  # torn, as by a full disk

    lines: list[str] = []
    with caplog.at_level(logging.WARNING, logger="raynas.runs.common"):
        resumed = run_search(config, echo=lines.append)
    fallback = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(fallback) == 1
    assert fallback[0].startswith(f"checkpoint {checkpoint} cannot be read (")
    assert fallback[0].endswith(f"resuming from the previous one, {previous_checkpoint(checkpoint)}")
    assert lines[0].startswith("Resuming 'tiny' after epoch 1")
    # Epoch 2 ran again; MLflow holds it once, and the search ends as the uninterrupted one.
    client = MlflowClient(config.tracking.tracking_uri)
    held = steps(client, resumed.run_id)
    assert all(held[m] == [0, 1, 2] for m in EPOCH_METRICS), held
    assert all(len(set(v)) == len(v) for v in held.values()), held  # no step twice, of any metric
    assert resumed.architecture == reference.architecture
    found, expected = (load_checkpoint(r.checkpoint)["history"][-1]["arch_weights"]
                       for r in (resumed, reference))
    for a, b in zip(found.values(), expected.values(), strict=True):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b))


def test_unreadable_checkpoints_without_a_previous_one_are_one_line_with_fresh(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = tiny_job(tmp_path, train={"epochs": 2})
    checkpoint = tmp_path / "runs" / "tiny" / "checkpoint.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"not a checkpoint")
    assert main(["search", str(write_job(tmp_path, job))]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"raynas: error: checkpoint {checkpoint} cannot be read (")
    assert err.endswith("no readable previous version to resume from; pass --fresh to start over\n")
    assert len(err.splitlines()) == 1


HOLD = """
import contextlib, sys, time
from raynas.runs.common import sole_writer
with contextlib.ExitStack() as held:
    for path in sys.argv[1:]:
        held.enter_context(sole_writer(path, "held"))
    print("holding", flush=True)
    time.sleep(300)
"""


def test_a_second_run_of_a_job_still_running_stops_at_once_and_goes_on_once_the_first_is_gone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another raynas process works on a job's checkpoint (a first `raynas search`, `study` or
    `train` of it): the same job started beside it refuses in one line naming that process,
    touching nothing; once that process is gone, killed with no chance to clean up, the job runs."""
    import signal
    import subprocess
    import sys

    from tests.test_layer_count_study import DARTS, study_job
    from tests.test_retrain import ALL_CONV, retrain_job

    jobs = {
        "search": (tiny_job(tmp_path, train={"epochs": 1}), "the search 'tiny'", "tiny/checkpoint.pt"),
        "study": (study_job(tmp_path, layers=[2], cells={"DARTS": {"architecture": DARTS}}),
                  "the study 'study-tiny'", "study-tiny/study.pt"),
        "train": (retrain_job(tmp_path, ALL_CONV), "the retraining 'retrain-tiny'",
                  "retrain-tiny/retrain.pt"),
    }
    runs = tmp_path / "runs"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, *(str(runs / p) for _, _, p in jobs.values())],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        for command, (job, what, _) in jobs.items():
            path = tmp_path / f"{command}.yaml"
            path.write_text(yaml.safe_dump(job))
            capsys.readouterr()
            assert main([command, str(path)]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"raynas: error: {what} is running already (pid {holder.pid} on "), err
            assert len(err.splitlines()) == 1 and "run this command again to resume" in err
        assert not (runs / "tiny" / "checkpoint.pt").exists()  # the refused search touched nothing
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        result = run_search(parse_job(jobs["search"][0]), echo=lambda _: None)
        assert load_checkpoint(str(runs / "tiny" / "checkpoint.pt"))["finished"] and result.run_id
    finally:
        holder.kill()
        holder.wait(timeout=30)


HOLD_LEASE = """
import sys, time
from raynas import storage
from raynas.runs.common import sole_writer
storage.LEASE_SECONDS = float(sys.argv[2])
with sole_writer(sys.argv[1], "held"):
    print("holding", flush=True)
    time.sleep(300)
"""


def test_a_second_run_of_a_job_on_s3_stops_at_once_and_goes_on_once_the_first_ones_lease_expires(
    tmp_path: Path, s3_env: S3Server, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job whose checkpoint is on S3, worked on by another process (as a driver on another
    machine would: no lock of this one's sees it), which holds a lease of 3 s here and renews it:
    the same job started beside it refuses in one line naming that process, touching nothing, also
    after the lease's first 3 s. Once that process is killed with no chance to release its lease,
    the lease expires and the job runs, and releases its own lease when it ends. (S3 checkpoints
    were not guarded: both runs resumed from the same checkpoint and journal.)"""
    import signal
    import subprocess
    import sys
    import time

    from raynas import storage

    runs = s3_env.create_bucket("raynas-lease") + "/runs"
    job = tiny_job(tmp_path, train={"epochs": 1}, tracking={"output_dir": runs})
    path = write_job(tmp_path, job)
    checkpoint = f"{runs}/tiny/checkpoint.pt"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LEASE, checkpoint, "3"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        for wait in (0, 4):  # at once, and once the lease has been renewed past its first 3 s
            time.sleep(wait)
            capsys.readouterr()
            assert main(["search", str(path)]) == 2
            err = capsys.readouterr().err
            said = f"raynas: error: the search 'tiny' is running already (pid {holder.pid} on "
            assert err.startswith(said), err
            assert len(err.splitlines()) == 1 and f"{checkpoint}.lease is its lease" in err
        assert not storage.exists(checkpoint)  # the refused runs touched nothing
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        assert storage.exists(f"{checkpoint}.lease")  # left behind, expiring
        time.sleep(3.5)
        assert main(["search", str(path)]) == 0
        assert load_checkpoint(checkpoint)["finished"]
        assert not storage.exists(f"{checkpoint}.lease")  # released at the end
    finally:
        holder.kill()
        holder.wait(timeout=30)


SEARCH_ON_SHORT_LEASES = """
import sys
from raynas import storage
from raynas.cli import main
storage.LEASE_SECONDS = 3.0
sys.exit(main(["search", sys.argv[1]]))
"""


def test_a_run_whose_lease_another_run_took_over_stops_at_its_next_write_in_one_line_writing_nothing(
    tmp_path: Path, s3_env: S3Server
) -> None:
    """A search on S3 (leases of 3 s here) that could not renew its lease for its whole time (the
    process frozen, as by S3 out of its reach), while another run of the job took the expired
    lease over: once it goes on, its next write finds the lease not its own, and it stops there in
    one line, exit status 2, without writing its checkpoint, releasing the other's lease or ending
    its MLflow run. (It logged the takeover and went on, both runs writing the same job.)"""
    import signal
    import subprocess
    import sys
    import time

    from raynas import storage

    runs = s3_env.create_bucket("raynas-takeover") + "/runs"
    job = tiny_job(tmp_path, train={"epochs": 8}, tracking={"output_dir": runs})
    path = write_job(tmp_path, job)
    checkpoint = f"{runs}/tiny/checkpoint.pt"
    location = storage.S3Location.parse(checkpoint)
    driver = subprocess.Popen([sys.executable, "-c", SEARCH_ON_SHORT_LEASES, str(path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    other = storage.S3Lease(f"{checkpoint}.lease", "the other run", seconds=60)
    try:
        deadline = time.monotonic() + 120
        while not storage.exists(checkpoint):  # its first epoch checkpointed
            assert driver.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        driver.send_signal(signal.SIGSTOP)
        time.sleep(3.5)  # its lease expires unrenewed
        other.acquire()  # taken over, as a second run of the job does
        written = storage.s3_client().head_object(Bucket=location.bucket, Key=location.key)["ETag"]
        driver.send_signal(signal.SIGCONT)
        _, err = driver.communicate(timeout=120)
        assert driver.returncode == 2, err[-3000:]
        assert err.startswith("raynas: error: another run of this job took over its lease "
                              f"{checkpoint}.lease (the other run) after this one could not renew it "
                              "for 3 s"), err
        assert len(err.splitlines()) == 1 and "this one stops and writes no more" in err
        after = storage.s3_client().head_object(Bucket=location.bucket, Key=location.key)["ETag"]
        assert after == written and not load_checkpoint(checkpoint)["finished"]
        other.confirm()  # still the other run's: not released by the one that stopped
        # Its MLflow run, which the other run resumes, is left running (it was marked FAILED).
        client = MlflowClient(job["tracking"]["tracking_uri"])
        (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
        assert run.info.status == "RUNNING"
    finally:
        driver.kill()
        driver.communicate(timeout=30)
        other.release()
