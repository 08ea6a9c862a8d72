"""Random search: uniform samples of the space, each architecture at most once.

With inherited supernet weights as the evaluator this is random search with weight sharing
(Li & Talwalkar, "Random Search and Reproducibility for NAS", UAI 2019): train the supernet on
uniformly random paths, rank many random architectures by their inherited-weight accuracy, and
retrain the best few (``final.top``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from raynas.config import Rule, check_rules
from raynas.strategies.registry import STRATEGIES
from raynas.strategies.sampling.base import CellShapeLimits, SamplingStrategy
from raynas.types import Architecture, EvalResult


@dataclass(frozen=True)
class RandomConfig:
    """``evaluations``: how many architectures to evaluate; ``cell_shape``: bounds on the width
    and depth of their cells (:class:`CellShapeLimits`; a draw outside them is drawn again)."""

    evaluations: Annotated[int, Rule(ge=1)] = 50
    cell_shape: CellShapeLimits | None = None

    def __post_init__(self) -> None:
        check_rules(self, "strategy")


@STRATEGIES.register("random", config=RandomConfig)
class RandomSearch(SamplingStrategy):
    """Uniform samples without repeats (up to 100 draws for an unseen one).

    Args:
        config: The number of evaluations.
        space: The space to search.
        seed: Seeds the samples.
    """

    name = "random"

    def __init__(self, config: RandomConfig, *, space: Any, seed: int = 0) -> None:
        super().__init__(space=space, seed=seed)
        self.config = config
        self.seen: set[str] = set()
        self.constrain_cells(config.cell_shape)

    def propose(self) -> Architecture | None:
        if self.asked >= self.config.evaluations:
            return None
        for _ in range(100):
            arch = self.random_architecture()
            if arch.key() not in self.seen:
                break
        self.seen.add(arch.key())
        return arch

    def tell(self, result: EvalResult) -> None:
        super().tell(result)
        self.seen.add(result.architecture.key())  # one it did not ask for is not sampled either

    @property
    def done(self) -> bool:
        return len(self.history) >= self.config.evaluations

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.seen = {a.key() for a in self.in_flight} | {r.architecture.key() for r in self.history}


STRATEGIES.register("random_ws", config=RandomConfig)(RandomSearch)
