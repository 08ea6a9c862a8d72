"""The ask/tell interface of sampling strategies (controllers).

A sampling strategy proposes architectures (:meth:`SamplingStrategy.ask`) and learns from their
evaluations (:meth:`SamplingStrategy.tell`), like Ray Tune's ``Searcher.suggest`` /
``on_trial_complete``. It never touches Ray: the same strategy runs in-process in a unit test, in a
Ray actor, or behind Ray Tune (``raynas.execution.tune``). It works on a space's flat categorical
view (:class:`raynas.types.ChoiceSpace`), so every strategy works on every space that offers one.

When a search trains a weight-sharing supernet first, the strategy also says which path each
training step takes (:meth:`SamplingStrategy.sample_path`: uniform for SPOS, the controller's
policy for ENAS, the least-visited region for novelty search).

Resume is exact: the state records the candidates asked and not yet told (in flight), and after
:meth:`SamplingStrategy.load_state_dict` the next asks return exactly those, in the order they
were asked, before anything new, so an interrupted search continues as the search it was.
"""

from __future__ import annotations

import functools
import random
from abc import ABC, abstractmethod
from typing import Any

from raynas.errors import ConfigError
from raynas.types import (
    Architecture,
    ChoiceSpace,
    EvalResult,
    best_at_equal_budget,
    compare_at_equal_budget,
)


def choice_space(space: Any, strategy: str) -> ChoiceSpace:
    """``space`` if it offers the flat categorical view, else a clear error."""
    if not isinstance(space, ChoiceSpace):
        raise ConfigError(
            f"strategy {strategy!r} needs a space with decisions()/encode()/decode(); "
            f"{type(space).__name__} has none"
        )
    return space


