"""Regularized evolution (Real et al., "Regularized Evolution for Image Classifier Architecture
Search", AAAI 2019, Algorithm 1), asynchronous as in the paper's workers.

The population is the ``population_size`` most recently evaluated architectures (aging: the oldest
dies, whatever its accuracy). Each child is a one-decision mutation of the best of ``sample_size``
members drawn at random. Works on any space with a flat categorical view, evaluated by training or
by inherited supernet weights; ``spos`` is the same search after a supernet trained on uniformly
sampled single paths (Guo et al., "Single Path One-Shot NAS with Uniform Sampling", ECCV 2020).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from raynas.errors import ConfigError
from raynas.strategies.registry import STRATEGIES
from raynas.strategies.sampling.base import SamplingStrategy, check_positive
from raynas.types import Architecture, EvalResult, best_at_equal_budget


@dataclass(frozen=True)
class EvolutionConfig:
    """Regularized evolution (the paper's P, S and total evaluations; its CIFAR run used
    P=100, S=25 and 20,000 models).

    Attributes:
        population_size: P, the population (the first P candidates are random).
        sample_size: S, members drawn for each tournament.
        evaluations: Candidates evaluated in all, the random population included.
    """

    population_size: int = 20
    sample_size: int = 5
    evaluations: int = 100

    def __post_init__(self) -> None:
        check_positive(self.population_size, "strategy.population_size")
        check_positive(self.sample_size, "strategy.sample_size")
        if self.sample_size > self.population_size:
            raise ConfigError(
                f"strategy.sample_size ({self.sample_size}) must be at most "
                f"strategy.population_size ({self.population_size})"
            )
        if self.evaluations < self.population_size:
            raise ConfigError(
                f"strategy.evaluations ({self.evaluations}) must be at least "
                f"strategy.population_size ({self.population_size})"
            )


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

    @property
    def population(self) -> list[EvalResult]:
        """The living members: the most recent ``population_size`` results."""
        return self.history[-self.config.population_size :]

    def propose(self) -> Architecture | None:
        if self.asked >= self.config.evaluations:
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

    @property
    def done(self) -> bool:
        return len(self.history) >= self.config.evaluations


@STRATEGIES.register("spos", config=EvolutionConfig)
class Spos(RegularizedEvolution):
    """SPOS: uniform single-path supernet training, then evolution over inherited weights."""

    name = "spos"
    needs_supernet = True
