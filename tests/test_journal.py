"""The journal of a sampling search, and resuming from it: events read back in order, a line torn by
a crash dropped, durability batched within its bound, segments on S3; and a search interrupted
after any number of results, then resumed, ends exactly as the uninterrupted search, for
controllers of every kind (random, evolution, Bayesian optimisation, progressive, ENAS), and
from the checkpoint before an unreadable latest one too."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from conftest import S3Server, tiny_job, write_job

from raynas.cli import main
from raynas.runs import parse_job, run_search
from raynas.runs.journal import SYNC_EVENTS, Journal
from raynas.runs.sampling import SamplingSearch, search_state
from raynas.train.checkpoint import load_checkpoint, previous_checkpoint


def test_events_are_read_back_in_order_and_appends_go_on(tmp_path: Path) -> None:
    path = tmp_path / "job" / "journal.jsonl"
    journal = Journal(str(path))
    for i in range(5):
        assert journal.append({"e": "ask", "trial": f"{i:05d}"}) == i
    journal.close()
    again = Journal(str(path))
    assert [e["trial"] for e in again.events] == [f"{i:05d}" for i in range(5)]
    again.append({"e": "ask", "trial": "00005"})
    again.close()
    assert Journal(str(path)).length == 6


def test_a_line_torn_by_a_crash_is_dropped_and_the_next_append_starts_clean(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(str(path))
    journal.append({"e": "ask", "trial": "00001"})
    journal.close()
    with open(path, "a") as f:
        f.write('{"e": "result", "phase": "sea')  # the process died mid-write
    torn = Journal(str(path))
    assert torn.length == 1
    torn.append({"e": "ask", "trial": "00002"})
    torn.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["trial"] for line in lines] == ["00001", "00002"]


def test_durability_is_batched_within_its_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    original = Journal.sync

    def count(self: Journal) -> None:
        if self._buffer:
            synced.append(len(self._buffer))
        original(self)

    monkeypatch.setattr(Journal, "sync", count)
    journal = Journal(str(tmp_path / "journal.jsonl"), sync_seconds=3600)
    for i in range(2 * SYNC_EVENTS + 10):
        journal.append({"e": "ask", "trial": str(i)})
    assert synced == [SYNC_EVENTS, SYNC_EVENTS]  # never more than SYNC_EVENTS at risk
    journal.close()
    assert synced[-1] == 10
    timed = Journal(str(tmp_path / "timed.jsonl"), sync_seconds=0.0)
    timed.append({"e": "ask", "trial": "0"})  # past the time bound: durable at once
    assert synced[-1] == 1


@pytest.mark.integration
def test_on_s3_each_batch_is_an_object_and_they_read_back_in_order(s3_env: S3Server) -> None:
    import boto3

    s3_env.create_bucket("raynas-journal")
    location = "s3://raynas-journal/runs/job/journal"
    journal = Journal(location, sync_events=3)
    for i in range(7):
        journal.append({"e": "ask", "trial": str(i)})
    journal.close()
    client = boto3.client("s3", endpoint_url=s3_env.endpoint, aws_access_key_id=s3_env.access_key,
                          aws_secret_access_key=s3_env.secret_key, region_name="us-east-1")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="raynas-journal")["Contents"]]
    assert keys == [f"runs/job/journal/{i:010d}.jsonl" for i in (0, 3, 6)]
    assert [e["trial"] for e in Journal(location).events] == [str(i) for i in range(7)]


# -- resuming is exact ----------------------------------------------------------------------------

STRATEGIES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # strategy settings, evaluator settings
    "random": ({"evaluations": 6}, {"name": "training_free", "batch_size": 16, "channels": 4, "layers": 1}),
    "evolution": (
        {"population_size": 3, "sample_size": 2, "evaluations": 7},
        {"name": "training_free", "batch_size": 16, "channels": 4, "layers": 1},
    ),
    "bo": ({"evaluations": 6, "startup": 3}, {"name": "training_free", "batch_size": 16, "channels": 4,
                                              "layers": 1}),
    "progressive": ({"beam_size": 2, "predictor_steps": 5},
                    {"name": "training_free", "batch_size": 16, "channels": 4, "layers": 1}),
    "enas": (
        {"controller_epochs": 2, "controller_batch": 2, "controller_steps": 1, "derive_samples": 2},
        {"name": "supernet", "bn_batches": 1, "valid_batches": 1},
    ),
}


def strategy_job(tmp_path: Path, name: str) -> dict[str, Any]:
    strategy, evaluator = STRATEGIES[name]
    job = tiny_job(tmp_path, space={"name": "nb201", "channels": 4, "cells_per_stage": 1},
                   data={"name": "digits", "batch_size": 16, "limit": 64})
    for key in ("layers", "nodes"):
        job["space"].pop(key)
    job["strategy"] = {"name": name, **strategy}
    job["evaluator"] = evaluator
    if evaluator["name"] == "supernet":
        job["train"] = {"epochs": 2, "learning_rate": 0.05}
    else:
        del job["train"]
    return job


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_a_search_interrupted_and_resumed_ends_as_the_uninterrupted_one(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = strategy_job(tmp_path, name)
    reference = run_search(parse_job(job), echo=lambda _: None)
    expected = search_state(reference.checkpoint)["results"]
    assert len(expected) >= 3
    job = {**job, "name": "interrupted"}
    original = SamplingSearch.tell
    told = [0]

    def crash_after_the_second(self: SamplingSearch, result: Any, **kw: Any) -> None:
        original(self, result, **kw)
        told[0] += 1
        if told[0] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(SamplingSearch, "tell", crash_after_the_second)
    with pytest.raises(KeyboardInterrupt):
        run_search(parse_job(job), echo=lambda _: None)
    monkeypatch.setattr(SamplingSearch, "tell", original)
    lines: list[str] = []
    resumed = run_search(parse_job(job), echo=lines.append)
    assert any(line.startswith("Resuming 'interrupted'") for line in lines)
    assert not any("asks differently on replay" in line for line in lines)
    got = search_state(resumed.checkpoint)["results"]
    assert [untimed(r) for r in got] == [untimed(r) for r in expected]
    assert resumed.architecture == reference.architecture


def untimed(result: dict[str, Any]) -> dict[str, Any]:
    """A result without what the clock says (when it ran, how long it and its proxy took)."""
    metrics = {k: v for k, v in result["metrics"].items() if not k.endswith("seconds")}
    untimed = {k: v for k, v in result.items() if k not in ("seconds", "started", "ended")}
    return {**untimed, "metrics": metrics}


def test_a_sampling_search_whose_latest_checkpoint_cannot_be_read_resumes_from_the_one_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """ENAS on a 3-epoch supernet, killed at the first result of its third epoch; the latest
    checkpoint (after epoch 2) is then torn. The search resumes from the version before it (after
    epoch 1) with the supernet of that epoch (``supernet.prev.pt``), trains epochs 2 and 3 again on
    the paths the journal recorded for them, and ends exactly as the uninterrupted search."""
    job = strategy_job(tmp_path, "enas")
    job["train"]["epochs"] = job["strategy"]["controller_epochs"] = 3
    reference = run_search(parse_job(job), echo=lambda _: None)
    expected = search_state(reference.checkpoint)["results"]
    job = {**job, "name": "torn"}
    original = SamplingSearch.tell

    def crash_in_the_third_epoch(self: SamplingSearch, result: Any, **kw: Any) -> None:
        original(self, result, **kw)
        if self.epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(SamplingSearch, "tell", crash_in_the_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_search(parse_job(job), echo=lambda _: None)
    monkeypatch.setattr(SamplingSearch, "tell", original)
    folder = tmp_path / "runs" / "torn"
    checkpoint = folder / "checkpoint.pt"
    assert load_checkpoint(checkpoint)["state"]["epoch"] == 2
    assert load_checkpoint(previous_checkpoint(checkpoint))["state"]["epoch"] == 1
    assert load_checkpoint(folder / "supernet.pt")["search_epoch"] == 2
    assert load_checkpoint(folder / "supernet.prev.pt")["search_epoch"] == 1
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])  # torn, as by a full disk

    lines: list[str] = []
    with caplog.at_level(logging.WARNING, logger="raynas.runs.common"):
        resumed = run_search(parse_job(job), echo=lines.append)
    fallback = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(fallback) == 1
    assert fallback[0].endswith(f"resuming from the previous one, {previous_checkpoint(checkpoint)}")
    assert any(line.startswith("Resuming 'torn' in phase 'supernet'") for line in lines)
    assert [line.split("train loss")[0] for line in lines if line.startswith("supernet epoch")] == [
        "supernet epoch   2/3  ", "supernet epoch   3/3  "]
    assert not any("asks differently on replay" in line for line in lines)
    got = search_state(resumed.checkpoint)["results"]
    assert [untimed(r) for r in got] == [untimed(r) for r in expected]
    assert resumed.architecture == reference.architecture


@pytest.mark.parametrize("earlier", [False, True], ids=["first-run", "fresh-over-a-finished-one"])
def test_a_controller_lost_before_the_first_checkpoint_is_rebuilt_from_its_start(
    earlier: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The controller (a Ray actor in a ``ray`` search) lost while the search asks it for its
    state for the first checkpoint (Ray's memory monitor killed it at start, here): it was rebuilt
    from a checkpoint there was none of ("cannot be read ... pass --fresh") or, with --fresh over
    an earlier search's, from that search's state. A new controller is the lost one as it
    started: the search ends as the uninterrupted one. The first new one is lost too while it is
    built (a new controller lost was the command's end, whatever execution.max_restarts)."""
    import raynas.runs.sampling as sampling
    from raynas.errors import WorkerLostError

    job = strategy_job(tmp_path, "evolution")
    reference = run_search(parse_job(job), echo=lambda _: None)
    expected = search_state(reference.checkpoint)["results"]
    if not earlier:
        job = {**job, "name": "lost-at-start"}
    built, builds = sampling.build_controller, []

    def losing_its_first_state(config: Any) -> Any:
        builds.append(config)
        if len(builds) == 3:  # (the first is the search's check of its budget)
            raise WorkerLostError("lost", reason="a Ray actor was lost (killed while built)")
        controller = built(config)
        if len(builds) == 2:
            def state_dict() -> Any:
                raise WorkerLostError("lost", reason="a Ray actor was lost (killed)")
            controller.state_dict = state_dict
        return controller

    monkeypatch.setattr(sampling, "build_controller", losing_its_first_state)
    lines: list[str] = []
    got = run_search(parse_job(job), fresh=earlier, echo=lines.append)
    assert len(builds) == 4  # the check's, the search's, two rebuilt (the first lost)
    rebuilt = [line.split(";")[0] for line in lines if "rebuilding" in line]
    assert rebuilt == [
        "a Ray actor was lost (killed): rebuilding the controller from its start and the journal",
        "a Ray actor was lost (killed while built): rebuilding the controller from its start and the journal",
    ]
    assert [untimed(r) for r in search_state(got.checkpoint)["results"]] == [untimed(r) for r in expected]
    assert got.architecture == reference.architecture


def test_a_sampling_search_without_its_checkpoints_supernet_says_so_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The version before an unreadable checkpoint names a supernet epoch that neither supernet
    file holds (both torn): one line, exit 2, saying what is missing and that --fresh starts over."""
    job = strategy_job(tmp_path, "enas")
    job["train"]["epochs"] = job["strategy"]["controller_epochs"] = 3
    with pytest.raises(KeyboardInterrupt):
        run_search(parse_job(job), echo=interrupt_at("supernet epoch   2/3"))
    folder = tmp_path / "runs" / "tiny"
    for name in ("checkpoint.pt", "supernet.pt", "supernet.prev.pt"):
        (folder / name).write_bytes(b"torn")
    assert main(["search", str(write_job(tmp_path, job))]) == 2
    err = capsys.readouterr().err
    assert err == (f"raynas: error: no readable supernet of epoch 1 at {folder / 'supernet.pt'} or the "
                   "version before it, which the search's checkpoint resumes from; pass --fresh to "
                   "start over\n")


def interrupt_at(prefix: str) -> Any:
    def echo(line: str) -> None:
        if line.startswith(prefix):
            raise KeyboardInterrupt

    return echo
