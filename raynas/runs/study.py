"""Accuracy against evaluation layer count: the study of Ahmadian et al., "Pseudo-Inverted
Bottleneck Convolution for DARTS Search Space" (PIBConv, ICASSP 2023), which evaluates DARTS cells
and cells of pseudo-inverted bottlenecks (``space.operations: convnext``) in networks of 2 to 20
cells and finds the latter much less sensitive to the count.

A study job (``raynas study jobs/layer_count_*.yaml``) is a retraining job (``raynas train``)
whose ``study`` section lists the cells to compare and the layer counts to build them at::

    study:
      layers: [2, 5, 8, 11, 14, 17, 20]
      concurrency: 1          # retrainings at once (more than 1 needs execution.backend: ray)
      cells:                  # label: the cell's architecture and space settings
        DARTS:
          architecture: DARTS_V2
        PIBConv:
          architecture: run:<MLflow run id of a search with space.operations: convnext>
          space: {operations: convnext}   # over the job's space section, for this cell

Every (cell, layer count) is a retraining from scratch with the one training loop
(:class:`raynas.runs.retrain.RetrainWorker`), recorded as a child run of the study's MLflow run
(its test accuracy per epoch, ``final.test_acc``, ``final.params``, ``final.macs``). The study's
run holds the summary: the table (``layer_count.csv`` and MLflow's table view
``layer_count_table.json``), the plot ``layer_count.png`` (test accuracy against the layer count
and against the parameters) and, per cell, the metric ``test_acc.<label>`` stepped by the layer
count. An interrupted study resumes with the retrainings it has not finished.
"""

from __future__ import annotations

import copy
import functools
import math
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raynas import storage
from raynas.config import RetrainConfig, another_config, load_yaml, other_command
from raynas.data import dataset_info
from raynas.errors import ConfigError, RaynasError
from raynas.execution import outliving_losses, start_worker
from raynas.execution.ray_actors import head_watched
from raynas.profile import counting_device
from raynas.runs.common import attempt_id, network_costs, sole_writer
from raynas.runs.jobs import parse_retrain_job
from raynas.runs.retrain import RetrainWorker, resolve_architecture
from raynas.spaces import SPACES
from raynas.tracking import MlflowTracker
from raynas.tracking.mlflow_tracker import RUN_PREFIX, TAG_PREFIX
from raynas.train.checkpoint import load_checkpoint, save_checkpoint
from raynas.types import EpochReport

if TYPE_CHECKING:  # matplotlib loads only where a picture is drawn
    from matplotlib.figure import Figure

STUDY_KEYS = ("layers", "cells", "concurrency")
CELL_KEYS = ("architecture", "space")
LABEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")  # no dots: --set study.cells.<label>.x=...
# The columns of the summary table, in order.
COLUMNS = ("cell", "layers", "test_acc", "test_loss", "params", "macs", "epochs", "seconds", "run_id")


@dataclass(frozen=True)
class StudyCell:
    """One cell of the comparison: a label, its architecture (a published name, a JSON file or
    text, or ``run:<id>``) and the space settings it is built with over the job's."""

    label: str
    architecture: str
    space: dict[str, Any]


@dataclass(frozen=True)
class StudyJob:
    """A validated study job: the retraining of every (cell, layer count), and the job as read.

    Attributes:
        name: The job's name.
        layers: The layer counts, in the order given.
        cells: The cells compared.
        concurrency: Retrainings run at once.
        retrainings: Per (cell label, layer count), its retraining job.
        raw: The job as read (overrides applied), recorded with the study's run.
    """

    name: str
    layers: tuple[int, ...]
    cells: tuple[StudyCell, ...]
    concurrency: int
    retrainings: dict[tuple[str, int], RetrainConfig]
    raw: dict[str, Any]

    @property
    def base(self) -> RetrainConfig:
        """The first retraining: the seed, data, execution and tracking every one shares."""
        return next(iter(self.retrainings.values()))

    def to_dict(self) -> dict[str, Any]:
        """The study as plain data: the job with every retraining's defaults filled in."""
        first = self.base.to_dict()
        first.pop("architecture")
        first["retrain"].pop("layers")
        cells = {c.label: {"architecture": c.architecture, "space": c.space} for c in self.cells}
        return {**first, "study": {"layers": list(self.layers), "concurrency": self.concurrency,
                                   "cells": cells}}


