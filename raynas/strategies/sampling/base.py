"""The ask/tell interface of sampling strategies (controllers).

A sampling strategy proposes architectures (:meth:`SamplingStrategy.ask`) and learns from their
evaluations (:meth:`SamplingStrategy.tell`), like Ray Tune's ``Searcher.suggest`` /
``on_trial_complete``. It never touches Ray: the same strategy runs in-process in a unit test, in a
Ray actor, or behind Ray Tune (``raynas.execution.tune``). It works on a space's flat categorical
view (:class:`raynas.types.ChoiceSpace`), so every strategy works on every space that offers one.

When a search trains a weight-sharing supernet first, the strategy also says which path each
training step takes (:meth:`SamplingStrategy.sample_path`: uniform for SPOS, the controller's
policy for ENAS, the least-visited region for novelty search).

A strategy may be held to cells of a given shape (``strategy.cell_shape``, :class:`CellShapeLimits`:
the width and depth of Shu et al., ICLR 2020) where the space measures one: each strategy applies
it where it generates candidates (:meth:`SamplingStrategy.constrain_cells`), so that every
candidate it asks fits, without spending its evaluation budget on those that do not.

Resume is exact: the state records the candidates asked and not yet told (in flight), and after
:meth:`SamplingStrategy.load_state_dict` the next asks return exactly those, in the order they
were asked, before anything new, so an interrupted search continues as the search it was.
"""

from __future__ import annotations

import functools
import logging
import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from raynas.config import Check, Rule, check_rules
from raynas.errors import ConfigError
from raynas.types import (
    Architecture,
    ChoiceSpace,
    EvalResult,
    best_at_equal_budget,
    compare_at_equal_budget,
    scores_at_common_budget,
)

log = logging.getLogger(__name__)

# Draws a strategy makes for a candidate that fits ``strategy.cell_shape`` before it gives up
# (and, for a policy, falls back to a uniform draw that fits); and the uniform draws that must
# find one fitting cell for the limits to be accepted at all.
SHAPE_TRIES = 1000


