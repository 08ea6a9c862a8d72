"""The MLflow layout (parent run per search, child run per candidate, lineage, Model Registry),
the pictures, and what happens when the tracking server is unreachable at start or mid-search."""

from __future__ import annotations

import collections
import contextlib
import random
import socket
import threading
import time
import types
from pathlib import Path

import mlflow.pytorch
import pytest
import torch
from conftest import free_port, tiny_job
from matplotlib.patches import FancyArrowPatch
from mlflow.tracking import MlflowClient

from raynas.errors import ConfigError
from raynas.runs import run_search
from raynas.runs.jobs import parse_job
from raynas.spaces import SPACES
from raynas.spaces.darts_genotype import published_genotype
from raynas.spaces.drawing import picture
from raynas.spaces.fbnet import FbnetArch
from raynas.spaces.nb201 import Nb201Arch, Nb201Space
from raynas.tracking import MlflowTracker, ResultsStore
from raynas.tracking.plots import plot_arch_weights
from raynas.types import Architecture, EvalResult


def candidate(i: int) -> EvalResult:
    return EvalResult(
        architecture=Nb201Space().sample(random.Random(i)),
        metrics={"valid_acc": 0.5 + i / 10, "params": 1000.0 * (i + 1)}, trial_id=f"trial-{i}",
        budget=12.0, seconds=3.5, node="ray-gpu", stopped_early=i == 1,
    )


def test_a_candidate_is_a_child_run_of_its_search(tmp_path: Path) -> None:
    config = parse_job(tiny_job(tmp_path))
    tracker = MlflowTracker(tracking_uri=config.tracking.tracking_uri, experiment="layout")
    parent = tracker.start(config)
    child = tracker.log_candidate(candidate(1), step=4)
    assert child

    client = MlflowClient(config.tracking.tracking_uri)
    run = client.get_run(child)
    r = candidate(1)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.info.status == "FINISHED" and run.info.run_name == "trial-1"
    assert run.data.tags["raynas.architecture_key"] == r.architecture.key()
    assert run.data.tags["raynas.trial_id"] == "trial-1"
    for tag in ("space", "strategy", "dataset", "seed"):  # the search's tags, to filter children by
        assert run.data.tags[f"raynas.{tag}"] == client.get_run(parent).data.tags[f"raynas.{tag}"]
    assert run.data.params["architecture"] == str(r.architecture)
    assert (run.data.params["budget"], run.data.params["node"], run.data.params["stopped_early"]) == (
        "12.0", "ray-gpu", "true"
    )
    assert run.data.metrics == {"valid_acc": 0.6, "params": 2000.0, "seconds": 3.5, "budget": 12.0}
    assert client.get_metric_history(child, "valid_acc")[0].step == 4
    local = client.download_artifacts(child, "architecture.json", str(tmp_path))
    assert Architecture.from_json(Path(local).read_text()) == r.architecture


