"""The head's watch (``raynas.execution.ray_actors.watching_the_head``) in this process's main
thread, with a head that stops answering: a TCP probe refused, as for a head that is gone. The
watch with a real head going down is tests/test_quiet_failures.py's; here, that it holds for
every command that works on a Ray cluster (a search's, tests/test_quiet_failures.py; a
retraining's and a study's below), and what it leaves the main thread to do."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from raynas.errors import ClusterLostError
from raynas.execution import ray_actors
from raynas.execution.ray_actors import ClusterGone, check_head, watching_the_head
from raynas.runs.jobs import parse_retrain_job
from raynas.runs.retrain import RetrainWorker, run_retrain
from raynas.runs.study import parse_study_job, run_study
from tests.conftest import mlflow_store
from tests.test_layer_count_study import DARTS, study_job
from tests.test_retrain import ALL_CONV, retrain_job


@pytest.fixture
def head_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process is connected to a head at a loopback port that refuses connections."""
    monkeypatch.setattr(ray_actors, "cluster_head", lambda: "127.0.0.1:9")
    monkeypatch.setattr(ray_actors, "_answers", lambda address, timeout=3.0: False)


def test_a_lost_head_interrupts_a_main_thread_that_does_not_know_of_it(head_gone: None) -> None:
    started = time.monotonic()
    with pytest.raises(ClusterGone) as gone, watching_the_head(every=0.05):
        time.sleep(3)  # the main thread in Python, recording a search's results
    assert time.monotonic() - started < 2
    assert isinstance(gone.value.args[0], ClusterLostError)
    assert "the Ray cluster at 127.0.0.1:9 is gone" in str(gone.value.args[0])


def test_a_main_thread_that_raised_the_loss_itself_finishes_its_cleanup_uninterrupted(
    head_gone: None,
) -> None:
    # A lost actor's call (``remote_call``) or a Tune callback found the head gone and raised its
    # line: the search unwinds through its cleanup (journal, MLflow run), which the watch, finding
    # the same loss, must not cut short with a second error.
    cleaned = []
    with pytest.raises(ClusterLostError), watching_the_head(every=0.05):
        try:
            check_head()
        finally:
            time.sleep(0.6)  # a dozen of the watch's periods, well within ABANDON_SECONDS
            cleaned.append("journal closed, run marked failed")
    assert cleaned == ["journal closed, run marked failed"]


@pytest.fixture
def head_goes_in_an_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process is connected to a head at a loopback port, which answers until a retraining's
    epoch starts and refuses connections from then on; each epoch takes a minute (the watch looks
    each second)."""
    going = threading.Event()
    monkeypatch.setattr(ray_actors, "cluster_head", lambda: "127.0.0.1:9")
    monkeypatch.setattr(ray_actors, "_answers", lambda address, timeout=3.0: not going.is_set())

    def a_minute(self: RetrainWorker) -> tuple[dict[str, float], dict]:
        going.set()
        time.sleep(60)
        raise AssertionError("the epoch was not interrupted")

    monkeypatch.setattr(RetrainWorker, "run_epoch", a_minute)


def assert_one_failed_run(tmp_path: Path) -> None:
    """The command's MLflow run is marked failed, not left running."""
    client = MlflowClient(mlflow_store(tmp_path))
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert [run.info.status for run in runs if "mlflow.parentRunId" not in run.data.tags] == ["FAILED"]


def test_a_retraining_whose_head_goes_stops_with_raynas_line(
    head_goes_in_an_epoch: None, tmp_path: Path
) -> None:
    config = parse_retrain_job(retrain_job(tmp_path, ALL_CONV))
    started = time.monotonic()
    with pytest.raises(ClusterLostError, match=r"the Ray cluster at 127\.0\.0\.1:9 is gone"):
        run_retrain(config, echo=lambda _: None)
    assert time.monotonic() - started < 30  # the watch, not the minute's epoch
    assert_one_failed_run(tmp_path)


def test_a_study_whose_head_goes_stops_with_raynas_line(
    head_goes_in_an_epoch: None, tmp_path: Path
) -> None:
    job = parse_study_job(study_job(tmp_path, layers=[2], cells={"DARTS": {"architecture": DARTS}}))
    started = time.monotonic()
    with pytest.raises(ClusterLostError, match=r"the Ray cluster at 127\.0\.0\.1:9 is gone"):
        run_study(job, echo=lambda _: None)
    assert time.monotonic() - started < 30
    assert_one_failed_run(tmp_path)
