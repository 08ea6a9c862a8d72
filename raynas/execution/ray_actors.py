"""The Ray backend: work lives in Ray actors placed by their CPU, GPU and accelerator resources.

``ray.init`` joins the cluster at ``execution.address`` or ``RAY_ADDRESS`` when given, and
otherwise starts a small local Ray (small object store, no dashboard, no usage statistics).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import ray

from raynas.config import ExecutionConfig
from raynas.errors import ClusterLostError, ConfigError, RaynasError, WorkerLostError
from raynas.execution.group import GroupMember
from raynas.types import EpochReport

log = logging.getLogger(__name__)

# How often a driver waiting for Ray to place its actors says so (an autoscaling cluster may take
# minutes to add a node; a cluster too busy or too small never does).
PLACEMENT_REPORT_SECONDS = 60.0

# How long a driver that lost an actor watches the cluster's head before taking the loss for a
# worker's: a head stopping with its node takes its workers down a moment before its own GCS.
HEAD_GRACE_SECONDS = 2.0

# Ray's node label for a node's accelerator type (the cluster files set it on every GPU node type).
ACCELERATOR_LABEL = "ray.io/accelerator-type"


def node_type(accelerator: str | None = None) -> str:
    """The accelerator type of the node this Ray worker runs on, or ``cpu``.

    The node's ``ray.io/accelerator-type`` label first (Ray's label for a node's accelerator type,
    which the cluster files in ``cluster/`` set on every GPU node type), then the configured
    ``accelerator`` resource if this worker was given some, then ``gpu`` for a GPU of unknown type.
    """
    context = ray.get_runtime_context()
    label = context.get_node_labels().get(ACCELERATOR_LABEL)
    if label:
        return str(label)
    assigned = context.get_assigned_resources()
    if accelerator and assigned.get(accelerator, 0) > 0:
        return accelerator
    return "gpu" if assigned.get("GPU", 0) > 0 else "cpu"


def check_address(address: str, given: str) -> None:
    """Refuse, in one line naming where it was ``given``, a Ray address that no Ray cluster can be
    joined at: an HTTP address (the dashboard's), a host:port (or ray://host:port) nothing answers
    at, or where something answers that is not a Ray cluster (a web server, Ray Client's port given
    as a cluster's, a cluster's GCS given as Ray Client's), or whose cluster turns this process
    away for want of its token. ``ray.init`` would retry for seconds to many minutes, printing as
    it goes, and end in a traceback.

    Raises:
        ConfigError: Saying which, and what to give instead.
    """
    if address.lower().startswith(("http://", "https://")):
        raise ConfigError(
            f"{address} ({given}) is an HTTP address (a Ray dashboard's, where `ray job submit` sends "
            "jobs); give the cluster's GCS address, host:port (port 6379 unless `ray start --port` "
            "chose another), or ray://host:10001 for Ray Client"
        )
    endpoint = gcs_endpoint(address)
    if not endpoint:  # (auto, and the forms Ray resolves itself)
        return
    # (under TLS the preface cannot be read: only whether something accepts the connection)
    greeting = _greeting(endpoint, speak=os.environ.get("RAY_USE_TLS", "0").lower() not in ("1", "true"))
    if greeting is None:
        raise ConfigError(
            f"no Ray cluster answers at {address} ({given}); start it (`ray start --head`), "
            "correct the address, or leave it out for a local Ray"
        )
    if greeting == "other":
        raise ConfigError(
            f"something answers at {address} ({given}) but not as a Ray cluster does (Ray speaks gRPC; "
            "a dashboard's or another server's port?); give the head's GCS address, host:port (port "
            "6379 unless `ray start --port` chose another), or ray://host:10001 for Ray Client"
        )
    answer = _gcs_answer(endpoint)
    if address.startswith("ray://"):
        if answer in ("gcs", "token"):
            raise ConfigError(
                f"{address} ({given}) names a Ray cluster's GCS, not Ray Client's server; give "
                f"{endpoint} (without ray://) to join the cluster, or Ray Client's port, ray://host:10001 "
                "(unless `ray start --ray-client-server-port` chose another)"
            )
        return
    if answer == "token":
        raise ConfigError(
            f"the Ray cluster at {address} ({given}) refuses this process: it asks for its token "
            "(Ray's token authentication); set RAY_AUTH_MODE=token and give the cluster's token in "
            "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"
        )
    if answer == "not a GCS":
        raise ConfigError(
            f"the server at {address} ({given}) speaks gRPC but is not a Ray cluster's GCS (Ray Client's "
            f"port?); for Ray Client write ray://{endpoint}, else give the head's GCS port (6379 unless "
            "`ray start --port` chose another)"
        )


def _greeting(endpoint: str, *, speak: bool = True, timeout: float = 3.0) -> str | None:
    """How the server at ``endpoint`` (host:port) greets one connection: None if nothing accepts
    it; ``grpc`` if it answers HTTP/2's connection preface with HTTP/2's SETTINGS frame, as every
    gRPC server (Ray's GCS and Ray Client's among them) does at once; ``other`` if not (a web
    server answers in HTTP/1, a stuck one not at all). Without ``speak``, ``grpc`` once it accepts."""
    host, _, port = endpoint.rpartition(":")
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    head = b""
    try:
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    except (OSError, ValueError):
        return None
    with sock:
        if not speak:
            return "grpc"
        try:
            sock.sendall(preface)  # (and an empty SETTINGS frame of its own)
            while len(head) < 9 and (chunk := sock.recv(9 - len(head))):
                head += chunk
        except OSError:
            pass
    # a frame's header: its length (3 bytes), then its type
    return "grpc" if len(head) == 9 and head[3] == 0x04 else "other"


def _gcs_answer(endpoint: str) -> str:
    """How the gRPC server at ``endpoint`` (host:port) answers a GCS client: ``gcs`` (it is a
    cluster's GCS, and lets this process in), ``token`` (a GCS that asks for its token: ``ray.init``
    tried for 20 s, a warning from Ray's core each second, then a traceback), ``not a GCS`` (it
    knows no GCS method: Ray Client's server, given as a cluster's), or ``""`` (another failure,
    left to ``ray.init`` to retry and report: a GCS starting, or gone meanwhile). One connection of
    Ray's own GCS client tells it in milliseconds; its warning (written by Ray's core to file
    descriptor 2) is kept off the console, the descriptor pointing at /dev/null meanwhile."""
    from ray._raylet import GcsClient
    from ray.exceptions import AuthenticationError

    sys.stderr.flush()
    kept = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        GcsClient(address=endpoint, cluster_id=None)
        return "gcs"
    except AuthenticationError:
        return "token"
    except Exception as exc:
        return "not a GCS" if getattr(exc, "rpc_code", None) == 12 else ""  # gRPC's UNIMPLEMENTED
    finally:
        os.dup2(kept, 2)
        os.close(kept)


@contextlib.contextmanager
def _keeping_signals(local: bool = False) -> Iterator[None]:
    """SIGTERM does after the block what the process had it do before: ``ray.init`` sets its own
    handler (``sys.exit(15)``, a failed run) and its core worker's crash handler (which prints a
    stack dump of addresses on the console) over it; ``raynas search`` stops on it as on Ctrl-C.

    With ``local`` (the block starts a local Ray), SIGHUP is blocked in this thread while it runs,
    so that the processes Ray starts (GCS, raylet, agents: in this process's group) start with it
    blocked, and keep it so (a mask is inherited and kept across ``exec``, as Ray's own
    ``start_ray_process`` blocks SIGINT in them): a terminal closed sends its SIGHUP to the whole
    group, and Ray's processes ended under the command's own stop (the MLflow run's end, Ray's
    shutdown). The command stops them itself. This process keeps its handler: a hangup in those
    seconds waits until the block ends, or is taken by another of its threads, and stops the
    command all the same (ignored instead, it would be lost)."""
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    mask = (signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
            if main and local and hasattr(signal, "SIGHUP") else None)
    try:
        yield
    finally:
        if main and before is not None:
            signal.signal(signal.SIGTERM, before)
        if mask is not None and signal.SIGHUP not in mask:  # (one that came meanwhile is handled now)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


def init_ray(execution: ExecutionConfig) -> None:
    """Connect to the configured Ray cluster, or start a local one, once per process (SIGTERM is
    left as the process had it)."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = execution.address or os.environ.get("RAY_ADDRESS")
    if address:
        check_address(address, "execution.address (--address)" if execution.address else "RAY_ADDRESS")
        _quiet_ray_client_relay()
        _join(address)
        _quiet_console()
        return
    # A local Ray turns token authentication on by itself and says so on the console each time;
    # it is the secure default, not the search's news.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    try:
        with _keeping_signals(local=True):
            ray.init(
                object_store_memory=execution.object_store_mb * 1024 * 1024,
                include_dashboard=False,
                # Errors reach the driver as exceptions; workers' chatter stays in Ray's logs.
                log_to_driver=False,
                logging_level="WARNING",
                configure_logging=True,
            )
    except OSError as exc:  # its session folder (a /tmp/ray of another user's, a full disk)
        if not exc.filename:
            raise
        raise ConfigError(
            f"a local Ray cannot start: it cannot make {exc.filename} ({exc.strerror}); set RAY_TMPDIR "
            "to a folder this user can write (Ray keeps its sessions there), or give a cluster's "
            "address (--address)"
        ) from None
    _quiet_console()
    global _local
    _local = cluster_head()
    check_room(execution, execution.workers, "execution.workers")
    available = ray.cluster_resources()
    if execution.accelerator and execution.accelerator not in available:
        ray.shutdown()
        raise ConfigError(
            f"execution.accelerator {execution.accelerator!r} is a resource of cluster nodes, and "
            "this machine's local Ray has none; pass --address of a cluster that declares it, or "
            "remove execution.accelerator"
        )


_local = ""  # the GCS address of the local Ray this process started, if it did

# What Ray Client's proxy answers when the server process it starts for each client (Ray 2.60's
# ray/util/client/server/proxier.py, start_specific_server) is gone before it answers: it exits
# at its start with empty logs, now and then (seen about once in 40 connections here; the proxy
# forks it while its other threads are in gRPC), found gone as the proxy starts it, looks it up
# (psutil's NoSuchProcess) or connects to it. Ray's client does not try again; a new connection
# starts a new server.
_CLIENT_SERVER_LOST = (
    "Starting Ray client server failed", "NoSuchProcess", "Proxy failed to Connect to backend",
)
CLIENT_SERVER_TRIES = 3


def _join(address: str) -> None:
    """``ray.init`` at ``address``, connecting again (with a line in the log) while a Ray Client
    proxy loses the server it starts for this driver, :data:`CLIENT_SERVER_TRIES` times in all.

    Raises:
        RaynasError: Every try lost its server: one line naming the head's logs to read.
    """
    for attempt in range(1, CLIENT_SERVER_TRIES + 1):
        try:
            with _keeping_signals():
                ray.init(address=address, log_to_driver=False, logging_level="WARNING")
            return
        except ConnectionAbortedError as exc:
            if not any(lost in str(exc) for lost in _CLIENT_SERVER_LOST):
                raise
            if attempt == CLIENT_SERVER_TRIES:
                raise RaynasError(
                    f"Ray Client at {address} lost the server it starts for this driver "
                    f"{CLIENT_SERVER_TRIES} times in a row; its reasons are in the head node's Ray "
                    "logs (ray_client_server.err and ray_client_server_<port>.err)"
                ) from None
            log.warning("Ray Client at %s lost the server it started for this driver before it "
                        "answered; connecting again (try %d of %d)", address, attempt + 1,
                        CLIENT_SERVER_TRIES)


def check_room(execution: ExecutionConfig, count: int, setting: str) -> None:
    """On a local Ray this process started (no address given), ``count`` actors of
    ``execution``'s CPUs and GPUs each must fit at once: a machine's Ray never grows, and placing
    them would wait for ever (on a cluster, its autoscaler may add nodes: no check). ``setting``
    names what asks for ``count`` (``execution.workers``, ``execution.concurrency``).

    Raises:
        ConfigError: Saying what they need and what this machine offers (the local Ray stopped).
    """
    if not _local or cluster_head() != _local:  # not connected, or to a cluster given by address
        return
    available = ray.cluster_resources()
    for key, need in (("CPU", execution.cpus_per_worker), ("GPU", execution.gpus_per_worker)):
        if need * count > available.get(key, 0):
            ray.shutdown()
            raise ConfigError(
                f"{setting} x {key.lower()}s_per_worker need {need * count:g} {key}s but this "
                f"machine offers {available.get(key, 0):g}; lower them or pass --address of a "
                "larger cluster"
            )


def _quiet_console() -> None:
    """Keep Ray's own reports off the driver's console. Whatever ``log_to_driver`` says, a Ray
    driver prints every error its raylets publish: a paragraph for a worker that died, the table of
    the node's processes (about 60 lines) for one killed for memory. raynas says it in one line
    that names where Ray's logs are (:func:`ray_logs`), and the reports stay there. The switch is
    the one Ray's own debugger (``ray.util.rpdb``) uses to silence the console."""
    import ray._private.worker as ray_worker

    ray_worker._worker_logs_enabled = False


class _ServersOwnNews(logging.Filter):
    """Ray Client's relay of one warning of its server's: the server process that Ray Client starts
    for each client joins the cluster with ``ray.init`` in a thread, which warns that it cannot set
    its SIGTERM handler there; Ray Client relays the warning to the client's console (now and then:
    it races the relay's start). It is about the server's process, not the search's."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("SIGTERM handler is not set because current thread")


_SERVERS_OWN_NEWS = _ServersOwnNews()


def _quiet_ray_client_relay() -> None:
    """Keep :class:`_ServersOwnNews` off this process's console. A filter on the relay's logger
    (``ray.util.client.logsclient``), not a level: Ray Client sets that logger's level as it
    connects; the other records it relays are still shown."""
    relay = logging.getLogger("ray.util.client.logsclient")
    if _SERVERS_OWN_NEWS not in relay.filters:
        relay.addFilter(_SERVERS_OWN_NEWS)


def ray_logs() -> str:
    """The folder of this Ray session's logs on the driver's node (every node of a cluster keeps
    its own under the same session name); ``Ray's session logs`` when unknown."""
    import ray._private.worker as ray_worker

    node = getattr(ray_worker, "_global_node", None)
    try:
        return str(node.get_logs_dir_path()) if node is not None else "Ray's session logs"
    except Exception:  # a driver without a node of its own (Ray Client)
        return "Ray's session logs"


def wait_placed(
    actors: list[Any], need: dict[str, float], echo: Callable[[str], None] = log.warning,
    report_every: float = PLACEMENT_REPORT_SECONDS,
) -> None:
    """Wait until Ray has placed and started every actor, saying every ``report_every`` seconds
    how many wait and what the cluster has free.

    A data-parallel group gathers only once all its ranks run: otherwise rank 0 would wait for a
    rank that Ray has not placed (resources held by other work, a node still being added) and
    give up after the rendezvous timeout although nothing is wrong. Waiting for resources is
    Ray's own behaviour (an autoscaler adds nodes for pending actors), so this never gives up.

    Args:
        actors: Actor handles just created.
        need: Resources one actor asks for (``{"CPU": 1, "GPU": 0}``), named in the report.
        echo: Where the report goes.
        report_every: Seconds between reports.

    Raises:
        WorkerLostError: An actor died as it started.
        ClusterLostError: The cluster's head stopped answering meanwhile.
    """
    pending = {actor.__ray_ready__.remote(): actor for actor in actors}
    head = cluster_head()
    waited = 0.0
    reported = 0.0
    while pending:
        started = time.monotonic()
        # In slices of a second, so that a head gone meanwhile is noticed at once (Ray's own
        # calls would wait for it for a minute and then end the process).
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=min(1.0, report_every))
        for ref in ready:
            remote_call(ref)  # an actor that died as it started: WorkerLostError
            del pending[ref]
        waited += time.monotonic() - started
        if pending and head and not _answers(head):
            raise _cluster_lost(head)
        if pending and waited - reported >= report_every:
            reported = waited
            asked = ", ".join(f"{v:g} {k}" for k, v in need.items() if v)
            free = ray.available_resources()
            has = ", ".join(f"{free.get(k, 0):g} {k}" for k, v in need.items() if v)
            echo(
                f"waiting {waited:.0f} s for Ray to place {len(pending)} of {len(actors)} actor(s), "
                f"each asking for {asked}; the cluster has {has} free"
            )