def test_a_child_run_whose_creation_reply_was_lost_is_not_made_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server made the run but the reply never came (the link cut after the request, seen in
    the 30 s outage test as a second ``epoch-000``): the retried record finds that run by its
    parent and trial id and goes on in it."""
    config = parse_job(tiny_job(tmp_path))
    tracker = MlflowTracker(tracking_uri=config.tracking.tracking_uri, experiment="lost-reply",
                            attempts=2, backoff_s=0.01)
    parent = tracker.start(config)
    create, calls = tracker.client.create_run, []

    def made_but_reply_lost(*args: object, **kwargs: object) -> object:
        run = create(*args, **kwargs)
        calls.append(run.info.run_id)
        if len(calls) == 1:
            raise ConnectionError("connection reset after the request was sent")
        return run

    monkeypatch.setattr(tracker.client, "create_run", made_but_reply_lost)
    child = tracker.log_candidate(candidate(1))
    assert child == calls[0] and len(calls) == 1  # the retry reused the run the server made
    client = MlflowClient(config.tracking.tracking_uri)
    children = client.search_runs([tracker.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert [c.info.run_id for c in children] == [child]
    assert client.get_run(child).info.status == "FINISHED"


def test_a_local_stores_artifacts_are_beside_its_database_not_in_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for folder in ("elsewhere", "store"):
        (tmp_path / folder).mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # where the command runs
    config = parse_job(tiny_job(tmp_path / "store"))
    tracker = MlflowTracker(tracking_uri=config.tracking.tracking_uri, experiment="beside")
    tracker.start(config)
    child = tracker.log_candidate(candidate(1), step=0)
    assert tracker.flush()
    stored = {p.name for p in (tmp_path / "store" / "mlruns").rglob("*") if p.is_file()}
    assert {"config.json", "architecture.json"} <= stored
    assert not any((tmp_path / "elsewhere").iterdir())
    client = MlflowClient(config.tracking.tracking_uri)
    assert client.get_run(child).info.artifact_uri.startswith(str(tmp_path / "store" / "mlruns"))


def test_the_installed_packages_are_mapped_while_the_run_goes_not_when_its_model_is_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow's ``save_model`` checks a model's requirements against a map of every installed
    package to its modules (importlib's ``packages_distributions``: a second or more, at each
    search's end); the run's start has it made in a background thread, which the model's
    registration waits for instead of making it again."""
    import importlib_metadata
    from mlflow.utils import requirements_utils

    import raynas.tracking.mlflow_tracker as mlflow_tracker

    monkeypatch.setattr(requirements_utils, "_MODULES_TO_PACKAGES", None)  # (as in a new process)
    monkeypatch.setattr(mlflow_tracker, "_packages_mapped", None)
    made_in: list[str] = []
    real = importlib_metadata.packages_distributions

    def packages_distributions() -> dict[str, list[str]]:
        made_in.append(threading.current_thread().name)
        return real()

    monkeypatch.setattr(importlib_metadata, "packages_distributions", packages_distributions)
    config = parse_job(tiny_job(tmp_path))
    tracker = MlflowTracker(tracking_uri=config.tracking.tracking_uri, experiment="packages")
    tracker.start(config)
    space = SPACES.create("nb201", config=None)
    arch = space.sample(random.Random(0))
    tracker.register_model(arch, name="raynas-packages", network=torch.nn.Linear(4, 2), trained=False,
                           example=torch.zeros(1, 4))
    assert made_in == ["raynas-map-packages"]
    assert "torch" in requirements_utils._MODULES_TO_PACKAGES  # (MLflow's map, as it makes it)


def test_search_records_candidates_pictures_results_and_the_registered_model(tmp_path: Path) -> None:
    config = parse_job(tiny_job(tmp_path, tracking={"experiment": "e2e", "registered_model": "tiny-nas",
                                                    "pictures": True}))
    result = run_search(config, echo=lambda _: None)
    client = MlflowClient(config.tracking.tracking_uri)

    children = client.search_runs(
        [client.get_experiment_by_name("e2e").experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'",
    )
    assert sorted(c.info.run_name for c in children) == ["epoch 000", "epoch 001"]
    last = next(c for c in children if c.info.run_name == "epoch 001")
    assert last.data.tags["raynas.architecture_key"] == result.architecture.key()
    assert last.data.metrics["valid_acc"] == pytest.approx(result.metrics["valid_acc"])

    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"architecture.png", "arch_weights.png", "genotype.json", "model"} <= artifacts
    png = Path(client.download_artifacts(result.run_id, "architecture.png", str(tmp_path)))
    assert png.read_bytes()[:4] == b"\x89PNG"

    store = ResultsStore(tmp_path / "runs" / "results")
    rows = store.read_table().to_pylist()
    assert sorted(r["trial_id"] for r in rows) == ["epoch-000", "epoch-001"]
    assert {r["run_id"] for r in rows} == {result.run_id} and rows[0]["strategy"] == "darts"

    version = client.get_model_version("tiny-nas", "1")
    assert version.run_id == result.run_id
    assert version.tags["raynas.architecture_key"] == result.architecture.key()
    assert Architecture.from_json(version.tags["raynas.architecture"]) == result.architecture
    assert version.tags["raynas.trained"] == "false"
    mlflow.set_tracking_uri(config.tracking.tracking_uri)
    model = mlflow.pytorch.load_model("models:/tiny-nas/1")
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)  # digits: 1 channel, 8x8, 10 classes
    arch_file = Path(client.download_artifacts(result.run_id, "model/extra_files/architecture.json",
                                               str(tmp_path)))
    assert Architecture.from_json(arch_file.read_text()) == result.architecture

    # A retraining run names the search and the architecture it came from.
    tracker = MlflowTracker(tracking_uri=config.tracking.tracking_uri, experiment="retrain")
    derived = client.get_run(tracker.start_derived_run(
        architecture=result.architecture, source_run_id=result.run_id, kind="retrain"
    ))
    assert derived.data.tags["raynas.lineage.source_run_id"] == result.run_id
    assert derived.data.tags["raynas.lineage.architecture_key"] == result.architecture.key()
    assert derived.data.tags["raynas.lineage.kind"] == "retrain"
    assert derived.data.tags["raynas.lineage.source_strategy"] == "darts"


