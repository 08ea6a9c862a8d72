"""Regularized evolution (Real et al., "Regularized Evolution for Image Classifier Architecture
Search", AAAI 2019, Algorithm 1), asynchronous as in the paper's workers.

The population is the ``population_size`` most recently evaluated architectures (aging: the oldest
dies, whatever its accuracy). Each child is a one-decision mutation of the best of ``sample_size``
members drawn at random. Works on any space with a flat categorical view, evaluated by training or
by inherited supernet weights.

``spos`` (Guo et al., "Single Path One-Shot NAS with Uniform Sampling", ECCV 2020) searches the
supernet trained on uniformly sampled single paths with its own evolutionary algorithm (the
authors' ``search.py`` in megvii-model/SinglePathOneShot): generations of ``population_size``
candidates, the first random; each next generation is ``mutation_num`` mutations (every decision
of a parent redrawn with probability ``mutation_prob``) and ``crossover_num`` crossovers (every
decision from one of two parents, at random) of parents drawn from the ``sample_size`` best
candidates so far (the code's ``select_num``), filled up with random candidates; a child that was
asked before, or that the constraint (:attr:`Spos.constraint`) refuses, is drawn again (up to ten
tries per child, as the code does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from raynas.config import Check, Rule, check_rules
from raynas.errors import ConfigError
from raynas.strategies.registry import STRATEGIES
from raynas.strategies.sampling.base import CellShapeLimits, SamplingStrategy
from raynas.types import Architecture, EvalResult, best_at_equal_budget


@dataclass(frozen=True)
class EvolutionConfig:
    """Regularized evolution (the paper's P, S and total evaluations; its CIFAR run used
    P=100, S=25 and 20,000 models).

    Attributes:
        population_size: P, the population (the first P candidates are random).
        sample_size: S, members drawn for each tournament.
        evaluations: Candidates evaluated in all, the random population included.
        cell_shape: Bounds on the width and depth of the candidates' cells
            (:class:`CellShapeLimits`): random members and mutants outside them are drawn again.
        time_budget: Seconds of simulated search (0: none), as NAS-Bench-201's REA spends them
            (``R_EA.py``'s ``--time_budget``, 12,000 in ``R-EA.sh``): each candidate costs the
            training and validation time its benchmark recorded (``bench_seconds``, which
            evaluator ``nb201_table`` reads); the first population is evaluated whole, then the
            first child whose cost would pass the budget ends the search and is left out of its
            results, as the code returns before keeping it.
    """

    population_size: Annotated[int, Rule(ge=1)] = 20
    sample_size: Annotated[int, Rule(ge=1)] = 5
    evaluations: int = 100
    cell_shape: CellShapeLimits | None = None
    time_budget: Annotated[float, Rule(ge=0, says="must be >= 0 (0: none)")] = 0.0

    job_checks: ClassVar[tuple[Check, ...]] = (
        Check(
            "time_budget == 0 or evaluator == 'nb201_table'",
            "strategy.time_budget spends the training time a benchmark recorded for each candidate "
            "(evaluator nb201_table); evaluator {evaluator!r} records none: remove it",
        ),
    )

    checks: ClassVar[tuple[Check, ...]] = (
        Check(
            "sample_size <= population_size",
            "strategy.sample_size ({sample_size}) must be at most "
            "strategy.population_size ({population_size})",
        ),
        Check(
            "evaluations >= population_size",
            "strategy.evaluations ({evaluations}) must be at least "
            "strategy.population_size ({population_size})",
        ),
    )

    def __post_init__(self) -> None:
        check_rules(self, "strategy")  # a subclass's checks too


@STRATEGIES.register("evolution", config=EvolutionConfig)
class RegularizedEvolution(SamplingStrategy):
    """Tournament selection, one-decision mutation, aging.

    Args:
        config: P, S and the number of evaluations.
        space: The space to search.
        seed: Seeds sampling and mutation.
    """

    name = "evolution"

    def __init__(self, config: EvolutionConfig, *, space: Any, seed: int = 0) -> None:
        super().__init__(space=space, seed=seed)
        self.config = config
        self.constrain_cells(config.cell_shape)
        self.spent = 0.0  # simulated seconds of the results kept (time_budget)
        self.over_budget = False

    @property
    def population(self) -> list[EvalResult]:
        """The living members: the most recent ``population_size`` results."""
        return self.history[-self.config.population_size :]

    def propose(self) -> Architecture | None:
        if self.asked >= self.config.evaluations or self.over_budget:
            return None
        if self.asked < self.config.population_size:
            return self.random_architecture()
        if len(self.history) < self.config.sample_size:
            return None  # too few evaluated members for a tournament yet
        population = self.population
        tournament = self.rng.sample(population, min(self.config.sample_size, len(population)))
        parent = best_at_equal_budget(tournament)  # members Tune stopped early: at equal budget
        assert parent is not None
        return self.mutate(parent.architecture)

    def tell(self, result: EvalResult) -> None:
        """Learn from one evaluation; with a ``time_budget``, add its recorded cost, or end the
        search where a child's cost would pass the budget (that child is left out)."""
        super().tell(result)
        budget = self.config.time_budget
        if not budget:
            return
        cost = result.metrics.get("bench_seconds")
        if cost is None:
            self.history.pop()
            raise ConfigError(
                f"strategy.time_budget: the result of {result.architecture} has no recorded training "
                "time (bench_seconds); its benchmark's file records none for this schedule"
            )
        child = len(self.history) > self.config.population_size
        if self.over_budget or (child and self.spent + cost > budget):
            self.history.pop()  # R_EA.py returns before keeping the child
            self.over_budget = True
            return
        self.spent += cost

    @property
    def done(self) -> bool:
        return self.over_budget or len(self.history) >= self.config.evaluations

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "spent": self.spent, "over_budget": self.over_budget}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.spent = float(state.get("spent", 0.0))
        self.over_budget = bool(state.get("over_budget", False))


