"""The Ray backend: the supernet lives in a Ray actor placed by its CPU/GPU resources.

``ray.init`` joins the cluster at ``execution.address`` or ``RAY_ADDRESS`` when given, and
otherwise starts a small local Ray (small object store, no dashboard, no usage statistics).
"""

from __future__ import annotations

import os
import socket
from typing import Any

import ray

from raynas.config import ExecutionConfig, SearchConfig
from raynas.errors import ConfigError, RaynasError
from raynas.train.search import SupernetSearch
from raynas.types import EpochReport


def init_ray(execution: ExecutionConfig) -> None:
    """Connect to the configured Ray cluster, or start a local one, once per process."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = execution.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True, logging_level="WARNING")
        return
    ray.init(
        object_store_memory=execution.object_store_mb * 1024 * 1024,
        include_dashboard=False,
        log_to_driver=True,
        logging_level="WARNING",
        configure_logging=True,
    )
    available = ray.cluster_resources()
    for key, need in (("CPU", execution.cpus_per_worker), ("GPU", execution.gpus_per_worker)):
        if need > available.get(key, 0):
            ray.shutdown()
            raise ConfigError(
                f"execution.{key.lower()}s_per_worker is {need:g} but this machine offers "
                f"{available.get(key, 0):g} {key}s; lower it or pass --address of a larger cluster"
            )


class _SupernetActor(SupernetSearch):
    """The search inside an actor; built by :meth:`setup` so that errors reach the driver."""

    def __init__(self) -> None:  # the real work happens in setup()
        pass

    def setup(self, config: SearchConfig, threads: int) -> str:
        SupernetSearch.__init__(self, config, threads=threads)
        return f"Ray actor on {socket.gethostname()} ({self.device})"


class RayWorker:
    """Drives a :class:`SupernetSearch` that lives in a Ray actor.

    Args:
        config: The search job; ``execution`` gives the actor's CPUs and GPUs.
    """

    def __init__(self, config: SearchConfig) -> None:
        execution = config.execution
        init_ray(execution)
        actor_cls = ray.remote(_SupernetActor)
        self.actor = actor_cls.options(  # type: ignore[attr-defined]
            num_cpus=execution.cpus_per_worker,
            num_gpus=execution.gpus_per_worker,
            max_restarts=0,
        ).remote()
        self.location = self._get(
            self.actor.setup.remote(config, max(1, int(execution.cpus_per_worker)))
        )

    @staticmethod
    def _get(ref: Any) -> Any:
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            # Our own errors (a missing dataset on the worker node, ...) reach the user as such.
            if isinstance(exc.cause, RaynasError):
                raise exc.cause from None
            raise

    def run_epoch(self) -> EpochReport:
        return self._get(self.actor.run_epoch.remote())

    def state_dict(self) -> dict[str, Any]:
        return self._get(self.actor.state_dict.remote())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._get(self.actor.load_state_dict.remote(state))

    def describe_location(self) -> str:
        return self.location

    def close(self) -> None:
        ray.kill(self.actor)
