"""One MLflow run per search.

The run holds the flattened config as params; per-epoch train/validation loss and accuracy and
the entropy of the architecture weights as metrics; the derived genotype and the architecture
weights of every epoch (``genotypes/epoch_NNN.json``, ``arch_weights/epoch_NNN.json``), the final
genotype (``genotype.json``) and architecture weights (``arch_weights.json``) as artifacts; and
tags naming the space, strategy and dataset.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from raynas.config import SearchConfig, flatten
from raynas.errors import ConfigError
from raynas.types import EpochReport

TAG_PREFIX = "raynas."


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite store in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _check_reachable(uri: str) -> None:
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10) as response:
            response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise ConfigError(
            f"MLflow tracking server {uri} is unreachable ({exc}); start it, or leave out "
            "--tracking-uri / MLFLOW_TRACKING_URI to use a local store"
        ) from None


class MlflowTracker:
    """Records a search in one MLflow run.

    Args:
        tracking_uri: Where MLflow stores runs (default: :func:`default_tracking_uri`).
        experiment: The experiment's name; created if missing.
    """

    def __init__(self, *, tracking_uri: str | None, experiment: str) -> None:
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri or default_tracking_uri()
        _check_reachable(self.tracking_uri)
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = (
            found.experiment_id if found else self.client.create_experiment(experiment)
        )
        self.run_id = ""

    def start(self, config: SearchConfig, *, run_id: str | None = None) -> str:
        """Open a new run for ``config``, or reopen ``run_id`` when resuming; return its id."""
        if run_id:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        tags = {
            f"{TAG_PREFIX}space": config.space.name,
            f"{TAG_PREFIX}strategy": config.strategy.name,
            f"{TAG_PREFIX}dataset": config.data.name,
            f"{TAG_PREFIX}seed": str(config.seed),
        }
        run = self.client.create_run(self.experiment_id, run_name=config.name, tags=tags)
        self.run_id = run.info.run_id
        self._log_params(flatten(config.to_dict()))
        self.client.log_dict(self.run_id, config.to_dict(), "config.json")
        return self.run_id

    def _log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, json.dumps(v) if isinstance(v, list) else str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_epoch(self, report: EpochReport) -> None:
        """Metrics of one epoch and the genotype derived after it."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, report.epoch) for k, v in report.metrics.items()]
        metrics.append(Metric("epoch_seconds", report.seconds, now, report.epoch))
        self.client.log_batch(self.run_id, metrics=metrics)
        self.client.log_text(
            self.run_id, report.architecture.to_json(indent=1), f"genotypes/epoch_{report.epoch:03d}.json"
        )
        self.client.log_dict(self.run_id, report.arch_weights, f"arch_weights/epoch_{report.epoch:03d}.json")

    def finish(self, report: EpochReport, summary: dict[str, Any]) -> None:
        """The final genotype, architecture weights and summary; marks the run finished."""
        self.client.log_text(self.run_id, report.architecture.to_json(indent=1), "genotype.json")
        self.client.log_dict(self.run_id, report.arch_weights, "arch_weights.json")
        self.client.set_tag(self.run_id, f"{TAG_PREFIX}architecture_key", report.architecture.key())
        self.client.set_tag(self.run_id, f"{TAG_PREFIX}genotype", str(report.architecture))
        self._log_params({f"final.{k}": v for k, v in summary.items()})
        self.client.set_terminated(self.run_id, status="FINISHED")

    def fail(self, status: str = "FAILED") -> None:
        """Mark the run as ended without finishing (``FAILED`` or ``KILLED``)."""
        if self.run_id:
            self.client.set_terminated(self.run_id, status=status)

    def run_link(self) -> str:
        """Where to look at the run: a URL on a server, or the command that opens the UI."""
        fragment = f"#/experiments/{self.experiment_id}/runs/{self.run_id}"
        if self.tracking_uri.startswith(("http://", "https://")):
            return f"{self.tracking_uri.rstrip('/')}/{fragment}"
        mlflow_bin = Path(sys.executable).parent / "mlflow"
        command = str(mlflow_bin) if mlflow_bin.exists() else "mlflow"
        with contextlib.suppress(ValueError):
            command = os.path.relpath(command)
        return (
            f"{command} ui --backend-store-uri {self.tracking_uri} --port 5000\n"
            f"  then open http://127.0.0.1:5000/{fragment}"
        )
