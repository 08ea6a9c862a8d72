"""EPNAS: a progressive policy trained with REINFORCE, a performance predictor that picks the
target networks, and rewards under several resource constraints (Zhou et al., "EPNAS: Efficient
Progressive Neural Architecture Search", arXiv:1907.04648, 2019).

The search runs in policy steps. Each step:

1. **Progressive policy.** An LSTM policy emits the space's decisions one after another, in the
   order of its decision groups (``decision_groups()`` where a space offers it, else one decision
   per group, as :mod:`.progressive`). The networks grow in stages: a step of stage ``s`` samples
   the decisions of groups ``0..s`` and leaves the others at the identity, so a network of an
   early stage is a small, complete one (FBNet's ``skip`` layers; NAS-Bench-201's and DARTS's
   ``skip_connect`` edges, not ``none``, which would leave a NAS-Bench-201 cell's output
   unconnected until its last stages; option 0 for a decision without an identity). The step
   budget is shared evenly over the stages and the last steps always sample whole networks.
2. **Performance prediction.** ``candidates`` networks are sampled from the policy and ranked by
   their predicted reward: a ridge regression on the one-hot encoding of their decisions, refit in
   closed form on every result so far, times their exact resource factor (below, known before any
   training; counted only as far as the ranking needs it). The ``batch_size`` best that were not
   evaluated yet are the step's target networks (samples fill the batch in the order drawn when
   fewer are new; before two results, the first ``batch_size`` samples).
3. **Parallel evaluation.** The target networks are asked for at once, and the driver evaluates
   them in parallel (``execution.concurrency`` evaluators on Ray); the step ends when all are told.
4. **REINFORCE.** The policy's loss is the mean over the batch of ``-(R_i - b) log p(a_i)`` (the
   log-probability of the decisions it sampled at this stage), ``b`` a moving average of earlier
   batches' mean reward (the first batch's own mean to begin with), then one Adam step.

**Resource constraints.** The reward of a network of accuracy ``A`` is
``R = A * prod_k min(1, T_k / c_k) ** w``: each constraint ``k`` that is set (``max_params``,
``max_macs``, ``max_latency_ms``) whose cost ``c_k`` exceeds its target ``T_k`` scales the
accuracy down by its ratio to the power ``w`` (``constraint_weight``), and a network within every
target keeps its accuracy. Parameters and multiply-adds are counted on the network of the size the
space section gives (its ``channels`` and ``layers`` or ``cells_per_stage``, as the one-shot
supernet scores it) for ``dataset``'s input shape (on the meta device: no memory, no compute);
latency is the sum of the network's parts in a measured latency table (:mod:`raynas.latency`;
FBNet's space has tables). The objective must be non-negative (an accuracy) for the product to
rank as intended; a failed evaluation has reward 0.

**Budgets.** A Tune scheduler (ASHA, HyperBand) may stop some target networks early. The policy
and the predictor learn from accuracies at equal budget: a step's rewards use each network's
objective at the smallest budget the step's networks reached, and the predictor's targets each
result's objective at the smallest budget every result so far reached, read from the results'
learning curves (:func:`raynas.types.scores_at_common_budget`; the scores as they
are when the results have one budget); the answer ranks the whole networks' rewards the same way.
This cannot be made fair for a result without a curve (inherited weights, a proxy, a trial whose
epochs were not all reported): it keeps its own score. The moving-average baseline carries earlier
steps' rewards, which may be at other budgets.

The answer is the whole network (last stage) of the highest reward. The paper's full text was not
available when this was written: the algorithm follows its abstract (a progressive search policy
with performance prediction based on REINFORCE, target networks searched in parallel, multiple
resource constraints) and Zhou et al.'s earlier RENA (resource constraints as factors of the
reward); the ridge predictor, the stage schedule and the reward's factor form are this module's
choices, each a setting where it has one.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import torch
from torch import nn

from raynas.config import Check, Rule, check_rules
from raynas.errors import ConfigError
from raynas.latency import LATENCY_DIR, LatencyTable, find_table
from raynas.strategies.registry import STRATEGIES
from raynas.strategies.sampling.base import CellShapeLimits, SamplingStrategy, rewards_at_common_budget
from raynas.strategies.sampling.policy import choose
from raynas.types import Architecture, EvalResult, scores_at_common_budget

Values = tuple[int, ...]
_TARGET = "must be >= 0 (0: no constraint)"
# The options that pass their input on unchanged: what a decision not sampled yet takes.
IDENTITIES = ("skip_connect", "skip")


@dataclass(frozen=True)
class EpnasConfig:
    """The policy, its REINFORCE training, the predictor and the resource constraints.

    Attributes:
        evaluations: Target networks evaluated in all.
        batch_size: Target networks per policy step, evaluated in parallel.
        candidates: Networks sampled from the policy per step and ranked by the predictor.
        lstm_size: Hidden size of the policy's one-layer LSTM.
        learning_rate: Adam's learning rate for the policy.
        baseline_decay: Decay of the moving-average baseline over batches.
        ridge: L2 weight of the ridge-regression predictor (its intercept is not penalised).
        dataset: The dataset whose input shape and classes the resource costs are counted on.
        max_params: Parameter target (0: none).
        max_macs: Multiply-add target of one image (0: none).
        max_latency_ms: Latency target in milliseconds, from ``latency_table`` (0: none).
        latency_table: A latency-table JSON file, or a device name with a table in
            ``latency_dir`` (needed with ``max_latency_ms``; resolved to an absolute path when
            the config is read, if it exists by then).
        latency_dir: Where device tables live.
        constraint_weight: ``w``, the exponent of each violated constraint's factor.
        cell_shape: Bounds on the width and depth of the target networks' cells
            (:class:`CellShapeLimits`): samples outside the maximums are dropped at every stage,
            outside any bound at the last (the whole networks); a step with too few that fit
            takes uniform architectures that fit.
    """

    evaluations: Annotated[int, Rule(ge=1)] = 64
    batch_size: Annotated[int, Rule(ge=1)] = 4
    candidates: Annotated[int, Rule(ge=1)] = 32
    lstm_size: Annotated[int, Rule(ge=1)] = 32
    learning_rate: Annotated[float, Rule(gt=0)] = 0.01
    baseline_decay: Annotated[float, Rule(ge=0, lt=1)] = 0.9
    ridge: Annotated[float, Rule(gt=0)] = 0.1
    dataset: str = "cifar10"
    max_params: Annotated[float, Rule(ge=0, says=_TARGET)] = 0.0
    max_macs: Annotated[float, Rule(ge=0, says=_TARGET)] = 0.0
    max_latency_ms: Annotated[float, Rule(ge=0, says=_TARGET)] = 0.0
    latency_table: str = ""
    latency_dir: str = LATENCY_DIR
    constraint_weight: Annotated[float, Rule(gt=0)] = 1.0
    cell_shape: CellShapeLimits | None = None

    checks: ClassVar[tuple[Check, ...]] = (
        Check(
            "candidates >= batch_size",
            "strategy.candidates ({candidates}) must be at least strategy.batch_size ({batch_size}): "
            "the predictor picks the batch among the candidates",
        ),
        Check(
            "not max_latency_ms or latency_table",
            "strategy.max_latency_ms needs strategy.latency_table: a latency-table JSON file, or a "
            "device name with a table in strategy.latency_dir ({latency_dir!r})",
        ),
    )

    job_checks: ClassVar[tuple[Check, ...]] = (
        Check(
            "not (max_params or max_macs or max_latency_ms) or dataset in datasets",
            "strategy.dataset: unknown dataset {dataset!r}; choose one of: {join(datasets)}",
        ),
        Check(
            "not max_latency_ms or space_is['latency_keys']",
            "strategy.max_latency_ms needs a space with latency tables (fbnet); space {space!r} has "
            "none: use max_params or max_macs",
        ),
    )

    def __post_init__(self) -> None:
        check_rules(self, "strategy")
        if self.latency_table:  # an absolute path, as the controller may run in another folder
            with contextlib.suppress(ConfigError):  # not measured yet: the strategy says so when built
                table = find_table(self.latency_table, self.latency_dir)
                object.__setattr__(self, "latency_table", str(table))


def constrained_reward(
    accuracy: float, costs: dict[str, float], targets: dict[str, float], weight: float
) -> float:
    """``accuracy * prod_k min(1, targets[k] / costs[k]) ** weight`` over the targets set (> 0);
    0 for a non-finite accuracy (a failed evaluation)."""
    if not math.isfinite(accuracy):
        return 0.0
    factor = 1.0
    for key, target in targets.items():
        if target > 0 and costs[key] > target:
            factor *= (target / costs[key]) ** weight
    return accuracy * factor


def one_hot(values: list[Values], sizes: tuple[int, ...]) -> torch.Tensor:
    """(N, sum of sizes) float64: a 1 at each decision's chosen option."""
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    x = torch.zeros(len(values), sum(sizes), dtype=torch.float64)
    for row, v in enumerate(values):
        x[row, [o + i for o, i in zip(offsets, v, strict=True)]] = 1.0
    return x


