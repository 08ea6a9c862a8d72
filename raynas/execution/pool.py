"""Where candidates are evaluated: in-process, or in Ray actors that hold an evaluator each.

A pool takes candidates (:meth:`submit`) and hands back their results as they finish
(:meth:`next_result`), ``capacity`` at a time. With the one-shot ``supernet`` evaluator the first
actor also trains the supernet; the others are replicas that take its weights and serve
evaluations concurrently. Actors ask for the configured CPUs, GPUs and accelerator resource, so
on a mixed cluster they land on the GPU nodes of that type.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

from raynas.config import SearchConfig
from raynas.evaluators import EVALUATORS
from raynas.types import Architecture, EvalResult


def build_evaluator(config: SearchConfig) -> Any:
    """The evaluator the job configures (``config.evaluator``)."""
    assert config.evaluator is not None
    return EVALUATORS.create(config.evaluator.name, config.evaluator.config, search=config)


class CandidatePool(Protocol):
    """Evaluates candidates, ``capacity`` at a time."""

    capacity: int

    def submit(self, arch: Architecture, trial_id: str) -> None:
        """Start evaluating ``arch`` (only while :attr:`in_flight` < :attr:`capacity`)."""
        ...

    def next_result(self) -> EvalResult:
        """Wait for the next finished evaluation."""
        ...

    @property
    def in_flight(self) -> int:
        """Candidates submitted and not yet returned."""
        ...

    def train_epoch(self, paths: Sequence[Architecture]) -> dict[str, float]:
        """One epoch of one-shot supernet training (``supernet`` evaluator only)."""
        ...

    def sync_replicas(self) -> None:
        """Give every replica the trained supernet's weights."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The training evaluator's state (supernet weights and optimiser)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output into every evaluator."""
        ...

    def describe_location(self) -> str:
        """Where evaluations run, in words."""
        ...

    def close(self) -> None:
        """Release the actors."""
        ...


class LocalPool:
    """One evaluator in this process; candidates are evaluated one at a time, in order."""

    capacity = 1

    def __init__(self, config: SearchConfig) -> None:
        self.evaluator = build_evaluator(config)
        self.queue: deque[tuple[Architecture, str]] = deque()

    def submit(self, arch: Architecture, trial_id: str) -> None:
        self.queue.append((arch, trial_id))

    def next_result(self) -> EvalResult:
        arch, trial_id = self.queue.popleft()
        return self.evaluator.evaluate(arch, trial_id=trial_id)

    @property
    def in_flight(self) -> int:
        return len(self.queue)

    def train_epoch(self, paths: Sequence[Architecture]) -> dict[str, float]:
        return self.evaluator.train_epoch(paths)

    @property
    def steps_per_epoch(self) -> int:
        return self.evaluator.steps_per_epoch

    def sync_replicas(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return self.evaluator.state_dict() if hasattr(self.evaluator, "state_dict") else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.evaluator.load_state_dict(state)

    def describe_location(self) -> str:
        return "this process"

    def close(self) -> None:
        pass


class _EvaluatorActor:
    """An evaluator inside a Ray actor (built by :meth:`setup` so errors reach the driver)."""

    def setup(self, config: SearchConfig, threads: int) -> tuple[str, str]:
        import ray
        import torch

        from raynas.execution.ray_actors import node_type

        torch.set_num_threads(threads)
        self.evaluator = build_evaluator(config)
        self.node = node_type(config.execution.accelerator)  # the node's accelerator type, or cpu
        return ray.get_runtime_context().get_node_id(), self.node

    def evaluate(self, arch: Architecture, trial_id: str) -> EvalResult:
        result = self.evaluator.evaluate(arch, trial_id=trial_id)
        return dataclasses.replace(result, node=self.node)

    def train_epoch(self, paths: Sequence[Architecture]) -> dict[str, float]:
        return self.evaluator.train_epoch(paths)

    def steps_per_epoch(self) -> int:
        return self.evaluator.steps_per_epoch

    def weights(self) -> Any:  # None: an evaluator without shared weights (scratch, training_free)
        return self.evaluator.weights() if hasattr(self.evaluator, "weights") else None

    def load_weights(self, weights: Any) -> None:
        if weights is not None:
            self.evaluator.load_weights(weights)

    def state_dict(self) -> dict[str, Any]:
        return self.evaluator.state_dict() if hasattr(self.evaluator, "state_dict") else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.evaluator.load_state_dict(state)


class RayPool:
    """``execution.concurrency`` evaluator actors placed by the configured resources.

    Args:
        config: The search job (its ``execution`` section says where and how many).
    """

    def __init__(self, config: SearchConfig) -> None:
        import ray

        from raynas.execution.ray_actors import init_ray, remote_call

        self._get = remote_call
        execution = config.execution
        init_ray(execution)
        resources = {execution.accelerator: execution.gpus_per_worker} if execution.accelerator else {}
        actor_cls = ray.remote(_EvaluatorActor)
        self.actors = [
            actor_cls.options(
                num_cpus=execution.cpus_per_worker, num_gpus=execution.gpus_per_worker,
                resources=resources, max_restarts=0,
            ).remote()
            for _ in range(execution.concurrency)
        ]
        self.capacity = len(self.actors)
        threads = max(1, int(execution.cpus_per_worker))
        placed = self._get([a.setup.remote(config, threads) for a in self.actors])
        self.node_ids = [node_id for node_id, _ in placed]
        kinds = ", ".join(sorted({kind for _, kind in placed}))
        self.location = f"{len(self.actors)} Ray actor(s) on {len(set(self.node_ids))} node(s) ({kinds})"
        self.idle = list(self.actors)
        self.running: dict[Any, Any] = {}  # result ref -> actor

    def submit(self, arch: Architecture, trial_id: str) -> None:
        actor = self.idle.pop()
        self.running[actor.evaluate.remote(arch, trial_id)] = actor

    def next_result(self) -> EvalResult:
        import ray

        (ref,), _ = ray.wait(list(self.running), num_returns=1)
        self.idle.append(self.running.pop(ref))
        return self._get(ref)

    @property
    def in_flight(self) -> int:
        return len(self.running)

    def train_epoch(self, paths: Sequence[Architecture]) -> dict[str, float]:
        return self._get(self.actors[0].train_epoch.remote(list(paths)))

    @property
    def steps_per_epoch(self) -> int:
        return self._get(self.actors[0].steps_per_epoch.remote())

    def sync_replicas(self) -> None:
        if len(self.actors) > 1:
            weights = self.actors[0].weights.remote()
            self._get([a.load_weights.remote(weights) for a in self.actors[1:]])

    def state_dict(self) -> dict[str, Any]:
        return self._get(self.actors[0].state_dict.remote())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._get([a.load_state_dict.remote(state) for a in self.actors])

    def describe_location(self) -> str:
        return self.location

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)


def start_pool(config: SearchConfig) -> LocalPool | RayPool:
    """The pool the job's ``execution.backend`` asks for."""
    return LocalPool(config) if config.execution.backend == "local" else RayPool(config)