@dataclass(frozen=True)
class StudyResult:
    """A finished study: its table (one row per retraining, in cell then layer order), its MLflow
    run and the wall time of this invocation."""

    rows: list[dict[str, Any]]
    run_id: str
    seconds: float


def load_study_job(path: str, overrides: list[str] | tuple[str, ...] = ()) -> StudyJob:
    """Read and validate a study job file (``--set`` overrides as for every job)."""
    return parse_study_job(load_yaml(path, overrides))


def parse_study_job(raw: dict[str, Any]) -> StudyJob:
    """Validate a study job's mapping: the ``study`` section here, everything else as the
    retraining job of each (cell, layer count) (:func:`raynas.runs.jobs.parse_retrain_job`).

    Raises:
        ConfigError: Naming the first bad key.
    """
    other = other_command(raw, "study")
    if other:
        raise ConfigError(f"this {other}")
    raw = copy.deepcopy(raw)
    study = raw.pop("study", None)
    if not isinstance(study, dict):
        raise ConfigError(
            "config section 'study' is missing or not a mapping: list the cells to compare "
            "(study.cells) and the layer counts (study.layers), as in jobs/layer_count_quickstart.yaml"
        )
    if "architecture" in raw:
        raise ConfigError(
            "config key 'architecture': a study names its architectures in study.cells; remove it"
        )
    unknown = sorted(set(study) - set(STUDY_KEYS))
    if unknown:
        raise ConfigError(f"unknown config key 'study.{unknown[0]}'; allowed: {', '.join(STUDY_KEYS)}")
    layers = _layers(study.get("layers"))
    concurrency = study.get("concurrency", 1)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigError(f"config key 'study.concurrency' must be an integer >= 1, got {concurrency!r}")
    cells = _cells(study.get("cells"))
    retrain = raw.get("retrain") or {}
    if isinstance(retrain, dict) and "layers" in retrain:
        raise ConfigError("config key 'retrain.layers': the study sets it from study.layers; remove it")
    retrainings: dict[tuple[str, int], RetrainConfig] = {}
    for cell in cells:
        space = raw.get("space")
        space = {"name": space} if isinstance(space, str) else dict(space or {})
        for count in layers:
            job = {**copy.deepcopy(raw), "architecture": cell.architecture,
                   "space": {**space, **cell.space},
                   "retrain": {**(retrain if isinstance(retrain, dict) else {}), "layers": count}}
            try:
                retrainings[cell.label, count] = parse_retrain_job(job)
            except ConfigError as exc:
                raise ConfigError(f"study.cells.{cell.label} at {count} layers: {exc}") from None
        _check_architecture(cell, retrainings[cell.label, layers[0]])
    config = next(iter(retrainings.values()))
    if concurrency > 1 and config.execution.backend == "local":
        raise ConfigError(
            f"config key 'study.concurrency' is {concurrency}, but execution.backend: local trains one "
            "network at a time in this process; use backend: ray, or concurrency: 1"
        )
    return StudyJob(name=config.name, layers=layers, cells=cells, concurrency=concurrency,
                    retrainings=retrainings, raw=raw)


def _check_architecture(cell: StudyCell, config: RetrainConfig) -> None:
    """A cell's architecture (unless it is a search's, ``run:<id>``) is in its space, before any
    training starts."""
    if cell.architecture.startswith(RUN_PREFIX):
        return
    space = SPACES.create(config.space.name, config.space.config)
    try:
        arch = space.parse(cell.architecture)
    except RaynasError as exc:
        raise ConfigError(f"config key 'study.cells.{cell.label}.architecture': {exc}") from None
    if not space.contains(arch):
        raise ConfigError(
            f"config key 'study.cells.{cell.label}.architecture': {arch} is not in the "
            f"{config.space.name!r} space as configured for this cell (its operations: set them in "
            f"study.cells.{cell.label}.space)"
        )