# How long a rank's failed call waits for Ray to report a peer lost, when it may have failed
# because the peer was (a collective whose peer's process died: gloo's "Connection closed by
# peer"): Ray reports a dead process at once, a node gone with its processes within its health
# check (about 15 s by its defaults).
PEER_LOSS_GRACE_S = 30.0


def gather_group(actors: list[Any], refs: list[Any], *, grace_s: float = PEER_LOSS_GRACE_S) -> list[Any]:
    """The results of one call per rank of a data-parallel group (``refs``, in the order of
    ``actors``: setting the group up, training an epoch together), or the first error as soon as
    one rank fails: its peers are killed then, not left waiting in the group's rendezvous or
    collective for torch's 30 minutes for a rank that will never come.

    A rank whose call fails in its collective or rendezvous (:func:`_cut_off`) may have failed
    because a peer died under it: if Ray reports a rank lost within ``grace_s``, the loss is the
    error (:class:`WorkerLostError`, which a search answers by rebuilding the group), not the
    collective's. Any other error of a rank is the group's at once."""
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                remote_call(ready[0])
            except ray.exceptions.RayTaskError as exc:
                if not _cut_off(exc):
                    raise
                lost = _lost_peer(pending, grace_s)
                if lost is None:
                    raise
                raise lost from None
    except BaseException:
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        raise
    return [remote_call(ref) for ref in refs]


