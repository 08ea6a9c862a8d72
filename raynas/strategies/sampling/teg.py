"""TEG-NAS inside single-path search (Chen et al., "Understanding and Accelerating Neural
Architecture Search with Training-Free and Theory-Grounded Metrics", code VITA-Group/TEGNAS):
regularized evolution and REINFORCE guided by the training-free indicators, not by accuracy.

Candidates are scored by the ``training_free`` evaluator's ``te_nas`` proxy, which reports the
three indicators of each (``ntk_cond``, ``linear_regions``, ``ntk_mse``:
:mod:`raynas.supernet.teg`). Each indicator is read as a reward, higher better
(``te_reward_generator.py``: ``-ntk``, ``region``, ``-mse``).

- ``teg_evolution`` (``R_EA.py``): regularized evolution whose tournament winner is the member
  with the smallest sum, over the indicators, of its rank among the tournament (``best_of_sample``:
  each indicator's rewards sorted descending, a member's rank the first index of its value);
  the answer is the best of the final population by the same rule.
- ``teg_reinforce`` (``reinforce.py``): a policy of independent softmaxes, one per decision
  (logits ``1e-3 N(0, 1)``), trained by Adam with REINFORCE, one sample per step, an exponential
  moving average baseline (momentum 0.9, debiased), loss ``-log p(a) (r - b)``. The reward of a
  sample is TEG-NAS's relative improvement: for each indicator, the change from the previous
  sample's value over the range of the last ``buffer_size`` values,
  ``r = sum_i s_i (v_i[t] - v_i[t-1]) / (max - min + 1e-6)`` (``s``: -1 for ``ntk`` and ``mse``,
  +1 for ``region``), 0 for the first sample; a sample with an infinite (bad) NTK or regression
  error takes the worst value in the buffer (``_buffer_insert``). The answer is the sample of the
  smallest rank sum over the whole history (``_buffer_rank_best``).

Results without the indicators (another evaluator) are ranked by their score alone, the code's
single-reward case. The code's DARTS policy samples two inputs per node from the chosen
operations' logits; here the policy is over the space's flat decisions, whatever they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import torch

from raynas.config import Rule, check_rules
from raynas.strategies.registry import STRATEGIES
from raynas.strategies.sampling.base import CellShapeLimits, SamplingStrategy, fitting_sample
from raynas.strategies.sampling.evolution import EvolutionConfig, RegularizedEvolution
from raynas.types import Architecture, EvalResult

# The te_nas proxy's metrics and the sign that makes each a reward (higher better).
INDICATOR_METRICS: dict[str, float] = {"ntk_cond": -1.0, "linear_regions": 1.0, "ntk_mse": -1.0}


def rewards(result: EvalResult) -> dict[str, float]:
    """The result's indicators as rewards (``-ntk_cond``, ``linear_regions``, ``-ntk_mse``), or
    ``{"score": score}`` for a result that has none of them."""
    found = {k: s * result.metrics[k] for k, s in INDICATOR_METRICS.items() if k in result.metrics}
    return found or {"score": result.score}


def rank_sums(results: Sequence[EvalResult]) -> list[int]:
    """``best_of_sample``'s ranks: for each reward key common to all results, the results' values
    sorted descending, each result's rank the first index of its value; summed over the keys."""
    table = [rewards(r) for r in results]
    keys = [k for k in table[0] if all(k in t for t in table)] if table else []
    if not keys:
        keys = ["score"]
        table = [{"score": r.score} for r in results]
    sums = [0] * len(results)
    for key in keys:
        ordered = sorted((t[key] for t in table), reverse=True)
        for i, t in enumerate(table):
            sums[i] += ordered.index(t[key])
    return sums


def best_of(results: Sequence[EvalResult]) -> EvalResult:
    """The result with the smallest rank sum (the first of equals)."""
    sums = rank_sums(results)
    return results[sums.index(min(sums))]


def by_rank(results: Sequence[EvalResult]) -> list[EvalResult]:
    """``results`` best first by rank sum (equals in their order)."""
    sums = rank_sums(results)
    return [results[i] for i in sorted(range(len(results)), key=lambda i: sums[i])]