def _layers(value: Any) -> tuple[int, ...]:
    if (not isinstance(value, list) or not value
            or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1000 for v in value)):
        raise ConfigError(
            f"config key 'study.layers' must be a list of layer counts (integers 1 to 1000), got {value!r}"
        )
    if len(set(value)) != len(value):
        raise ConfigError(f"config key 'study.layers' lists a layer count twice: {value!r}")
    return tuple(value)


def _cells(value: Any) -> tuple[StudyCell, ...]:
    if not isinstance(value, dict) or not value:
        raise ConfigError(
            "config key 'study.cells' must map each cell's label to its {architecture, space}"
        )
    cells: list[StudyCell] = []
    for label, item in value.items():
        if not isinstance(label, str) or not LABEL_PATTERN.fullmatch(label):
            raise ConfigError(
                f"config key 'study.cells': a cell's label is 1-32 letters, digits, '_' or '-', "
                f"got {label!r}"
            )
        where = f"study.cells.{label}"
        if not isinstance(item, dict):
            raise ConfigError(f"config key {where!r} must be a mapping with an architecture")
        unknown = sorted(set(item) - set(CELL_KEYS))
        if unknown:
            raise ConfigError(f"unknown config key '{where}.{unknown[0]}'; allowed: {', '.join(CELL_KEYS)}")
        arch, space = item.get("architecture"), item.get("space") or {}
        if not isinstance(arch, str) or not arch.strip():
            raise ConfigError(
                f"config key '{where}.architecture' must be a published name, a JSON file or text, "
                f"or run:<MLflow run id>; got {arch!r}"
            )
        if not isinstance(space, dict) or "name" in space:
            raise ConfigError(
                f"config key '{where}.space' must be a mapping of space settings over the job's "
                "space section (its name stays the job's)"
            )
        cells.append(StudyCell(label, arch, dict(space)))
    return tuple(cells)


@head_watched()  # as a search and a retraining: a lost head is raynas's line
def run_study(job: StudyJob, *, fresh: bool = False, echo: Callable[[str], None] = print) -> StudyResult:
    """Retrain every (cell, layer count) of ``job`` not yet finished, each a child run of the
    study's MLflow run, then record the summary table and plot there.

    Args:
        job: The validated study.
        fresh: Start over even if an unfinished study of the same job exists.
        echo: Where progress lines go.
    """
    checkpoint = storage.join(job.base.tracking.output_dir, job.name, "study.pt")
    with sole_writer(checkpoint, f"the study {job.name!r}"):
        return _run_study(job, checkpoint, fresh=fresh, echo=echo)


def _run_study(job: StudyJob, checkpoint: str, *, fresh: bool, echo: Callable[[str], None]) -> StudyResult:
    started = time.perf_counter()
    base = job.base
    prior = None if fresh or not storage.exists(checkpoint) else load_checkpoint(checkpoint)
    if prior is not None and prior["config"] != job.to_dict():
        if not prior["finished"]:
            raise another_config(checkpoint, "study", job.name, prior["config"], job.to_dict())
        prior = None
    again = prior is not None and prior["finished"]
    if again:
        prior = None  # a finished study runs again, as a new run
    tracker = _tracker(base)
    tags = {
        f"{TAG_PREFIX}kind": "layer_study", f"{TAG_PREFIX}space": base.space.name,
        f"{TAG_PREFIX}dataset": base.data.name, f"{TAG_PREFIX}seed": str(base.seed),
    }
    rows: dict[str, dict[str, Any]] = dict(prior["rows"]) if prior else {}
    if prior is not None:
        run_id = tracker.start(job, run_id=prior["run_id"], tags=tags)  # type: ignore[arg-type]
        echo(f"Resuming study {job.name!r}: {len(rows)} of {len(job.retrainings)} retrainings done")
    else:
        # Made once: a study killed before its first checkpoint goes on in this run (start_run).
        attempt = attempt_id(checkpoint, fresh=fresh or again)
        run_id = tracker.start(job, tags=tags, attempt=attempt)  # type: ignore[arg-type]
    lock = threading.Lock()

    def save(finished: bool = False) -> None:
        save_checkpoint({"config": job.to_dict(), "run_id": run_id, "rows": dict(rows),
                         "finished": finished}, checkpoint)

    save()
    todo = [key for key in job.retrainings if _key(*key) not in rows]
    cells = {c.label: c for c in job.cells}
    echo(f"Study {job.name!r}: {len(job.cells)} cells x {len(job.layers)} layer counts "
         f"{list(job.layers)} on {base.data.name}; MLflow run {run_id}")

    def one(key: tuple[str, int]) -> None:
        row = _retrain(job.retrainings[key], cells[key[0]], key[1], parent=run_id, echo=echo)
        with lock:
            rows[_key(*key)] = row
            save()

    try:
        if job.concurrency > 1:
            with ThreadPoolExecutor(max_workers=job.concurrency) as pool:
                for future in [pool.submit(one, key) for key in todo]:
                    future.result()
        else:
            for key in todo:
                one(key)
        table = [rows[_key(*key)] for key in job.retrainings]
        _log_summary(tracker, job, table)
        tracker.client.set_terminated(run_id, status="FINISHED")
        save(finished=True)
    except BaseException as error:
        tracker.fail(error)
        raise
    return StudyResult(rows=table, run_id=run_id, seconds=time.perf_counter() - started)