# Children per generation: mutation_num and crossover_num, -1 meaning half the population each.
_CHILDREN = (
    "(population_size // 2 if mutation_num == -1 else mutation_num)"
    " + (population_size // 2 if crossover_num == -1 else crossover_num)"
)


@dataclass(frozen=True)
class SposConfig:
    """SPOS's evolutionary search (the authors' ``search.py``: P=50, select 10, 25 mutations with
    probability 0.1, 25 crossovers, 20 generations).

    Attributes:
        population_size: P, candidates per generation (the first generation is random).
        sample_size: Parents are drawn from this many best candidates so far (``select_num``).
        evaluations: Candidates evaluated in all (generations of P, the last one cut short).
        mutation_num: Mutated children per generation (-1: half of P).
        crossover_num: Crossed children per generation (-1: half of P).
        mutation_prob: Probability that a mutation redraws each decision (``m_prob``).
        cell_shape: Bounds on the width and depth of the candidates' cells
            (:class:`CellShapeLimits`), kept as the code keeps its FLOPs limit: a child outside
            them is drawn again.
    """

    population_size: Annotated[int, Rule(ge=1)] = 50
    sample_size: Annotated[int, Rule(ge=1)] = 10
    evaluations: int = 1000
    mutation_num: Annotated[int, Rule(ge=-1, says="must be >= 0 (or -1: half the population)")] = -1
    crossover_num: Annotated[int, Rule(ge=-1, says="must be >= 0 (or -1: half the population)")] = -1
    mutation_prob: Annotated[float, Rule(gt=0, le=1)] = 0.1
    cell_shape: CellShapeLimits | None = None

    checks: ClassVar[tuple[Check, ...]] = (
        *EvolutionConfig.checks,
        Check(  # mutations + crossovers, the properties below
            f"{_CHILDREN} <= population_size",
            f"strategy.mutation_num + strategy.crossover_num ({{{_CHILDREN}}}) "
            "must be at most strategy.population_size ({population_size})",
        ),
    )

    def __post_init__(self) -> None:
        check_rules(self, "strategy")

    @property
    def mutations(self) -> int:
        """Mutated children per generation."""
        return self.population_size // 2 if self.mutation_num == -1 else self.mutation_num

    @property
    def crossovers(self) -> int:
        """Crossed children per generation."""
        return self.population_size // 2 if self.crossover_num == -1 else self.crossover_num