@STRATEGIES.register("teg_evolution", config=EvolutionConfig)
class TegEvolution(RegularizedEvolution):
    """Regularized evolution whose tournaments are won by TEG-NAS's rank sum.

    Args:
        config: P, S and the number of evaluations (``R_EA.py``'s population and sample sizes).
        space: The space to search.
        seed: Seeds sampling and mutation.
    """

    name = "teg_evolution"

    def propose(self) -> Architecture | None:
        if self.asked >= self.config.evaluations:
            return None
        if self.asked < self.config.population_size:
            return self.random_architecture()
        if len(self.history) < self.config.sample_size:
            return None
        population = self.population
        tournament = self.rng.sample(population, min(self.config.sample_size, len(population)))
        return self.mutate(best_of(tournament).architecture)

    def final_results(self) -> list[EvalResult]:
        """The final population, best first by rank sum (the code's answer is its first)."""
        return by_rank(self.population)


@dataclass(frozen=True)
class TegReinforceConfig:
    """REINFORCE on TEG-NAS's rewards (``reinforce_launch.py``: Adam 0.04 on NAS-Bench-201, 0.07 on
    DARTS; EMA momentum 0.9; 500 steps; a buffer of 10).

    Attributes:
        evaluations: Samples, one policy step each.
        learning_rate: Adam's learning rate.
        ema_momentum: Momentum of the baseline's moving average.
        buffer_size: Values each reward's range is taken over.
        samples_in_flight: Samples drawn from the policy before their results are told (1, the
            code's: sample, evaluate, step; more lets ``execution.concurrency`` evaluators work at
            once, each result still one policy step, in the order the results come).
        cell_shape: Bounds on the width and depth of the samples' cells (:class:`CellShapeLimits`):
            a sample outside them is drawn again from the policy (no step is taken on it).
    """

    evaluations: Annotated[int, Rule(ge=1)] = 500
    learning_rate: Annotated[float, Rule(gt=0)] = 0.04
    ema_momentum: Annotated[float, Rule(ge=0, lt=1)] = 0.9
    buffer_size: Annotated[int, Rule(ge=1)] = 10
    samples_in_flight: Annotated[int, Rule(ge=1)] = 1
    cell_shape: CellShapeLimits | None = None

    def __post_init__(self) -> None:
        check_rules(self, "strategy")


class MovingAverage:
    """``reinforce.py``'s ExponentialMovingAverage: debiased by the accumulated weight."""

    def __init__(self, momentum: float) -> None:
        self.momentum = momentum
        self.numerator = 0.0
        self.denominator = 0.0

    def update(self, value: float) -> None:
        self.numerator = self.momentum * self.numerator + (1 - self.momentum) * value
        self.denominator = self.momentum * self.denominator + (1 - self.momentum)

    def value(self) -> float:
        return self.numerator / self.denominator