def _key(label: str, layers: int) -> str:
    return f"{label}@{layers}"


def _tracker(config: RetrainConfig) -> MlflowTracker:
    return MlflowTracker(tracking_uri=config.tracking.tracking_uri, experiment=config.tracking.experiment,
                         artifact_location=config.tracking.artifact_location,
                         pictures=config.tracking.pictures)


def _retrain(
    config: RetrainConfig, cell: StudyCell, layers: int, *, parent: str, echo: Callable[[str], None]
) -> dict[str, Any]:
    """Retrain one (cell, layer count) as a child run of ``parent``; its row of the table."""
    started = time.perf_counter()
    tracker = _tracker(config)  # one per retraining: the study may run several in threads
    arch, source = resolve_architecture(config, tracker)
    tags = {
        "mlflow.parentRunId": parent, f"{TAG_PREFIX}kind": "retrain", f"{TAG_PREFIX}space": config.space.name,
        f"{TAG_PREFIX}dataset": config.data.name, f"{TAG_PREFIX}seed": str(config.seed),
        f"{TAG_PREFIX}study.cell": cell.label, f"{TAG_PREFIX}study.layers": str(layers),
    }
    if source is not None:
        tags[f"{TAG_PREFIX}lineage.source_run_id"] = source
    name = f"{cell.label} {layers} layers"
    run = tracker.client.create_run(tracker.experiment_id, run_name=name, tags=tags)
    tracker.run_id, tracker.tags = run.info.run_id, tags
    tracker.log_config(config.to_dict())
    tracker.client.log_text(tracker.run_id, arch.to_json(indent=1), "architecture.json")
    macs = _macs(config, arch)
    worker = start_worker(functools.partial(RetrainWorker, config, arch.to_json()), config.execution, echo)
    try:
        epoch = 0
        state: dict[str, Any] | None = None  # the last epoch's: what a new worker resumes from
        # Calls to the worker, made again on a new one resumed from `state` while one is lost.
        outliving = functools.partial(outliving_losses, worker, state=lambda: state,
                                      done=lambda: epoch, echo=echo)
        params = int(outliving(lambda: worker.call("describe"))["params"])
        echo(f"  {cell.label} at {layers} layers: {params / 1e6:.3f}M parameters, "
             f"{macs / 1e6:.1f}M multiply-adds, in {worker.describe_location()}")
        metrics: dict[str, float] = {}
        while epoch < config.retrain.epochs:
            start = time.perf_counter()
            metrics, state = outliving(worker.run_epoch)
            tracker.log_metrics(metrics, step=epoch, seconds=time.perf_counter() - start)
            epoch += 1
        row = {
            "cell": cell.label, "layers": layers, "test_acc": float(metrics["test_acc"]),
            "test_loss": float(metrics["test_loss"]), "params": params, "macs": macs,
            "epochs": config.retrain.epochs, "seconds": round(time.perf_counter() - started, 1),
            "run_id": tracker.run_id,
        }
        # The trained network: a version of the study's registered model, tagged with its cell
        # and layer count.
        model = config.tracking.registered_model or f"raynas-{config.name}"
        network, example = outliving(lambda: (worker.call("trained_network"), worker.call("example_input")))
        version = tracker.register_model(arch, name=model, network=network, trained=True, example=example)
        for key in ("cell", "layers"):
            tracker.client.set_model_version_tag(model, version, f"{TAG_PREFIX}study.{key}", str(row[key]))
        tracker.finish(EpochReport(epoch=config.retrain.epochs - 1, metrics=metrics, architecture=arch),
                       {k: v for k, v in row.items() if k not in ("cell", "run_id")}
                       | {"registered_version": version})
    except BaseException as error:
        tracker.fail(error)
        raise
    finally:
        worker.close()
    echo(f"  {cell.label} at {layers} layers: test accuracy {row['test_acc']:.1%} "
         f"({row['seconds']:.0f}s)")
    return row