# What a rank's collective or rendezvous says when a peer's process is gone: gloo's "Connection
# closed by peer [host]:port ... caused by a remote worker crashing" (a RuntimeError), "Connection
# reset by peer", a broken pipe, a timeout; NCCL's errors; torch.distributed's own (DistError:
# the store's, the backend's).
_CUT_OFF = re.compile(r"gloo|nccl|connection|peer|broken pipe|timed? ?out|socket", re.IGNORECASE)


def _cut_off(exc: ray.exceptions.RayTaskError) -> bool:
    """Whether a rank's error may be its collective or rendezvous cut off by a peer's death."""
    cause = getattr(exc, "cause", None)
    if any(kind.__name__ == "DistError" for kind in type(cause).__mro__):  # (torch not imported here)
        return True
    return bool(_CUT_OFF.search(str(cause) if cause is not None else str(exc)))


def _lost_peer(pending: list[Any], grace_s: float) -> WorkerLostError | None:
    """The loss of a rank among ``pending`` calls that Ray reports within ``grace_s`` seconds;
    None if every one ends otherwise or is still running then."""
    deadline = time.monotonic() + grace_s
    while pending and (left := deadline - time.monotonic()) > 0:
        ready, pending = ray.wait(pending, num_returns=1, timeout=left)
        for ref in ready:
            try:
                remote_call(ref)
            except WorkerLostError as exc:
                return exc
            except ray.exceptions.RayTaskError:
                pass  # the same failure, on another rank
    return None