def test_unreachable_server_at_start_is_one_clear_line(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConfigError, match=f"MLflow tracking server {uri} is unreachable"):
        MlflowTracker(tracking_uri=uri, experiment="x")


class CuttableLink:
    """A TCP relay on loopback between a client and a server that the test can cut and restore:
    a network outage without restarting the server."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.port = free_port()
        self.sockets: list[socket.socket] = []
        self.listener: socket.socket | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        for sock in [self.listener, *self.sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        self.sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


@pytest.mark.integration
def test_a_server_outage_mid_search_queues_records_and_tries_again_5_s_after_the_last_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_server: str
) -> None:
    from raynas.tracking import mlflow_tracker

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # our own backoff is under test
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    now = [1000.0]  # the tracker's clock, moved by hand
    clock = types.SimpleNamespace(monotonic=lambda: now[0], time=time.time)
    monkeypatch.setattr(mlflow_tracker, "time", clock)
    link = CuttableLink(mlflow_server)
    link.up()
    config = parse_job(tiny_job(tmp_path, tracking={"tracking_uri": link.uri}))
    tracker = MlflowTracker(tracking_uri=link.uri, experiment="outage", attempts=2, backoff_s=0.05)
    parent = tracker.start(config)
    assert tracker.log_candidate(candidate(0))

    link.down()  # the search goes on: records wait, in order, in the queue
    assert tracker.log_candidate(candidate(1)) == ""  # tried, failed at t = 1000 s
    assert tracker.log_candidate(candidate(2)) == ""
    assert tracker.pending() == 2

    link.up()
    try:
        now[0] += mlflow_tracker.OUTAGE_RETRY_S - 0.1  # back, but not yet tried again: it waits
        assert tracker.log_candidate(candidate(3)) == "" and tracker.pending() == 3
        now[0] += 0.1  # 5 s after the last failed try: the next record sends the whole queue
        assert tracker.log_candidate(candidate(4)) and tracker.pending() == 0
        client = MlflowClient(mlflow_server)
        children = client.search_runs(
            [tracker.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
        )
        names = collections.Counter(c.info.run_name for c in children)
        assert names == {f"trial-{i}": 1 for i in range(5)}  # each once, none lost
        assert all(c.info.status == "FINISHED" for c in children)
    finally:
        link.down()


def test_darts_picture_has_every_edge_labelled() -> None:
    genotype = published_genotype("DARTS_V2")
    fig = picture(SPACES.create("darts"), genotype)
    normal, reduce = fig.axes
    for ax, edges, concat in ((normal, genotype.normal, genotype.normal_concat),
                              (reduce, genotype.reduce, genotype.reduce_concat)):
        labels = collections.Counter(t.get_text() for t in ax.texts)
        assert {op: labels[op] for op, _ in edges} == dict(collections.Counter(op for op, _ in edges))
        assert {"c_{k-2}", "c_{k-1}", "c_{k}", "0", "1", "2", "3"} <= set(labels)
        arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
        assert len(arrows) == len(edges) + len(concat)  # 8 chosen edges + 4 into the output


def test_nb201_picture_leaves_out_none_edges() -> None:
    arch = Nb201Arch.parse("|nor_conv_3x3~0|+|none~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_1x1~2|")
    (ax,) = picture(SPACES.create("nb201"), arch).axes
    arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
    assert len(arrows) == 4
    assert sorted(t.get_text() for t in ax.texts if "_" in t.get_text()) == [
        "avg_pool_3x3", "nor_conv_1x1", "nor_conv_3x3", "skip_connect"
    ]


def test_fbnet_picture_has_a_bar_per_layer() -> None:
    arch = FbnetArch(("k3_e1", "k5_e6", "skip", "k3_e1_g2"))
    (ax,) = picture(SPACES.create("fbnet"), arch).axes
    assert [t.get_text() for t in ax.texts] == ["k3_e1", "k5_e6", "skip", "k3_e1_g2"]
    assert [round(p.get_height(), 1) for p in ax.patches] == [1.0, 6.0, 0.3, 1.0]  # expansion ratios


def test_recurrent_cell_picture_has_an_arrow_per_node_and_per_output() -> None:
    space = SPACES.create("darts_rnn")
    arch = space.parse("DARTS_V2")
    (ax,) = picture(space, arch).axes
    arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
    assert len(arrows) == 1 + 8 + 8  # input -> state 0, one per node, eight states averaged
    labels = collections.Counter(t.get_text() for t in ax.texts)
    activations = collections.Counter(a for a, _ in arch.recurrent)
    assert {a: labels[a] for a in activations} == dict(activations)


def test_auto_deeplab_picture_has_the_cell_and_the_path() -> None:
    space = SPACES.create("auto_deeplab")
    arch = space.parse("hnasnet")
    cell, path = picture(space, arch).axes
    assert len([p for p in cell.patches if isinstance(p, FancyArrowPatch)]) == 10 + 5
    assert {"H^{l-2}", "H^{l-1}", "H^{l}"} <= {t.get_text() for t in cell.texts}
    (line,) = path.lines
    assert list(line.get_ydata()) == [4 * 2**level for level in arch.path]


def test_arch_weights_heatmap_is_the_softmax_per_edge() -> None:
    history = [{"alpha_normal": [[0.0, 0.0], [1.0, 0.0]]}, {"alpha_normal": [[2.0, 0.0], [0.0, 0.0]]}]
    fig = plot_arch_weights(history, op_names=["a", "b"])
    grid = fig.axes[0].images[0].get_array()
    # Rows (edge, op), columns epochs; softmax(1, 0) = (e / (e + 1), 1 / (e + 1)) = (0.7311, 0.2689).
    assert grid[:, 0].tolist() == pytest.approx([0.5, 0.5, 0.7310586, 0.2689414])
    assert grid[:, 1].tolist() == pytest.approx([0.8807971, 0.1192029, 0.5, 0.5])


def test_a_local_runs_link_is_the_command_that_opens_the_ui(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a local store the link is `mlflow ui` on it and the run's address: the mlflow command
    beside this Python, relative when it lies under the current folder, else absolute."""
    import sys

    config = parse_job(tiny_job(tmp_path))
    tracker = MlflowTracker(tracking_uri=config.tracking.tracking_uri, experiment="link")
    run_id = tracker.start(config)
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    assert mlflow_bin.exists()
    fragment = f"#/experiments/{tracker.experiment_id}/runs/{run_id}?workflowType=machine_learning"
    monkeypatch.chdir(mlflow_bin.parents[2])  # the folder holding the virtual environment
    command, address = tracker.run_link().split("\n")
    assert command == (f"{Path(*mlflow_bin.parts[-3:])} ui --backend-store-uri "
                       f"{config.tracking.tracking_uri} --port 5000")
    assert address == f"  then open http://127.0.0.1:5000/{fragment}"
    monkeypatch.chdir(tmp_path)  # elsewhere: the whole path, not ../../...
    assert tracker.run_link().startswith(f"{mlflow_bin} ui --backend-store-uri ")


