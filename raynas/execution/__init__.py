"""Where work runs: in this process (``backend: local``, for tests and debugging), in Ray actors
placed by their resources, or as Ray Tune trials. Nothing here knows what the work is: a driver in
``raynas.runs`` hands over a factory of the work (a supernet worker, an evaluator, a controller)
and calls it through the interface below, wherever it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from raynas.config import ExecutionConfig


class Worker(Protocol):
    """A running search hosted by the execution layer, driven an epoch at a time."""

    restarts: int  # how many times :meth:`restart` rebuilt it

    def run_epoch(self) -> Any:
        """Train and evaluate one epoch (a search's :class:`raynas.types.EpochReport`, a
        retraining's metrics and state)."""
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

    def call(self, method: str, *args: Any) -> Any:
        """Any other method of the work (of rank 0 when there are several)."""
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


__all__ = ["Worker", "WorkerFactory", "start_worker"]
