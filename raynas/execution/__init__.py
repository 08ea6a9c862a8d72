"""Where work runs: in this process (``backend: local``, for tests and debugging), in Ray actors
placed by their resources, or as Ray Tune trials. Nothing here knows what the work is: a driver in
``raynas.runs`` hands over a factory of the work (a supernet worker, an evaluator, a controller)
and calls it through the interface below, wherever it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from raynas.config import ExecutionConfig
from raynas.errors import WorkerLostError

T = TypeVar("T")


class Worker(Protocol):
    """A running search hosted by the execution layer, driven an epoch at a time."""

    restarts: int  # how many times it was rebuilt (:meth:`restart`, or a start lost)
    max_restarts: int  # how many times it may be (execution.max_restarts)

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

    def restart(self, state: dict[str, Any] | None = None) -> None:
        """Rebuild the work from its factory (after a lost actor) and load ``state`` into it
        (None: the factory's own). A loss while this is done counts as another restart, and it
        is done again; past ``max_restarts`` it raises :class:`WorkerLostError`."""
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


def start_worker(
    factory: WorkerFactory, execution: ExecutionConfig, echo: Callable[[str], None] | None = None
) -> Worker:
    """Host the work ``factory`` builds where ``execution`` says: in this process, or in
    ``execution.workers`` data-parallel Ray actors (each builds its own copy, as one rank; a start
    lost is one line to ``echo``, and the actors are started again)."""
    if execution.backend == "local":
        from raynas.execution.local import LocalWorker

        return LocalWorker(factory, threads=max(1, int(execution.cpus_per_worker)))
    from raynas.execution.ray_actors import RayWorker

    return RayWorker(factory, execution, echo)


def outliving_losses(
    worker: Worker, unit: Callable[[], T], *, state: Callable[[], dict[str, Any] | None],
    done: Callable[[], int], echo: Callable[[str], None],
) -> T:
    """``unit()``, a piece of work done through ``worker`` (an epoch, a call), done again on a
    new worker while a worker is lost in it: each loss is one line to ``echo`` saying where the
    work resumes (after ``done()`` epochs), and the worker is restarted from ``state()``, what
    the last checkpoint holds (None: the factory's own). Past ``execution.max_restarts`` losses
    the :class:`WorkerLostError` that stops the command is raised."""
    while True:
        try:
            return unit()
        except WorkerLostError as exc:
            from raynas.execution.ray_actors import ray_logs  # only Ray loses a worker

            if worker.restarts < worker.max_restarts:
                epochs = done()
                echo(f"{exc.reason}: restarting the worker from "
                     f"{f'epoch {epochs}' if epochs else 'its start'} ({worker.restarts + 1} of at "
                     f"most {worker.max_restarts} restarts); Ray's logs are in {ray_logs()}")
            worker.restart(state())


__all__ = ["Worker", "WorkerFactory", "outliving_losses", "start_worker"]
