"""MLflow layout of raynas: one experiment per job, a parent run per search, a child run per
evaluated candidate, lineage tags, pictures and the final model in the Model Registry.

The parent run holds the flattened config as params; per-epoch metrics (train/validation loss and
accuracy, entropy of the architecture weights, ...); the derived architecture and the
architecture weights of every epoch (``genotypes/epoch_NNN.json``, ``arch_weights/epoch_NNN.json``);
the final architecture (``genotype.json``), its picture (``architecture.png``), the weights'
heatmap over epochs (``arch_weights.png``), the final architecture weights (``arch_weights.json``);
and tags ``raynas.space``, ``raynas.strategy``, ``raynas.dataset``, ``raynas.seed`` and, at the
end, ``raynas.architecture_key``.

A child run (tag ``mlflow.parentRunId``) per candidate, from an :class:`raynas.types.EvalResult`
(:meth:`MlflowTracker.log_candidate`): the architecture as params, as ``architecture.json`` and,
drawn by its space, as ``architecture.png``; its metrics, cost (``seconds``), ``budget``, node
type and whether it was stopped early, with the parent's tags plus ``raynas.architecture_key`` and
``raynas.trial_id``.

A run that retrains or transfers a found architecture (:meth:`MlflowTracker.start_derived_run`)
carries ``raynas.lineage.*`` tags naming the search run and the architecture it came from.

Outages: the tracker checks the server when it starts (a clear :class:`ConfigError` if it cannot
reach it). Later, every record goes through a queue: a call that fails on an outage is retried
with exponential backoff, then kept in the queue, in order, and sent before the next record, so a
search goes on while the server is down and its records arrive when it is back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raynas.config import SearchConfig, flatten, redact_uri
from raynas.environment import (
    check_tracking_store,
    default_artifact_location,
    default_tracking_uri,
    sqlite_file,
)
from raynas.errors import ConfigError, LeaseLost, no_room
from raynas.tracking.retry import is_transient, with_retries
from raynas.tracking.vocabulary import canonical_metrics, canonical_node
from raynas.types import Architecture, EpochReport, EvalResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow.tracking import MlflowClient
    from torch import nn

log = logging.getLogger(__name__)

# MLflow draws a progress bar on stderr for every artifact it downloads (a run's genotype, a
# registered model); raynas reads them as part of its work, from the command line or from Python.
# A user's own setting stands.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

TAG_PREFIX = "raynas."
# The tag naming the attempt that made a search's run (MlflowTracker.start).
ATTEMPT_TAG = f"{TAG_PREFIX}attempt"
PARENT_TAG = "mlflow.parentRunId"
# MLflow's experiment tag for the kind of work an experiment holds; its UI opens an experiment of
# this kind in the model-training view (runs, metrics, models), not the GenAI one.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
_PARAM_LIMIT = 6000  # MLflow's longest param value
# While MLflow is unreachable, how often a new record tries to send the queued ones.
OUTAGE_RETRY_S = 5.0


@contextlib.contextmanager
def store_opening(uri: str) -> Iterator[None]:
    """Processes of this machine open a local SQLite store one at a time while the block runs
    (an exclusive ``flock`` on its folder, not on the database file, whose SQLite locks a closed
    descriptor of this process would release): MLflow creates a new store's tables and migrates
    an old one's as it opens it, and two searches started at once each migrating the same file
    left it half-migrated, unusable. Other stores need no lock."""
    sqlite = urllib.parse.urlsplit(uri).scheme.lower().split("+")[0] == "sqlite"
    database = sqlite_file(uri) if sqlite else None
    if database is None:
        yield
        return
    import fcntl

    database.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(database.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        yield
    finally:
        os.close(folder)  # (releases the lock)


def open_client(uri: str) -> MlflowClient:
    """An ``MlflowClient`` of the store at ``uri`` (made or migrated as MLflow opens it, one
    process at a time: :func:`store_opening`).

    Raises:
        ConfigError: The store is there but MLflow cannot open it (a database MLflow's migration
            fails on, one left half-migrated by an older raynas, a newer MLflow's): one line.
    """
    from mlflow.tracking import MlflowClient

    with store_opening(uri):
        try:
            return MlflowClient(tracking_uri=uri)
        except Exception as exc:
            if urllib.parse.urlsplit(uri).scheme.lower() in ("http", "https"):
                raise
            room = no_room(exc)
            if room:
                raise ConfigError(f"MLflow cannot open the store {redact_uri(uri)}: {room}; make room "
                                  "for it, or name another with --tracking-uri") from None
            # SQLAlchemy's errors go on to quote the statement and its parameters: the reason is
            # what comes before.
            reason = " ".join(str(exc).split("[SQL:")[0].split())[:500]
            raise ConfigError(
                f"MLflow cannot open the store {redact_uri(uri)} ({type(exc).__name__}: {reason}); "
                "do as MLflow says, or move the store away (a new one is made), or name another "
                "with --tracking-uri"
            ) from None


RUN_PREFIX = "run:"
"""How a user names an MLflow run where an architecture or a model is asked for: ``run:<run id>``."""


def run_artifact(client: MlflowClient, reference: str, artifact: str, what: str,
                 dst: str | None = None, *,
                 store_setting: str = "--tracking-uri or MLFLOW_TRACKING_URI") -> tuple[str, str]:
    """The run id ``reference`` (``run:<MLflow run id>``) names and the local path of its
    ``artifact``, downloaded into ``dst`` (a new temporary folder if None).

    Args:
        client: The client of the store that holds the run.
        reference: What the user wrote, ``run:<id>``.
        artifact: The artifact's path in the run, e.g. ``genotype.json``.
        what: What the artifact is, for messages (e.g. "the search's final architecture").
        dst: Where to download it.
        store_setting: How the user names the store, for the "no such run" line.

    Raises:
        ConfigError: One line: the reference names no run, the store holds no such run, or the
            run has no such artifact.
    """
    from mlflow.exceptions import MlflowException

    run_id = reference[len(RUN_PREFIX):].strip()
    where = redact_uri(client.tracking_uri)
    if not run_id:
        raise ConfigError(f"{reference!r} names no run: write run:<MLflow run id> (the run page's "
                          "'Run ID' in the MLflow UI; searches print theirs at the end)")
    try:
        client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        raise ConfigError(f"{reference!r}: there is no MLflow run {run_id!r} at {where}; name the "
                          f"store that holds it with {store_setting}") from None
    try:
        return run_id, client.download_artifacts(run_id, artifact, dst)
    except Exception as exc:  # MLflow raises several types for a missing artifact
        raise ConfigError(
            f"{reference!r}: MLflow run {run_id!r} at {where} has no {artifact!r}, {what} "
            f"({type(exc).__name__})"
        ) from None


def check_server(uri: str, *, existing: bool = False) -> None:
    """Check a tracking URI at start: its form, and that its store answers
    (:func:`raynas.environment.check_tracking_store`; ``existing``: it must hold runs already).

    Raises:
        ConfigError: One line saying what to use instead.
    """
    check_tracking_store(uri, existing=existing)


def lineage_tags(*, source_run_id: str, architecture: Architecture, kind: str,
                 source_experiment_id: str = "") -> dict[str, str]:
    """Tags that tie a run to the search run and the architecture it came from.

    Args:
        source_run_id: The search's (parent) run.
        architecture: The architecture being retrained or transferred.
        kind: What the run does with it, e.g. ``retrain`` or ``transfer``.
        source_experiment_id: The search run's experiment, when known.
    """
    tags = {
        f"{TAG_PREFIX}lineage.kind": kind,
        f"{TAG_PREFIX}lineage.source_run_id": source_run_id,
        f"{TAG_PREFIX}lineage.architecture_key": architecture.key(),
        f"{TAG_PREFIX}architecture_key": architecture.key(),
        f"{TAG_PREFIX}space": architecture.space,
    }
    if source_experiment_id:
        tags[f"{TAG_PREFIX}lineage.source_experiment_id"] = source_experiment_id
    return tags


# Inputs of more pixels than this are logged with their signature but no input example: a
# Cityscapes image (3x1024x1024) made a 63 MB model of zeros written out twice as JSON (input and
# serving examples), 2.5 s to save; an ImageNet one 3 MB. The signature still gives their shape.
EXAMPLE_PIXELS = 64 * 64


def _signature(network: nn.Module, example: Any) -> tuple[Any, Any]:
    """MLflow's signature of ``network`` on ``example`` (a tensor batch) and the example as NumPy:
    tensor specs whose batch dimension is free (-1); (None, None) without an example. An image
    example of more than :data:`EXAMPLE_PIXELS` pixels is returned as None (its signature alone is
    logged), and the network's output shape is worked out on the ``meta`` device for it, without
    computing the forward pass (the real one where the network cannot run on meta tensors)."""
    if example is None:
        return None, None
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    large = example.dim() == 4 and example.shape[-2] * example.shape[-1] > EXAMPLE_PIXELS
    try:
        out = _output_on_meta(network, example) if large else None
        if out is None:
            with torch.no_grad():
                out = network(example.cpu())
        out = out[0] if isinstance(out, (tuple, list)) else out  # (logits, auxiliary) or (logits, hidden)
        out_dtype = torch.empty(0, dtype=out.dtype).numpy().dtype
    except Exception as exc:  # a network that takes more than one input: logged without them
        log.debug("no MLflow signature for %s: %s", type(network).__name__, exc)
        return None, None

    def spec(dtype: np.dtype, shape: tuple[int, ...]) -> Schema:
        return Schema([TensorSpec(dtype, (-1, *shape[1:]))])

    array = example.cpu().numpy()
    signature = ModelSignature(
        inputs=spec(array.dtype, array.shape),
        outputs=spec(out_dtype, tuple(out.shape)),
    )
    return signature, None if large else array


def _output_on_meta(network: nn.Module, example: Any) -> Any:
    """The output of ``network`` on ``example`` as ``meta`` tensors (their shapes and dtypes, nothing
    computed), with the network's parameters and buffers swapped for meta ones for the call; None
    where the network does not run on meta tensors (it makes CPU tensors of its own)."""
    import torch
    from torch.func import functional_call

    state = {name: torch.empty_like(t, device="meta")
             for name, t in [*network.named_parameters(), *network.named_buffers()]}
    try:
        with torch.no_grad():
            out = functional_call(network, state, (example.to("meta"),))
    except Exception as exc:
        log.debug("%s does not run on meta tensors (%s): its signature from a real pass",
                  type(network).__name__, exc)
        return None
    return out


# MLflow's map of the installed packages to their modules, made in a thread (:func:`map_packages`).
_packages_mapped: threading.Thread | None = None


def map_packages() -> None:
    """Start making, once per process and in a background thread, the map of installed packages
    to their modules that ``save_model`` checks a model's requirements with (importlib's
    ``packages_distributions``, which lists every installed package's files: a second or more, at
    the end of every search). Made while the search runs, it is ready when the model is saved
    (:meth:`MlflowTracker.register_model` waits for it)."""
    global _packages_mapped
    if _packages_mapped is None:
        from mlflow.utils import requirements_utils

        make = getattr(requirements_utils, "_init_modules_to_packages_map", None)  # (MLflow's cache)
        if make is not None:
            _packages_mapped = threading.Thread(target=make, name="raynas-map-packages", daemon=True)
            _packages_mapped.start()


def _is_number(value: Any) -> bool:
    """An int or float that is not a flag."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _ChildRun:
    """The records of one child run, sent as one queued operation that can be retried: the run
    is created once and every later step reuses its id."""

    def __init__(self, tracker: MlflowTracker, result: EvalResult, *, parent: str, step: int,
                 name: str, tags: Mapping[str, str],
                 picture: Callable[[], bytes | None] | None = None) -> None:
        self.tracker, self.result, self.parent = tracker, result, parent
        self.step, self.name, self.tags = step, name, dict(tags)
        self.picture = picture
        self.run_id = ""
        self.done = 0  # steps finished, so a retry goes on from the one that failed
        self._asked_to_create = False
        self._span: tuple[int, int] | None = None

    def __call__(self) -> None:
        from mlflow.entities import Metric, Param

        client, r = self.tracker.client, self.result
        steps: list[Callable[[], Any]] = [
            self._create,
            lambda: client.log_batch(self.run_id, params=[Param(k, v) for k, v in self._params().items()]),
            lambda: client.log_batch(self.run_id, metrics=self._metrics(Metric)),
            lambda: client.log_text(self.run_id, r.architecture.to_json(indent=1), "architecture.json"),
            self._log_picture,
            lambda: client.set_terminated(self.run_id, status="FINISHED", end_time=self._times()[1]),
        ]
        for step in steps[self.done:]:
            step()
            self.done += 1

    def _create(self) -> None:
        r = self.result
        tags = {
            **self.tags, PARENT_TAG: self.parent,
            f"{TAG_PREFIX}architecture_key": r.architecture.key(), f"{TAG_PREFIX}trial_id": r.trial_id,
            f"{TAG_PREFIX}node": canonical_node(r.node),
            f"{TAG_PREFIX}stopped_early": str(r.stopped_early).lower(),
        }
        if r.node_id:
            tags[f"{TAG_PREFIX}node_id"] = r.node_id
        if self._asked_to_create:
            # A create whose reply was lost (the link cut after the server made the run) must not
            # make a second run: look for the one the server may have made.
            trial = r.trial_id.replace("'", "\\'")
            made = self.tracker.client.search_runs(
                [self.tracker.experiment_id], max_results=1,
                filter_string=f"tags.`{PARENT_TAG}` = '{self.parent}' "
                f"and tags.`{TAG_PREFIX}trial_id` = '{trial}'",
            )
            if made:
                self.run_id = made[0].info.run_id
                return
        self._asked_to_create = True
        run = self.tracker.client.create_run(
            self.tracker.experiment_id, start_time=self._times()[0], run_name=self.name, tags=tags
        )
        self.run_id = run.info.run_id

    def _log_picture(self) -> None:
        """``architecture.png``, the candidate's architecture as its space draws it."""
        png = self.picture() if self.picture is not None else None
        if png:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "architecture.png"
                path.write_bytes(png)
                self.tracker.client.log_artifact(self.run_id, str(path))

    def _times(self) -> tuple[int, int]:
        """When the evaluation ran (ms): its own start and end, else ``seconds`` up to when it
        ended or was recorded, so the UI shows how long it took, not how long logging did."""
        r = self.result
        if self._span is None:
            ended = r.ended or (r.started + r.seconds if r.started else time.time())
            started = r.started or ended - r.seconds
            self._span = (int(started * 1000), int(max(ended, started) * 1000))
        return self._span

    def _params(self) -> dict[str, str]:
        r = self.result
        text = str(r.architecture)
        return {
            "architecture": text if len(text) <= _PARAM_LIMIT else r.architecture.key(),
            "architecture_key": r.architecture.key(), "space": r.architecture.space,
            "trial_id": r.trial_id, "objective": r.objective, "budget": str(r.budget),
            "node": canonical_node(r.node), "stopped_early": str(r.stopped_early).lower(),
        }

    def _metrics(self, metric: type) -> list[Any]:
        """Its metrics at its step, and its objective's learning curve (one value per epoch,
        logged at steps 1, 2, ... when it trained epoch by epoch: the UI's metric history)."""
        r = self.result
        start, end = self._times()
        values = {**canonical_metrics(r.metrics), "seconds": r.seconds, "budget": r.budget}
        batch = [metric(k, float(v), end, self.step) for k, v in values.items()]
        if r.curve:
            batch = [m for m in batch if m.key != r.objective]
            span = (end - start) / len(r.curve)
            batch += [metric(r.objective, float(v), int(start + span * (i + 1)), i + 1)
                      for i, v in enumerate(r.curve)]
        return batch


