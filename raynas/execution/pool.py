"""Where candidates are evaluated: in-process, or in Ray actors that hold an evaluator each.

A pool takes candidates (:meth:`submit`) and hands back their results as they finish
(:meth:`next_result`), ``capacity`` at a time. With the one-shot ``supernet`` evaluator the first
actor also trains the supernet; the others are replicas that take its weights and serve
evaluations concurrently. Actors ask for the configured CPUs, GPUs and accelerator resource, so
on a mixed cluster they land on the GPU nodes of that type. Every result records when and where
it ran (``started``, ``ended``, ``node``, ``node_id``); a lost actor is replaced (:class:`RayPool`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from raynas.config import SearchConfig
from raynas.errors import WorkerLostError
from raynas.evaluators import EVALUATORS
from raynas.execution.group import GroupMember
from raynas.types import Architecture, EvalResult

log = logging.getLogger(__name__)


def build_evaluator(config: SearchConfig, **group: int) -> Any:
    """The evaluator the job configures (``config.evaluator``); ``group`` (``rank``,
    ``world_size``) makes it one replica of a data-parallel group."""
    assert config.evaluator is not None
    return EVALUATORS.create(config.evaluator.name, config.evaluator.config, search=config, **group)


def trains_together(config: SearchConfig) -> bool:
    """Whether the job's evaluator replicas train a shared supernet data-parallel: a one-shot
    evaluator that can (``data_parallel``) with more than one replica on Ray."""
    assert config.evaluator is not None
    return (
        config.execution.backend == "ray" and config.execution.concurrency > 1
        and getattr(EVALUATORS.get(config.evaluator.name), "data_parallel", False)
    )


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


def stack_size(config: SearchConfig) -> int:
    """How many candidates one evaluator call scores together: the evaluator's ``stack`` setting
    where it scores several at once (``evaluate_many``), else 1."""
    assert config.evaluator is not None
    if not hasattr(EVALUATORS.get(config.evaluator.name), "evaluate_many"):
        return 1
    return max(1, int(getattr(config.evaluator.config, "stack", 1)))


def timed(evaluator: Any, arch: Architecture, trial_id: str, *, node: str, node_id: str = "") -> EvalResult:
    """``evaluator.evaluate(arch)`` with when and where it ran recorded on the result."""
    started = time.time()
    result = evaluator.evaluate(arch, trial_id=trial_id)
    return dataclasses.replace(result, started=started, ended=time.time(), node=node, node_id=node_id)


def timed_many(
    evaluator: Any, batch: Sequence[tuple[Architecture, str]], *, node: str, node_id: str = "",
    given: dict[str, Any] | None = None,
) -> list[EvalResult]:
    """The results of ``batch`` (candidates and trial ids), scored together where there are
    several (``evaluator.evaluate_many``), each with when and where it ran; ``given``: what the
    batch starts from, for an evaluator that is handed earlier results' state (:class:`Handovers`)."""
    if given is not None:
        evaluator.receive(given)
    if len(batch) == 1:
        return [timed(evaluator, *batch[0], node=node, node_id=node_id)]
    started = time.time()
    results = evaluator.evaluate_many([a for a, _ in batch], trial_ids=[t for _, t in batch])
    ended = time.time()
    return [dataclasses.replace(r, started=started, ended=ended, node=node, node_id=node_id) for r in results]


class Handovers:
    """What earlier results hand over to later candidates, for an evaluator with a ``handovers``
    keeper (the ``morphism`` evaluator: trained parents for their children): the keeper, in the
    driver, saves what each result carries and gives each submitted candidate what it starts from,
    which travels with the candidate to whichever node evaluates it. Nothing for other evaluators.

    Args:
        config: The search job.
    """

    def __init__(self, config: SearchConfig) -> None:
        assert config.evaluator is not None
        keeper = getattr(EVALUATORS.get(config.evaluator.name), "handovers", None)
        self.keeper = keeper(config) if keeper is not None else None
        self.given: dict[str, dict[str, Any]] = {}  # by trial id, while in flight

    def submitted(self, arch: Architecture, trial_id: str) -> None:
        """Note what ``arch`` (evaluated as ``trial_id``) starts from."""
        if self.keeper is not None:
            self.given[trial_id] = self.keeper.given(arch)

    def for_batch(self, batch: Sequence[tuple[Architecture, str]]) -> dict[str, Any] | None:
        """What ``batch`` starts from (None: the evaluator is handed nothing)."""
        if self.keeper is None:
            return None
        return {key: value for _, trial in batch for key, value in self.given.get(trial, {}).items()}

    def returned(self, results: Sequence[EvalResult]) -> list[EvalResult]:
        """``results`` with what they hand over kept (and taken off them)."""
        if self.keeper is None:
            return list(results)
        for result in results:
            self.given.pop(result.trial_id, None)
        return [self.keeper.keep(result) for result in results]


