"""What the drivers share: the result of a search, where a job's files live, resuming from a
checkpoint, the tracker of a run, and the size of a found network."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from raynas import storage
from raynas.config import SearchConfig
from raynas.data import dataset_info
from raynas.errors import ConfigError
from raynas.profile import count_params
from raynas.spaces import SPACES
from raynas.tracking import MlflowTracker
from raynas.train.checkpoint import load_checkpoint
from raynas.types import Architecture


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
    """

    architecture: Architecture
    metrics: dict[str, float]
    params: int
    params_cifar10: int
    run_id: str
    run_link: str
    checkpoint: str
    seconds: float


def format_duration(seconds: float) -> str:
    """``75.2`` -> ``1:15``; hours when needed."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def run_path(config: SearchConfig, filename: str) -> str:
    """``<tracking.output_dir>/<name>/<filename>``: a local path or an ``s3://`` URI."""
    return storage.join(config.tracking.output_dir, config.name, filename)


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
    prior = load_checkpoint(checkpoint)
    if prior["finished"]:
        return None
    if prior["config"] != config.to_dict():
        raise ConfigError(
            f"{checkpoint} belongs to an unfinished search of {config.name!r} with another "
            "config; pass --fresh to start over, or give the job another name"
        )
    return prior


def open_tracker(config: Any) -> MlflowTracker:
    """The MLflow tracker a job's ``tracking`` section describes (its run not yet started)."""
    return MlflowTracker(
        tracking_uri=config.tracking.tracking_uri, experiment=config.tracking.experiment,
        artifact_location=config.tracking.artifact_location,
    )


def job_space(config: SearchConfig) -> Any:
    """The space a job searches, built from its ``space`` section."""
    return SPACES.create(config.space.name, config.space.config)


def searched_network(config: SearchConfig, arch: Architecture) -> nn.Module:
    """The stand-alone network of ``arch`` at the search's size on its data (untrained)."""
    space = job_space(config)
    cfg = config.space.config
    return space.build(
        arch, dataset_info(config.data.name), channels=getattr(cfg, "channels", None),
        layers=getattr(cfg, "layers", None),
    )


def network_sizes(config: SearchConfig, arch: Architecture) -> tuple[int, int]:
    """Parameters of the found architecture at the search's size on its data, and at the size of
    the papers' network of its space (CIFAR-10 unless the space names its ``reference_dataset``),
    as published results are compared."""
    space = job_space(config)
    reference = space.build(arch, dataset_info(getattr(space, "reference_dataset", "cifar10")))
    return count_params(searched_network(config, arch)), count_params(reference)


def reference_name(space: str) -> str:
    """The dataset of the papers' network a space's size is compared on, for people."""
    name = getattr(SPACES.get(space), "reference_dataset", "cifar10")
    return {"cifar10": "CIFAR-10", "ptb": "PTB", "cityscapes": "Cityscapes"}.get(name, name)


__all__ = [
    "SearchResult", "format_duration", "job_space", "network_sizes", "open_tracker", "read_prior",
    "reference_name", "run_path", "searched_network",
]
