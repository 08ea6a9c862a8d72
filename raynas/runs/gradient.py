"""The driver of gradient searches: runs the supernet worker epoch by epoch (in-process or in Ray
actors), records every epoch in MLflow, checkpoints after every epoch, and resumes where it stopped.

The checkpoint (``<output_dir>/<name>/checkpoint.pt``, on local disk or ``s3://``) holds the
worker's full state, the MLflow run id and every epoch's report, so a search that crashes loses at
most the epoch in flight, and running the same job again continues it in the same MLflow run.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from raynas.config import SearchConfig
from raynas.execution import outliving_losses, start_worker
from raynas.runs.common import (
    CandidateCosts,
    SearchResult,
    example_input,
    final_evaluator,
    format_duration,
    job_space,
    log_cell_shapes,
    open_tracker_while,
    read_prior,
    result_costs,
    retrain_size,
    run_path,
    score_text,
    searched_network,
    start_run,
    timed,
)
from raynas.runs.supernet_worker import SupernetWorker
from raynas.spaces.drawing import picture
from raynas.strategies import STRATEGIES
from raynas.tracking.recorder import SearchRecorder
from raynas.tracking.retry import is_transient, with_retries
from raynas.train.checkpoint import save_checkpoint
from raynas.types import Architecture, EpochReport, EvalResult

log = logging.getLogger(__name__)


def _report_state(report: EpochReport) -> dict[str, Any]:
    return {
        "epoch": report.epoch,
        "metrics": report.metrics,
        "architecture": report.architecture.to_json(),
        "arch_weights": report.arch_weights,
        "seconds": report.seconds,
        "timings": report.timings,
    }


def _report_from_state(state: dict[str, Any]) -> EpochReport:
    return EpochReport(
        epoch=state["epoch"],
        metrics=state["metrics"],
        architecture=Architecture.from_json(state["architecture"]),
        arch_weights=state["arch_weights"],
        seconds=state["seconds"],
        timings=state.get("timings", {}),  # checkpoints of older raynas have none
    )


def run_gradient_search(
    config: SearchConfig, *, fresh: bool = False, echo: Callable[[str], None] = print
) -> SearchResult:
    """Run (or resume) the gradient search described by ``config``.

    Args:
        config: The validated job.
        fresh: Ignore an unfinished checkpoint of the same job and start over.
        echo: Where progress lines go.

    Returns:
        The final architecture, its metrics, its size and where the MLflow run is.
    """
    started = time.perf_counter()
    checkpoint = run_path(config, "checkpoint.pt")
    prior = read_prior(checkpoint, config, fresh=fresh)
    node = "local" if config.execution.backend == "local" else (
        "ray-gpu" if config.execution.gpus_per_worker else "ray-cpu"
    )
    space = job_space(config)
    history: list[dict[str, Any]] = prior["history"] if prior else []
    # final: architectures drawn from the learnt distribution, retrained (checkpointed one by one)
    retrained = [EvalResult.from_dict(r) for r in (prior or {}).get("retrained", [])]
    # Started before the run exists: bad data fails without an empty run.
    # Every epoch's derived architecture is recorded with its network's size (params, macs); the
    # recorder checks the results store.
    tracker, worker, recorder = open_tracker_while(
        config, lambda: start_worker(functools.partial(SupernetWorker, config), config.execution, echo),
        then=lambda tracker: SearchRecorder(config=config, tracker=tracker, node=node,
                                            costs=CandidateCosts(config).complete,
                                            draw=functools.partial(picture, space)),
    )
    try:
        run_id = start_run(tracker, config, checkpoint, prior, fresh=fresh)
        recorder.opened(run_id)
        last_state = prior["worker"] if prior is not None else None  # what a new worker resumes
        # Calls to the worker, made again on a new one resumed from `last_state` while one is lost.
        outliving = functools.partial(outliving_losses, worker, state=lambda: last_state,
                                      done=lambda: len(history), echo=echo)

        if prior is not None:
            outliving(lambda: worker.load_state_dict(prior["worker"]))
            if history:  # it may have been checkpointed but not logged before the crash
                recorder.epoch(_report_from_state(history[-1]), resumed=True)
            echo(f"Resuming {config.name!r} after epoch {len(history)} from {checkpoint}")
        echo(
            f"Searching {config.space.name} with {config.strategy.name} on {config.data.name} "
            f"in {worker.describe_location()}; MLflow run {run_id}"
        )

        def save(finished: bool) -> None:
            _save(
                {
                    "config": config.to_dict(),
                    "run_id": run_id,
                    "worker": last_state,
                    "history": history,
                    "retrained": [r.to_dict() for r in retrained],
                    "finished": finished,
                },
                checkpoint, finished=finished,
            )

        if prior is None:  # a driver killed before its first epoch resumes this run, not a new one
            last_state = outliving(worker.state_dict)
            save(finished=False)

        epochs = config.train.epochs
        first = len(history)
        loop_start = time.perf_counter()
        stopped_early = bool(history) and (
            _collapsed(config, history[-1]) or _strategy_stop(config, history) is not None
        )
        for epoch in range(first, epochs):
            if stopped_early:
                break
            # The epoch and the state it ends with, together: a worker lost before its state is
            # taken trains the epoch again.
            report, last_state = outliving(lambda: (worker.run_epoch(), worker.state_dict()))
            history.append(_report_state(report))
            save(finished=False)
            # Resumed from the checkpoint before the latest (unreadable), this epoch may be recorded.
            recorder.epoch(report, resumed=prior is not None and epoch == first)
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
        size, network = None, None
        if config.final.top:
            network = _retrain_drawn(config, history, retrained, recorder, save, echo)
            best = max(retrained, key=lambda r: r.score)
            final = EpochReport(epoch=final.epoch, metrics=best.metrics, architecture=best.architecture)
            size = retrain_size(config)  # the answer's size is that of the network that scored it
            if network is not None and network[0] != best.architecture.key():
                network = None
        costs = result_costs(config, final.architecture, size=size)
        params, params_cifar = int(costs["params"]), int(costs["paper_params"])
        summary = {
            **final.metrics, **costs, "epochs_run": len(history), "stopped_early": stopped_early,
        }
        # The shapes of the cells the epochs derived, against random cells of the space.
        log_cell_shapes(tracker, space, [Architecture.from_json(h["architecture"]) for h in history],
                        final.architecture)
        recorder.finish(
            final, summary, weights_history=[h["arch_weights"] for h in history],
            network=network[1] if network else searched_network(config, final.architecture, size=size),
            trained=network is not None, example=example_input(config),
            picture=picture(space, final.architecture) if tracker.pictures else None,
            op_names=getattr(space, "op_names", None), edge_names=getattr(space, "edge_names", None),
        )
        save(finished=True)
    except BaseException as error:
        recorder.abort()
        tracker.fail(error)
        raise
    finally:
        worker.close()
    return SearchResult(
        architecture=final.architecture,
        metrics=final.metrics,
        params=params,
        params_cifar10=params_cifar,
        macs=int(costs.get("macs", 0)),
        paper_macs=int(costs.get("paper_macs", 0)),
        run_id=run_id,
        run_link=tracker.run_link(),
        checkpoint=checkpoint,
        seconds=time.perf_counter() - started,
    )


def _retrain_drawn(
    config: SearchConfig, history: list[dict[str, Any]], retrained: list[EvalResult],
    recorder: SearchRecorder, save: Callable[[bool], None], echo: Callable[[str], None],
) -> tuple[str, Any] | None:
    """``final``: ``final.top`` architectures drawn (seeded by the job's seed) from the distribution
    of the last epoch's architecture state (``history``: every epoch's report), each retrained from
    scratch with ``final``'s budget, recorded as a candidate (trial ``retrain-draw-<n>``) and
    appended to ``retrained``, checkpointed one by one: a resumed search draws the same ones and
    retrains the rest. Returns the best network retrained in this run with its architecture's key
    (None when every one was retrained before a crash)."""
    draw = STRATEGIES.get(config.strategy.name).draw_answers  # type: ignore[attr-defined]
    drawn = draw(history[-1]["arch_weights"], config.final.top, config.seed)
    recorder.backfill(retrained)  # what a crash may have kept from being recorded
    echo(f"Retraining {len(drawn)} architectures drawn from {config.strategy.name}'s distribution "
         f"({config.final.epochs} epochs each)")
    evaluator = final_evaluator(config)
    sizes = CandidateCosts(config, size=retrain_size(config))
    done = {r.trial_id for r in retrained}
    best: tuple[float, str, Any] | None = None
    for n, arch in enumerate(drawn, start=1):
        trial = f"retrain-draw-{n}"
        if trial in done:
            continue
        started = time.time()
        result = evaluator.evaluate(arch, trial_id=trial)
        result = sizes.complete(timed(result, started))
        retrained.append(result)
        save(False)
        recorder.candidate(result, step=len(history) + n - 1)
        recorder.flush()
        if evaluator.network is not None and (best is None or result.score > best[0]):
            best = (result.score, arch.key(), evaluator.network.cpu().eval())
        echo(f"retrained {arch.key()}: {result.objective} {score_text(result)}")
    return None if best is None else (best[1], best[2])


def _save(state: dict[str, Any], checkpoint: str, *, finished: bool) -> None:
    """Write the checkpoint. While its storage is unreachable (an S3 outage) an epoch's checkpoint
    is skipped with a warning and the search goes on (the next epoch writes one); the last one,
    which marks the search finished, is retried with backoff and must be written. No room for it
    (a full disk) stops the search at once: waiting makes none."""
    try:
        with_retries(lambda: save_checkpoint(state, checkpoint), attempts=4 if finished else 1)
    except Exception as exc:
        if finished or not is_transient(exc):
            raise
        log.warning("checkpoint %s not written, its storage is unreachable (%s); the search goes on "
                    "and writes the next epoch's", checkpoint, type(exc).__name__)


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


def _collapsed(config: SearchConfig, report: dict[str, Any]) -> bool:
    limit = config.train.stop_at_skip_connects
    return bool(limit) and report["metrics"].get("skip_connects", 0) >= limit


__all__ = ["run_gradient_search"]