class LocalPool:
    """One evaluator in this process; candidates are evaluated in order, one at a time or
    ``evaluator.stack`` together."""

    def __init__(self, config: SearchConfig) -> None:
        self.evaluator = build_evaluator(config)
        self.capacity = stack_size(config)
        self.handovers = Handovers(config)
        self.queue: deque[tuple[Architecture, str]] = deque()
        self.done: deque[EvalResult] = deque()

    def submit(self, arch: Architecture, trial_id: str) -> None:
        self.handovers.submitted(arch, trial_id)
        self.queue.append((arch, trial_id))

    def next_result(self) -> EvalResult:
        if not self.done:
            batch = [self.queue.popleft() for _ in range(min(self.capacity, len(self.queue)))]
            results = timed_many(self.evaluator, batch, node="local", given=self.handovers.for_batch(batch))
            self.done.extend(self.handovers.returned(results))
        return self.done.popleft()

    @property
    def in_flight(self) -> int:
        return len(self.queue) + len(self.done)

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


class _EvaluatorActor(GroupMember):
    """An evaluator inside a Ray actor (built by :meth:`setup` so errors reach the driver)."""

    def setup(
        self, config: SearchConfig, threads: int, rank: int = 0, world: int = 1, address: str | None = None
    ) -> tuple[str, str]:
        import ray
        import torch

        from raynas.execution.ray_actors import node_type

        torch.set_num_threads(threads)
        self.join_group(rank, world, address)
        self.evaluator = (
            build_evaluator(config, rank=rank, world_size=world) if world > 1 else build_evaluator(config)
        )
        self.node = node_type(config.execution.accelerator)  # the node's accelerator type, or cpu
        self.node_id = ray.get_runtime_context().get_node_id()
        return self.node_id, self.node

    def evaluate(self, arch: Architecture, trial_id: str) -> EvalResult:
        return timed(self.evaluator, arch, trial_id, node=self.node, node_id=self.node_id)

    def evaluate_many(
        self, batch: list[tuple[Architecture, str]], given: dict[str, Any] | None = None
    ) -> list[EvalResult]:
        return timed_many(self.evaluator, batch, node=self.node, node_id=self.node_id, given=given)

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
    """``execution.concurrency`` evaluator actors placed by the configured resources; elastic.

    With the one-shot ``supernet`` evaluator the replicas train the supernet together,
    data-parallel (one path per global step on every replica, each on its slice of the global
    batch, gradients and BatchNorm statistics over the whole batch), then score candidates apart.

    A lost actor (its node gone, its process killed) is replaced by a new one, which Ray places
    wherever the resources are (another node when the node is gone), and the candidate it held is
    evaluated again under the same trial id, so it is told once; a replacement takes the weights
    of a live replica, or ``restore()`` (the supernet's last checkpoint). An actor lost while the
    replicas train together ends the group: it is rebuilt whole from ``restore()`` (the start of
    the epoch) and the epoch trained again. After ``execution.max_restarts`` replacements the pool
    gives up with :class:`raynas.errors.WorkerLostError` (the search's checkpoint lets the same
    command resume it).

    Args:
        config: The search job (its ``execution`` section says where and how many).
        restore: The state a replacement starts from when no replica can give it weights (None:
            the evaluator's initial state).
        echo: Where a line about each replacement goes.
    """

    def __init__(
        self, config: SearchConfig, *, restore: Callable[[], dict[str, Any] | None] | None = None,
        echo: Callable[[str], None] = log.warning,
    ) -> None:
        import ray

        from raynas.execution.ray_actors import check_room, init_ray, remote_call

        self._get = remote_call
        self.config = config
        self.restore = restore or (lambda: None)
        self.echo = echo
        execution = config.execution
        init_ray(execution)
        check_room(execution, execution.concurrency, "execution.concurrency")  # placed all at once
        self.threads = max(1, int(execution.cpus_per_worker))
        self.restarts = 0
        self.together = trains_together(config)
        self._actor_cls = ray.remote(_EvaluatorActor)
        self.replicas = execution.concurrency
        self.stack = stack_size(config)  # candidates per actor call
        self.handovers = Handovers(config)
        self.capacity = self.replicas * self.stack
        self.actors: list[Any] = []
        placed = self._start_group()
        node_ids = [node_id for node_id, _ in placed]
        kinds = ", ".join(sorted({kind for _, kind in placed}))
        self.location = f"{len(self.actors)} Ray actor(s) on {len(set(node_ids))} node(s) ({kinds})"
        if self.together:
            self.location += ", training the supernet together"
        self.pending: deque[tuple[Architecture, str]] = deque()  # submitted, not yet sent
        self.running: dict[Any, tuple[Any, list[tuple[Architecture, str]]]] = {}  # ref -> actor, batch
        self.done: deque[EvalResult] = deque()  # results of a batch not handed back yet

    def _start(self) -> Any:
        execution = self.config.execution
        resources = {execution.accelerator: execution.gpus_per_worker} if execution.accelerator else {}
        return self._actor_cls.options(  # type: ignore[attr-defined]
            num_cpus=execution.cpus_per_worker, num_gpus=execution.gpus_per_worker,
            resources=resources, max_restarts=0,
        ).remote()

    def _start_group(self, *, restored: bool = False) -> list[tuple[str, str]]:
        """New actors for every replica (one data-parallel group when they train together), with
        ``restored`` given the state ``restore()`` returns; an actor lost while they are set up or
        given it (its node gone) counts as a restart, and the group is started again."""
        from raynas.execution.ray_actors import ray_logs

        while True:
            try:
                placed = self._start_group_once()
                state = self.restore() if restored else None
                for actor in self.actors if state else ():
                    self._get(actor.load_state_dict.remote(state))
                return placed
            except WorkerLostError as exc:
                self._count_restart(exc.reason)
                self.echo(f"{exc.reason}: starting the {self.replicas} evaluator actor(s) again; Ray's "
                          f"logs are in {ray_logs()}")

    def _start_group_once(self) -> list[tuple[str, str]]:
        import ray

        from raynas.execution.ray_actors import gather_group, wait_placed

        for actor in self.actors:
            with contextlib.suppress(Exception):  # an actor whose node is gone is dead already
                ray.kill(actor, no_restart=True)
        self.actors = [self._start() for _ in range(self.replicas)]
        execution = self.config.execution
        wait_placed(
            self.actors, {"CPU": execution.cpus_per_worker, "GPU": execution.gpus_per_worker}, self.echo
        )
        world = self.replicas if self.together else 1
        address = self._get(self.actors[0].rendezvous.remote(world)) if world > 1 else None
        placed = gather_group(self.actors, [
            actor.setup.remote(self.config, self.threads, rank if world > 1 else 0, world, address)
            for rank, actor in enumerate(self.actors)
        ])
        self.grouped = [world > 1] * self.replicas  # which actors are ranks of the current group
        self.idle = list(self.actors)
        return placed

    def _count_restart(self, reason: str) -> None:
        self.restarts += 1
        if self.restarts > self.config.execution.max_restarts:
            from raynas.execution.ray_actors import ray_logs

            raise WorkerLostError(
                f"{self.restarts - 1} evaluator actors were lost and replaced, and another now "
                f"({reason}; Ray's logs are in {ray_logs()}); execution.max_restarts is "
                f"{self.config.execution.max_restarts}: run the same command again to resume"
            )

    def _replace(self, lost: Any, reason: str) -> Any:
        """A new actor in ``lost``'s place, set up alone, holding the weights the lost one held. A
        replacement lost meanwhile (its node gone too), while it is set up or given those weights,
        is replaced in turn."""
        import ray

        from raynas.execution.ray_actors import ray_logs

        self._count_restart(reason)
        index = self.actors.index(lost)
        ray.kill(lost, no_restart=True)
        while True:
            actor = self._start()
            try:
                self._get(actor.setup.remote(self.config, self.threads))
                self._give_weights(actor, index)
                break
            except WorkerLostError as exc:  # the replacement's loss (a peer's is taken below)
                self._count_restart(exc.reason)
                ray.kill(actor, no_restart=True)
        self.actors[index] = actor
        self.grouped[index] = False
        if lost in self.idle:
            self.idle[self.idle.index(lost)] = actor
        self.echo(f"{reason}: replaced evaluator actor {index}; Ray's logs are in {ray_logs()}")
        return actor

    def _give_weights(self, actor: Any, index: int) -> None:
        """Load into ``actor`` what the actor at ``index`` held: a live peer's weights (replicas
        hold the same), else the state of the last checkpoint."""
        weights = None
        for peer in (a for i, a in enumerate(self.actors) if i != index):
            try:
                weights = self._get(peer.weights.remote())
                break
            except WorkerLostError:
                continue  # lost too: it is replaced when next used
        if weights is not None:
            self._get(actor.load_weights.remote(weights))
            return
        state = self.restore()
        if state:
            self._get(actor.load_state_dict.remote(state))

    def _call(self, index: int, method: str, *args: Any) -> Any:
        """``actors[index].method(*args)``, on a replacement when the actor is lost."""
        while True:
            try:
                return self._get(getattr(self.actors[index], method).remote(*args))
            except WorkerLostError as exc:
                self._replace(self.actors[index], exc.reason)

    def submit(self, arch: Architecture, trial_id: str) -> None:
        self.handovers.submitted(arch, trial_id)
        self.pending.append((arch, trial_id))

    def _dispatch(self) -> None:
        """Send the submitted candidates to the idle actors, up to ``stack`` each."""
        while self.pending and self.idle:
            batch = [self.pending.popleft() for _ in range(min(self.stack, len(self.pending)))]
            actor = self.idle.pop()
            self.running[actor.evaluate_many.remote(batch, self.handovers.for_batch(batch))] = (actor, batch)

    def next_result(self) -> EvalResult:
        import ray

        self._dispatch()
        while not self.done:
            (ref,), _ = ray.wait(list(self.running), num_returns=1)
            actor, batch = self.running.pop(ref)
            try:
                results = self._get(ref)
            except WorkerLostError as exc:
                actor = self._replace(actor, exc.reason)
                trials = ", ".join(trial_id for _, trial_id in batch)
                self.echo(f"evaluating trial(s) {trials} again on the replacement")
                given = self.handovers.for_batch(batch)
                self.running[actor.evaluate_many.remote(batch, given)] = (actor, batch)
                continue
            self.idle.append(actor)
            self.done.extend(self.handovers.returned(results))
            self._dispatch()
        return self.done.popleft()

    @property
    def in_flight(self) -> int:
        return len(self.pending) + sum(len(batch) for _, batch in self.running.values()) + len(self.done)

    def train_epoch(self, paths: Sequence[Architecture]) -> dict[str, float]:
        """One epoch of one-shot training on ``paths``: on the first actor, or on every replica
        together. A lost actor, or a replica replaced since the group formed, rebuilds the group
        from ``restore()`` (the start of this epoch), and the same paths are trained again: the
        epoch is as if no actor had been lost."""
        from raynas.execution.ray_actors import gather_group

        if not self.together:
            return self._call(0, "train_epoch", list(paths))
        while True:
            if not all(self.grouped):
                self._rebuild_group("a replica was replaced since the group formed")
            try:
                return gather_group(self.actors, [a.train_epoch.remote(list(paths)) for a in self.actors])[0]
            except WorkerLostError as exc:
                self._count_restart(exc.reason)
                self._rebuild_group(exc.reason)

    def _rebuild_group(self, reason: str) -> None:
        from raynas.execution.ray_actors import ray_logs

        self._start_group(restored=True)
        self.echo(
            f"{reason}: rebuilt the {self.replicas} replicas training together; Ray's logs are in "
            f"{ray_logs()}"
        )

    @property
    def steps_per_epoch(self) -> int:
        return self._call(0, "steps_per_epoch")

    def sync_replicas(self) -> None:
        if self.together and all(self.grouped):
            return  # replicas that trained together hold the same weights
        for index in range(1, len(self.actors)):
            weights = self._call(0, "weights")
            self._call(index, "load_weights", weights)

    def state_dict(self) -> dict[str, Any]:
        return self._call(0, "state_dict")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for index in range(len(self.actors)):
            self._call(index, "load_state_dict", state)

    def describe_location(self) -> str:
        return self.location

    def close(self) -> None:
        import ray

        for actor in self.actors:
            with contextlib.suppress(Exception):  # an actor whose node is gone is dead already
                ray.kill(actor, no_restart=True)


def start_pool(
    config: SearchConfig, *, restore: Callable[[], dict[str, Any] | None] | None = None,
    echo: Callable[[str], None] = log.warning,
) -> LocalPool | RayPool:
    """The pool the job's ``execution.backend`` asks for (see :class:`RayPool` for ``restore``)."""
    if config.execution.backend == "local":
        return LocalPool(config)
    return RayPool(config, restore=restore, echo=echo)