def cluster_head() -> str:
    """host:port of the connected cluster's head (its GCS); empty when not connected."""
    try:
        if not ray.is_initialized():  # (``get_runtime_context`` would start or join a Ray)
            return ""
        return str(ray.get_runtime_context().gcs_address or "")
    except Exception:  # not connected, a Ray Client driver, or one still connecting (gRPC's errors)
        return ""


def gcs_endpoint(address: str) -> str | None:
    """The host:port a Ray address connects to (``host:port``, or ``ray://host:port`` for Ray
    Client); None for ``auto`` and other forms, which Ray resolves itself."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    return f"{host}:{port}" if host and "/" not in host and port.isdigit() else None


def _answers(address: str, timeout: float = 3.0) -> bool:
    """Whether something accepts a TCP connection at host:port."""
    return _greeting(address, speak=False, timeout=timeout) is not None


def head_lost(head: str, grace: float = HEAD_GRACE_SECONDS) -> bool:
    """Whether the head at ``head`` (host:port) stops answering within ``grace`` seconds."""
    deadline = time.monotonic() + grace
    while True:
        if not _answers(head):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.25)


def check_head() -> None:
    """Raise :class:`ClusterLostError` if this process's Ray head stops answering (within
    :data:`HEAD_GRACE_SECONDS`): what a lost actor or trial means when its whole cluster went."""
    head = cluster_head()
    if head and head_lost(head):
        raise _cluster_lost(head)


def _cluster_lost(head: str) -> ClusterLostError:
    if _told is not None and threading.current_thread() is threading.main_thread():
        _told.set()  # the main thread carries it from here: the watch need not interrupt it
    return ClusterLostError(
        f"the Ray cluster at {head} is gone (its head does not answer; Ray's logs are in "
        f"{ray_logs()}); all finished work is checkpointed: start the cluster again (or leave "
        "out --address for a local Ray) and run the same command to resume"
    )


class ClusterGone(BaseException):
    """Carries :class:`ClusterLostError` from the head's watch (:func:`watching_the_head`) or a
    Tune callback to where the search stops. Not an ``Exception``: Tune cleans up after those
    (``tune.run``: ``except Exception: runner.cleanup()``), stopping every trial through the dead
    head, which blocks until Ray's core ends the process a minute later."""


