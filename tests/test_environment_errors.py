"""A broken environment is bad input too: each problem of README's "Environment errors" table ends
`raynas search` with exit status 2 and one line that says what to do, before any training (a
damaged image, which only a batch reading it meets, during it), with the real parts on loopback
(an S3-compatible server, a port nothing listens on); those of the MLflow store, the output
folders and the dataset's folder before torch, Ray or MLflow load, for `raynas search`,
`raynas train` and `raynas study` alike."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import (
    BIN,
    S3Server,
    answers_without_heavy_imports,
    free_port,
    start_ray_head,
    stop_ray_cluster,
    tiny_job,
    write_job,
)

from raynas.cli import main
from raynas.environment import check_tracking_store
from raynas.errors import ConfigError
from raynas.tracking.mlflow_tracker import MlflowTracker


def refused(capsys: pytest.CaptureFixture[str], tmp_path: Path, job: dict[str, Any], *args: str) -> str:
    """Run ``raynas search`` on ``job``; assert exit status 2 and one line; return the line."""
    capsys.readouterr()  # what making the test's MLflow store logged
    assert main(["search", str(write_job(tmp_path, job)), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("raynas: error: ") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err.strip()


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("file:./mlruns", "MLflow's file store, which MLflow 3 opens only with MLFLOW_ALLOW_FILE_STORE=true; "
                          "use a database such as sqlite:///<folder>/mlflow.db"),
        ("file:///tmp/mlruns", "MLflow's file store"),
        ("./mlruns", "MLflow's file store"),
        ("htp://nowhere:5000", "of unknown scheme 'htp'; use http(s)://host:port"),
        ("http://", "which names no host; write http://host:port"),
        ("http://[::1", "not a URI"),
    ],
)
def test_a_tracking_uri_mlflow_cannot_open_says_what_to_use(
    uri: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused(capsys, tmp_path, tiny_job(tmp_path), "--tracking-uri", uri)
    assert "config key 'tracking.tracking_uri'" in err and message in err


@pytest.mark.parametrize(
    ("uri", "driver"),
    [  # raynas installs no database driver: SQLAlchemy's defaults (which its version picks), or named
        ("postgresql://mlflow:secret@127.0.0.1:5432/mlflow", r"psycopg2?"),
        ("mysql://mlflow:secret@127.0.0.1/mlflow", "MySQLdb"),
        ("mssql://mlflow:secret@127.0.0.1/mlflow", "pyodbc"),
        ("postgresql+pg8000://mlflow:secret@127.0.0.1/mlflow", "pg8000"),
        ("mysql+pymysql://mlflow:secret@127.0.0.1/mlflow", "pymysql"),
    ],
)
def test_a_database_store_without_its_driver_says_to_install_it(
    uri: str, driver: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused(capsys, tmp_path, tiny_job(tmp_path), "--tracking-uri", uri)
    assert re.search(rf"needs the database driver '{driver}', which is not installed", err), err
    assert "sqlite:///<folder>/mlflow.db" in err and "secret" not in err  # the password redacted


def test_a_file_store_in_the_environment_says_what_to_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file://{tmp_path}/mlruns")
    job = tiny_job(tmp_path, tracking={"tracking_uri": None})
    err = refused(capsys, tmp_path, job)
    assert f"MLflow tracking URI is 'file://{tmp_path}/mlruns', MLflow's file store" in err
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # where MLflow opens it, raynas does too
    MlflowTracker(tracking_uri=f"file://{tmp_path}/mlruns", experiment="opened")


def test_an_unreachable_mlflow_server_says_to_start_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    err = refused(capsys, tmp_path, tiny_job(tmp_path), "--tracking-uri", uri)
    assert f"MLflow tracking server {uri} is unreachable" in err
    assert "start it, or leave out --tracking-uri / MLFLOW_TRACKING_URI to use a local store" in err


@pytest.mark.parametrize("given", ["--address", "RAY_ADDRESS"])
def test_a_ray_address_nothing_answers_at_says_to_start_the_cluster(
    given: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray itself would retry such an address for minutes, printing a warning every few seconds."""
    import ray

    ray.shutdown()  # joined by an earlier test of this process: the search would not connect anew
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    job = tiny_job(tmp_path, execution={"backend": "ray"})
    if given == "RAY_ADDRESS":
        monkeypatch.setenv("RAY_ADDRESS", address)
        err = refused(capsys, tmp_path, job)
    else:
        err = refused(capsys, tmp_path, job, "--address", address)
    where = "execution.address (--address)" if given == "--address" else "RAY_ADDRESS"
    assert f"no Ray cluster answers at {address} ({where}); start it (`ray start --head`)" in err
    assert not ray.is_initialized()


