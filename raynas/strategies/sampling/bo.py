"""Bayesian optimisation over a space's choices through a Ray Tune searcher: Optuna's
tree-structured Parzen estimator (Bergstra et al., "Algorithms for Hyper-Parameter Optimization",
NeurIPS 2011; multivariate TPE as in Falkner et al., BOHB, ICML 2018), via
``ray.tune.search.optuna.OptunaSearch`` used standalone.

Every decision of the space's flat view is a categorical parameter (``tune.choice`` over its option
indices). ``ask`` is the searcher's ``suggest`` decoded into an architecture, ``tell`` its
``on_trial_complete``. A suggestion already evaluated is not evaluated again: the searcher is told
its known score at once and asked anew (up to ``max_repeats`` times). With the constant liar, TPE
keeps concurrent suggestions apart.

The searcher itself is not saved (it holds an Optuna study, not plain data): the state is the log
of suggestions and results, and loading replays it into a fresh searcher with the same seed, which
makes the same suggestions again (checked; if a different Optuna suggests otherwise, the results
are added as evaluated points instead). Suggestions in flight at the save are asked again.

This is the one strategy that imports Ray (``ray.tune``), lazily, when it is built.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

from raynas.strategies import STRATEGIES
from raynas.strategies.sampling.base import SamplingStrategy, check_positive
from raynas.types import Architecture, EvalResult

_METRIC = "score"


@dataclass(frozen=True)
class BoConfig:
    """TPE through Ray Tune's OptunaSearch.

    Attributes:
        evaluations: Candidates evaluated in all.
        startup: Random suggestions before TPE models the results (Optuna's ``n_startup_trials``).
        multivariate: Model the decisions jointly (multivariate TPE) rather than one by one.
        constant_liar: Treat suggestions in flight as bad results, so concurrent ones differ.
        max_repeats: Suggestions of already evaluated architectures answered from the record per
            ask, before one is evaluated again anyway.
    """

    evaluations: int = 100
    startup: int = 10
    multivariate: bool = True
    constant_liar: bool = True
    max_repeats: int = 50

    def __post_init__(self) -> None:
        check_positive(self.evaluations, "strategy.evaluations")
        check_positive(self.startup, "strategy.startup")
        check_positive(self.max_repeats, "strategy.max_repeats")


@STRATEGIES.register("bo", config=BoConfig)
class BayesOpt(SamplingStrategy):
    """Ask/tell over Ray Tune's ``OptunaSearch`` (TPE) on the space's categorical decisions.

    Args:
        config: Budget and TPE settings.
        space: The space to search.
        seed: Seeds the TPE sampler.
    """

    name = "bo"

    def __init__(self, config: BoConfig, *, space: Any, seed: int = 0) -> None:
        super().__init__(space=space, seed=seed)
        self.config = config
        self.seed = seed
        # The log that rebuilds the searcher: every suggestion (values, score once told) and the
        # order of events, ("ask", i), ("tell", i) or ("point", i) for results told unasked.
        self.trials: list[dict[str, Any]] = []
        self.events: list[tuple[str, int]] = []
        self.pending: dict[tuple[int, ...], list[int]] = {}  # values -> trials in flight
        self.reask: list[int] = []  # trials in flight at the save, asked again first
        self.known: dict[tuple[int, ...], float] = {}
        self.searcher = self._new_searcher()

    def _new_searcher(self) -> Any:
        import optuna
        from ray import tune
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(
                seed=self.seed, n_startup_trials=self.config.startup,
                multivariate=self.config.multivariate, constant_liar=self.config.constant_liar,
            )
        space = {f"d{i}": tune.choice(list(range(len(d.options)))) for i, d in enumerate(self.decisions)}
        return OptunaSearch(
            space=OptunaSearch.convert_search_space(space), metric=_METRIC, mode="max", sampler=sampler
        )

    def _params(self, values: tuple[int, ...]) -> dict[str, int]:
        return {f"d{i}": v for i, v in enumerate(values)}

    def _suggest(self, index: int) -> tuple[int, ...]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's experimental-feature warnings
            params = self.searcher.suggest(f"t{index}")
        return tuple(int(params[f"d{i}"]) for i in range(len(self.decisions)))

    def _complete(self, index: int, score: float) -> None:
        if math.isfinite(score):
            self.searcher.on_trial_complete(f"t{index}", result={_METRIC: score})
        else:
            self.searcher.on_trial_complete(f"t{index}", error=True)

    def _add_point(self, values: tuple[int, ...], score: float) -> None:
        if math.isfinite(score):
            self.searcher.add_evaluated_point(self._params(values), score)
        else:
            self.searcher.add_evaluated_point(self._params(values), 0.0, error=True)

    def ask(self) -> Architecture | None:
        if self.reask:
            index = self.reask.pop(0)
        else:
            if self.asked >= self.config.evaluations:
                return None
            for _ in range(self.config.max_repeats + 1):
                index = len(self.trials)
                values = self._suggest(index)
                self.trials.append({"values": list(values), "score": None})
                self.events.append(("ask", index))
                if values not in self.known:
                    break
                # Evaluated already: the searcher learns its score without a new evaluation.
                self.trials[index]["score"] = self.known[values]
                self._complete(index, self.known[values])
                self.events.append(("tell", index))
        values = tuple(self.trials[index]["values"])
        self.pending.setdefault(values, []).append(index)
        self.asked += 1
        return self.space.decode(values)

    def tell(self, result: EvalResult) -> None:
        super().tell(result)
        values = tuple(self.space.encode(result.architecture))
        score = result.score
        self.known[values] = max(score, self.known.get(values, -math.inf))
        if self.pending.get(values):
            index = self.pending[values].pop(0)
            self.trials[index]["score"] = score
            self._complete(index, score)
            self.events.append(("tell", index))
        else:  # a result for a candidate this searcher did not suggest
            self.trials.append({"values": list(values), "score": score})
            self._add_point(values, score)
            self.events.append(("point", len(self.trials) - 1))

    @property
    def done(self) -> bool:
        return len(self.history) >= self.config.evaluations

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "trials": [dict(t) for t in self.trials],
            "events": [list(e) for e in self.events],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild the searcher from the log; suggestions in flight at the save are asked again."""
        super().load_state_dict(state)
        self.trials = [
            {"values": [int(v) for v in t["values"]],
             "score": None if t["score"] is None else float(t["score"])}
            for t in state["trials"]
        ]
        self.events = [(str(kind), int(i)) for kind, i in state["events"]]
        self.known = {}
        for r in self.history:
            values = tuple(self.space.encode(r.architecture))
            self.known[values] = max(r.score, self.known.get(values, -math.inf))
        told = {i for kind, i in self.events if kind in ("tell", "point")}
        self.reask = [i for kind, i in self.events if kind == "ask" and i not in told]
        self.pending = {}
        self.searcher = self._new_searcher()
        if not self._replay():
            self.searcher = self._new_searcher()
            for t in self.trials:
                if t["score"] is not None:
                    self._add_point(tuple(t["values"]), t["score"])
            # Without the exact replay, the in-flight trials are suggested afresh.
            for i in self.reask:
                self.trials[i]["values"] = list(self._suggest(i))

    def _replay(self) -> bool:
        """Feed the log to the fresh searcher; False if it suggests differently than recorded."""
        for kind, i in self.events:
            trial = self.trials[i]
            if kind == "ask":
                if list(self._suggest(i)) != trial["values"]:
                    return False
            elif kind == "tell":
                self._complete(i, trial["score"])
            else:
                self._add_point(tuple(trial["values"]), trial["score"])
        return True
