"""Novelty-driven sampling of a one-shot supernet's paths (Zhang, Li, Pan, Liu and Su, "One-Shot
Neural Architecture Search via Novelty Driven Sampling", IJCAI 2020; arXiv 1907.09109, "Efficient
Novelty-Driven Neural Architecture Search", EN²AS).

Reward-driven sampling trains the paths a controller already likes, so the supernet's ranking
favours them (the rich get richer); EN²AS trains the most *novel* path instead, found by novelty
search (Lehman and Stanley) with an evolution strategy over continuous architecture parameters.
The novelty of an architecture is the mean distance of its encoding to its ``k`` nearest
neighbours in the archive of the paths trained before (here the Hamming distance between option
indices, the archive bounded to the ``archive_size`` most recent paths). Each training step
(:meth:`NoveltySearch.sample_path`, :meth:`NoveltySearch.novelty_step`):

* draws ``candidates`` perturbations ``eps_i ~ N(0, I)`` of the parameters ``theta`` (a logit per
  option of every decision); candidate ``i`` is the architecture ``argmax(theta + sigma eps_i)``
  (per decision), and its novelty ``N_i`` is taken against the archive;
* moves ``theta`` along the evolution-strategy estimate of the novelty gradient,
  ``theta += lr / (n sigma) * sum_i z_i eps_i`` with ``z`` the novelties standardised over the
  ``n`` candidates (mean 0, deviation 1; all equal: no move);
* trains the most novel candidate, which joins the archive.

The search over the trained supernet is regularized evolution (Real et al., AAAI 2019) with the
same novelty: of ``candidates`` one-decision mutants of a tournament's winner, the one most novel
with respect to the candidates asked so far is evaluated, so the evolution spends its evaluations
on architectures it has not seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import torch

from raynas.config import Rule
from raynas.strategies.registry import STRATEGIES
from raynas.strategies.sampling.evolution import EvolutionConfig, RegularizedEvolution
from raynas.types import Architecture


@dataclass(frozen=True)
class NoveltyConfig(EvolutionConfig):
    """Regularized evolution's P, S and evaluations, plus the novelty search.

    Attributes:
        candidates: Perturbed paths (or mutants) drawn per step; the most novel is taken.
        neighbours: ``k``, nearest neighbours in the archive whose distances are averaged.
        archive_size: Most recent paths kept in the archive.
        sigma: The perturbations' standard deviation.
        es_learning_rate: The evolution strategy's step on ``theta``.
    """

    candidates: Annotated[int, Rule(ge=1)] = 10
    neighbours: Annotated[int, Rule(ge=1)] = 10
    archive_size: Annotated[int, Rule(ge=1)] = 1000
    sigma: Annotated[float, Rule(gt=0)] = 1.0
    es_learning_rate: Annotated[float, Rule(ge=0)] = 0.01


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
        self.sizes = [len(d.options) for d in self.decisions]
        self.theta = torch.zeros(sum(self.sizes))  # a logit per option of every decision
        self.generator = torch.Generator().manual_seed(seed)

    def _most_novel(
        self, options: list[Architecture], archive: torch.Tensor
    ) -> tuple[Architecture, torch.Tensor]:
        """The most novel of ``options`` against ``archive``, and the archive with it added."""
        encoded = torch.tensor([self.space.encode(a) for a in options])  # (C, D)
        best = int(novelty(encoded, archive, self.config.neighbours).argmax())  # first of equals
        updated = torch.cat([archive, encoded[best : best + 1]])[-self.config.archive_size :]
        return options[best], updated

    def _argmax(self, theta: torch.Tensor) -> list[int]:
        """The option with the largest logit of every decision."""
        return [int(part.argmax()) for part in theta.split(self.sizes)]

    def sample_path(self) -> Architecture:
        """One step of the novelty search; its most novel candidate is the path to train."""
        eps = torch.randn(self.config.candidates, len(self.theta), generator=self.generator)
        return self.novelty_step(eps)

    def novelty_step(self, eps: torch.Tensor) -> Architecture:
        """The novelty-search step with perturbations ``eps`` (n, options): the most novel of the
        candidates ``argmax(theta + sigma eps_i)`` joins the archive and is returned; ``theta``
        moves along ``lr / (n sigma) * sum_i z_i eps_i`` (``z``: standardised novelties)."""
        sigma = self.config.sigma
        values = torch.tensor([self._argmax(self.theta + sigma * e) for e in eps])  # (n, D)
        scores = novelty(values, self.paths, self.config.neighbours)  # (n,)
        spread = scores.std(unbiased=False)
        if spread > 0:
            z = (scores - scores.mean()) / spread
            self.theta = self.theta + self.config.es_learning_rate / (len(eps) * sigma) * (z @ eps)
        best = int(scores.argmax())  # first of equals
        self.paths = torch.cat([self.paths, values[best : best + 1]])[-self.config.archive_size :]
        return self.space.decode(values[best].tolist())

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
        return {
            **super().state_dict(), "paths": self.paths.clone(), "seen": self.seen.clone(),
            "theta": self.theta.clone(), "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.paths = state["paths"].to(torch.long)
        self.seen = state["seen"].to(torch.long)
        self.theta = state["theta"].float()
        self.generator.set_state(state["generator"])