def test_a_ray_address_where_something_else_answers_says_what_to_give_instead(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dashboard's HTTP address ended in Ray's traceback; a web server's port, or a gRPC server
    that is not a cluster's GCS (Ray Client's port given without ray://), was retried by
    ``ray.init`` for many minutes. Each is one line now, with what to give instead. Real servers
    on loopback: Python's HTTP server, a gRPC server (grpcio's, Ray's own dependency) with no
    service."""
    import concurrent.futures
    import http.server
    import threading

    import grpc
    import ray

    ray.shutdown()  # joined by an earlier test of this process: the search would not connect anew
    job = tiny_job(tmp_path, execution={"backend": "ray"})
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # (to stderr, which the test reads)
            pass

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    rpc = grpc.server(concurrent.futures.ThreadPoolExecutor(1))
    rpc_port = rpc.add_insecure_port("127.0.0.1:0")
    rpc.start()
    where = "(execution.address (--address))"
    try:
        err = refused(capsys, tmp_path, job, "--address", f"http://127.0.0.1:{web.server_port}")
        assert err.startswith(f"raynas: error: http://127.0.0.1:{web.server_port} {where} is an HTTP address "
                              "(a Ray dashboard's, where `ray job submit` sends jobs); give the cluster's "
                              "GCS address, host:port"), err
        err = refused(capsys, tmp_path, job, "--address", f"127.0.0.1:{web.server_port}")
        assert err.startswith(f"raynas: error: something answers at 127.0.0.1:{web.server_port} {where} but "
                              "not as a Ray cluster does (Ray speaks gRPC;"), err
        err = refused(capsys, tmp_path, job, "--address", f"127.0.0.1:{rpc_port}")
        assert err.startswith(f"raynas: error: the server at 127.0.0.1:{rpc_port} {where} speaks gRPC but is "
                              "not a Ray cluster's GCS (Ray Client's port?); for Ray Client write "
                              f"ray://127.0.0.1:{rpc_port}, else"), err
    finally:
        web.shutdown()
        rpc.stop(0)
    assert not ray.is_initialized()


def test_a_clusters_gcs_given_as_a_ray_client_address_says_to_give_it_without_ray_scheme(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ray_head: str
) -> None:
    """``ray://`` before a cluster's GCS address (Ray Client's server listens on a port of its
    own): Ray Client retried for 35 s, then a warning and a traceback."""
    import ray

    ray.shutdown()  # joined by an earlier test of this process: the search would not connect anew
    err = refused(capsys, tmp_path, tiny_job(tmp_path, execution={"backend": "ray"}),
                  "--address", f"ray://{ray_head}")
    assert err == (
        f"raynas: error: ray://{ray_head} (execution.address (--address)) names a Ray cluster's GCS, not Ray "
        f"Client's server; give {ray_head} (without ray://) to join the cluster, or Ray Client's port, "
        "ray://host:10001 (unless `ray start --ray-client-server-port` chose another)"
    )
    assert not ray.is_initialized()


@pytest.mark.own_ray
def test_a_ray_cluster_that_asks_for_a_token_says_how_to_give_it_and_with_it_the_search_runs(
    tmp_path: Path,
) -> None:
    """A head started with token authentication (Ray's default for `ray start --head` now): a
    client without the token was refused for 20 s, a warning from Ray's core each second, then a
    traceback. Now one line at once that says how to give the token; given so, the search runs."""
    token = uuid.uuid4().hex
    address, temp_dir = start_ray_head(token=token)
    try:
        job = tiny_job(tmp_path, train={"epochs": 1}, execution={"backend": "ray", "address": address})
        command = [str(BIN / "raynas"), "search", str(write_job(tmp_path, job))]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        refused = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2, refused.stderr[-3000:]
        assert refused.stderr == (
            f"raynas: error: the Ray cluster at {address} (execution.address (--address)) refuses this "
            "process: it asks for its token (Ray's token authentication); set RAY_AUTH_MODE=token and give "
            "the cluster's token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token\n"
        )
        assert refused.stdout == ""
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
        ran = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
        assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-3000:]
        assert "epoch   1/1" in ran.stdout and "Search finished" in ran.stdout
    finally:
        stop_ray_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_local_ray_without_a_writable_session_folder_says_to_set_ray_tmpdir(tmp_path: Path) -> None:
    """Ray keeps its sessions in RAY_TMPDIR (else /tmp/ray, which may be another user's on a shared
    machine): where it cannot make its folder, `ray.init` ended the command in a traceback."""
    job = tiny_job(tmp_path, execution={"backend": "ray"})  # a local Ray
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = "/sys/kernel"  # the kernel's: no user makes a folder there
    done = subprocess.run([str(BIN / "raynas"), "search", str(write_job(tmp_path, job))], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.startswith("raynas: error: a local Ray cannot start: it cannot make /sys/kernel/ray (")
    assert done.stderr.endswith("); set RAY_TMPDIR to a folder this user can write (Ray keeps its sessions "
                                "there), or give a cluster's address (--address)\n"), done.stderr[-3000:]


def test_an_unwritable_output_folder_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    job = tiny_job(tmp_path, tracking={"output_dir": str(tmp_path / "a-file" / "runs")})
    err = refused(capsys, tmp_path, job)
    assert f"cannot create the folder {tmp_path / 'a-file' / 'runs'}" in err and "Not a directory" in err
    # A folder that is there but takes no file, for root too (/sys/kernel's files are the kernel's).
    err = refused(capsys, tmp_path, tiny_job(tmp_path, tracking={"output_dir": "/sys/kernel"}))
    assert "cannot write in the folder /sys/kernel: Permission denied; choose one this user can write" in err


def test_memory_torch_cannot_allocate_ends_the_search_in_one_line_saying_what_to_lower(
    tmp_path: Path,
) -> None:
    """A supernet too big for the machine (a 43.2 GB weight, refused here under an 8 GiB address
    space, as a machine without that memory refuses it): torch's allocator error ended the command
    in a 46-line traceback, on this process's worker and on a Ray actor alike; `raynas describe`
    took it for inputs too small."""
    import resource

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

    job = tiny_job(tmp_path, space={"channels": 60000})
    done = subprocess.run([str(BIN / "raynas"), "search", str(write_job(tmp_path, job))], cwd=tmp_path,
                          preexec_fn=limited, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr == (
        "raynas: error: out of memory: torch could not allocate 43.2 GB of memory; lower data.batch_size "
        "or the network's size (the space's channels, layers), or run where there is more memory\n"
    )
    # `raynas describe` on inputs too large for memory said to give a larger --input-size.
    done = subprocess.run([str(BIN / "raynas"), "describe", "--genotype", "DARTS_V2", "--input-size",
                           "100000x100000"], preexec_fn=limited, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr == ("raynas: error: out of memory: torch could not allocate 120 GB of memory; give a "
                           "smaller --channels, --layers or --input-size\n")


def test_a_gpu_out_of_memory_and_a_ray_workers_are_told_as_torch_and_ray_word_them() -> None:
    """The GPU's refusal as c10's caching allocator words it (``torch.OutOfMemoryError``), alone
    and as a Ray actor's error carries it (a ``RayTaskError`` made from it)."""
    import ray
    import torch

    from raynas.errors import no_memory

    refusal = torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB of "
        "which 1.06 GiB is free. Including non-PyTorch memory, this process has 78.03 GiB memory in use."
    )
    told = ("torch could not allocate 2.00 GiB of CUDA memory "
            "(GPU 0 has a total capacity of 79.10 GiB of which 1.06 GiB is free)")
    assert no_memory(refusal) == told
    carried = ray.exceptions.RayTaskError("SupernetWorker.run_epoch", "Traceback ...", refusal)
    assert no_memory(carried.as_instanceof_cause()) == told
    assert no_memory(MemoryError()) == "Python could not allocate memory"
    assert no_memory(RuntimeError("shapes cannot be multiplied")) is None