@dataclass(frozen=True)
class RidgePredictor:
    """``y ~ x @ weights + intercept``, fit by ridge regression with an unpenalised intercept.

    Attributes:
        weights: (F,) float64.
        intercept: The mean target minus the mean feature vector's prediction.
    """

    weights: torch.Tensor
    intercept: float

    @staticmethod
    def fit(x: torch.Tensor, y: torch.Tensor, ridge: float) -> RidgePredictor:
        """Minimise ``|x w + c - y|^2 + ridge |w|^2``: on centred data,
        ``w = (Xc^T Xc + ridge I)^-1 Xc^T yc`` and ``c = mean(y) - mean(x) w``.

        Args:
            x: (N, F) features.
            y: (N,) targets.
            ridge: The L2 weight (> 0, so the system is always solvable).
        """
        x, y = x.to(torch.float64), y.to(torch.float64)
        mx, my = x.mean(0), y.mean()  # (F,), ()
        xc, yc = x - mx, y - my  # (N, F), (N,)
        gram = xc.T @ xc + ridge * torch.eye(x.shape[1], dtype=torch.float64)  # (F, F)
        w = torch.linalg.solve(gram, xc.T @ yc)  # (F,)
        return RidgePredictor(w, float(my - mx @ w))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float64) @ self.weights + self.intercept  # (N,)