@dataclass(frozen=True)
class CellShapeLimits:
    """Bounds on the width and depth of a candidate's cells (Shu et al., "Understanding
    Architectures Learnt by Cell-based Neural Architecture Search", ICLR 2020, Sec. 3.1; measured
    by the space's ``cell_shape``, e.g. :func:`raynas.spaces.darts_genotype.cell_shape`), the
    constraint a sampling search may put on the cells it asks for (``strategy.cell_shape``).

    Attributes:
        min_width: Smallest width, in units of one node's channels (0: no bound).
        max_width: Largest width (0: no bound).
        min_depth: Fewest connections on the longest input-to-output path (0: no bound).
        max_depth: Most (0: no bound).
        cells: The cells the bounds hold for: ``both``, ``normal`` or ``reduce``.
    """

    min_width: Annotated[float, Rule(ge=0)] = 0.0
    max_width: Annotated[float, Rule(ge=0)] = 0.0
    min_depth: Annotated[int, Rule(ge=0)] = 0
    max_depth: Annotated[int, Rule(ge=0)] = 0
    cells: Literal["both", "normal", "reduce"] = "both"

    checks: ClassVar[tuple[Check, ...]] = (
        Check(
            "min_width or max_width or min_depth or max_depth",
            "strategy.cell_shape sets no bound: give min_width, max_width, min_depth or max_depth",
        ),
        *(
            Check(
                f"not {high} or {low} <= {high}",
                f"strategy.cell_shape.{low} must be at most strategy.cell_shape.{high}",
            )
            for low, high in (("min_width", "max_width"), ("min_depth", "max_depth"))
        ),
    )

    def __post_init__(self) -> None:
        check_rules(self, "strategy.cell_shape")

    def kinds(self, shape: dict[str, float]) -> list[str]:
        """The cell types of ``shape`` (a space's ``cell_shape``) the bounds hold for."""
        kinds = list(dict.fromkeys(k.rsplit("_", 1)[0] for k in shape))
        return kinds if self.cells == "both" else [k for k in kinds if k == self.cells]

    def violation(self, shape: dict[str, float], *, upper_only: bool = False) -> float:
        """How far ``shape`` lies outside the bounds, summed over bounds and cells (0: it fits);
        ``upper_only``: the maximum bounds alone."""
        total = 0.0
        for kind in self.kinds(shape):
            width, depth = shape[f"{kind}_width"], shape[f"{kind}_depth"]
            if self.max_width:
                total += max(0.0, width - self.max_width)
            if self.max_depth:
                total += max(0.0, depth - self.max_depth)
            if not upper_only:
                total += max(0.0, self.min_width - width) + max(0.0, self.min_depth - depth)
        return total

    def __str__(self) -> str:
        parts = [f"{name.split('_')[1]} {'>=' if name.startswith('min') else '<='} {value:g}"
                 for name in ("min_width", "max_width", "min_depth", "max_depth")
                 if (value := getattr(self, name))]
        cells = {"both": "every cell", "normal": "normal cells", "reduce": "reduction cells"}[self.cells]
        return f"{', '.join(parts)} ({cells})"


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
        self.shape_limits: CellShapeLimits | None = None

    def constrain_cells(self, limits: CellShapeLimits | None) -> None:
        """Hold the candidates this strategy asks for to cells within ``limits`` (None: none).

        Raises:
            ConfigError: The space measures no cell shapes, or no cell of :data:`SHAPE_TRIES`
                uniform draws fits.
        """
        if limits is None:
            return
        if not callable(getattr(self.space, "cell_shape", None)):
            raise ConfigError(
                f"strategy.cell_shape: the {type(self.space).__name__} space has no cells whose width "
                "and depth can be measured (the darts, nb201 and darts_rnn spaces have); "
                "remove strategy.cell_shape"
            )
        first = self.space.decode([0] * len(self.decisions))
        kinds = [k.rsplit("_", 1)[0] for k in self.space.cell_shape(first)]
        if not limits.kinds(dict.fromkeys(f"{k}_width" for k in kinds)):
            raise ConfigError(
                f"strategy.cell_shape.cells is {limits.cells!r}, a cell the {type(self.space).__name__} "
                f"space does not have (its cells: {', '.join(dict.fromkeys(kinds))}); leave cells out"
            )
        self.shape_limits = limits
        rng = random.Random(0)  # the strategy's own random stream is left as it is
        draws = (self.space.decode([rng.randrange(len(d.options)) for d in self.decisions])
                 for _ in range(SHAPE_TRIES))
        if not any(self.fits(arch) for arch in draws):
            raise ConfigError(
                f"strategy.cell_shape: no cell of {SHAPE_TRIES} random architectures of the space has "
                f"{limits}; loosen the bounds"
            )

    def shape_violation(self, arch: Architecture, *, upper_only: bool = False) -> float:
        """How far ``arch``'s cells lie outside ``strategy.cell_shape`` (0: they fit, or no limits)."""
        if self.shape_limits is None:
            return 0.0
        return self.shape_limits.violation(self.space.cell_shape(arch), upper_only=upper_only)

    def fits(self, arch: Architecture) -> bool:
        """Whether ``arch``'s cells keep ``strategy.cell_shape`` (always, without limits)."""
        return self.shape_violation(arch) == 0

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

    def stage_groups(self) -> tuple[tuple[int, ...], ...]:
        """The decision indices a progressive search adds stage by stage: the space's
        ``decision_groups()``, which must cover every decision once, else one decision a stage."""
        groups_of = getattr(self.space, "decision_groups", None)
        if groups_of is None:
            return tuple((i,) for i in range(len(self.decisions)))
        groups = tuple(tuple(int(i) for i in g) for g in groups_of())
        if sorted(i for g in groups for i in g) != list(range(len(self.decisions))) or not all(groups):
            raise ConfigError(
                f"{type(self.space).__name__}.decision_groups() must cover every decision index "
                f"0..{len(self.decisions) - 1} exactly once, in non-empty groups; got {groups}"
            )
        return groups

    def sample_path(self) -> Architecture:
        """The path a supernet-training step should take (default: uniform over the whole space,
        as in SPOS, whatever ``strategy.cell_shape`` says of the candidates)."""
        return self._uniform()

    def sample_paths(self, n: int) -> list[Architecture]:
        """The paths of ``n`` supernet-training steps (one call for a whole epoch)."""
        return [self.sample_path() for _ in range(n)]

    def _uniform(self) -> Architecture:
        return self.space.decode([self.rng.randrange(len(d.options)) for d in self.decisions])

    def random_architecture(self) -> Architecture:
        """Uniformly random option for every decision; with ``strategy.cell_shape``, drawn again
        until the cells fit (uniform over the architectures that fit).

        Raises:
            RuntimeError: None of :data:`SHAPE_TRIES` draws fits (the bounds admit too few cells).
        """
        for _ in range(SHAPE_TRIES):
            arch = self._uniform()
            if self.fits(arch):
                return arch
        raise RuntimeError(
            f"no architecture of {SHAPE_TRIES} random draws has cells with {self.shape_limits}"
        )

    def mutate(self, arch: Architecture) -> Architecture:
        """``arch`` with one decision changed to another of its options; with
        ``strategy.cell_shape``, mutated again until the child fits (a random architecture that
        fits if none of :data:`SHAPE_TRIES` mutations does)."""
        if self.shape_limits is None:
            return self._mutate_once(arch)
        for _ in range(SHAPE_TRIES):
            child = self._mutate_once(arch)
            if self.fits(child):
                return child
        return self.random_architecture()

    def _mutate_once(self, arch: Architecture) -> Architecture:
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


def fitting_sample(
    strategy: SamplingStrategy, draw: Any, *, what: str
) -> Architecture:
    """A candidate from ``draw()`` (a policy's sample) that fits ``strategy.cell_shape``: drawn again
    up to :data:`SHAPE_TRIES` times, then a uniform architecture that fits, with a warning saying so
    (``what`` names the policy)."""
    arch = draw()
    if strategy.shape_limits is None:
        return arch
    for _ in range(SHAPE_TRIES - 1):
        if strategy.fits(arch):
            return arch
        arch = draw()
    if strategy.fits(arch):
        return arch
    log.warning("%s: none of %d samples has cells with %s; asking a uniform one that has",
                what, SHAPE_TRIES, strategy.shape_limits)
    return strategy.random_architecture()


def rewards_at_common_budget(
    reward: Callable[[EvalResult, float], float], results: list[EvalResult]
) -> list[float]:
    """A policy's rewards of ``results`` at equal budget: ``reward(result, score)`` with each
    result's score at the smallest budget they all reached (:func:`scores_at_common_budget`; the
    scores as they are when the results have one budget). ENAS's and EPNAS's batches."""
    return [reward(r, s) for r, s in zip(results, scores_at_common_budget(results), strict=True)]


def _as_rng_state(state: Any) -> tuple[Any, ...]:
    # random.getstate() is (version, tuple_of_ints, gauss); a JSON or torch round trip gives lists.
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def check_positive(value: int, key: str) -> None:
    """A :class:`ConfigError` naming ``key`` unless ``value`` >= 1."""
    if value < 1:
        raise ConfigError(f"{key} must be at least 1, got {value}")