def test_bad_s3_credentials_and_buckets_say_what_to_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_env.create_bucket("raynas-env-errors")
    missing = tiny_job(tmp_path, tracking={"output_dir": "s3://raynas-no-such-bucket/runs"})
    err = refused(capsys, tmp_path, missing)
    assert "S3 bucket 'raynas-no-such-bucket'" in err and "it does not exist; create it first" in err

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    err = refused(capsys, tmp_path, tiny_job(tmp_path, tracking={"output_dir": f"{bucket}/runs"}))
    assert "S3 bucket 'raynas-env-errors'" in err and "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY" in err

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # no server there
    err = refused(capsys, tmp_path, tiny_job(tmp_path, tracking={"output_dir": f"{bucket}/runs"}))
    assert "is unreachable" in err and "check that the server is up" in err


def test_a_missing_or_corrupt_dataset_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = {"name": "cifar10", "path": str(tmp_path / "cifar"), "limit": 0}
    err = refused(capsys, tmp_path, tiny_job(tmp_path, data=data))
    assert f"config key 'data.path' is '{tmp_path / 'cifar'}', which does not exist" in err

    (tmp_path / "cifar").mkdir()
    err = refused(capsys, tmp_path, tiny_job(tmp_path, data=data))
    assert f"data.path '{tmp_path / 'cifar'}' holds no cifar10 batches" in err

    batches = tmp_path / "cifar" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"):
        (batches / name).write_bytes(b"\x80\x04not a pickle at all")
    err = refused(capsys, tmp_path, tiny_job(tmp_path, data=data))
    assert "data_batch_1' is not a CIFAR python batch" in err