OPEN_STORE = """
import sys
from raynas.tracking import MlflowTracker
print(MlflowTracker(tracking_uri=sys.argv[1], experiment="shared").experiment_id)
"""


def test_searches_started_at_once_on_a_new_sqlite_store_all_open_it(tmp_path: Path) -> None:
    """Three processes open the same new SQLite store at once: MLflow makes its tables and migrates
    them as it opens it, one process at a time (``store_opening``), and they share one experiment.
    Unserialised, two or three of the three failed in MLflow's migrations here, and the store was
    left half-migrated, unusable."""
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_STORE, uri], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], [err[-800:] for _, err in outs]
    assert len({out.strip() for out, _ in outs}) == 1  # the same experiment
    assert [e.name for e in MlflowClient(uri).search_experiments()] == ["shared", "Default"]


def test_searches_started_at_once_on_an_mlflow_server_share_one_new_experiment(mlflow_server: str) -> None:
    """Eight searches (threads, released together) open a tracking server on one experiment it
    does not hold yet: each looks it up, finds none and makes it, so all but one are refused
    (RESOURCE_ALREADY_EXISTS; in five runs out of five here before the change): those take the
    one made, and all record in it."""
    import uuid

    name = f"shared-{uuid.uuid4().hex[:8]}"
    barrier = threading.Barrier(8)
    ids: list[str] = []
    errors: list[str] = []

    MlflowTracker(tracking_uri=mlflow_server, experiment="warm-up")  # MLflow's first-use work

    def open_one() -> None:
        barrier.wait()
        try:
            ids.append(MlflowTracker(tracking_uri=mlflow_server, experiment=name).experiment_id)
        except Exception as exc:
            errors.append(repr(exc)[:300])

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(ids) == 8, errors
    assert ids == [MlflowClient(mlflow_server).get_experiment_by_name(name).experiment_id] * 8