class ProgressivePolicy(nn.Module):
    """An LSTM that emits decisions in a fixed order, each from a softmax head of its own, the
    embedding of the chosen option feeding the next step (NASNet's and ENAS's controllers without
    attention), and stops after any prefix of the order.

    Args:
        sizes: Options of every decision (indexed as the space's decisions).
        order: The decision indices in the order they are emitted.
        hidden: LSTM size.
    """

    def __init__(self, sizes: tuple[int, ...], order: tuple[int, ...], hidden: int) -> None:
        super().__init__()
        self.order = order
        self.start = nn.Parameter(torch.zeros(1, hidden))
        self.lstm = nn.LSTMCell(hidden, hidden)
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in sizes)
        self.embeddings = nn.ModuleList(nn.Embedding(n, hidden) for n in sizes)
        for p in self.parameters():  # uniform in [-0.1, 0.1], as ENAS initialises its controller
            nn.init.uniform_(p, -0.1, 0.1)

    def forward(
        self, length: int, actions: torch.Tensor | None = None, *, batch: int = 1,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``batch`` prefixes of ``length`` decisions, or score the given ones.

        Args:
            length: Decisions emitted (the first ``length`` of :attr:`order`).
            actions: (B, length) options to score (teacher forcing), or None to sample.
            batch: Prefixes to sample when ``actions`` is None.
            generator: The random stream samples are drawn from.

        Returns:
            The options (B, length), in emission order, and their summed log-probability (B,).
        """
        n = actions.shape[0] if actions is not None else batch
        x, state = self.start.expand(n, -1), None  # (B, hidden)
        chosen, log_prob = [], x.new_zeros(n)
        for t, decision in enumerate(self.order[:length]):
            h, c = self.lstm(x, state)  # (B, hidden) each
            state = (h, c)
            log_p = torch.log_softmax(self.heads[decision](h), dim=-1)  # (B, options)
            a, log_p_a = choose(log_p, actions, t, generator)  # (B,) each
            chosen.append(a)
            log_prob = log_prob + log_p_a
            x = self.embeddings[decision](a)  # (B, hidden)
        if not chosen:
            return torch.zeros(n, 0, dtype=torch.long), log_prob
        return torch.stack(chosen, 1), log_prob


@STRATEGIES.register("epnas", config=EpnasConfig)
class Epnas(SamplingStrategy):
    """EPNAS: progressive REINFORCE policy, a predictor picking each step's target networks, and
    a resource-constrained reward.

    Args:
        config: Policy, predictor and constraint settings.
        space: The space to search (``decision_groups()`` sets the stages where it has one;
            ``build`` for parameter and multiply-add targets, ``latency_keys`` for latency ones).
        seed: Seeds the policy's initial weights and its samples.
    """

    name = "epnas"

    def __init__(self, config: EpnasConfig, *, space: Any, seed: int = 0) -> None:
        super().__init__(space=space, seed=seed)
        self.config = config
        self.sizes = tuple(len(d.options) for d in self.decisions)
        self.groups = self.stage_groups()
        self.order = tuple(i for g in self.groups for i in g)
        self.unset = tuple(
            next((d.options.index(o) for o in IDENTITIES if o in d.options), 0) for d in self.decisions
        )
        self.steps = math.ceil(config.evaluations / config.batch_size)
        self.targets = {
            "params": config.max_params, "macs": config.max_macs, "latency_ms": config.max_latency_ms,
        }
        self.info: Any = None
        self.table: LatencyTable | None = None
        if any(self.targets.values()):
            from raynas.data import dataset_info

            try:
                self.info = dataset_info(config.dataset)
            except ConfigError as exc:
                raise ConfigError(f"strategy.dataset: {exc}") from None
            if not hasattr(self.space, "build"):
                raise ConfigError(
                    f"strategy 'epnas' counts costs on networks: {type(self.space).__name__} builds none"
                )
        if config.max_latency_ms:
            if not hasattr(self.space, "latency_keys"):
                raise ConfigError(
                    f"strategy.max_latency_ms needs a space with latency tables (fbnet); "
                    f"{type(self.space).__name__} has none: use max_params or max_macs"
                )
            self.table = LatencyTable.load(find_table(config.latency_table, config.latency_dir))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.policy = ProgressivePolicy(self.sizes, self.order, config.lstm_size)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.learning_rate)
        self.generator = torch.Generator().manual_seed(seed)
        self.baseline: float | None = None
        self.step = 0  # policy steps whose targets were chosen
        self.consumed = 0  # results of the history used by finished steps
        self.batch: list[Values] = []  # this step's targets
        self.to_ask: list[Values] = []
        self._costs: dict[Values, dict[str, float]] = {}
        self.constrain_cells(config.cell_shape)

    # -- stages ----------------------------------------------------------------------------------

    def stage_of(self, step: int) -> int:
        """The stage of policy step ``step``: the steps shared evenly over the groups (some
        stages skipped when there are fewer steps than groups), the last step in the last stage."""
        return ((step + 1) * len(self.groups) - 1) // self.steps

    def prefix(self, stage: int) -> int:
        """Decisions the policy emits at ``stage`` (those of groups ``0..stage``)."""
        return sum(len(g) for g in self.groups[: stage + 1])

    def values_of(self, emitted: list[int]) -> Values:
        """The full decision vector of an emitted prefix (the rest at :attr:`unset`: the identity
        where a decision has one, else option 0)."""
        values = list(self.unset)
        for i, option in zip(self.order, emitted, strict=False):
            values[i] = int(option)
        return tuple(values)

    # -- the reward --------------------------------------------------------------------------------

    def costs(self, values: Values) -> dict[str, float]:
        """Parameters, multiply-adds and table latency of a network (those a target is set for)."""
        if values not in self._costs:
            from raynas.profile import count_macs, count_params, counting_device

            arch, out = self.space.decode(values), {}
            if self.targets["params"] or self.targets["macs"]:
                with counting_device(self.info.image_shape):
                    network = self.space.build(arch, self.info, **self.size())
                out["params"] = float(count_params(network))
                if self.targets["macs"]:
                    out["macs"] = float(count_macs(network, self.info.image_shape)[0])
            if self.table is not None:
                out["latency_ms"] = self.table.predict(self.space.latency_keys(arch, self.info))
            self._costs[values] = out
        return self._costs[values]

    def size(self) -> dict[str, int | None]:
        """``build``'s size arguments for the networks the search scores: the space section's
        ``channels`` and ``layers`` (or ``cells_per_stage``) where it has them, else the space's
        defaults (as the one-shot supernet and the ``scratch`` evaluator by default build them)."""
        cfg = getattr(self.space, "config", None)
        layers = getattr(cfg, "layers", None) or getattr(cfg, "cells_per_stage", None)
        return {"channels": getattr(cfg, "channels", None) or None, "layers": layers or None}

    def factor(self, values: Values) -> float:
        """The resource factor of a network: its reward per unit of accuracy."""
        if not any(self.targets.values()):
            return 1.0
        return constrained_reward(1.0, self.costs(values), self.targets, self.config.constraint_weight)

    def reward(self, result: EvalResult, score: float | None = None) -> float:
        """The reward of an evaluation: its score (``score`` in its place, the score at another
        budget, when given) scaled by its resource factor (0 if failed)."""
        score = result.score if score is None else score
        if not math.isfinite(score):
            return 0.0
        return score * self.factor(tuple(self.space.encode(result.architecture)))

    # -- the predictor -----------------------------------------------------------------------------

    def predictor(self) -> RidgePredictor | None:
        """The ridge predictor of accuracy, fit on every finite result (None before two), at
        equal budget: each result's score at the smallest budget every result reached
        (:func:`scores_at_common_budget`)."""
        targets = scores_at_common_budget(self.history)
        data = [
            (tuple(self.space.encode(r.architecture)), s)
            for r, s in zip(self.history, targets, strict=True) if math.isfinite(s)
        ]
        if len(data) < 2:
            return None
        x = one_hot([v for v, _ in data], self.sizes)  # (N, F)
        y = torch.tensor([s for _, s in data], dtype=torch.float64)  # (N,)
        return RidgePredictor.fit(x, y, self.config.ridge)

    def _choose(self) -> list[Values]:
        """The next step's target networks: the best predicted of the policy's samples."""
        stage = self.stage_of(self.step)
        size = min(self.config.batch_size, self.config.evaluations - self.step * self.config.batch_size)
        with torch.no_grad():
            emitted, _ = self.policy(
                self.prefix(stage), batch=self.config.candidates, generator=self.generator
            )  # (candidates, prefix)
        samples = [self.values_of(e) for e in emitted.tolist()]
        if self.shape_limits is not None:  # maximums at every stage, every bound at the last
            last = stage == len(self.groups) - 1
            samples = [v for v in samples
                       if self.shape_violation(self.space.decode(v), upper_only=not last) == 0]
            while len(samples) < size:  # too few fit: uniform ones that fit every bound
                samples.append(tuple(self.space.encode(self.random_architecture())))
        model = self.predictor()
        if model is None:
            return samples[:size]
        seen = {tuple(self.space.encode(r.architecture)) for r in self.history}
        fresh = list(dict.fromkeys(v for v in samples if v not in seen))  # distinct, in draw order
        chosen = self._rank(fresh, model)[:size] if fresh else []
        for v in samples:  # too few new networks: samples in the order drawn, evaluated again
            if len(chosen) < size and v not in chosen:
                chosen.append(v)
        while len(chosen) < size:  # fewer distinct samples than targets: repeats
            chosen.append(samples[len(chosen) % len(samples)])
        return chosen

    def _rank(self, fresh: list[Values], model: RidgePredictor) -> list[Values]:
        """``fresh`` by predicted reward, best first, as far as the batch needs: the resource
        factor (at most 1) is counted in order of predicted accuracy, until the next network's
        accuracy (a bound on its reward) is below the batch's worst reward so far."""
        size = self.config.batch_size
        predicted = model(one_hot(fresh, self.sizes)).tolist()  # (N,)
        scored: list[tuple[float, int]] = []
        for i in sorted(range(len(fresh)), key=lambda i: -predicted[i]):  # stable for ties
            if len(scored) >= size and max(predicted[i], 0.0) < sorted(s for s, _ in scored)[-size]:
                break
            scored.append((predicted[i] * self.factor(fresh[i]), i))
        return [fresh[i] for _, i in sorted(scored, key=lambda p: -p[0])]

    # -- ask / tell -------------------------------------------------------------------------------

    def propose(self) -> Architecture | None:
        if not self.to_ask:
            if self.step >= self.steps or len(self.history) < self.consumed + len(self.batch):
                return None  # the step's targets are being evaluated, or the search is over
            self.batch = self._choose()
            self.to_ask = list(self.batch)
            self.step += 1
        return self.space.decode(self.to_ask.pop(0))

    def tell(self, result: EvalResult) -> None:
        super().tell(result)
        if self.batch and len(self.history) >= self.consumed + len(self.batch) and not self.to_ask:
            results = self.history[self.consumed : self.consumed + len(self.batch)]
            self.consumed += len(self.batch)
            self.update(results, stage=self.stage_of(self.step - 1))
            self.batch = []

    def policy_loss(self, results: list[EvalResult], *, stage: int) -> torch.Tensor:
        """REINFORCE's loss over a step's results: mean of ``-(R_i - b) log p(a_i)``, ``b`` the
        baseline before this batch (the batch's mean reward for the first); updates the baseline."""
        length = self.prefix(stage)
        values = [tuple(self.space.encode(r.architecture)) for r in results]
        actions = torch.tensor([[v[i] for i in self.order[:length]] for v in values], dtype=torch.long)
        _, log_prob = self.policy(length, actions)  # (B,)
        rewards = torch.tensor(rewards_at_common_budget(self.reward, results))  # (B,), at a common budget
        mean = float(rewards.mean())
        baseline = mean if self.baseline is None else self.baseline
        self.baseline = mean if self.baseline is None else (
            self.config.baseline_decay * self.baseline + (1 - self.config.baseline_decay) * mean
        )
        return (-(rewards - baseline) * log_prob).mean()

    def update(self, results: list[EvalResult], *, stage: int) -> None:
        """One Adam step of the policy on a finished step's results."""
        loss = self.policy_loss(results, stage=stage)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    # -- the answer -------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.step >= self.steps and not self.batch

    def final_results(self) -> list[EvalResult]:
        """Whole networks (the results of the last stage's steps), highest reward first, their
        rewards at equal budget (:func:`rewards_at_common_budget`); every result when there are none yet."""
        first = min(s for s in range(self.steps) if self.stage_of(s) == len(self.groups) - 1)
        whole = self.history[first * self.config.batch_size :] or self.history
        rewards = rewards_at_common_budget(self.reward, whole)
        order = sorted(range(len(whole)), key=lambda i: -rewards[i])  # stable: ties keep their order
        return [whole[i] for i in order]

    def best(self) -> EvalResult | None:
        ranked = self.final_results()
        return ranked[0] if ranked else None

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "baseline": self.baseline,
            "step": self.step,
            "consumed": self.consumed,
            "batch": [list(v) for v in self.batch],
            "to_ask": [list(v) for v in self.to_ask],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the policy, its optimiser, random stream and baseline, and the step in progress:
        its targets in flight at the save are asked again first, then those not asked yet."""
        super().load_state_dict(state)
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.baseline = None if state["baseline"] is None else float(state["baseline"])
        self.step = int(state["step"])
        self.consumed = int(state["consumed"])
        self.batch = [tuple(int(x) for x in v) for v in state["batch"]]
        self.to_ask = [tuple(int(x) for x in v) for v in state["to_ask"]]