class CandidateLane:
    """Child runs of candidates sent by a thread of their own, in order, so that a search does not
    wait for MLflow (a child run takes four to five calls: 30-50 ms on a local SQLite store, as long
    as a training-free candidate's score). A record that fails on an outage waits, in order, and
    is sent when the server is back, as :class:`MlflowTracker`'s queue does.

    Args:
        tracker: The search's tracker, its run started; the lane has a client of its own.
        retry_s: Wait between tries while the server is unreachable.
    """

    def __init__(self, tracker: MlflowTracker, *, retry_s: float = 2.0) -> None:
        import copy
        import threading

        from mlflow.tracking import MlflowClient

        self.tracker = copy.copy(tracker)
        self.tracker.client = MlflowClient(tracking_uri=tracker.tracking_uri)
        self.tracker._queue = []
        self.retry_s = retry_s
        self._wake = threading.Condition()
        self._closing = False
        self.error: BaseException | None = None  # what the server rejected (not an outage)
        self._thread = threading.Thread(target=self._send, name="raynas-mlflow-candidates", daemon=True)
        self._thread.start()

    def log_candidate(self, result: EvalResult, *, step: int = 0, name: str | None = None,
                      picture: Callable[[], bytes | None] | None = None) -> None:
        """Queue ``result``'s child run (see :meth:`MlflowTracker.log_candidate`); ``picture`` is
        called on the lane's thread, so drawing does not hold up the search either."""
        if self.error is not None:
            raise self.error
        op = _ChildRun(self.tracker, result, parent=self.tracker.run_id, step=step,
                       name=name or result.trial_id or "candidate", tags=self.tracker.tags, picture=picture)
        with self._wake:
            self.tracker._queue.append(op)
            self._wake.notify()

    def pending(self) -> int:
        """Child runs not yet sent."""
        return len(self.tracker._queue)

    def _send(self) -> None:
        while True:
            with self._wake:
                while not self.tracker._queue and not self._closing:
                    self._wake.wait()
                if not self.tracker._queue:
                    return
            try:
                sent = self.tracker.flush()
            except BaseException as exc:  # a rejected record: the search stops at its next one
                self.error = exc
                return
            if not sent:
                with self._wake:
                    self._wake.wait(self.retry_s)

    def close(self, timeout: float | None = None) -> bool:
        """Send what is queued (waiting up to ``timeout`` seconds) and stop; whether all was sent.

        Raises:
            MlflowException: The server rejected a record.
        """
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return not self.tracker._queue