class SamplingStrategy(ABC):
    """Base of ask/tell strategies: keeps every result told, the best one and the candidates in
    flight, and saves state.

    Args:
        space: The space to search (must offer the flat categorical view, unless
            :attr:`needs_choices` is False).
        seed: Seeds the strategy's random choices.

    Subclasses implement :meth:`propose` (a new candidate; :meth:`ask` hands out the candidates
    in flight at a save first) and :attr:`done`, and extend :meth:`tell`,
    :meth:`state_dict` / :meth:`load_state_dict` as they need.
    """

    name = "sampling"
    # Needs the one-shot supernet evaluator (its paths are what the strategy samples).
    needs_supernet: bool = False
    # Candidates the search evaluates after each supernet-training epoch, before the final phase
    # (ENAS trains its controller this way; most strategies search only after the supernet).
    evaluations_per_epoch: int = 0
    # Searches the space's flat categorical view; a strategy that grows networks in a space of
    # its own kind (Auto-Keras's morphisms) sets False and takes the space as it is.
    needs_choices: bool = True

    def __init__(self, *, space: Any, seed: int = 0) -> None:
        self.space = choice_space(space, self.name) if self.needs_choices else space
        self.decisions = self.space.decisions() if self.needs_choices else ()
        self.rng = random.Random(seed)
        self.history: list[EvalResult] = []
        self.asked = 0  # candidates proposed, those in flight included
        # Asked and not yet told, in ask order: what a resumed search must ask again.
        self.in_flight: list[Architecture] = []
        # The in-flight candidates restored by load_state_dict that ask() has not handed out again.
        self.reask: list[Architecture] = []
        self.told_ids: set[str] = set()

    def check_search(self, *, supernet_epochs: int) -> None:
        """Raise :class:`ConfigError` if the strategy's settings do not fit the search around it
        (``supernet_epochs``: the one-shot supernet's training epochs, 0 without one)."""
        return None  # most strategies fit any search

    def ask(self) -> Architecture | None:
        """The next candidate to evaluate, or None while the strategy waits for results.

        After :meth:`load_state_dict`, the candidates that were in flight at the save come first,
        in the order they were first asked (without touching the strategy's random state); then
        new ones from :meth:`propose`.
        """
        if self.reask:
            return self.reask.pop(0)  # still in self.in_flight
        arch = self.propose()
        if arch is not None:
            self.asked += 1
            self.in_flight.append(arch)
        return arch

    @abstractmethod
    def propose(self) -> Architecture | None:
        """A new candidate (:attr:`asked` counts those proposed before it), or None while the
        strategy waits for results. Only :meth:`ask` calls it."""

    def tell(self, result: EvalResult) -> None:
        """Learn from one evaluation (results may arrive in any order).

        The result settles the earliest ask of its architecture still in flight. A candidate in
        flight at a save may be told before or after it is asked again: once told, it is not
        asked again. A result for an architecture with no ask in flight is taken as one the
        strategy did not ask for, and joins the history too. The same evaluation is accepted once:
        results are told apart by ``trial_id`` (unique within a search; a result without one is
        never refused).

        Raises:
            ValueError: A result with the same non-empty ``trial_id`` was told already; nothing
                changes.
        """
        if result.trial_id and result.trial_id in self.told_ids:
            raise ValueError(f"result {result.trial_id!r} was told already ({result.architecture})")
        arch = result.architecture
        if arch in self.in_flight:
            self.in_flight.remove(arch)
            if self.in_flight.count(arch) < self.reask.count(arch):
                self.reask.remove(arch)  # told before it was asked again: it is not asked again
        self.history.append(result)
        if result.trial_id:
            self.told_ids.add(result.trial_id)

    @property
    @abstractmethod
    def done(self) -> bool:
        """Whether the strategy has asked for all it will ask."""

    def best(self) -> EvalResult | None:
        """The best result told so far (the first of equals), candidates of different budgets
        (Tune stopped some early) compared at equal budget (:func:`compare_at_equal_budget`)."""
        return best_at_equal_budget(self.history)

    def final_results(self) -> list[EvalResult]:
        """The results the search's answer and its retrained candidates are chosen from, best
        first (default: every result told, compared at equal budget, the first of equals first).
        ENAS keeps only the architectures derived from its trained policy."""
        return sorted(self.history, key=functools.cmp_to_key(compare_at_equal_budget), reverse=True)

    def sample_path(self) -> Architecture:
        """The path a supernet-training step should take (default: uniform, as in SPOS)."""
        return self.random_architecture()

    def sample_paths(self, n: int) -> list[Architecture]:
        """The paths of ``n`` supernet-training steps (one call for a whole epoch)."""
        return [self.sample_path() for _ in range(n)]

    def random_architecture(self) -> Architecture:
        """Uniformly random option for every decision."""
        return self.space.decode([self.rng.randrange(len(d.options)) for d in self.decisions])

    def mutate(self, arch: Architecture) -> Architecture:
        """``arch`` with one decision changed to another of its options."""
        values = list(self.space.encode(arch))
        free = [i for i, d in enumerate(self.decisions) if len(d.options) > 1]
        if not free:
            return arch
        i = self.rng.choice(free)
        values[i] = self.rng.choice([v for v in range(len(self.decisions[i].options)) if v != values[i]])
        return self.space.decode(values)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: random state, results, counters and the
        candidates in flight (as architecture JSON, in ask order)."""
        return {
            "rng": self.rng.getstate(),
            "history": [r.to_dict() for r in self.history],
            "asked": self.asked,
            "in_flight": [a.to_json() for a in self.in_flight],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output.

        The candidates that were in flight at the save (asked, not told) are what the next
        :meth:`ask` calls return, in the same order, before anything new; telling their results
        then continues as if there had been no interruption. A result for one of them told before
        it is asked again is accepted, and it is then not asked again (see :meth:`tell`).
        """
        self.rng.setstate(_as_rng_state(state["rng"]))
        self.history = [EvalResult.from_dict(r) for r in state["history"]]
        self.told_ids = {r.trial_id for r in self.history if r.trial_id}
        self.asked = int(state["asked"])
        self.in_flight = [Architecture.from_json(a) for a in state["in_flight"]]
        self.reask = list(self.in_flight)


def _as_rng_state(state: Any) -> tuple[Any, ...]:
    # random.getstate() is (version, tuple_of_ints, gauss); a JSON or torch round trip gives lists.
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def check_positive(value: int, key: str) -> None:
    """A :class:`ConfigError` naming ``key`` unless ``value`` >= 1."""
    if value < 1:
        raise ConfigError(f"{key} must be at least 1, got {value}")
