"""Everything a gradient search records about itself, in one place for the search driver.

Each epoch's derived architecture is a candidate: a row of the Parquet results store (trial
``epoch-NNN``, with that epoch's metrics) and a child run of the search's MLflow run (named
``epoch NNN``, with the architecture's picture), so the UI lists the architectures the search
passed through and which epochs agreed (same ``raynas.architecture_key``). At the end: the final
architecture's picture, the heatmap of the architecture weights over epochs and the final model
in the Model Registry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raynas import storage
from raynas.config import SearchConfig
from raynas.tracking.mlflow_tracker import CandidateLane, MlflowTracker
from raynas.tracking.results import ResultsStore, SearchInfo, search_id
from raynas.tracking.retry import is_transient
from raynas.tracking.vocabulary import canonical_metric, canonical_node
from raynas.types import Architecture, EpochReport, EvalResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from torch import nn

log = logging.getLogger(__name__)

# Results rows of a sampling search are written in batches of this many, or this often.
ROWS_PER_FILE = 256
ROWS_SECONDS = 10.0
# How long the end of a search waits for the candidates' child runs still queued for MLflow.
LANE_TIMEOUT_S = 600.0
# Candidates' pictures: resolution, and how many distinct architectures' PNGs are kept for reuse.
PICTURE_DPI = 80
PICTURES_KEPT = 256


def results_root(config: SearchConfig) -> str:
    """The results store of a job: ``tracking.results``, else ``<output_dir>/results``."""
    return config.tracking.results or storage.join(config.tracking.output_dir, "results")


def epoch_candidate(report: EpochReport, *, node: str) -> EvalResult:
    """The architecture derived after an epoch as an evaluated candidate (supernet metrics)."""
    return EvalResult(
        architecture=report.architecture, metrics=dict(report.metrics), objective="valid_acc",
        trial_id=f"epoch-{report.epoch:03d}", budget=float(report.epoch + 1), seconds=report.seconds,
        node=node,
    )


class SearchRecorder:
    """The MLflow tracker and the results store of one search.

    Args:
        config: The job.
        tracker: Its tracker (its run opened or reopened by ``tracker.start``).
        node: Where the search's worker runs (``local``, ``ray-cpu``, ``ray-gpu``).
        costs: The size of a candidate's network (``params``, ``macs``), added to every result
            whose evaluator did not measure it (the driver counts it: tracking knows no space).
        draw: A candidate's picture (its space's drawing), logged as ``architecture.png`` in its
            child run; drawn on the thread that sends the child runs, once per architecture.
    """

    def __init__(self, *, config: SearchConfig, tracker: MlflowTracker, node: str,
                 costs: Callable[[EvalResult], EvalResult] | None = None,
                 draw: Callable[[Architecture], Figure | None] | None = None) -> None:
        self.config = config
        self.tracker = tracker
        self.node = canonical_node(node)
        self.costs = costs
        self.draw = draw
        self._pictures: dict[str, bytes] = {}  # architecture key -> PNG, the latest PICTURES_KEPT
        output = config.tracking.output_dir  # the spool is local: beside the run, else a temp folder
        spool = None if storage.is_s3(output) else Path(output) / config.name / "results-spool"
        self.store = ResultsStore(results_root(config), spool_dir=spool)
        self.store.check()
        self.info: SearchInfo | None = None
        self._rows: list[EvalResult] = []  # candidates' results rows not yet written
        self._rows_at = time.monotonic()
        self._lane: CandidateLane | None = None  # candidates' child runs, sent in the background

    def opened(self, run_id: str) -> None:
        """The run is open (new or resumed): rows from now on belong to it."""
        self.info = SearchInfo(
            search=search_id(self.config.name, run_id), name=self.config.name, run_id=run_id,
            strategy=self.config.strategy.name, dataset=self.config.data.name, seed=self.config.seed,
        )

    def epoch(self, report: EpochReport, *, resumed: bool = False) -> None:
        """Record an epoch: parent-run metrics and artifacts, a results row and a child run.

        Args:
            report: The epoch.
            resumed: It is the last epoch before a crash, recorded again; its child run is made
                only if the first attempt did not make it.
        """
        assert self.info is not None, "call opened() first"
        if not (resumed and self._has_epoch(report)):  # each epoch's metrics once per run
            self.tracker.log_epoch(report)
        candidate = self._complete(epoch_candidate(report, node=self.node))
        self.store.append([candidate], info=self.info)
        if resumed and self._has_child(candidate.trial_id):
            return
        self._send(candidate, step=report.epoch, name=f"epoch {report.epoch:03d}")

    def candidate(self, result: EvalResult, *, step: int) -> None:
        """Record one candidate of a sampling search: a child run now, a results row in the next
        batch (rows are written :data:`ROWS_PER_FILE` at a time, or every :data:`ROWS_SECONDS`, and
        by :meth:`flush`; the search's journal holds what a crash loses, and :meth:`backfill`
        writes it when the search resumes).

        Args:
            result: The evaluation.
            step: Its index in the search (the step its metrics are logged at).
        """
        assert self.info is not None, "call opened() first"
        result = self._complete(result)
        self._rows.append(result)
        if len(self._rows) >= ROWS_PER_FILE or time.monotonic() - self._rows_at >= ROWS_SECONDS:
            self.flush()
        self._send(result, step=step)

    def _send(self, result: EvalResult, *, step: int, name: str | None = None) -> None:
        """A candidate's child run, queued on the lane that sends them in the background."""
        if self._lane is None:
            self._lane = CandidateLane(self.tracker)
        self._lane.log_candidate(result, step=step, name=name, picture=self._picture(result.architecture))

    def _picture(self, arch: Architecture) -> Callable[[], bytes | None] | None:
        """What draws ``arch`` as PNG bytes when its child run is sent (None: no drawing)."""
        if self.draw is None or not self.tracker.pictures:
            return None
        draw, key = self.draw, arch.key()

        def render() -> bytes | None:
            png = self._pictures.get(key)
            if png is None:
                try:
                    figure = draw(arch)
                    if figure is None:
                        return None
                    buffer = io.BytesIO()
                    figure.savefig(buffer, format="png", dpi=PICTURE_DPI)
                except Exception as exc:  # a picture is never worth a search
                    log.warning("could not draw %s: %s", key, exc)
                    return None
                png = buffer.getvalue()
                if len(self._pictures) >= PICTURES_KEPT:
                    self._pictures.pop(next(iter(self._pictures)))
                self._pictures[key] = png
            return png

        return render

    def abort(self, timeout: float = 10.0) -> None:
        """The search failed: send the candidates' child runs already queued (waiting up to
        ``timeout`` seconds), never raising (the failure is what the user must see); what cannot
        be sent now is recorded when the search resumes."""
        with contextlib.suppress(Exception):
            if self._lane is not None:
                self._lane.close(timeout=timeout)

    def flush(self) -> None:
        """Write the buffered results rows (one Parquet file)."""
        assert self.info is not None, "call opened() first"
        if self._rows:
            self.store.append(self._rows, info=self.info)
            self._rows = []
        self._rows_at = time.monotonic()

    def backfill(self, results: Sequence[EvalResult]) -> None:
        """Record what a crash may have kept from being recorded: every result's results row (the
        store keeps the first of a trial) and child run (made only for trials without one)."""
        assert self.info is not None, "call opened() first"
        results = [self._complete(r) for r in results]
        if results:
            self.store.append(results, info=self.info)
        logged = self._child_trials()
        for step, result in enumerate(results):
            if result.trial_id not in logged:
                self.tracker.log_candidate(result, step=step, picture=self._picture(result.architecture))

    def _complete(self, result: EvalResult) -> EvalResult:
        """``result`` as it is recorded: with its network's size, and when it ran (an evaluation
        that says only how long it took ended now, as it is recorded when it ends)."""
        if self.costs is not None:
            result = self.costs(result)
        if not result.ended and not result.started:
            ended = time.time()
            result = dataclasses.replace(result, started=ended - result.seconds, ended=ended)
        return result

    def _child_trials(self) -> set[str]:
        """The trial ids of the run's child runs (one listing, page by page)."""
        trials: set[str] = set()
        token = None
        while True:
            page = self.tracker.client.search_runs(
                [self.tracker.experiment_id],
                filter_string=f"tags.mlflow.parentRunId = '{self.tracker.run_id}'",
                max_results=1000, page_token=token,
            )
            trials.update(r.data.tags.get("raynas.trial_id", "") for r in page)
            token = page.token
            if not token:
                return trials

    def _has_epoch(self, report: EpochReport) -> bool:
        name = next(iter(report.metrics), None)
        if name is None:
            return False
        history = self.tracker.client.get_metric_history(self.tracker.run_id, canonical_metric(name))
        return any(m.step == report.epoch for m in history)

    def _has_child(self, trial_id: str) -> bool:
        runs = self.tracker.client.search_runs(
            [self.tracker.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self.tracker.run_id}' "
            f"and tags.`raynas.trial_id` = '{trial_id}'",
        )
        return bool(runs)

    def finish(self, final: EpochReport, summary: dict[str, Any], *,
               weights_history: Sequence[dict[str, Any]], network: nn.Module,
               picture: Figure | None = None, op_names: Sequence[str] | None = None,
               edge_names: Sequence[str] | None = None, trained: bool = False,
               example: Any = None) -> str | None:
        """Pictures, the registered model and the summary; marks the run finished.

        Args:
            final: The last epoch's report.
            summary: Final values: numbers as ``final.*`` metrics, the rest as ``final.*`` params.
            weights_history: The architecture weights of every epoch (for the heatmap).
            network: The network the result describes (registered as the run's model).
            picture: The final architecture's picture, drawn by its space (``architecture.png``).
            op_names: The candidates' names, in the column order of the architecture weights.
            edge_names: The edges' names, in the row order of the architecture weights.
            trained: Whether ``network``'s weights are trained (a retrained result's).
            example: One input batch (the model's input example and signature).

        Returns:
            The registered model version, or None when the registry could not be reached.
        """
        if picture is not None:
            self.tracker.log_figure(picture, "architecture.png")
        history = [w for w in weights_history if w]
        if history and self.tracker.pictures:
            from raynas.tracking.plots import plot_arch_weights  # matplotlib: only for pictures

            figure = plot_arch_weights(history, op_names=op_names, edge_names=edge_names)
            self.tracker.log_figure(figure, "arch_weights.png")
        version = None
        name = self.config.tracking.registered_model or f"raynas-{self.config.name}"
        try:
            version = self.tracker.register_model(
                final.architecture, name=name, network=network, trained=trained, example=example
            )
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("could not register %s in MLflow's Model Registry (%s)", name, type(exc).__name__)
        if self._lane is not None and not self._lane.close(timeout=LANE_TIMEOUT_S):
            log.warning("MLflow at %s unreachable: %d candidate run(s) of %s could not be sent",
                        self.tracker.tracking_uri, self._lane.pending(), self.config.name)
        self.tracker.finish(final, summary if version is None else {**summary, "registered_version": version})
        self.flush()
        if not self.store.flush():
            log.warning("results of %s wait in %s until %s is reachable",
                        self.config.name, self.store.spool_dir, self.store.root)
        return version