class MlflowTracker:
    """Records searches, their candidates and their final models in MLflow.

    Args:
        tracking_uri: Where MLflow stores runs (default: :func:`default_tracking_uri`).
        experiment: The experiment's name (one per job); created if missing.
        artifact_location: Where a new experiment keeps its artifacts (e.g. ``s3://bucket/mlflow``;
            the S3 endpoint comes from ``MLFLOW_S3_ENDPOINT_URL``); default: the server's, and
            for a local SQLite store ``mlruns/`` beside its database file.
        attempts: Tries per record before it waits in the queue for the next one.
        backoff_s: First wait between tries (doubling).

    Raises:
        ConfigError: When a tracking server (``http(s)://``) cannot be reached.
        StorageError: When an ``s3://`` artifact location cannot be reached.
    """

    def __init__(
        self,
        *,
        tracking_uri: str | None,
        experiment: str,
        artifact_location: str | None = None,
        attempts: int = 4,
        backoff_s: float = 1.0,
        pictures: bool = True,
    ) -> None:
        self.pictures = pictures

        # MLflow prints each finished run's URL, user part and password included; raynas prints
        # its own link (run_link), with the password redacted.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        # raynas bridges an outage itself: a record that cannot be sent waits in the queue and the
        # search goes on. MLflow's own retries (7, backing off for minutes) would hold it up instead.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        # A new SQLite store: MLflow announces its table creation and migrations at INFO on the
        # console ("Creating initial MLflow database tables..."); they are not the search's news.
        # It also logs every database error at ERROR, with its SQL, before MLflow raises it: raynas
        # answers the error it raises (a full disk, a locked store) in one line of its own.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        # Registering a model on a server, MLflow says at INFO that it waits for the version.
        logging.getLogger("mlflow.store.model_registry.abstract_store").setLevel(logging.WARNING)
        self.tracking_uri = tracking_uri or default_tracking_uri()
        check_tracking_store(self.tracking_uri)
        if artifact_location:
            from raynas import storage

            storage.check_reachable(artifact_location)
        self.client = open_client(self.tracking_uri)
        with store_opening(self.tracking_uri):  # two searches making the same experiment at once
            found = self.client.get_experiment_by_name(experiment)
            if found is None:
                found = self._create_experiment(experiment, artifact_location)
            self.experiment_id = found.experiment_id
        if EXPERIMENT_KIND_TAG not in found.tags:  # made by an older raynas, or by hand
            self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        self.run_id = ""
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.tags: dict[str, str] = {}
        self._queue: list[Callable[[], Any]] = []
        self._warned = False
        self._down_at = 0.0  # when a record last failed on an outage; 0 while none waits

    def _create_experiment(self, name: str, artifact_location: str | None) -> Any:
        """Make experiment ``name``, or (a search on another machine made it since this one looked:
        a server's stores are not locked by :func:`store_opening`) the one made."""
        from mlflow.exceptions import MlflowException

        try:
            experiment_id = self.client.create_experiment(
                name,
                artifact_location=artifact_location or default_artifact_location(self.tracking_uri),
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found
        return self.client.get_experiment(experiment_id)

    # -- the queue ----------------------------------------------------------------------------

    def _submit(self, op: Callable[[], Any]) -> None:
        self._queue.append(op)
        # While the server is down a new record waits behind the others and the search goes on;
        # every OUTAGE_RETRY_S one tries to send the queue (an explicit flush always tries).
        if not self._down_at or time.monotonic() - self._down_at >= OUTAGE_RETRY_S:
            self.flush()

    def flush(self) -> bool:
        """Send every queued record; return whether the queue is empty.

        Raises:
            MlflowException: When the server rejects a record (not an outage).
        """
        while self._queue:
            try:  # known to be down: one try, the records wait for the next
                with_retries(self._queue[0], attempts=1 if self._down_at else self.attempts,
                             backoff_s=self.backoff_s)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._down_at = time.monotonic()
                if not self._warned:
                    log.warning("MLflow at %s unreachable (%s); %d record(s) queued, the search goes on",
                                redact_uri(self.tracking_uri), type(exc).__name__, len(self._queue))
                    self._warned = True
                return False
            self._queue.pop(0)
        self._down_at = 0.0
        if self._warned:
            log.warning("MLflow at %s reachable again; queued records sent", redact_uri(self.tracking_uri))
            self._warned = False
        return True

    def pending(self) -> int:
        """Records waiting for the server."""
        return len(self._queue)

    # -- the search (parent) run --------------------------------------------------------------

    def start(
        self, config: SearchConfig, *, run_id: str | None = None, tags: dict[str, str] | None = None,
        attempt: str | None = None,
    ) -> str:
        """Open a new parent run for ``config``, or reopen ``run_id`` when resuming; return its id.

        Args:
            config: The job (its ``name`` and ``to_dict()`` are recorded).
            run_id: The run to reopen.
            tags: The run's tags (default: a search's space, strategy, dataset and seed).
            attempt: An id of this attempt at a new run, tagged on it (``raynas.attempt``): the
                still running run of that tag, which a process killed before it checkpointed the
                run's id made, is reopened (its config logged again) instead of a second one made.
        """
        map_packages()  # (for the model registered at the run's end)
        self.tags = tags if tags is not None else {
            f"{TAG_PREFIX}space": config.space.name,
            f"{TAG_PREFIX}strategy": config.strategy.name,
            f"{TAG_PREFIX}dataset": config.data.name,
            f"{TAG_PREFIX}seed": str(config.seed),
        }
        if run_id:
            self.run_id = run_id
            with_retries(lambda: self.client.update_run(run_id, status="RUNNING"),
                         attempts=self.attempts, backoff_s=self.backoff_s)
            return run_id
        if attempt is not None and self._reopen(attempt):
            self.log_config(config.to_dict())  # the same values again: what the killed one missed
            return self.run_id
        run_tags = self.tags if attempt is None else {**self.tags, ATTEMPT_TAG: attempt}
        run = with_retries(
            lambda: self.client.create_run(self.experiment_id, run_name=config.name, tags=run_tags),
            attempts=self.attempts, backoff_s=self.backoff_s,
        )
        self.run_id = run.info.run_id
        self.log_config(config.to_dict())
        return self.run_id

    def _reopen(self, attempt: str) -> bool:
        """Make the still running run tagged with ``attempt`` the current one, if there is one."""
        made = with_retries(
            lambda: self.client.search_runs(
                [self.experiment_id], max_results=1,
                filter_string=f"tags.`{ATTEMPT_TAG}` = '{attempt}' and attributes.status = 'RUNNING'",
            ),
            attempts=self.attempts, backoff_s=self.backoff_s,
        )
        if made:
            self.run_id = made[0].info.run_id
        return bool(made)

    def log_config(self, config: dict[str, Any]) -> None:
        """A job's full config on the current run: flattened as params and as ``config.json``."""
        self._log_params(flatten(config))
        self.client.log_dict(self.run_id, config, "config.json")

    def _log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, json.dumps(v) if isinstance(v, list) else str(v)) for k, v in params.items()]
        run_id = self.run_id
        for i in range(0, len(items), 100):  # MLflow's batch limit
            batch = items[i : i + 100]
            self._submit(lambda b=batch: self.client.log_batch(run_id, params=b))

    def log_metrics(self, metrics: dict[str, float], *, step: int, seconds: float | None = None) -> None:
        """Scalar metrics of one step (an epoch) on the current run (``epoch_seconds`` too if given)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in canonical_metrics(metrics).items()]
        if seconds is not None:
            batch.append(Metric("epoch_seconds", seconds, now, step))
        run_id = self.run_id
        self._submit(lambda: self.client.log_batch(run_id, metrics=batch))

    def log_epoch(self, report: EpochReport) -> None:
        """Metrics of one epoch and the architecture derived after it, on the parent run."""
        self.log_metrics({**report.metrics, **report.timings}, step=report.epoch, seconds=report.seconds)
        run_id, name = self.run_id, f"{report.epoch:03d}"
        text = report.architecture.to_json(indent=1)
        self._submit(lambda: self.client.log_text(run_id, text, f"genotypes/epoch_{name}.json"))
        weights = report.arch_weights
        if weights:  # sampling searches have none: no empty files
            self._submit(lambda: self.client.log_dict(run_id, weights, f"arch_weights/epoch_{name}.json"))

    def finish(self, report: EpochReport, summary: dict[str, Any]) -> None:
        """The final architecture, architecture weights and summary; marks the run finished.

        The summary's numbers are metrics ``final.<name>`` (the UI sorts and charts runs by
        them); its other values (words, flags) params ``final.<name>``.
        """
        from mlflow.entities import Metric

        run_id, arch = self.run_id, report.architecture
        text = arch.to_json(indent=1)
        self._submit(lambda: self.client.log_text(run_id, text, "genotype.json"))
        if report.arch_weights:  # sampling searches have none: no empty file
            self._submit(lambda: self.client.log_dict(run_id, report.arch_weights, "arch_weights.json"))
        self._submit(lambda: self.client.set_tag(run_id, f"{TAG_PREFIX}architecture_key", arch.key()))
        genotype = str(arch)[:5000]
        self._submit(lambda: self.client.set_tag(run_id, f"{TAG_PREFIX}genotype", genotype))
        numbers = {k: float(v) for k, v in canonical_metrics(summary).items() if _is_number(v)}
        now = int(time.time() * 1000)
        final = [Metric(f"final.{k}", v, now, 0) for k, v in numbers.items()]

        def log_final() -> None:
            # A search whose driver died after recording its end and before its last checkpoint
            # records it again when resumed: each final.* metric once.
            held = self.client.get_run(run_id).data.metrics
            if fresh := [m for m in final if m.key not in held]:
                self.client.log_batch(run_id, metrics=fresh)

        self._submit(log_final)
        self._log_params({f"final.{k}": v for k, v in summary.items() if k not in numbers})
        self._submit(lambda: self.client.set_terminated(run_id, status="FINISHED"))
        if not self.flush():
            log.warning("MLflow at %s still unreachable: %d record(s) of run %s could not be sent",
                        redact_uri(self.tracking_uri), len(self._queue), run_id)

    def fail(self, error: BaseException) -> None:
        """Mark the run as ended by ``error`` without finishing: ``KILLED`` for Ctrl-C,
        ``FAILED`` otherwise; left as it is when another run of the job took the job over
        (:class:`LeaseLost`), which records in the same run."""
        if isinstance(error, LeaseLost):
            return
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        if self.run_id:
            run_id = self.run_id
            with contextlib.suppress(Exception):  # already failing: never mask the first error
                self._submit(lambda: self.client.set_terminated(run_id, status=status))

    # -- candidates (child runs) --------------------------------------------------------------

    def log_candidate(
        self,
        result: EvalResult,
        *,
        step: int = 0,
        name: str | None = None,
        parent_run_id: str | None = None,
        picture: Callable[[], bytes | None] | None = None,
    ) -> str:
        """One evaluated candidate as a child run of the search.

        Args:
            result: The candidate: architecture, metrics, cost, budget, node, early stop.
            step: The step its metrics are logged at (an epoch, a generation).
            name: The run's name (default: the trial id).
            parent_run_id: The search run (default: the one :meth:`start` opened).
            picture: Returns the architecture's picture as PNG bytes (``architecture.png``), or
                None for none.

        Returns:
            The child run's id, or ``""`` when the server is unreachable and the run waits in
            the queue.
        """
        parent = parent_run_id or self.run_id
        if not parent:
            raise ValueError("log_candidate needs a parent run: call start() or pass parent_run_id")
        op = _ChildRun(self, result, parent=parent, step=step, name=name or result.trial_id or "candidate",
                       tags=self.tags, picture=picture)
        self._submit(op)
        return op.run_id if op.done else ""

    # -- pictures -----------------------------------------------------------------------------

    def log_figure(self, figure: Figure, artifact_file: str, *, run_id: str | None = None) -> None:
        """A matplotlib figure as a PNG artifact (``artifact_file`` such as ``architecture.png``);
        nothing when the tracker draws no pictures (``tracking.pictures: false``)."""
        if not self.pictures:
            return
        target = run_id or self.run_id
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            figure.savefig(path, dpi=110)
            data = path.read_bytes()

        def upload() -> None:
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / Path(artifact_file).name
                local.write_bytes(data)
                folder = str(Path(artifact_file).parent)
                self.client.log_artifact(target, str(local), None if folder == "." else folder)

        self._submit(upload)

    # -- lineage and the Model Registry -------------------------------------------------------

    def start_derived_run(self, *, architecture: Architecture, source_run_id: str, kind: str = "retrain",
                          name: str | None = None, attempt: str | None = None) -> str:
        """Open a run that retrains or transfers an architecture found by a search.

        The run gets :func:`lineage_tags` and the architecture as ``architecture.json``; it
        becomes this tracker's current run (``log_epoch``, ``finish``, ``register_model``).
        ``attempt`` as in :meth:`start`: the still running run of that attempt is reopened.

        Returns:
            The new run's id.
        """
        if attempt is not None and self._reopen(attempt):
            return self.run_id
        source = self.client.get_run(source_run_id)
        tags = lineage_tags(source_run_id=source_run_id, architecture=architecture, kind=kind,
                            source_experiment_id=source.info.experiment_id)
        for key in ("strategy", "dataset", "seed"):
            if f"{TAG_PREFIX}{key}" in source.data.tags:
                tags[f"{TAG_PREFIX}lineage.source_{key}"] = source.data.tags[f"{TAG_PREFIX}{key}"]
        if attempt is not None:
            tags[ATTEMPT_TAG] = attempt
        run = self.client.create_run(self.experiment_id, run_name=name or f"{kind} {architecture.key()}",
                                     tags=tags)
        self.run_id = run.info.run_id
        self.client.log_text(self.run_id, architecture.to_json(indent=1), "architecture.json")
        return self.run_id

    def register_model(
        self,
        architecture: Architecture,
        *,
        name: str,
        network: nn.Module,
        trained: bool,
        run_id: str | None = None,
        example: Any = None,
    ) -> str:
        """Log ``network`` as an MLflow PyTorch model of the run and register it as a new version
        of the registered model ``name``, with its architecture attached.

        With an ``example`` input the model has MLflow's input example and a signature (the
        example's and the output's tensor shapes, the batch dimension left free). The model folder
        holds ``extra_files/architecture.json``; the version carries the tags
        ``raynas.architecture_key``, ``raynas.space``, ``raynas.architecture`` (the JSON, when
        it fits in a tag), ``raynas.trained`` and ``raynas.source_run_id``, and the
        architecture's string form as its description.

        Args:
            architecture: The architecture the network was built from.
            name: The registered model's name (created if missing).
            network: The network (trained weights, or freshly initialised for a search's result).
            trained: Whether its weights were trained (a search's output is retrained later).
            run_id: The run to log it in (default: the current run).
            example: One input batch of the data it runs on (a tensor, e.g. (1, C, H, W)).

        Returns:
            The new version's number.
        """
        import mlflow.pytorch
        from mlflow.exceptions import MlflowException

        target = run_id or self.run_id
        # A search resumed after it registered its model (its driver killed before the last
        # checkpoint) keeps that version: one version of ``name`` per run.
        for version in self.client.search_model_versions(f"run_id = '{target}'"):
            if version.name == name:
                return str(version.version)
        with tempfile.TemporaryDirectory() as tmp:
            arch_file = Path(tmp) / "architecture.json"
            arch_file.write_text(architecture.to_json(indent=1))
            model_dir = Path(tmp) / "model"
            # Pickle, knowingly: the network's classes are raynas's own (the architecture JSON
            # beside it rebuilds it without unpickling); MLflow's warning says no more than that.
            pytorch_log = logging.getLogger("mlflow.pytorch")
            level = pytorch_log.level
            pytorch_log.setLevel(logging.ERROR)
            network = network.cpu().eval()
            signature, input_example = _signature(network, example)
            if _packages_mapped is not None:  # (the map is MLflow's unlocked global: one writer)
                _packages_mapped.join()
            try:
                mlflow.pytorch.save_model(
                    network, str(model_dir), serialization_format="pickle",
                    extra_files=[str(arch_file)], pip_requirements=["torch", "raynas"],
                    signature=signature, input_example=input_example,
                )
            finally:
                pytorch_log.setLevel(level)
            with_retries(lambda: self.client.log_artifacts(target, str(model_dir), "model"),
                         attempts=self.attempts, backoff_s=self.backoff_s)
        try:
            self.client.create_registered_model(
                name, tags={f"{TAG_PREFIX}space": architecture.space},
                description="Architectures found by raynas searches",
            )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        text = architecture.to_json()
        tags = {
            f"{TAG_PREFIX}architecture_key": architecture.key(), f"{TAG_PREFIX}space": architecture.space,
            f"{TAG_PREFIX}trained": str(trained).lower(), f"{TAG_PREFIX}source_run_id": target,
        }
        if len(text) <= 5000:
            tags[f"{TAG_PREFIX}architecture"] = text
        version = self.client.create_model_version(
            name, source=f"runs:/{target}/model", run_id=target, tags=tags,
            description=str(architecture)[:5000],
        )
        return str(version.version)

    def run_link(self) -> str:
        """Where to look at the run: a URL on a server, or the command that opens the UI."""
        # The UI opens a link without a workflow type in its GenAI view, whatever the experiment's kind.
        fragment = f"#/experiments/{self.experiment_id}/runs/{self.run_id}?workflowType=machine_learning"
        if self.tracking_uri.startswith(("http://", "https://")):
            return f"{redact_uri(self.tracking_uri).rstrip('/')}/{fragment}"
        mlflow_bin = Path(sys.executable).parent / "mlflow"
        command = str(mlflow_bin) if mlflow_bin.exists() else "mlflow"
        with contextlib.suppress(ValueError):  # short under the current folder, else absolute
            relative = os.path.relpath(command)
            command = command if relative.startswith("..") else relative
        return (
            f"{command} ui --backend-store-uri {self.tracking_uri} --port 5000\n"
            f"  then open http://127.0.0.1:5000/{fragment}"
        )