@STRATEGIES.register("spos", config=SposConfig)
class Spos(SamplingStrategy):
    """SPOS: uniform single-path supernet training, then its evolutionary search over inherited
    weights (generations of mutations and crossovers of the best candidates so far).

    Args:
        config: Population, parents, children per generation and the budget.
        space: The space to search.
        seed: Seeds sampling, mutation and crossover.
    """

    name = "spos"
    needs_supernet = True
    # Whether a candidate may be asked (the code's FLOPs limit); every candidate by default.
    constraint: Callable[[Architecture], bool] = staticmethod(lambda arch: True)  # type: ignore[assignment]

    def __init__(self, config: SposConfig, *, space: Any, seed: int = 0) -> None:
        super().__init__(space=space, seed=seed)
        self.config = config
        self.queue: list[Architecture] = []  # this generation's candidates not asked yet
        self.seen: set[str] = set()  # every candidate put in a generation (the code's vis_dict)
        self.generations = 0
        self.exhausted = False  # a generation found no new legal candidate
        self.constrain_cells(config.cell_shape)
        if self.shape_limits is not None:
            limit = self.constraint
            self.constraint = lambda arch: limit(arch) and self.fits(arch)  # type: ignore[method-assign]

    def _legal(self, arch: Architecture) -> bool:
        if arch.key() in self.seen or not self.constraint(arch):
            return False
        self.seen.add(arch.key())
        return True

    def parents(self) -> list[Architecture]:
        """The ``sample_size`` best distinct candidates so far, best first."""
        out: list[Architecture] = []
        for result in self.final_results():
            if result.architecture not in out and result.score > float("-inf"):
                out.append(result.architecture)
            if len(out) == self.config.sample_size:
                break
        return out

    def mutation(self, parent: Architecture) -> Architecture:
        """``parent`` with every decision redrawn (any option, its own included) with probability
        ``mutation_prob``."""
        values = list(self.space.encode(parent))
        for i, decision in enumerate(self.decisions):
            if self.rng.random() < self.config.mutation_prob:
                values[i] = self.rng.randrange(len(decision.options))
        return self.space.decode(values)

    def crossover(self, first: Architecture, second: Architecture) -> Architecture:
        """Every decision from ``first`` or ``second``, each with probability 1/2."""
        a, b = self.space.encode(first), self.space.encode(second)
        return self.space.decode([self.rng.choice((x, y)) for x, y in zip(a, b, strict=True)])

    def _next_generation(self) -> list[Architecture]:
        size = min(self.config.population_size, self.config.evaluations - self.asked)
        out: list[Architecture] = []
        parents = self.parents() if self.generations else []

        def fill(count: int, make: Callable[[], Architecture]) -> None:
            goal = min(len(out) + count, size)
            for _ in range(10 * count):
                if len(out) >= goal:
                    return
                child = make()
                if self._legal(child):
                    out.append(child)

        if parents:
            fill(self.config.mutations, lambda: self.mutation(self.rng.choice(parents)))
            fill(self.config.crossovers,
                 lambda: self.crossover(self.rng.choice(parents), self.rng.choice(parents)))
        fill(size - len(out), self.random_architecture)
        self.generations += 1
        return out

    def propose(self) -> Architecture | None:
        if self.asked >= self.config.evaluations or self.exhausted:
            return None
        if not self.queue:
            if self.in_flight:
                return None  # the generation is being evaluated
            self.queue = self._next_generation()
            if not self.queue:
                self.exhausted = True
                return None
        return self.queue.pop(0)

    @property
    def done(self) -> bool:
        settled = not self.in_flight and not self.queue
        return len(self.history) >= self.config.evaluations or (self.exhausted and settled)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "queue": [a.to_json() for a in self.queue],
            "seen": sorted(self.seen),
            "generations": self.generations,
            "exhausted": self.exhausted,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.queue = [Architecture.from_json(a) for a in state["queue"]]
        self.seen = set(state["seen"])
        self.generations = int(state["generations"])
        self.exhausted = bool(state["exhausted"])