ABANDON_SECONDS = 5.0
"""How long a lost head's :class:`ClusterGone` may wait for the main thread before the process ends."""

_watched = False  # a watch runs: a block inside it (a Tune run inside a search) adds none
_told: threading.Event | None = None  # set once this process raised the watched head's loss itself


@contextlib.contextmanager
def watching_the_head(every: float = 1.0) -> Iterator[None]:
    """While the block runs, a thread checks each ``every`` seconds that the Ray head this process
    is connected to answers (from when the block connects, if it was not yet); once it does not
    (:func:`check_head`), :class:`ClusterGone` is raised in the main thread wherever it is (in
    Tune's loop between trials, placing one, waiting for results: states in which no trial fails,
    so no callback would hear of it; or after Tune, recording the search). If the main thread is
    blocked in Ray's C code, waiting on the dead head, and has not taken it within
    :data:`ABANDON_SECONDS`, the process ends with the command line's line and status 1 (all
    finished work is journaled and checkpointed), before Ray's core ends it a minute later with its
    own report. Where the process learnt of the loss first and raised it itself (a lost actor's
    call, a Tune callback: :func:`check_head`), the watch does not interrupt the main thread again,
    which is then unwinding through the search's cleanup (its journal, its MLflow run), and only
    the same :data:`ABANDON_SECONDS` bound holds. Outside the main thread (signals cannot be
    handled there) the block runs unwatched.
    """
    global _watched, _told
    if _watched or threading.current_thread() is not threading.main_thread():
        yield
        return
    lost: list[ClusterLostError] = []
    done = threading.Event()
    told = threading.Event()
    main = threading.main_thread().ident
    assert main is not None

    def watch() -> None:
        while not done.wait(every):
            head = cluster_head()
            if not head or not head_lost(head, grace=0):  # one quick probe, confirmed below
                continue
            try:
                check_head()
            except ClusterLostError as exc:
                lost.append(exc)
                if not told.is_set():
                    # A real signal (``_thread.interrupt_main`` only sets Python's flag): it also
                    # wakes a main thread asleep or waiting in a system call.
                    signal.pthread_kill(main, signal.SIGUSR2)
                if done.wait(ABANDON_SECONDS):
                    return
                print(f"raynas: error: {exc}", file=sys.stderr, flush=True)
                sys.stdout.flush()
                os._exit(1)

    def on_lost(signum: int, frame: Any) -> None:
        if lost:
            raise ClusterGone(lost[0])

    # SIGUSR2: tune.run takes SIGINT and SIGUSR1 for its own stop, which checkpoints through the head.
    previous = signal.signal(signal.SIGUSR2, on_lost)
    watcher = threading.Thread(target=watch, name="raynas-head-watch", daemon=True)
    _watched, _told = True, told
    watcher.start()
    try:
        yield
    finally:
        done.set()
        _watched, _told = False, None
        signal.signal(signal.SIGUSR2, previous)