def test_an_unreadable_image_ends_the_search_with_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An image folder's file that is cut short is met only when a batch reads it, in a DataLoader
    worker process here: the search ends with exit status 2 and one line naming the file, not the
    worker's traceback."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "images" / "train" / c).mkdir(parents=True)
        for n in range(8):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(
                tmp_path / "images" / "train" / c / f"{n}.png")
    bad = tmp_path / "images" / "train" / "b" / "3.png"
    bad.write_bytes(bad.read_bytes()[:1000])
    data = {"name": "imagenet", "path": str(tmp_path / "images"), "image_size": 32, "batch_size": 4,
            "limit": 0, "num_workers": 1}
    err = refused(capsys, tmp_path, tiny_job(tmp_path, data=data))
    assert err == f"raynas: error: image {str(bad)!r} cannot be read (OSError: image file is truncated): " \
        "replace or remove it"


def test_a_missing_latency_table_says_where_it_was_looked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = tiny_job(tmp_path)
    job["space"] = {"name": "fbnet"}
    job["strategy"] = {
        "name": "fbnet", "latency_table": "no-such-device", "latency_dir": str(tmp_path / "tables"),
    }
    err = refused(capsys, tmp_path, job)
    assert "no latency table for device 'no-such-device'" in err
    assert "(build one with `raynas latency`)" in err


def test_an_sqlite_store_mlflow_cannot_open_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """MLflow itself ends each of these in a traceback (SQLAlchemy's DatabaseError, its own
    FileNotFoundError while making the folder)."""
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"\x00garbage, not a database" * 400)
    err = refused(capsys, tmp_path, tiny_job(tmp_path), "--tracking-uri", f"sqlite:///{corrupt}")
    assert err == (f"raynas: error: MLflow store {corrupt} is not an SQLite database (file is not a "
                   "database); name another file (MLflow creates it), or move this one away")
    folder = tmp_path / "stores"
    folder.mkdir()
    err = refused(capsys, tmp_path, tiny_job(tmp_path), "--tracking-uri", f"sqlite:///{folder}")
    assert f"names {folder}, a folder; name a database file in it, e.g. sqlite:///{folder}/mlflow.db" in err
    (tmp_path / "a-file").write_text("not a folder")
    inside = tmp_path / "a-file" / "mlflow.db"
    err = refused(capsys, tmp_path, tiny_job(tmp_path), "--tracking-uri", f"sqlite:///{inside}")
    assert f"cannot create the folder {inside.parent} (a file has that name)" in err


