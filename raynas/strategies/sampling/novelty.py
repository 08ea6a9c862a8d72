"""Novelty-driven sampling of a one-shot supernet's paths (Zhang, Li, Pan, Liu and Su, "One-Shot
Neural Architecture Search via Novelty Driven Sampling", IJCAI 2020; arXiv 1907.09109, "Efficient
Novelty-Driven Neural Architecture Search", EN²AS).

Reward-driven sampling trains the paths a controller already likes, so the supernet's ranking
favours them (the rich get richer); EN²AS trains the most *novel* path instead. The novelty of an
architecture is the mean distance of its encoding to its ``k`` nearest neighbours in an archive of
the paths sampled before (here the Hamming distance between option indices, the archive bounded to
the ``archive_size`` most recent paths). Each training step draws ``candidates`` random paths,
takes the most novel and archives it (:meth:`NoveltySearch.sample_path`).

The search over the trained supernet is regularized evolution (Real et al., AAAI 2019) with the
same novelty: of ``candidates`` one-decision mutants of a tournament's winner, the one most novel
with respect to the candidates asked so far is evaluated, so the evolution spends its evaluations
on architectures it has not seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from raynas.strategies.registry import STRATEGIES
from raynas.strategies.sampling.base import check_positive
from raynas.strategies.sampling.evolution import EvolutionConfig, RegularizedEvolution
from raynas.types import Architecture


@dataclass(frozen=True)
class NoveltyConfig(EvolutionConfig):
    """Regularized evolution's P, S and evaluations, plus the novelty search.

    Attributes:
        candidates: Random paths (or mutants) drawn per step; the most novel is taken.
        neighbours: ``k``, nearest neighbours in the archive whose distances are averaged.
        archive_size: Most recent paths kept in the archive.
    """

    candidates: int = 10
    neighbours: int = 10
    archive_size: int = 1000

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self.candidates, "strategy.candidates")
        check_positive(self.neighbours, "strategy.neighbours")
        check_positive(self.archive_size, "strategy.archive_size")


def novelty(candidates: torch.Tensor, archive: torch.Tensor, k: int) -> torch.Tensor:
    """Mean Hamming distance of each candidate to its ``k`` nearest neighbours in ``archive``.

    Args:
        candidates: (C, D) option indices.
        archive: (N, D) option indices (N may be 0: every candidate is then equally novel, 0).
        k: Neighbours averaged (fewer when the archive is smaller).

    Returns:
        (C,) novelty scores.
    """
    if archive.shape[0] == 0:
        return torch.zeros(candidates.shape[0])
    distance = (candidates[:, None, :] != archive[None, :, :]).sum(-1).float()  # (C, N)
    nearest = distance.topk(min(k, archive.shape[0]), dim=1, largest=False).values  # (C, k)
    return nearest.mean(1)


@STRATEGIES.register("novelty", config=NoveltyConfig)
class NoveltySearch(RegularizedEvolution):
    """EN²AS: novelty-driven supernet paths, then regularized evolution that prefers novel mutants.

    Args:
        config: Evolution and novelty settings.
        space: The space to search.
        seed: Seeds sampling and mutation.
    """

    name = "novelty"
    needs_supernet = True

    def __init__(self, config: NoveltyConfig, *, space: Any, seed: int = 0) -> None:
        super().__init__(config, space=space, seed=seed)
        self.config: NoveltyConfig = config
        width = len(self.decisions)
        self.paths = torch.zeros(0, width, dtype=torch.long)  # (N, D) archive of training paths
        self.seen = torch.zeros(0, width, dtype=torch.long)  # (N, D) archive of asked candidates

    def _most_novel(
        self, options: list[Architecture], archive: torch.Tensor
    ) -> tuple[Architecture, torch.Tensor]:
        """The most novel of ``options`` against ``archive``, and the archive with it added."""
        encoded = torch.tensor([self.space.encode(a) for a in options])  # (C, D)
        best = int(novelty(encoded, archive, self.config.neighbours).argmax())  # first of equals
        updated = torch.cat([archive, encoded[best : best + 1]])[-self.config.archive_size :]
        return options[best], updated

    def sample_path(self) -> Architecture:
        """The most novel of ``candidates`` random paths, which joins the archive."""
        options = [self.random_architecture() for _ in range(self.config.candidates)]
        path, self.paths = self._most_novel(options, self.paths)
        return path

    def propose(self) -> Architecture | None:
        first_population = self.asked < self.config.population_size
        arch = super().propose()
        if arch is not None and first_population:
            # A random member of the first population: archive it too (mutants archive themselves).
            encoded = torch.tensor([self.space.encode(arch)])
            self.seen = torch.cat([self.seen, encoded])[-self.config.archive_size :]
        return arch

    def mutate(self, arch: Architecture) -> Architecture:
        """The most novel (against the candidates asked so far) of ``candidates`` mutants of ``arch``."""
        options = [super(NoveltySearch, self).mutate(arch) for _ in range(self.config.candidates)]
        child, self.seen = self._most_novel(options, self.seen)
        return child

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "paths": self.paths.clone(), "seen": self.seen.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.paths = state["paths"].to(torch.long)
        self.seen = state["seen"].to(torch.long)
