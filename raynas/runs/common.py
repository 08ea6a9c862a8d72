"""What the drivers share: the result of a search, where a job's files live, resuming from a
checkpoint (or from the version before it, when the latest cannot be read), the result of a search
that already finished, the tracker of a run, and the size of a found network."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import math
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from raynas import storage
from raynas.config import SearchConfig, another_config, config_changes
from raynas.data import dataset_info
from raynas.errors import ConfigError, RaynasError, cause, no_memory
from raynas.evaluators.language_model import LanguageModelConfig, LanguageModelEvaluator, trains_on_text
from raynas.evaluators.scratch import ScratchConfig, ScratchEvaluator, network_size
from raynas.profile import count_macs, count_params, counting_device
from raynas.spaces import SPACES
from raynas.tracking import MlflowTracker
from raynas.train.checkpoint import load_checkpoint, previous_checkpoint
from raynas.types import Architecture, DatasetInfo, EvalResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchResult:
    """What a finished search found and where it is recorded.

    Attributes:
        architecture: The found architecture.
        metrics: What it scored (the supernet's, the best candidate's, or its retraining's).
        params: Parameters of its network at the search's size on the search's data.
        params_cifar10: Parameters of the papers' network of the space (CIFAR-10, or the dataset
            the space names: PTB for recurrent cells, Cityscapes for Auto-DeepLab).
        run_id: The search's MLflow run.
        run_link: A URL or command that opens the run in the MLflow UI.
        checkpoint: The checkpoint (a local path or an ``s3://`` URI).
        seconds: Wall time of this invocation.
        macs: Multiply-adds of one input through the network of ``params`` (0: not counted).
        paper_macs: Those of the papers' network of ``params_cifar10`` (0: not counted).
    """

    architecture: Architecture
    metrics: dict[str, float]
    params: int
    params_cifar10: int
    run_id: str
    run_link: str
    checkpoint: str
    seconds: float
    macs: int = 0
    paper_macs: int = 0


def format_duration(seconds: float) -> str:
    """``75.2`` -> ``1:15``; hours when needed."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def run_path(config: SearchConfig, filename: str) -> str:
    """``<tracking.output_dir>/<name>/<filename>``: a local path or an ``s3://`` URI."""
    return storage.join(config.tracking.output_dir, config.name, filename)


@contextlib.contextmanager
def sole_writer(checkpoint: str, what: str) -> Iterator[None]:
    """While the block runs, no other process works on ``checkpoint``. A second run of the same
    job started beside the first would resume it from the same checkpoint and journal, both
    evaluating and recording the same candidates; it stops at once instead, saying who holds it.

    A local file: an exclusive ``flock`` on ``<checkpoint>.lock`` (which says who holds it), gone
    with the process however it ends. On S3, where the other run may be on another machine (a job
    submitted twice to a cluster): a lease, ``<checkpoint>.lease`` (:class:`raynas.storage.S3Lease`),
    renewed while the block runs and deleted after it; one left by a driver that ended without
    deleting it (killed, its node lost) expires within :data:`raynas.storage.LEASE_SECONDS`.

    Raises:
        ConfigError: Another process holds it: which, and what to do.
    """
    import os
    import socket

    since = time.strftime("%Y-%m-%d %H:%M:%S")
    holder = f"pid {os.getpid()} on {socket.gethostname()} since {since}"
    if storage.is_s3(checkpoint):
        lease = storage.S3Lease(f"{checkpoint}.lease", holder)
        try:
            lease.acquire()
        except storage.LeaseHeld as held:
            raise ConfigError(
                f"{what} is running already ({held.holder}; {checkpoint}.lease is its lease): wait for "
                "it to end, or stop it and run this command again to resume (a run that ended without "
                f"releasing it holds it {held.left:.0f} s more); or give the job another name"
            ) from None
        try:
            yield
        finally:
            lease.release()
        return
    import fcntl

    lock = Path(f"{checkpoint}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ConfigError(
                f"{what} is running already ({holder}; {lock} is held): wait for it to end, or stop "
                "it and run this command again to resume; or give the job another name"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(holder)
        handle.flush()
        yield  # (the lock ends with the handle)


def read_prior(checkpoint: str, config: SearchConfig, *, fresh: bool) -> dict[str, Any] | None:
    """The unfinished checkpoint of ``config`` to resume from, if there is one and ``fresh`` is not
    set (a finished search starts again from the start).

    Raises:
        StorageError: ``checkpoint`` is on S3 and its bucket cannot be used (checked even when
            ``fresh``, so a search does not fail at its first checkpoint).
        ConfigError: The checkpoint belongs to an unfinished search of the same name with
            another config.
    """
    if storage.is_s3(checkpoint):
        storage.check_reachable(checkpoint)
    if fresh or not storage.exists(checkpoint):
        return None
    # A gradient search's checkpoint holds all it resumes from; a sampling search's holds its
    # controller's state and a position in its journal, and names its supernet's epoch: any
    # version replays the journal from where it points (raynas.runs.sampling).
    prior = read_checkpoint(checkpoint)
    if prior["finished"]:
        return None
    if prior["config"] != config.to_dict():
        raise another_config(checkpoint, "search", config.name, prior["config"], config.to_dict())
    return prior


def start_run(
    tracker: MlflowTracker, config: SearchConfig, checkpoint: str, prior: dict[str, Any] | None, *,
    fresh: bool, tags: dict[str, str] | None = None,
) -> str:
    """Open the MLflow run of the search (or retraining) whose checkpoint is ``checkpoint``: the one
    its checkpoint ``prior`` names when resuming; otherwise a new one, made once.

    A process killed between making its run and checkpointing the run's id would leave that run
    behind, and the next attempt would make another. So an attempt id is kept beside the
    checkpoint (``<checkpoint>.attempt``) before the run is made and tagged on it, and the next
    attempt reopens the still running run of that id (:meth:`MlflowTracker.start`). ``fresh``
    makes a new id: a new search, a new run.
    """
    if prior is not None:
        return tracker.start(config, run_id=prior["run_id"], tags=tags)
    return tracker.start(config, tags=tags, attempt=attempt_id(checkpoint, fresh=fresh))


def attempt_id(checkpoint: str, *, fresh: bool) -> str:
    """The id of this attempt at the run of the job checkpointed at ``checkpoint``
    (:func:`start_run`): the one kept at ``<checkpoint>.attempt``, or (``fresh``, or none kept)
    a new one, kept there before it is returned."""
    marker = f"{checkpoint}.attempt"
    attempt = None if fresh else _read_attempt(marker)
    if attempt is None:
        attempt = uuid.uuid4().hex
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "attempt"
            local.write_text(attempt)
            storage.put_file(local, marker)  # atomic: the old id or the new one, never half
    return attempt


def _read_attempt(marker: str) -> str | None:
    if not storage.exists(marker):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "attempt"
        storage.get_file(marker, local)
        attempt = local.read_text().strip()
    return attempt if attempt.isalnum() else None  # a hand-edited file: a new attempt


def read_checkpoint(checkpoint: str) -> dict[str, Any]:
    """The checkpoint at ``checkpoint``; if it cannot be read (a torn or corrupt file), the version
    before it that :func:`raynas.train.checkpoint.save_checkpoint` keeps, with one log line saying so.

    Args:
        checkpoint: A local path or an ``s3://`` URI.

    Raises:
        RaynasError: Neither can be read; the message says to pass ``--fresh``.
    """
    try:
        return load_checkpoint(checkpoint)
    except Exception as exc:  # torch.load's errors for torn files vary: zip, pickle, EOF, OS
        error = f"{type(exc).__name__}: {' '.join(str(exc).split()).split('. ')[0][:200]}"
    previous = previous_checkpoint(checkpoint)
    if storage.exists(previous):
        try:
            prior = load_checkpoint(previous)
        except Exception:
            pass
        else:
            log.warning("checkpoint %s cannot be read (%s); resuming from the previous one, %s",
                        checkpoint, error, previous)
            return prior
    raise RaynasError(
        f"checkpoint {checkpoint} cannot be read ({error}) and there is no readable previous "
        "version to resume from; pass --fresh to start over"
    )


# Keys of a finished search's ``final.*`` values that describe it rather than score it.
_SUMMARY_ONLY = ("params", "params_cifar10", "paper_params", "macs", "paper_macs", "epochs_run",
                 "stopped_early", "candidates", "registered_version")


def finished_result(config: SearchConfig, *, echo: Callable[[str], None] = print) -> SearchResult | None:
    """The result of the search of ``config`` if it already finished, as its checkpoint and its
    MLflow run recorded it; None when there is nothing finished to show (nothing run yet, a search
    to resume, or one finished with another config, which a new search replaces: said on ``echo``).

    Raises:
        ConfigError: The MLflow server of the run cannot be reached.
        RaynasError: The finished run lacks its ``genotype.json``, or it is not an architecture.
    """
    checkpoint = run_path(config, "checkpoint.pt")
    if storage.is_s3(checkpoint):
        storage.check_reachable(checkpoint)
    if not storage.exists(checkpoint):
        return None
    try:
        prior = load_checkpoint(checkpoint)
    except Exception:  # not known to be finished: resuming deals with it (read_prior)
        return None
    if not prior["finished"]:
        return None
    if prior["config"] != config.to_dict():
        echo(f"Search {config.name!r} finished before with another config "
             f"({config_changes(prior['config'], config.to_dict())}); starting a new search "
             "(the finished one stays in MLflow)")
        return None
    tracker = open_tracker(config)
    run = tracker.client.get_run(prior["run_id"])
    tracker.run_id = run.info.run_id
    tracker.experiment_id = run.info.experiment_id
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = tracker.client.download_artifacts(run.info.run_id, "genotype.json", tmp)
        except Exception as exc:
            raise RaynasError(
                f"search {config.name!r} finished, but its MLflow run {run.info.run_id} has no "
                f"genotype.json ({type(exc).__name__}); --fresh starts a new search"
            ) from None
        try:
            architecture = Architecture.from_json(Path(local).read_text())
        except (ValueError, UnicodeDecodeError) as exc:  # not JSON, or not an architecture's
            raise RaynasError(
                f"search {config.name!r} finished, but the genotype.json of its MLflow run "
                f"{run.info.run_id} is not an architecture ({cause(exc)}); --fresh starts a new search"
            ) from None
    # Numbers are final.* metrics; older runs kept everything as final.* params.
    final: dict[str, Any] = {k.removeprefix("final."): v for k, v in run.data.params.items()
                             if k.startswith("final.")}
    final.update({k.removeprefix("final."): v for k, v in run.data.metrics.items() if k.startswith("final.")})
    metrics = {}
    for key, value in final.items():
        if key not in _SUMMARY_ONLY:
            try:
                metrics[key] = float(value)
            except ValueError:
                continue
    ended = run.info.end_time or run.info.start_time
    return SearchResult(
        architecture=architecture, metrics=metrics, params=int(float(final.get("params", 0))),
        params_cifar10=int(float(final.get("paper_params", final.get("params_cifar10", 0)))),
        run_id=run.info.run_id, run_link=tracker.run_link(), checkpoint=checkpoint,
        seconds=max(0.0, (ended - run.info.start_time) / 1000),
        macs=int(float(final.get("macs", 0))), paper_macs=int(float(final.get("paper_macs", 0))),
    )


def open_tracker(config: Any) -> MlflowTracker:
    """The MLflow tracker a job's ``tracking`` section describes (its run not yet started)."""
    return MlflowTracker(
        tracking_uri=config.tracking.tracking_uri, experiment=config.tracking.experiment,
        artifact_location=config.tracking.artifact_location, pictures=config.tracking.pictures,
    )


class _Closable(Protocol):
    def close(self) -> Any: ...


Started = TypeVar("Started", bound="_Closable | None")
Then = TypeVar("Then")


def open_tracker_while(
    config: Any, start: Callable[[], Started], then: Callable[[MlflowTracker], Then],
) -> tuple[MlflowTracker, Started, Then]:
    """The job's tracker (:func:`open_tracker`), opened in another thread while ``start()`` starts
    the search's worker or pool in this one, and ``then(tracker)`` once both are ready (the
    search's recorder, which checks the results store). Ray's actors take seconds to start (their
    processes import torch and build the supernet), and so does the tracker (MLflow's import, its
    store's opening). As when the tracker was opened first, its error wins: a started worker is
    closed and the tracker's error raised; ``start``'s own error is raised once the tracker is
    open; what was started is closed if ``then`` fails too. ``start`` runs in this thread (Ray's
    start keeps this process's signal handlers)."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="raynas-open-tracker") as opening:
        opened = opening.submit(open_tracker, config)
        try:
            started = start()
        except Exception:
            opened.result()  # (the tracker's error, if it has one, is the one told)
            raise
        try:
            tracker = opened.result()
            return tracker, started, then(tracker)
        except BaseException:
            if started is not None:
                started.close()
            raise


def job_space(config: SearchConfig) -> Any:
    """The space a job searches, built from its ``space`` section."""
    return SPACES.create(config.space.name, config.space.config)


# A network's size as a space's build takes it: {"channels": ..., "layers": ...} (None: its default).
Size = dict[str, "int | None"]


def scored_size(config: SearchConfig) -> Size:
    """The size of the networks a sampling search's evaluator scores: the job's space's (the
    one-shot supernet's paths; the ``scratch`` evaluator unless it sets ``evaluator.channels`` or
    ``evaluator.layers``); an evaluator that builds at its own size otherwise (``training_free``:
    its ``channels`` and ``layers``, else the space's default network)."""
    evaluator = config.evaluator
    if evaluator is None or evaluator.name == "supernet":
        return network_size(config)
    channels = int(getattr(evaluator.config, "channels", 0) or 0)
    layers = int(getattr(evaluator.config, "layers", 0) or 0)
    if evaluator.name == "scratch":
        return network_size(config, channels=channels, layers=layers)
    return {"channels": channels or None, "layers": layers or None}


def retrain_size(config: SearchConfig) -> Size:
    """The size ``final``'s retraining builds (``final.channels``, ``final.layers``, else the space's)."""
    return network_size(config, channels=config.final.channels, layers=config.final.layers)


def score_text(result: EvalResult) -> str:
    """``result``'s score as the console shows it: an accuracy as a percentage, a language
    model's mean log-likelihood per token with its perplexity, other objectives (training-free
    proxies) as numbers."""
    if result.objective.endswith("acc"):
        return f"{result.score:.2%}"
    if result.objective == "valid_loglik":
        return f"{result.score:.3f} (perplexity {math.exp(min(-result.score, 700.0)):.1f})"
    return f"{result.score:.3f}"


def timed(result: EvalResult, started: float) -> EvalResult:
    """``result`` of an evaluation that began at ``started`` (epoch seconds) and ended now."""
    return dataclasses.replace(result, started=started, ended=time.time())


def final_evaluator(config: SearchConfig) -> ScratchEvaluator | LanguageModelEvaluator:
    """What ``final`` retrains architectures with: from scratch, ``final``'s epochs, learning
    rate and batch (0: the training's own), at its size (:func:`retrain_size`). Images train as
    the ``scratch`` evaluator trains them (SGD with a cosine, as DARTS's train.py; batches of the
    job's ``data.batch_size`` unless ``final.batch_size``); a language model (on a text corpus)
    as rnn/train.py trains it (the ``language_model`` evaluator: the network of its best
    validation perplexity), as DARTS chose its recurrent cell."""
    final = config.final
    rate = {"learning_rate": final.learning_rate} if final.learning_rate else {}
    if trains_on_text(config):
        streams = {"streams": final.batch_size} if final.batch_size else {}
        return LanguageModelEvaluator(
            LanguageModelConfig(epochs=final.epochs, channels=final.channels, **rate, **streams),
            search=config,
        )
    search = config
    if final.batch_size and config.data.config is not None:
        data = dataclasses.replace(config.data.config, batch_size=final.batch_size)
        search = dataclasses.replace(config, data=dataclasses.replace(config.data, config=data))
    return ScratchEvaluator(
        ScratchConfig(epochs=final.epochs, channels=final.channels, layers=final.layers, **rate),
        search=search,
    )


def searched_network(
    config: SearchConfig, arch: Architecture, *, size: Size | None = None, counted: bool = False
) -> nn.Module:
    """The stand-alone network of ``arch`` on the job's data (untrained), at ``size`` (default:
    the job's space's: ``space.channels``, ``space.layers`` or ``space.cells_per_stage``).

    Args:
        config: The job.
        arch: The architecture.
        size: ``channels`` and ``layers`` (:func:`scored_size`, :func:`retrain_size`).
        counted: Build it only to count it (:func:`raynas.profile.counting_device`: on the CPU
            or the ``meta`` device, the global RNG untouched).
    """
    space = job_space(config)
    info = dataset_info(config.data.name)
    with counting_device(info.image_shape) if counted else contextlib.nullcontext():
        return space.build(  # type: ignore[no-any-return]
            arch, info, **(size if size is not None else network_size(config))
        )


def check_networks_run(config: SearchConfig, size: Size, *, samples: int = 8) -> None:
    """That the networks of ``samples`` architectures of the job's space, drawn from the job's
    seed, at ``size`` (the one the evaluator scores), run on one input of the job's data: inputs
    smaller than the space's downsampling (NEXcepTion's on the 8x8 digits; ConvNeXt's macro space,
    where it depends on the architecture) are one line before the search starts, not a traceback
    at a candidate. Each is built as for counting (:func:`searched_network`: on the ``meta``
    device for large inputs, where it runs from shapes alone); one that fails there is built and
    run on the CPU, which decides.

    Raises:
        ConfigError: A network does not run on the data's inputs.
    """
    import random

    space, info = job_space(config), dataset_info(config.data.name)
    if hasattr(space, "example_input") or not hasattr(space, "sample"):
        return  # token inputs: any length runs
    rng, shape = random.Random(config.seed), example_input(config).shape
    for _ in range(samples):
        arch = space.sample(rng)
        try:
            with torch.no_grad():
                network = searched_network(config, arch, size=size, counted=True).eval()
                network(torch.zeros(shape, device=next(network.parameters()).device))
            continue
        except Exception:  # the meta device has failures of its own: the CPU decides
            pass
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                searched_network(config, arch, size=size).eval()(torch.zeros(shape))
        except RuntimeError as exc:
            if no_memory(exc):
                raise  # not the inputs: the command line says it as such
            reason = " ".join(str(exc).split())[:300]
            raise ConfigError(
                f"the {config.space.name!r} space's networks do not run on {info.name}'s "
                f"{info.image_size}x{info.image_size} inputs (as {arch}: {reason}): use a dataset of "
                "larger images, or a space config that downsamples less"
            ) from None


def example_input(config: SearchConfig) -> torch.Tensor:
    """One input of the job's data, as its networks take it: a (1, C, H, W) image of zeros, or
    token ids (1, T) for spaces of token inputs (the model's input example in MLflow)."""
    space, info = job_space(config), dataset_info(config.data.name)
    if hasattr(space, "example_input"):
        return space.example_input(info, batch_size=1)  # type: ignore[no-any-return]
    return torch.zeros(1, *info.image_shape)


def network_costs(network: nn.Module, info: DatasetInfo, space: Any) -> dict[str, float]:
    """``params`` (without an auxiliary head) and, for image inputs, ``macs`` (multiply-adds of
    one image at the dataset's size) of ``network``."""
    costs = {"params": float(count_params(network))}
    if not hasattr(space, "example_input"):  # token inputs (recurrent cells): no MAC count
        try:
            costs["macs"] = float(count_macs(network, info.image_shape)[0])
        except Exception as exc:  # a network that cannot run on meta tensors: its size alone
            log.debug("no multiply-add count for %s: %s", type(network).__name__, exc)
    return costs


class CandidateCosts:
    """The size of every candidate's network, as its evaluator scored it (``params``, ``macs``),
    counted once per architecture (:func:`raynas.profile.counting_device`) and added to results
    that lack them.

    Args:
        config: The job.
        size: The size the candidates' networks have (default: the space's; :func:`scored_size`).
    """

    def __init__(self, config: SearchConfig, *, size: Size | None = None) -> None:
        self.config, self.size = config, size
        self.space = job_space(config)
        self.info = dataset_info(config.data.name)
        self._known: dict[str, dict[str, float]] = {}

    def __call__(self, arch: Architecture) -> dict[str, float]:
        """``params`` and ``macs`` of ``arch``'s network at this size."""
        key = arch.key()
        if key not in self._known:
            if len(self._known) >= 100_000:  # a bound for very long searches
                self._known.clear()
            network = searched_network(self.config, arch, size=self.size, counted=True)
            self._known[key] = network_costs(network, self.info, self.space)
        return self._known[key]

    def complete(self, result: EvalResult) -> EvalResult:
        """``result`` with ``params`` and ``macs`` among its metrics (the evaluator's own kept),
        and the shape of its cells where its space measures one (``cell_shape``: the DARTS
        spaces' ``normal_width``, ``normal_depth``, ``reduce_width``, ``reduce_depth``;
        NAS-Bench-201's ``cell_width``, ``cell_depth``)."""
        if result.score == float("-inf") and not result.metrics:  # failed: nothing was built
            return result
        extra: dict[str, float] = {}
        if not all(k in result.metrics for k in ("params", "macs")):
            try:
                extra.update(self(result.architecture))
            except Exception as exc:  # a candidate the space cannot build: recorded as it is
                log.debug("no size for %s: %s", result.architecture.key(), exc)
        shape = getattr(self.space, "cell_shape", None)
        if shape is not None:
            with contextlib.suppress(Exception):  # another space's architecture: no shape
                extra.update(shape(result.architecture))
        if not extra:
            return result
        return dataclasses.replace(result, metrics={**extra, **result.metrics})


def result_costs(config: SearchConfig, arch: Architecture, *, size: Size | None = None) -> dict[str, float]:
    """The size of a search's result: ``params`` and ``macs`` of the network the result
    describes (at ``size``, default the space's, on the job's data), and
    ``paper_params`` and ``paper_macs`` of the papers' network of its space (CIFAR-10, or the
    dataset the space names as its ``reference_dataset``), as published results are compared."""
    space = job_space(config)
    costs = network_costs(
        searched_network(config, arch, size=size, counted=True),
        dataset_info(config.data.name), space,
    )
    reference = dataset_info(getattr(space, "reference_dataset", "cifar10"))
    with counting_device(reference.image_shape):
        paper = network_costs(space.build(arch, reference), reference, space)
    return {**costs, **{f"paper_{k}": v for k, v in paper.items()}}


def network_sizes(config: SearchConfig, arch: Architecture) -> tuple[int, int]:
    """Parameters of the found architecture at the search's size on its data, and of the papers'
    network of its space (see :func:`result_costs`)."""
    costs = result_costs(config, arch)
    return int(costs["params"]), int(costs["paper_params"])


# Random cells the cell-shape comparisons draw (Shu et al. compare with random cells of the space).
RANDOM_CELLS = 1000


def cell_shapes(space: Any, arch: Architecture) -> dict[str, tuple[float, float]]:
    """Per cell type, the (width, depth) of ``arch``'s cells (``{}`` where ``space`` measures
    none): ``{"normal": (3.5, 3), "reduce": ...}`` from its ``cell_shape`` metrics."""
    measure = getattr(space, "cell_shape", None)
    if measure is None:
        return {}
    try:
        shape = measure(arch)
    except Exception:  # an architecture of another space
        return {}
    kinds = dict.fromkeys(k.rsplit("_", 1)[0] for k in shape)
    return {kind: (float(shape[f"{kind}_width"]), float(shape[f"{kind}_depth"])) for kind in kinds}


def shape_space(arch: Architecture) -> Any | None:
    """The space of ``arch`` with its node count (its space's defaults otherwise), if that space
    measures cell shapes; None otherwise."""
    try:
        entry = SPACES.entry(arch.space)
    except Exception:
        return None
    config = entry.config() if entry.config is not None else None
    nodes = getattr(arch, "nodes", None)
    if nodes is not None and config is not None and hasattr(config, "nodes"):
        config = dataclasses.replace(config, nodes=nodes)
    space = SPACES.create(arch.space, config)
    return space if hasattr(space, "cell_shape") else None


def random_cell_shapes(
    space: Any, *, cells: int = RANDOM_CELLS, seed: int = 0
) -> dict[str, list[tuple[float, float]]]:
    """Per cell type, the (width, depth) of ``cells`` architectures drawn uniformly from ``space``."""
    import random

    rng = random.Random(seed)
    out: dict[str, list[tuple[float, float]]] = {}
    for _ in range(cells):
        for kind, point in cell_shapes(space, space.sample(rng)).items():
            out.setdefault(kind, []).append(point)
    return out


def log_cell_shapes(
    tracker: MlflowTracker, space: Any, found: list[Architecture], result: Architecture
) -> None:
    """``cell_shapes.png`` in the search's run: the width and depth of the cells it evaluated and of
    its result against random cells of its space (nothing for a space without cell shapes)."""
    if not tracker.pictures or not cell_shapes(space, result):
        return
    from raynas.tracking.plots import plot_cell_shapes  # matplotlib: only where pictures are drawn

    points: dict[str, list[tuple[float, float]]] = {}
    for arch in found:
        for kind, point in cell_shapes(space, arch).items():
            points.setdefault(kind, []).append(point)
    tracker.log_figure(
        plot_cell_shapes(points, random_cell_shapes(space), result=cell_shapes(space, result)),
        "cell_shapes.png",
    )


def reference_name(space: str) -> str:
    """The dataset of the papers' network a space's size is compared on, for people."""
    name = getattr(SPACES.get(space), "reference_dataset", "cifar10")
    return {"cifar10": "CIFAR-10", "ptb": "PTB", "cityscapes": "Cityscapes"}.get(name, name)


__all__ = [
    "RANDOM_CELLS", "CandidateCosts", "SearchResult", "cell_shapes", "check_networks_run", "example_input",
    "finished_result", "format_duration", "job_space", "log_cell_shapes", "network_costs", "network_sizes",
    "open_tracker", "open_tracker_while",
    "random_cell_shapes", "read_checkpoint", "read_prior", "reference_name", "result_costs", "retrain_size",
    "run_path", "scored_size", "searched_network", "shape_space",
]
