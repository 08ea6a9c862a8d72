"""A sampling strategy (controller) inside a Ray actor, and a proxy with the strategy's interface.

The controller of a sampling search (random search, regularized evolution, ...) is light: it
holds a population and a random state, never a network. On a cluster it runs as an actor placed
by ``execution.controller_resources`` (for example a custom resource that only CPU nodes
declare), so that GPU nodes are left to candidate training. :class:`RemoteController` gives the
driver and :class:`raynas.execution.tune.ControllerSearcher` the same ``ask`` / ``tell`` /
``done`` interface as an in-process :class:`raynas.strategies.sampling.SamplingStrategy`.
"""

from __future__ import annotations

from typing import Any

import ray

from raynas.config import SearchConfig
from raynas.errors import ConfigError
from raynas.execution.ray_actors import remote_call
from raynas.spaces import SPACES
from raynas.strategies import STRATEGIES
from raynas.strategies.sampling import SamplingStrategy
from raynas.types import Architecture, EvalResult


def build_controller(config: SearchConfig) -> SamplingStrategy:
    """The sampling strategy of ``config``, built over its space and seeded with ``config.seed``.

    Raises:
        ConfigError: ``config.strategy`` names a gradient strategy, which has no ask/tell controller.
    """
    if not issubclass(STRATEGIES.get(config.strategy.name), SamplingStrategy):
        raise ConfigError(
            f"config key 'strategy.name': {config.strategy.name!r} is a gradient strategy; a "
            "controller needs a sampling strategy (random, evolution, ...)"
        )
    space = SPACES.create(config.space.name, config.space.config)
    return STRATEGIES.create(config.strategy.name, config.strategy.config, space=space, seed=config.seed)


class ControllerActor:
    """The body of the controller actor: a strategy built from the search config.

    Args:
        config: The search job (space, strategy, seed).
        state: A :meth:`state_dict` to resume from.
    """

    def __init__(self, config: SearchConfig, state: dict[str, Any] | None = None) -> None:
        self.strategy = build_controller(config)
        if state is not None:
            self.strategy.load_state_dict(state)

    def ask(self) -> Architecture | None:
        """The strategy's next candidate, or None while it waits for results."""
        return self.strategy.ask()

    def tell(self, result: EvalResult) -> None:
        """Pass one evaluation to the strategy."""
        self.strategy.tell(result)

    def done(self) -> bool:
        """Whether the strategy has asked for, and been told, all it will ask."""
        return self.strategy.done

    def sample_paths(self, n: int) -> list[Architecture]:
        """The paths of ``n`` one-shot supernet training steps."""
        return self.strategy.sample_paths(n)

    def evaluations_per_epoch(self) -> int:
        """Candidates to evaluate after each supernet epoch (ENAS's controller training)."""
        return self.strategy.evaluations_per_epoch

    def best(self) -> EvalResult | None:
        """The best result told so far."""
        return self.strategy.best()

    def final_results(self) -> list[EvalResult]:
        """The results the search's answer is chosen from, best first."""
        return self.strategy.final_results()

    def state_dict(self) -> dict[str, Any]:
        """The strategy's state, to checkpoint next to the search."""
        return self.strategy.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.strategy.load_state_dict(state)

    def node_id(self) -> str:
        """The id of the Ray node the actor runs on."""
        return ray.get_runtime_context().get_node_id()


class RemoteController:
    """The strategy interface (``ask``, ``tell``, ``done``, ``best``, state) of a controller actor.

    Args:
        actor: A handle of a :class:`ControllerActor` actor.
    """

    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self._evaluations_per_epoch: int | None = None

    def sample_paths(self, n: int) -> list[Architecture]:
        return self._get(self.actor.sample_paths.remote(n))

    @property
    def evaluations_per_epoch(self) -> int:
        if self._evaluations_per_epoch is None:  # fixed by the strategy's config
            self._evaluations_per_epoch = int(self._get(self.actor.evaluations_per_epoch.remote()))
        return self._evaluations_per_epoch

    def ask(self) -> Architecture | None:
        return self._get(self.actor.ask.remote())

    def tell(self, result: EvalResult) -> None:
        self._get(self.actor.tell.remote(result))

    @property
    def done(self) -> bool:
        return bool(self._get(self.actor.done.remote()))

    def best(self) -> EvalResult | None:
        return self._get(self.actor.best.remote())

    def final_results(self) -> list[EvalResult]:
        return self._get(self.actor.final_results.remote())

    def state_dict(self) -> dict[str, Any]:
        return self._get(self.actor.state_dict.remote())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._get(self.actor.load_state_dict.remote(state))

    def node_id(self) -> str:
        """The id of the Ray node the controller actor runs on."""
        return self._get(self.actor.node_id.remote())

    def close(self) -> None:
        """End the actor (its state is gone: save :meth:`state_dict` first)."""
        ray.kill(self.actor)

    _get = staticmethod(remote_call)  # our errors as such; a lost actor as WorkerLostError


def start_controller(
    config: SearchConfig, state: dict[str, Any] | None = None, *, wait: bool = True
) -> RemoteController:
    """Start the controller actor of ``config`` on the connected Ray cluster.

    The actor takes no CPU of its own (it only answers ask/tell calls) and asks for
    ``execution.controller_resources``, which decide the node it runs on.

    Args:
        config: The search job.
        state: A controller state to resume from.
        wait: Wait until the actor is placed and built. Without it the first call waits, and
            the actor's process starts while the caller goes on (a new Ray worker takes seconds
            to start and import torch: the evaluators' actors start beside it).

    Returns:
        A proxy with the strategy's interface.
    """
    build_controller(config)  # a bad strategy or space fails here, in the driver, with a clear line
    actor_cls = ray.remote(ControllerActor)
    actor = actor_cls.options(  # type: ignore[attr-defined]
        num_cpus=0, resources=dict(config.execution.controller_resources) or None, max_restarts=0,
    ).remote(config, state)
    controller = RemoteController(actor)
    if wait:
        controller.node_id()  # waits until the actor is placed and built
    return controller