def test_a_store_whose_writer_was_killed_mid_transaction_is_rolled_back_and_accepted(tmp_path: Path) -> None:
    """A driver SIGKILLed while MLflow writes leaves a hot journal beside the database; the store
    check rolls it back (as MLflow's next connection would) instead of refusing the store as
    "readonly", which a read-only look at it answers."""
    database = tmp_path / "mlflow.db"
    writer = f"""
import os, signal, sqlite3
connection = sqlite3.connect({str(database)!r}, isolation_level=None)
connection.execute("PRAGMA cache_size=2")  # spill the transaction's pages into the file
connection.execute("CREATE TABLE runs(x)")
connection.executemany("INSERT INTO runs VALUES (?)", [(b"kept" * 250,)] * 500)
connection.execute("BEGIN")
connection.execute("UPDATE runs SET x = ?", (b"lost" * 250,))
os.kill(os.getpid(), signal.SIGKILL)
"""
    assert subprocess.run([sys.executable, "-c", writer]).returncode == -signal.SIGKILL
    assert Path(f"{database}-journal").stat().st_size > 0
    read_only = contextlib.closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True))
    with read_only as connection, pytest.raises(sqlite3.OperationalError, match="readonly"):
        connection.execute("SELECT count(*) FROM runs").fetchall()  # what the check used to see
    check_tracking_store(f"sqlite:///{database}")
    with contextlib.closing(sqlite3.connect(database)) as connection:
        assert connection.execute("SELECT DISTINCT x FROM runs").fetchall() == [(b"kept" * 250,)]


def test_every_environment_error_is_answered_before_torch_by_search_train_and_study(
    tmp_path: Path, s3_env: S3Server
) -> None:
    """Each problem with the MLflow store, an output folder, an S3 bucket or the dataset's folder,
    given to `raynas search`, `raynas train` and `raynas study`: exit 2 and one line, from a process
    that has not imported torch, Ray or MLflow (each answer in well under a second, not the
    10-15 s those imports take)."""
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "corrupt.db").write_bytes(b"\x00garbage, not a database" * 400)
    blocked = tmp_path / "a-file" / "below"
    problems: dict[str, tuple[list[str], str]] = {
        "server": ([f"tracking.tracking_uri=http://127.0.0.1:{free_port()}"], "is unreachable"),
        "sqlite": ([f"tracking.tracking_uri=sqlite:///{tmp_path / 'corrupt.db'}"],
                   "is not an SQLite database"),
        "sqlite-folder": ([f"tracking.tracking_uri=sqlite:///{blocked / 'm.db'}"],
                          f"cannot create the folder {blocked}"),
        "database-driver": (["tracking.tracking_uri=postgresql://mlflow@127.0.0.1/mlflow"],
                            "needs the database driver"),
        "output": ([f"tracking.output_dir={blocked}"], f"cannot create the folder {blocked}"),
        "results": ([f"tracking.results={blocked}"], f"cannot create the folder {blocked}"),
        "output-uri": (["tracking.output_dir=s3:/bucket/runs"],  # one slash short: not a folder either
                       "'s3:/bucket/runs' is neither a folder nor an S3 location"),
        "bucket": (["tracking.output_dir=s3://raynas-no-such-bucket/runs"],
                   "it does not exist; create it first"),
        "data": (["data.name=cifar10", f"data.path={tmp_path / 'no-cifar'}"], "which does not exist"),
        "data-file": (["data.name=cifar10", f"data.path={tmp_path / 'a-file'}"], "which is a file"),
    }
    search = write_job(tmp_path, tiny_job(tmp_path))
    retrain = tmp_path / "retrain.yaml"
    shared = {k: v for k, v in tiny_job(tmp_path).items() if k not in ("strategy", "train")}
    retrain.write_text(yaml.safe_dump({**shared, "architecture": "DARTS_V2", "retrain": {"epochs": 1}}))
    study = Path(__file__).parents[1] / "jobs" / "layer_count_quickstart.yaml"
    commands = {"search": search, "train": retrain, "study": study}
    cases, names = [], []
    for command, job in commands.items():
        for problem, (settings, _) in problems.items():
            cases.append([command, str(job), *(arg for s in settings for arg in ("--set", s))])
            names.append((command, problem))
    for (status, err), (command, problem) in zip(answers_without_heavy_imports(cases), names, strict=True):
        assert status == 2 and err.startswith("raynas: error: "), (command, problem, err)
        assert problems[problem][1] in err and err.count("\n") == 1, (command, problem, err)


