"""Where work runs: in this process (``backend: local``, for tests and debugging), in Ray actors
placed by their resources, or as Ray Tune trials. Nothing here knows what the work is: a driver in
``raynas.runs`` hands over a factory of the work (a supernet worker, an evaluator, a controller)
and calls it through the interface below, wherever it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from raynas.config import ExecutionConfig
from raynas.types import EpochReport

T = TypeVar("T")


class Worker(Protocol):
    """A running search hosted by the execution layer, driven an epoch at a time."""

    restarts: int  # how many times :meth:`restart` rebuilt it

    def run_epoch(self) -> EpochReport:
        """Train and evaluate one epoch."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`."""
        ...

    def describe_location(self) -> str:
        """Where the worker runs, for the user ("this process", a Ray node and device)."""
        ...

    def restart(self) -> None:
        """Rebuild the work from its factory (after a lost actor); load a state into it next."""
        ...

    def close(self) -> None:
        """Release the worker's resources."""
        ...


# Builds the work in the process that hosts it: ``factory(threads=, rank=, world_size=)`` returns
# an object with ``run_epoch``, ``state_dict``, ``load_state_dict`` and a ``device`` attribute.
WorkerFactory = Callable[..., Any]


def start_worker(factory: WorkerFactory, execution: ExecutionConfig) -> Worker:
    """Host the work ``factory`` builds where ``execution`` says: in this process, or in
    ``execution.workers`` data-parallel Ray actors (each builds its own copy, as one rank)."""
    if execution.backend == "local":
        from raynas.execution.local import LocalWorker

        return LocalWorker(factory, threads=max(1, int(execution.cpus_per_worker)))
    from raynas.execution.ray_actors import RayWorker

    return RayWorker(factory, execution)


def run_task(fn: Callable[..., T], execution: ExecutionConfig, /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in this process (``backend: local``) or as one Ray task placed by
    ``execution``'s CPUs, GPUs and accelerator type (``ray``); its errors reach the caller as if
    it ran here, a lost node as :class:`raynas.errors.WorkerLostError`."""
    if execution.backend == "local":
        return fn(*args, **kwargs)
    import ray

    from raynas.execution.ray_actors import init_ray, remote_call

    init_ray(execution)
    task = ray.remote(fn).options(
        num_cpus=execution.cpus_per_worker, num_gpus=execution.gpus_per_worker,
        resources={execution.accelerator: execution.gpus_per_worker} if execution.accelerator else {},
        max_retries=0,
    )
    return remote_call(task.remote(*args, **kwargs))


__all__ = ["Worker", "WorkerFactory", "run_task", "start_worker"]