def _macs(config: RetrainConfig, arch: Any) -> int:
    """Multiply-adds of one input through the network (:func:`raynas.profile.counting_device`;
    0 where the network cannot be counted there)."""
    space = SPACES.create(config.space.name, config.space.config)
    info = dataset_info(config.data.name)
    try:
        with counting_device(info.image_shape):
            network = space.build(arch, info, channels=config.retrain.channels or None,
                                  layers=config.retrain.layers or None)
    except Exception:  # a network that cannot be built on meta tensors: no count
        return 0
    return int(network_costs(network, info, space).get("macs", 0))


def format_table(rows: list[dict[str, Any]]) -> str:
    """The table as CSV, one row per retraining, the columns of :data:`COLUMNS`."""
    lines = [",".join(COLUMNS)]
    for row in rows:
        lines.append(",".join(_cell_text(row[c]) for c in COLUMNS))
    return "\n".join(lines) + "\n"


def _cell_text(value: Any) -> str:
    return f"{value:.6f}" if isinstance(value, float) and not value.is_integer() else str(value)


def plot_layer_count(rows: list[dict[str, Any]], *, title: str = "") -> Figure:
    """Test accuracy against the number of layers (cells) and against the parameters, one line
    per cell (the PIBConv paper's Fig. 4)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.4, 4.2), layout="constrained")
    by_layers, by_params = fig.subplots(1, 2)
    for label in dict.fromkeys(r["cell"] for r in rows):
        mine = sorted((r for r in rows if r["cell"] == label), key=lambda r: r["layers"])
        acc = [100 * r["test_acc"] for r in mine]
        by_layers.plot([r["layers"] for r in mine], acc, marker="o", label=label)
        by_params.plot([r["params"] / 1e6 for r in mine], acc, marker="o", label=label)
        for r, a in zip(mine, acc, strict=True):
            by_params.annotate(str(r["layers"]), (r["params"] / 1e6, a), fontsize=7,
                               textcoords="offset points", xytext=(3, 3))
    by_layers.set_xlabel("evaluation layers (cells)")
    by_params.set_xlabel("parameters (M); points labelled with their layers")
    for ax in (by_layers, by_params):
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or "test accuracy against evaluation layer count", fontsize=11)
    return fig


def _log_summary(tracker: MlflowTracker, job: StudyJob, rows: list[dict[str, Any]]) -> None:
    """The table, the plot and per cell ``test_acc.<label>`` stepped by the layer count."""
    client, run_id = tracker.client, tracker.run_id
    client.log_text(run_id, format_table(rows), "layer_count.csv")
    client.log_table(run_id, {c: [r[c] for r in rows] for c in COLUMNS}, "layer_count_table.json")
    for row in rows:
        if math.isfinite(row["test_acc"]):
            client.log_metric(run_id, f"test_acc.{row['cell']}", row["test_acc"], step=row["layers"])
    title = f"{job.name}: test accuracy against evaluation layer count ({job.base.data.name})"
    tracker.log_figure(plot_layer_count(rows, title=title), "layer_count.png")
    tracker.flush()


__all__ = [
    "StudyCell", "StudyJob", "StudyResult", "format_table", "load_study_job", "parse_study_job",
    "plot_layer_count", "run_study",
]
