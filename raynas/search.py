"""The search driver: runs a search epoch by epoch on a worker (in-process or a Ray actor),
records every epoch in MLflow, checkpoints after every epoch, and resumes where it stopped.

The checkpoint (``<output_dir>/<name>/checkpoint.pt``, on local disk or ``s3://``) holds the
worker's full state, the MLflow run id and every epoch's report, so a search that crashes loses at
most the epoch in flight, and running the same job again continues it in the same MLflow run.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from raynas.config import SearchConfig
from raynas.data import dataset_info
from raynas.errors import ConfigError
from raynas.execution import start_worker
from raynas.profile import count_params
from raynas.spaces import SPACES
from raynas.strategies import STRATEGIES
from raynas.tracking import MlflowTracker, storage
from raynas.tracking.recorder import SearchRecorder
from raynas.train.checkpoint import load_checkpoint, save_checkpoint
from raynas.types import Architecture, EpochReport


@dataclass(frozen=True)
class SearchResult:
    """What a finished search found and where it is recorded."""

    architecture: Architecture
    metrics: dict[str, float]
    params: int
    params_cifar10: int
    run_id: str
    run_link: str
    checkpoint: str  # a local path or an s3:// URI
    seconds: float


def format_duration(seconds: float) -> str:
    """``75.2`` -> ``1:15``; hours when needed."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _report_state(report: EpochReport) -> dict[str, Any]:
    return {
        "epoch": report.epoch,
        "metrics": report.metrics,
        "architecture": report.architecture.to_json(),
        "arch_weights": report.arch_weights,
        "seconds": report.seconds,
    }


def _report_from_state(state: dict[str, Any]) -> EpochReport:
    return EpochReport(
        epoch=state["epoch"],
        metrics=state["metrics"],
        architecture=Architecture.from_json(state["architecture"]),
        arch_weights=state["arch_weights"],
        seconds=state["seconds"],
    )


def run_path(config: SearchConfig, filename: str) -> str:
    """``<tracking.output_dir>/<name>/<filename>``: a local path or an ``s3://`` URI."""
    return storage.join(config.tracking.output_dir, config.name, filename)


def read_prior(checkpoint: str, *, fresh: bool) -> dict[str, Any] | None:
    """The checkpoint to resume from, if there is one and ``fresh`` is not set.

    Raises:
        StorageError: ``checkpoint`` is on S3 and its bucket cannot be used (checked even when
            ``fresh``, so a search does not fail at its first checkpoint).
    """
    if storage.is_s3(checkpoint):
        storage.check_reachable(checkpoint)
    return None if fresh or not storage.exists(checkpoint) else load_checkpoint(checkpoint)


def run_search(
    config: SearchConfig,
    *,
    fresh: bool = False,
    echo: Callable[[str], None] = print,
) -> SearchResult:
    """Run (or resume) the search described by ``config``.

    Args:
        config: The validated job.
        fresh: Ignore an unfinished checkpoint of the same job and start over.
        echo: Where progress lines go.

    Returns:
        The final architecture, its metrics, its size and where the MLflow run is.
    """
    if config.evaluator is not None:  # a sampling strategy: ask/tell over evaluated candidates
        from raynas.sample_search import run_sampling_search

        return run_sampling_search(config, fresh=fresh, echo=echo)
    started = time.perf_counter()
    checkpoint = run_path(config, "checkpoint.pt")
    prior = read_prior(checkpoint, fresh=fresh)
    if prior is not None and prior["finished"]:
        prior = None  # a finished search: run it again from the start
    if prior is not None and prior["config"] != config.to_dict():
        raise ConfigError(
            f"{checkpoint} belongs to an unfinished search of {config.name!r} with another "
            "config; pass --fresh to start over, or give the job another name"
        )

    tracker = MlflowTracker(
        tracking_uri=config.tracking.tracking_uri, experiment=config.tracking.experiment,
        artifact_location=config.tracking.artifact_location,
    )
    node = "local" if config.execution.backend == "local" else (
        "ray-gpu" if config.execution.gpus_per_worker else "ray-cpu"
    )
    recorder = SearchRecorder(config=config, tracker=tracker, node=node)  # checks the results store
    history: list[dict[str, Any]] = prior["history"] if prior else []
    worker = start_worker(config)  # before the run exists: bad data fails without an empty run
    try:
        run_id = tracker.start(config, run_id=prior["run_id"] if prior else None)
        recorder.opened(run_id)
        if prior is not None:
            worker.load_state_dict(prior["worker"])
            if history:  # it may have been checkpointed but not logged before the crash
                recorder.epoch(_report_from_state(history[-1]), resumed=True)
            echo(f"Resuming {config.name!r} after epoch {len(history)} from {checkpoint}")
        echo(
            f"Searching {config.space.name} with {config.strategy.name} on {config.data.name} "
            f"in {worker.describe_location()}; MLflow run {run_id}"
        )

        def save(finished: bool) -> None:
            save_checkpoint(
                {
                    "config": config.to_dict(),
                    "run_id": run_id,
                    "worker": worker.state_dict(),
                    "history": history,
                    "finished": finished,
                },
                checkpoint,
            )

        epochs = config.train.epochs
        first = len(history)
        loop_start = time.perf_counter()
        stopped_early = bool(history) and (
            _collapsed(config, history[-1]) or _strategy_stop(config, history) is not None
        )
        for epoch in range(first, epochs):
            if stopped_early:
                break
            report = worker.run_epoch()
            history.append(_report_state(report))
            save(finished=False)
            recorder.epoch(report)
            done = epoch + 1 - first
            elapsed = time.perf_counter() - loop_start
            eta = elapsed / done * (epochs - epoch - 1)
            m = report.metrics
            extra = "".join(  # skip connections (DARTS cells), table latency (FBNet), mIoU, perplexity
                f"{k.replace('_connects', 's').replace('valid_', '')} {m[k]:.4g}  "
                for k in m if k in ("skip_connects", "valid_miou", "valid_ppl") or k.startswith("latency_")
            )
            echo(
                f"epoch {epoch + 1:>3}/{epochs}  train loss {m['train_loss']:.3f} "
                f"acc {m['train_acc']:6.1%}  valid loss {m['valid_loss']:.3f} "
                f"acc {m['valid_acc']:6.1%}  alpha entropy {m['alpha_entropy']:.3f}  {extra}"
                f"{format_duration(report.seconds)}/epoch  eta {format_duration(eta)}"
            )
            stopped_early = _collapsed(config, history[-1])
            if stopped_early:
                echo(
                    f"Stopping early: the normal cell has {m['skip_connects']:.0f} skip connections "
                    f"(train.stop_at_skip_connects = {config.train.stop_at_skip_connects})"
                )
            reason = None if stopped_early else _strategy_stop(config, history)
            if reason is not None:
                stopped_early = True
                echo(f"Stopping early: {reason}")
        chosen = _final_epoch(config, history)
        if chosen != len(history) - 1:
            echo(f"Returning the architecture of epoch {chosen + 1} (chosen by {config.strategy.name})")
        final = _report_from_state(history[chosen])
        params, params_cifar = _network_sizes(config, final.architecture)
        summary = {
            "params": params, "params_cifar10": params_cifar, "epochs_run": len(history),
            "stopped_early": stopped_early, **final.metrics,
        }
        recorder.finish(
            final, summary, weights_history=[h["arch_weights"] for h in history],
            network=_searched_network(config, final.architecture),
        )
        save(finished=True)
    except BaseException as error:
        tracker.fail(error)
        raise
    finally:
        worker.close()
    return SearchResult(
        architecture=final.architecture,
        metrics=final.metrics,
        params=params,
        params_cifar10=params_cifar,
        run_id=run_id,
        run_link=tracker.run_link(),
        checkpoint=checkpoint,
        seconds=time.perf_counter() - started,
    )