@pytest.mark.own_ray
def test_actors_a_local_ray_cannot_hold_at_once_say_what_this_machine_offers(tmp_path: Path) -> None:
    """Without an address, raynas starts a Ray of this machine, which never grows: data-parallel
    workers, or a sampling search's evaluators (placed all at once), that need more CPUs than it
    has are refused in one line instead of waiting for ever to be placed."""
    import os

    import ray

    from raynas.execution.pool import RayPool
    from raynas.execution.ray_actors import init_ray
    from raynas.runs.jobs import parse_job

    cpus = os.cpu_count() or 1  # two actors of all of them: more than this machine has
    job = tiny_job(tmp_path, execution={"backend": "ray", "cpus_per_worker": cpus, "workers": 2})
    with pytest.raises(ConfigError, match=rf"^execution.workers x cpus_per_worker need {2 * cpus} CPUs but "
                                          r"this machine offers \d+; lower them or pass --address"):
        init_ray(parse_job(job).execution)
    assert not ray.is_initialized()  # the local Ray is stopped again
    job = tiny_job(tmp_path, execution={"backend": "ray", "cpus_per_worker": cpus, "concurrency": 2},
                   evaluator={"name": "scratch", "epochs": 1}, tune={"enabled": False})
    job["strategy"] = {"name": "random", "evaluations": 2}
    del job["train"]
    with pytest.raises(ConfigError, match=rf"^execution.concurrency x cpus_per_worker need {2 * cpus} CPUs"):
        RayPool(parse_job(job))
    assert not ray.is_initialized()


