"""A search opens its MLflow tracker in another thread while its worker or pool starts (both take
seconds: MLflow's import and store, Ray's actors importing torch); the tracker's error is still
the one told, and whatever was started is closed."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from conftest import tiny_job

import raynas.runs.common as common
from raynas.errors import ConfigError
from raynas.runs.jobs import parse_job
from raynas.tracking import MlflowTracker


class Started:
    """What a search starts (a worker, a pool): closed or not."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def not_a_store(tmp_path: Path) -> str:
    """An SQLite tracking URI whose file is text, not a database: MLflow cannot open it."""
    (tmp_path / "text.db").write_text("not a database\n" * 100)
    return f"sqlite:///{tmp_path / 'text.db'}"


def test_the_tracker_is_opened_while_the_worker_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real tracker's opening waits for the worker's start to begin, and the start waits for
    the tracker to be open: neither could go on if one ran before the other."""
    starting, opened = threading.Event(), threading.Event()
    real = common.open_tracker

    def open_tracker(config: object) -> MlflowTracker:
        assert starting.wait(timeout=30)
        tracker = real(config)
        opened.set()
        return tracker

    monkeypatch.setattr(common, "open_tracker", open_tracker)
    started = Started()

    def start() -> Started:
        starting.set()
        assert opened.wait(timeout=30)
        return started

    tracker, worker, then = common.open_tracker_while(
        parse_job(tiny_job(tmp_path)), start, then=lambda tracker: ("recorder of", tracker)
    )
    assert isinstance(tracker, MlflowTracker) and tracker.experiment_id
    assert worker is started and not started.closed
    assert then == ("recorder of", tracker)


def test_a_tracker_that_cannot_open_closes_what_was_started_and_its_error_is_told(tmp_path: Path) -> None:
    config = parse_job(tiny_job(tmp_path, tracking={"tracking_uri": not_a_store(tmp_path)}))
    started = Started()
    with pytest.raises(ConfigError, match=r"^MLflow store \S+/text.db is not an SQLite database"):
        common.open_tracker_while(config, lambda: started, then=lambda tracker: pytest.fail("then ran"))
    assert started.closed


def test_what_was_started_is_closed_when_what_follows_the_tracker_fails(tmp_path: Path) -> None:
    """``then`` (the search's recorder, which checks the results store) fails: the worker is closed."""
    def then(tracker: MlflowTracker) -> None:
        raise ConfigError("results store s3://nowhere cannot be reached")

    started = Started()
    with pytest.raises(ConfigError, match="s3://nowhere"):
        common.open_tracker_while(parse_job(tiny_job(tmp_path)), lambda: started, then=then)
    assert started.closed


def test_a_start_that_fails_is_told_unless_the_tracker_failed_too(tmp_path: Path) -> None:
    """As when the tracker was opened first: its error comes before the worker's."""
    def start() -> Started:
        raise ValueError("the data cannot be read")

    with pytest.raises(ValueError, match="the data cannot be read"):
        common.open_tracker_while(parse_job(tiny_job(tmp_path)), start, then=print)
    broken = parse_job(tiny_job(tmp_path, tracking={"tracking_uri": not_a_store(tmp_path)}))
    with pytest.raises(ConfigError, match=r"^MLflow store \S+/text.db is not an SQLite database"):
        common.open_tracker_while(broken, start, then=print)