def test_a_store_mlflow_cannot_open_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import sqlite3

    from raynas.cli import main
    from tests.conftest import write_job

    job = tiny_job(tmp_path)  # its store made by MLflow (a copy this process has not opened)
    uri = job["tracking"]["tracking_uri"]
    with contextlib.closing(sqlite3.connect(uri.removeprefix("sqlite:///"))) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '0123456789ab'")  # unknown to MLflow
        connection.commit()
    capsys.readouterr()
    assert main(["search", str(write_job(tmp_path, job))]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"raynas: error: MLflow cannot open the store {uri} (") and (
        len(err.splitlines()) == 1
    ), err
    assert "found version 0123456789ab" in err and "move the store away" in err


def test_a_runs_artifact_read_from_python_draws_no_progress_bar(tmp_path: Path) -> None:
    """Used from Python (not the command line), raynas reads a run's artifacts without MLflow's
    "Downloading artifacts" progress bar on stderr (seen before: one per artifact read)."""
    import os
    import subprocess
    import sys

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(store)
    run = client.create_run(client.create_experiment("bars"))
    client.log_text(run.info.run_id, '{"space": "darts"}', "genotype.json")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"}
    script = (
        "from mlflow.tracking import MlflowClient\n"
        "from raynas.tracking.mlflow_tracker import run_artifact\n"
        f"_, path = run_artifact(MlflowClient({store!r}), 'run:{run.info.run_id}', 'genotype.json', 'x')\n"
        "print(open(path).read())\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '{"space": "darts"}'
    assert "Downloading artifacts" not in proc.stderr and "it/s" not in proc.stderr, proc.stderr