class RewardBuffer:
    """``Buffer_Reward_Generator``'s buffers: each indicator's values and changes, and the reward."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.values: dict[str, list[float]] = {}
        self.changes: dict[str, list[float]] = {}
        self.bad: list[bool] = []

    def _change(self, key: str, index: int) -> float:
        window = self.values[key][max(0, index + 1 - self.size) : index + 1]
        return (self.values[key][index] - self.values[key][index - 1]) / (max(window) - min(window) + 1e-6)

    def insert(self, values: dict[str, float]) -> float:
        """Add one sample's indicators (as the code stores them: ``ntk_cond``, ``linear_regions``,
        ``ntk_mse``, lower better for the first and last) and return its reward."""
        bad = any(not math.isfinite(v) for v in values.values())
        if not self.bad:
            self.bad.append(bad)
            for key, value in values.items():
                self.values[key], self.changes[key] = [value], [0.0]
            return 0.0
        values = dict(values)
        for key in ("ntk_cond", "ntk_mse"):
            if key not in values:
                continue
            worst = max(self.values[key])
            if bad:
                values[key] = worst  # a bad architecture is as bad as the worst so far
            elif values[key] > worst:
                self._update_bad(key, values[key])
        self.bad.append(bad)
        for key, value in values.items():
            self.values[key].append(value)
            self.changes[key].append(self._change(key, len(self.values[key]) - 1))
        return sum(_SIGN.get(k, 1.0) * self.changes[k][-1] for k in values)

    def _update_bad(self, key: str, value: float) -> None:
        # _update_bad_cases: the bad samples so far take the new worst value of every indicator,
        # and their changes (and the next sample's) are taken again.
        for idx, isbad in enumerate(self.bad):
            if not isbad:
                continue
            for name in self.values:
                self.values[name][idx] = value
            for name in self.values:
                self.changes[name][idx] = self._change(name, idx) if idx > 0 else 0.0
                if idx + 1 < len(self.bad):
                    self.changes[name][idx + 1] = self._change(name, idx + 1)

    def state_dict(self) -> dict[str, Any]:
        return {"values": self.values, "changes": self.changes, "bad": self.bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.values = {k: [float(x) for x in v] for k, v in state["values"].items()}
        self.changes = {k: [float(x) for x in v] for k, v in state["changes"].items()}
        self.bad = [bool(b) for b in state["bad"]]


_SIGN = {"ntk_cond": -1.0, "linear_regions": 1.0, "ntk_mse": -1.0, "score": 1.0}


def buffer_values(result: EvalResult) -> dict[str, float]:
    """What the reward buffer stores of a result: its raw indicators, or its score."""
    found = {k: float(result.metrics[k]) for k in INDICATOR_METRICS if k in result.metrics}
    return found or {"score": float(result.score)}


@STRATEGIES.register("teg_reinforce", config=TegReinforceConfig)
class TegReinforce(SamplingStrategy):
    """REINFORCE over independent per-decision softmaxes, rewarded by TEG-NAS's relative
    improvements, one sample per step.

    Args:
        config: Steps, learning rate, baseline momentum, buffer size.
        space: The space to search.
        seed: Seeds the initial logits and the samples.
    """

    name = "teg_reinforce"

    def __init__(self, config: TegReinforceConfig, *, space: Any, seed: int = 0) -> None:
        super().__init__(space=space, seed=seed)
        self.config = config
        generator = torch.Generator().manual_seed(seed)
        width = max(len(d.options) for d in self.decisions)
        logits = 1e-3 * torch.randn(len(self.decisions), width, generator=generator, dtype=torch.float64)
        # Options past a decision's own count are masked out of its softmax.
        self.valid = torch.tensor([[j < len(d.options) for j in range(width)] for d in self.decisions])
        self.logits = torch.nn.Parameter(logits)
        self.optimizer = torch.optim.Adam([self.logits], lr=config.learning_rate)
        self.baseline = MovingAverage(config.ema_momentum)
        self.buffer = RewardBuffer(config.buffer_size)
        self.rewards: list[float] = []
        self.constrain_cells(config.cell_shape)

    def probabilities(self) -> torch.Tensor:
        """The policy: one distribution over each decision's options, (decisions, options)."""
        return torch.softmax(self.logits.masked_fill(~self.valid, float("-inf")), dim=-1)

    def log_prob(self, arch: Architecture) -> torch.Tensor:
        """``log p(arch)`` under the current policy (a scalar with gradient)."""
        actions = torch.tensor(self.space.encode(arch))
        logp = torch.log_softmax(self.logits.masked_fill(~self.valid, float("-inf")), dim=-1)
        return logp[torch.arange(len(actions)), actions].sum()

    def propose(self) -> Architecture | None:
        if self.asked >= self.config.evaluations or len(self.in_flight) >= self.config.samples_in_flight:
            return None  # by default one sample per policy step, as the code
        with torch.no_grad():
            probs = self.probabilities().tolist()
        return fitting_sample(self, lambda: self._draw(probs), what="teg_reinforce's policy")

    def _draw(self, probs: list[list[float]]) -> Architecture:
        values = []
        for row, decision in zip(probs, self.decisions, strict=True):
            u, total, pick = self.rng.random(), 0.0, len(decision.options) - 1
            for j in range(len(decision.options)):
                total += row[j]
                if u < total:
                    pick = j
                    break
            values.append(pick)
        return self.space.decode(values)

    def tell(self, result: EvalResult) -> None:
        super().tell(result)
        reward = self.buffer.insert(buffer_values(result))
        self.rewards.append(reward)
        self.update(result.architecture, reward)

    def update(self, arch: Architecture, reward: float) -> float:
        """One REINFORCE step on ``arch`` with ``reward``: the baseline is updated first, then
        ``-log p(arch) (reward - baseline)`` is minimised by one Adam step. Returns the loss."""
        self.baseline.update(reward)
        loss = -self.log_prob(arch) * (reward - self.baseline.value())
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    @property
    def done(self) -> bool:
        return len(self.history) >= self.config.evaluations

    def final_results(self) -> list[EvalResult]:
        """Every sample, best first by rank sum over the whole history (``_buffer_rank_best``)."""
        return by_rank(self.history)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "logits": self.logits.detach().clone(),
            "optimizer": self.optimizer.state_dict(),
            "baseline": [self.baseline.numerator, self.baseline.denominator],
            "buffer": self.buffer.state_dict(),
            "rewards": list(self.rewards),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.logits.copy_(state["logits"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline.numerator, self.baseline.denominator = (float(x) for x in state["baseline"])
        self.buffer.load_state_dict(state["buffer"])
        self.rewards = [float(r) for r in state["rewards"]]
