"""The in-process backend: the work runs in the calling process."""

from __future__ import annotations

from typing import Any


class LocalWorker:
    """Work built by a factory and run in this process.

    Args:
        factory: Builds the work (see :data:`raynas.execution.WorkerFactory`).
        threads: torch intra-op threads.
    """

    def __init__(self, factory: Any, *, threads: int) -> None:
        self.factory = factory
        self.threads = threads
        self.restarts = 0
        self.max_restarts = 0  # nothing here is lost: an error is the work's own
        self.work = factory(threads=threads, rank=0, world_size=1)

    def restart(self, state: dict[str, Any] | None = None) -> None:
        self.restarts += 1
        self.work = self.factory(threads=self.threads, rank=0, world_size=1)
        if state is not None:
            self.work.load_state_dict(state)

    def run_epoch(self) -> Any:
        return self.work.run_epoch()

    def state_dict(self) -> dict[str, Any]:
        return self.work.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.work.load_state_dict(state)

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.work, method)(*args)

    def describe_location(self) -> str:
        return f"this process ({self.work.device})"

    def close(self) -> None:
        pass
