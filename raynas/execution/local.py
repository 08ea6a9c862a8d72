"""The in-process backend: the search runs in the calling process."""

from __future__ import annotations

from raynas.config import SearchConfig
from raynas.train.search import SupernetSearch


class LocalWorker(SupernetSearch):
    """A :class:`SupernetSearch` in this process."""

    def __init__(self, config: SearchConfig) -> None:
        super().__init__(config, threads=max(1, int(config.execution.cpus_per_worker)))

    def describe_location(self) -> str:
        return f"this process ({self.device})"

    def close(self) -> None:
        pass