def _strategy_stop(config: SearchConfig, history: list[dict[str, Any]]) -> str | None:
    """The strategy's own reason to end the search early, if it has one (MiLeNAS: the derived
    architecture outgrew its size band); it is shown every epoch's metrics."""
    hook = getattr(STRATEGIES.get(config.strategy.name), "stop_reason", None)
    return hook(config.strategy.config, [h["metrics"] for h in history]) if hook else None


def _final_epoch(config: SearchConfig, history: list[dict[str, Any]]) -> int:
    """The epoch whose architecture the search returns: the last, unless the strategy picks one
    from every epoch's metrics (MiLeNAS: the best within a model-size band)."""
    hook = getattr(STRATEGIES.get(config.strategy.name), "final_epoch", None)
    return hook(config.strategy.config, [h["metrics"] for h in history]) if hook else len(history) - 1


def run_seeds(
    config: SearchConfig, *, fresh: bool = False, echo: Callable[[str], None] = print
) -> tuple[list[SearchResult], dict[str, tuple[float, float]]]:
    """Run the search once per seed of ``config.seeds`` (as ``<name>-seed<N>``, each resumable on
    its own) and summarise them, as the DARTS authors urge for reporting.

    Returns:
        The per-seed results, and for every metric they all report its mean and sample standard
        deviation (0 for a single seed).
    """
    if not config.seeds:
        raise ConfigError("run_seeds needs config.seeds, e.g. seeds: [0, 1, 2]")
    results = []
    for seed in config.seeds:
        echo(f"--- seed {seed} ---")
        one = dataclasses.replace(config, seed=seed, seeds=(), name=f"{config.name}-seed{seed}")
        results.append(run_search(one, fresh=fresh, echo=echo))
    shared = set.intersection(*(set(r.metrics) for r in results))
    summary = {}
    for key in sorted(shared):
        values = [float(r.metrics[key]) for r in results]
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
        summary[key] = (mean, var**0.5)
    return results, summary


def _collapsed(config: SearchConfig, report: dict[str, Any]) -> bool:
    limit = config.train.stop_at_skip_connects
    return bool(limit) and report["metrics"].get("skip_connects", 0) >= limit


def _searched_network(config: SearchConfig, arch: Architecture) -> Any:
    """The stand-alone network of ``arch`` at the search's size on its data (untrained)."""
    space = SPACES.create(config.space.name, config.space.config)
    cfg = config.space.config
    return space.build(
        arch, dataset_info(config.data.name), channels=getattr(cfg, "channels", None),
        layers=getattr(cfg, "layers", None),
    )


def _network_sizes(config: SearchConfig, arch: Architecture) -> tuple[int, int]:
    """Parameters of the found architecture at the search's size on its data, and at the
    papers' CIFAR-10 evaluation size (as published results are compared)."""
    space = SPACES.create(config.space.name, config.space.config)
    info = dataset_info(config.data.name)
    cfg = config.space.config
    searched = space.build(
        arch, info, channels=getattr(cfg, "channels", None), layers=getattr(cfg, "layers", None)
    )
    # The papers' network: CIFAR-10, or the dataset a space names (darts_rnn: PTB).
    cifar = space.build(arch, dataset_info(getattr(space, "reference_dataset", "cifar10")))
    return count_params(searched), count_params(cifar)