@contextlib.contextmanager
def head_watched(every: float = 1.0) -> Iterator[None]:
    """:func:`watching_the_head` around a command's work (a search, a retraining, a study): a
    head lost while the block runs ends it with :class:`ClusterLostError`, the line the command
    line prints (status 1), wherever the main thread was."""
    try:
        with watching_the_head(every):
            yield
    except ClusterGone as gone:
        raise gone.args[0] from None


def out_of_memory(error: str) -> str:
    """What to tell of a worker Ray's memory monitor killed, from Ray's report of it (``error``:
    a hundred lines, the node's processes among them), or ``""`` for another error. The monitor
    kills the newest task's worker when its node's memory passes ``RAY_memory_usage_threshold``
    (95%)."""
    if "killed due to the node running low on memory" not in error:
        return ""
    used = re.search(r"was (\S+ used / \S+ limit)", error)
    return ("Ray's memory monitor killed it, its node's memory running out"
            + (f": {used.group(1)}" if used else "")
            + "; lower data.batch_size or execution.concurrency, or give the node more memory")


def remote_call(ref: Any) -> Any:
    """``ray.get(ref)``; our own errors re-raised as such, a lost actor as :class:`WorkerLostError`."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        # Our own errors (a missing dataset on the worker node, ...) reach the user as such.
        if isinstance(exc.cause, RaynasError):
            raise exc.cause from None
        raise
    except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
            ray.exceptions.OutOfMemoryError, ray.exceptions.NodeDiedError) as exc:
        head = cluster_head()
        if head and head_lost(head):
            # Ray's core worker would end this process by itself a minute later, with its own
            # report; raynas says it first, in one line, and the CLI ends without waiting.
            raise _cluster_lost(head) from None
        reason = out_of_memory(str(exc)) or (
            str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__)
        raise WorkerLostError(
            f"the search's Ray actor was lost ({reason}; Ray's logs are in {ray_logs()}); all "
            "finished work is checkpointed: run the same command again to resume",
            reason=f"a Ray actor was lost ({reason})",
        ) from None


class _WorkerActor(GroupMember):
    """Hosts the work a factory builds; built by :meth:`setup` so that errors reach the driver."""

    def setup(
        self, factory: Any, threads: int, rank: int = 0, world: int = 1, address: str | None = None
    ) -> str:
        self.join_group(rank, world, address)
        self.work = factory(threads=threads, rank=rank, world_size=world)
        return f"{socket.gethostname()} ({self.work.device})"

    def run_epoch(self) -> Any:
        return self.work.run_epoch()

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.work, method)(*args)

    def state_dict(self) -> dict[str, Any]:
        return self.work.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.work.load_state_dict(state)


class RayWorker:
    """Drives work that lives in Ray actors: one, or ``execution.workers`` data-parallel replicas
    (ranks of one ``torch.distributed`` group) that average their gradients and so hold the same
    model.

    Args:
        factory: Builds the work in each actor (see :data:`raynas.execution.WorkerFactory`).
        execution: The actors' number, CPUs, GPUs and accelerator type, and how many times they
            may be replaced (``max_restarts``).
        echo: Where a line goes for each start lost (its default: this module's log).
    """

    def __init__(self, factory: Any, execution: ExecutionConfig,
                 echo: Callable[[str], None] | None = None) -> None:
        init_ray(execution)
        self.factory = factory
        self.execution = execution
        self.max_restarts = execution.max_restarts
        self.echo = echo or log.warning
        self.actors: list[Any] = []
        self.restarts = 0
        self._start(None)

    def _start(self, state: dict[str, Any] | None) -> None:
        """New actors, set up and given ``state``; an actor lost meanwhile (its node gone as the
        search starts, or gone too while it replaces a lost one) counts as a restart, and they
        are started again."""
        while True:
            try:
                self._start_once()
                if state is not None:
                    self.load_state_dict(state)
                return
            except WorkerLostError as exc:
                self._count_restart()
                self.echo(f"{exc.reason}: starting the worker again ({self.restarts} of at most "
                          f"{self.max_restarts} restarts); Ray's logs are in {ray_logs()}")

    def _start_once(self) -> None:
        self.close()
        execution = self.execution
        actor_cls = ray.remote(_WorkerActor)
        world = execution.workers
        self.actors = [
            actor_cls.options(  # type: ignore[attr-defined]
                num_cpus=execution.cpus_per_worker,
                num_gpus=execution.gpus_per_worker,
                # The GPU type: a custom resource that the cluster's GPU node types declare.
                resources={execution.accelerator: execution.gpus_per_worker}
                if execution.accelerator else None,
                max_restarts=0,
            ).remote()
            for _ in range(world)
        ]
        wait_placed(self.actors, {"CPU": execution.cpus_per_worker, "GPU": execution.gpus_per_worker},
                    self.echo)
        address = self._get(self.actors[0].rendezvous.remote(world)) if world > 1 else None
        threads = max(1, int(execution.cpus_per_worker))
        locations = gather_group(self.actors, [
            actor.setup.remote(self.factory, threads, rank, world, address)
            for rank, actor in enumerate(self.actors)
        ])
        where = ", ".join(sorted(set(locations)))
        self.location = (
            f"Ray actor on {where}" if world == 1 else f"{world} data-parallel Ray actors on {where}"
        )

    def _count_restart(self) -> None:
        self.restarts += 1
        if self.restarts > self.max_restarts:
            raise WorkerLostError(
                f"the worker's Ray actors were lost {self.restarts} times (execution.max_restarts is "
                f"{self.max_restarts}; Ray's logs are in {ray_logs()}); "
                "all finished work is checkpointed: run the same command again to resume"
            )

    def restart(self, state: dict[str, Any] | None = None) -> None:
        """Replace every actor by a new one (all ranks: a data-parallel group is rebuilt whole,
        as Ray Train does), placed wherever the resources are, and load ``state`` into them
        (None: the factory's own). One lost while this is done counts as another restart, and it
        is done again.

        Raises:
            WorkerLostError: ``execution.max_restarts`` restarts were made already.
        """
        self._count_restart()
        self._start(state)

    _get = staticmethod(remote_call)

    def run_epoch(self) -> Any:
        reports = gather_group(self.actors, [actor.run_epoch.remote() for actor in self.actors])
        if isinstance(reports[0], EpochReport):  # a search: every rank derived the same architecture
            keys = {report.architecture.key() for report in reports}
            if len(keys) > 1:
                raise RuntimeError(f"data-parallel workers derived different architectures: {keys}")
        return reports[0]

    def call(self, method: str, *args: Any) -> Any:
        return self._get(self.actors[0].call.remote(method, *args))

    def state_dict(self) -> dict[str, Any]:
        return self._get(self.actors[0].state_dict.remote())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._get([actor.load_state_dict.remote(state) for actor in self.actors])

    def describe_location(self) -> str:
        return self.location

    def close(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):  # an actor whose node is gone is dead already
                ray.kill(actor, no_restart=True)