def test_raynas_latency_checks_where_it_writes_and_the_cluster_before_timing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`raynas latency` times for minutes: a table folder it cannot write, or a `--cluster` that
    nothing answers at, is one line and exit 2 at once (the table was lost after the timing, and
    Ray's connection retried for minutes)."""
    (tmp_path / "a-file").write_text("not a folder")
    blocked = tmp_path / "a-file" / "tables"
    for args, says in (
        (["--out", str(blocked / "cpu.json")], f"cannot create the folder {blocked}"),
        (["--out", str(blocked)], f"cannot create the folder {blocked}"),
        (["--out", str(tmp_path / "t"), "--cluster", f"127.0.0.1:{free_port()}"],
         "no Ray cluster answers at 127.0.0.1:"),
    ):
        capsys.readouterr()
        started = time.monotonic()
        assert main(["latency", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("raynas: error: ") and says in err and len(err.splitlines()) == 1, err
        assert time.monotonic() - started < 10  # nothing was timed
    assert not (tmp_path / "t").exists()


def test_an_output_folder_with_no_room_stops_the_search_in_one_line_and_it_runs_again_once_there_is(
    tmp_path: Path, mlflow_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The search's files refused room by the kernel: a file size limit of 300 kB on its process
    (``ulimit -f``), which refuses the checkpoint's writes (534 kB) with EFBIG as a full disk does
    with ENOSPC; the MLflow store is a server's, in a process of its own. It was torch's
    "unexpected pos" RuntimeError with a traceback after every epoch's checkpoint was skipped as
    if its storage were unreachable; now the first checkpoint stops the search with one line and
    exit status 2, its MLflow run marked failed, no partial file left; with room, the same
    command runs the search (from its start: no checkpoint was written) to its end."""
    import resource

    from mlflow.tracking import MlflowClient

    job = tiny_job(tmp_path, train={"epochs": 1}, tracking={"tracking_uri": mlflow_server})
    path = write_job(tmp_path, job)

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

    done = subprocess.run([str(BIN / "raynas"), "search", str(path)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, preexec_fn=limit_file_size)
    checkpoint = tmp_path / "runs" / "tiny" / "checkpoint.pt"
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-3000:]
    assert lines[-1] == (f"raynas: error: cannot write {checkpoint}: File too large; make room there (or "
                         "write elsewhere: tracking.output_dir, tracking.tracking_uri) and run the same "
                         "command again to resume")
    assert len(lines) == 1 and "epoch   1/1" not in done.stdout, done.stderr  # stopped at the first
    assert not list(checkpoint.parent.glob("*checkpoint.pt*tmp*"))  # no partial file left
    client = MlflowClient(mlflow_server)
    assert client.get_run(done.stdout.split("MLflow run ")[1].split()[0]).info.status == "FAILED"
    assert main(["search", str(path)]) == 0
    again = capsys.readouterr().out.split("MLflow run: ")[1].split()[0]
    assert client.get_run(again).info.status == "FINISHED"
    assert checkpoint.is_file()


def test_an_sqlite_store_with_no_room_stops_the_search_in_one_line_and_the_same_command_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The MLflow store (SQLite) cannot grow mid-search: SQLite's own cap on its pages
    (``PRAGMA max_page_count``, set on every connection MLflow takes from its pool) refuses a new page with
    SQLITE_FULL, "database or disk is full", as a full disk does. It was MLflow's ERROR log of
    every retry with its SQL and a traceback (about 500 lines, exit status 1); now one line,
    exit status 2, no retries, and the same command with room goes on in the same MLflow run."""
    import sqlalchemy
    from mlflow.tracking import MlflowClient

    job = tiny_job(tmp_path, train={"epochs": 3})
    path = write_job(tmp_path, job)
    database = tmp_path / "mlflow.db"
    capsys.readouterr()  # what making the test's MLflow store logged

    room = {"pages": 2}

    def capped(connection: Any, _record: Any, _proxy: Any) -> None:  # the store's pages, and room
        pages = database.stat().st_size // 4096
        connection.execute(f"PRAGMA max_page_count = {pages + room['pages']}")

    sqlalchemy.event.listen(sqlalchemy.pool.Pool, "checkout", capped)
    try:
        assert main(["search", str(path)]) == 2
        captured = capsys.readouterr()
        room["pages"] = 1_000_000
        assert main(["search", str(path)]) == 0
    finally:
        sqlalchemy.event.remove(sqlalchemy.pool.Pool, "checkout", capped)
    assert captured.err == (
        "raynas: error: the SQLite MLflow store (tracking.tracking_uri) cannot grow: database or disk is "
        "full; make room there (or write elsewhere: tracking.output_dir, tracking.tracking_uri) and run "
        "the same command again to resume\n")
    run_id = captured.out.split("MLflow run ")[1].split()[0]
    again = capsys.readouterr().out
    assert "Resuming 'tiny' after epoch " in again
    assert again.split("MLflow run: ")[1].split()[0] == run_id
    assert MlflowClient(job["tracking"]["tracking_uri"]).get_run(run_id).info.status == "FINISHED"


def test_a_new_sqlite_store_with_no_room_to_be_made_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """MLflow makes a new SQLite store's tables as it opens it; with no room for them (SQLite's
    cap on its pages, as in the test above) it is one line saying so (was SQLite's error with the
    statement and its parameters, a line of thousands of characters), exit status 2, and the same
    command with room makes the store and searches."""
    import sqlalchemy

    database = tmp_path / "new" / "mlflow.db"
    uri = f"sqlite:///{database}"
    path = write_job(tmp_path, tiny_job(tmp_path, train={"epochs": 1}, tracking={"tracking_uri": uri}))
    capsys.readouterr()  # what making the test's own MLflow store logged
    room = {"pages": 1}

    def capped(connection: Any, _record: Any, _proxy: Any) -> None:
        if database.exists():  # the other stores' connections too: leave them room
            pages = database.stat().st_size // 4096
            connection.execute(f"PRAGMA max_page_count = {pages + room['pages']}")

    sqlalchemy.event.listen(sqlalchemy.pool.Pool, "checkout", capped)
    try:
        assert main(["search", str(path)]) == 2
        err = capsys.readouterr().err
        room["pages"] = 1_000_000
        assert main(["search", str(path)]) == 0
    finally:
        sqlalchemy.event.remove(sqlalchemy.pool.Pool, "checkout", capped)
    assert err == (
        f"raynas: error: MLflow cannot open the store {uri}: the SQLite MLflow store "
        "(tracking.tracking_uri) cannot grow: database or disk is full; make room for it, or name "
        "another with --tracking-uri\n")
    assert "MLflow run: " in capsys.readouterr().out
