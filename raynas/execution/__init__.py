"""Where a search runs: in this process (``local``, for tests and debugging) or in a Ray actor.

Both give a :class:`SearchWorker`: the search driver calls it an epoch at a time and
checkpoints its state, without knowing where it runs.
"""

from __future__ import annotations

from typing import Any, Protocol

from raynas.config import SearchConfig
from raynas.types import EpochReport


class SearchWorker(Protocol):
    """A running supernet search, driven an epoch at a time."""

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

    def close(self) -> None:
        """Release the worker's resources."""
        ...


def start_worker(config: SearchConfig) -> SearchWorker:
    """Start the supernet search of ``config`` on the configured backend."""
    if config.execution.backend == "local":
        from raynas.execution.local import LocalWorker

        return LocalWorker(config)
    from raynas.execution.ray_actors import RayWorker

    return RayWorker(config)


__all__ = ["SearchWorker", "start_worker"]
