"""Bayesian optimisation over a space's choices with Optuna's tree-structured Parzen estimator
(Bergstra et al., "Algorithms for Hyper-Parameter Optimization", NeurIPS 2011; multivariate TPE
as in Falkner et al., BOHB, ICML 2018), through Optuna's own ask-and-tell interface.

Every decision of the space's flat view is a categorical parameter (a ``CategoricalDistribution``
over its option indices). ``ask`` is the study's ``ask`` decoded into an architecture, ``tell`` its
``tell`` (a failed evaluation, score ``-inf``, is told as a failed trial); a result for a candidate
the study did not suggest is added to it as a finished trial. A candidate a Tune scheduler stopped
early is a pruned trial whose intermediate values are its learning curve: Optuna's rule for
comparing budgets, under which TPE ranks pruned trials below completed ones, by the budget they
reached, then by their last value. A suggestion already evaluated is
not evaluated again: the study is told its known result at once (one stopped early again as a
pruned trial with its curve) and asked anew (up to
``max_repeats`` times). With the constant liar, TPE keeps concurrent suggestions apart.

The study itself is not saved (it is an Optuna object, not plain data): the state is the log of
suggestions and results, and loading replays it into a fresh study with the same seed, which
makes the same suggestions again (checked; if a different Optuna suggests otherwise, the results
are added as finished trials instead, and the suggestions in flight as running ones). Either way
the suggestions in flight at the save are running trials of the study again, and are asked again
first (see :meth:`SamplingStrategy.load_state_dict`).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Annotated, Any

from raynas.config import Rule, check_rules
from raynas.strategies.registry import STRATEGIES
from raynas.strategies.sampling.base import SHAPE_TRIES, CellShapeLimits, SamplingStrategy
from raynas.types import Architecture, EvalResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BoConfig:
    """TPE through Optuna's ask-and-tell interface.

    Attributes:
        evaluations: Candidates evaluated in all.
        startup: Random suggestions before TPE models the results (Optuna's ``n_startup_trials``).
        multivariate: Model the decisions jointly (multivariate TPE) rather than one by one.
        constant_liar: Treat suggestions in flight as bad results, so concurrent ones differ.
        max_repeats: Suggestions of already evaluated architectures answered from the record per
            ask, before one is evaluated again anyway.
        cell_shape: Bounds on the width and depth of the candidates' cells
            (:class:`CellShapeLimits`): a suggestion outside them is not evaluated but told to the
            study at once as an infeasible pruned trial (its constraint the distance to the bounds,
            so TPE ranks it below every feasible one), and the study is asked anew; it spends none
            of ``evaluations``.
    """

    evaluations: Annotated[int, Rule(ge=1)] = 100
    startup: Annotated[int, Rule(ge=1)] = 10
    multivariate: bool = True
    constant_liar: bool = True
    max_repeats: Annotated[int, Rule(ge=1)] = 50
    cell_shape: CellShapeLimits | None = None

    def __post_init__(self) -> None:
        check_rules(self, "strategy")


@STRATEGIES.register("bo", config=BoConfig)
class BayesOpt(SamplingStrategy):
    """Ask/tell over an Optuna study (TPE) on the space's categorical decisions.

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
        # The log that rebuilds the study: every trial (values, score once told) and the order of
        # events, ("ask", i), ("tell", i) or ("point", i) for results told unasked. Trial i of the
        # log is trial number i of the study: each entry adds exactly one trial, in log order.
        self.trials: list[dict[str, Any]] = []
        self.events: list[tuple[str, int]] = []
        self.pending: dict[tuple[int, ...], list[int]] = {}  # values -> trials in flight, ask order
        # values -> the best result evaluated so far, (score, learning curve if stopped early)
        self.known: dict[tuple[int, ...], tuple[float, list[float] | None]] = {}
        self._asked: dict[int, Any] = {}  # the study's running trials, by number (= log index)
        # Imported here, as in every method that needs it: Optuna takes a while to import, and of
        # the strategies only this one uses it.
        from optuna.distributions import CategoricalDistribution

        self.distributions = {
            f"d{i}": CategoricalDistribution(list(range(len(d.options))))
            for i, d in enumerate(self.decisions)
        }
        self.study = self._new_study()
        self.constrain_cells(config.cell_shape)

    def _new_study(self) -> Any:
        import optuna

        self._asked = {}
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(
                seed=self.seed, n_startup_trials=self.config.startup,
                multivariate=self.config.multivariate, constant_liar=self.config.constant_liar,
            )
        return optuna.create_study(sampler=sampler, direction="maximize")

    def _params(self, values: tuple[int, ...]) -> dict[str, int]:
        return {f"d{i}": v for i, v in enumerate(values)}

    def _suggest(self) -> tuple[int, ...]:
        """A new trial of the study (running until told) and its values."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's experimental-feature warnings
            trial = self.study.ask(self.distributions)
        self._asked[trial.number] = trial
        return tuple(int(trial.params[f"d{i}"]) for i in range(len(self.decisions)))

    def _complete(self, index: int, score: float, curve: list[float] | None = None) -> None:
        from optuna.trial import TrialState

        trial = self._asked.pop(index, index)
        if curve:  # stopped early: pruned, with its learning curve
            for step, value in enumerate(curve, 1):
                trial.report(value, step)
            self.study.tell(trial, state=TrialState.PRUNED)
        elif math.isfinite(score):
            self.study.tell(trial, score)
        else:
            self.study.tell(trial, state=TrialState.FAIL)

    def _reject(self, index: int, violation: float) -> None:
        """Tell the study that suggestion ``index`` lies ``violation`` outside ``cell_shape``."""
        from optuna.trial import TrialState

        trial = self._asked.pop(index)
        trial.set_constraint("cell_shape", violation)
        self.study.tell(trial, state=TrialState.PRUNED)

    def _add_point(
        self, values: tuple[int, ...], score: float, curve: list[float] | None = None,
        rejected: float | None = None,
    ) -> None:
        import optuna
        from optuna.trial import TrialState

        if rejected is not None:
            trial = optuna.trial.create_trial(
                params=self._params(values), distributions=self.distributions,
                state=TrialState.PRUNED, constraints={"cell_shape": rejected},
            )
        elif curve:
            trial = optuna.trial.create_trial(
                params=self._params(values), distributions=self.distributions,
                state=TrialState.PRUNED, intermediate_values=dict(enumerate(curve, 1)),
            )
        elif math.isfinite(score):
            trial = optuna.trial.create_trial(
                params=self._params(values), distributions=self.distributions, value=score
            )
        else:
            trial = optuna.trial.create_trial(
                params=self._params(values), distributions=self.distributions, state=TrialState.FAIL
            )
        self.study.add_trial(trial)

    def _run_again(self, values: tuple[int, ...]) -> None:
        """Add a running trial with ``values`` (the study's next ask takes the enqueued values)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.study.enqueue_trial(self._params(values))
            trial = self.study.ask(self.distributions)
        self._asked[trial.number] = trial

    def propose(self) -> Architecture | None:
        if self.asked >= self.config.evaluations:
            return None
        repeats = rejects = 0
        while True:
            index = len(self.trials)
            values = self._suggest()
            self.trials.append({"values": list(values), "score": None, "curve": None})
            self.events.append(("ask", index))
            violation = self.shape_violation(self.space.decode(values))
            if violation > 0:  # outside cell_shape: infeasible, never evaluated
                self.trials[index]["rejected"] = violation
                self._reject(index, violation)
                self.events.append(("reject", index))
                rejects += 1
                if rejects >= SHAPE_TRIES:
                    values, index = self._enqueue_fitting()
                    break
                continue
            if values not in self.known or repeats >= self.config.max_repeats:
                break
            repeats += 1
            # Evaluated already: the study learns its result without a new evaluation (a candidate
            # stopped early again as a pruned trial with its curve, not as a finished one).
            score, curve = self.known[values]
            self.trials[index].update(score=score, curve=curve)
            self._complete(index, score, curve)
            self.events.append(("tell", index))
        self.pending.setdefault(values, []).append(index)
        return self.space.decode(values)

    def _enqueue_fitting(self) -> tuple[tuple[int, ...], int]:
        """A uniform architecture within ``cell_shape``, as the study's next (enqueued) trial, when
        TPE suggests none within it :data:`SHAPE_TRIES` times in a row."""
        log.warning("bo: none of %d suggestions in a row has cells with %s; asking a uniform one that has",
                    SHAPE_TRIES, self.shape_limits)
        values = tuple(self.space.encode(self.random_architecture()))
        index = len(self.trials)
        self._run_again(values)
        self.trials.append({"values": list(values), "score": None, "curve": None})
        self.events.append(("enqueue", index))
        return values, index

    def tell(self, result: EvalResult) -> None:
        super().tell(result)
        values = tuple(self.space.encode(result.architecture))
        score = result.score
        curve = list(result.curve) if result.stopped_early and result.curve else None
        self._know(values, score, curve)
        if self.pending.get(values):
            index = self.pending[values].pop(0)
            self.trials[index].update(score=score, curve=curve)
            self._complete(index, score, curve)
            self.events.append(("tell", index))
        else:  # a result for a candidate the study did not suggest
            self.trials.append({"values": list(values), "score": score, "curve": curve})
            self._add_point(values, score, curve)
            self.events.append(("point", len(self.trials) - 1))

    def _know(self, values: tuple[int, ...], score: float, curve: list[float] | None) -> None:
        """Keep the better of this result and the one known for ``values``: one with a score before
        a failed one, a finished evaluation before one stopped early, then the longer curve, then
        the higher score."""
        def rank(known: tuple[float, list[float] | None]) -> tuple[bool, bool, int, float]:
            score, curve = known
            scored = math.isfinite(score)
            return scored, curve is None, len(curve or ()), score if scored else -math.inf

        if values not in self.known or rank((score, curve)) > rank(self.known[values]):
            self.known[values] = (score, curve)

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
        """Rebuild the study from the log; the suggestions in flight at the save are running
        trials again, and are asked again first."""
        super().load_state_dict(state)
        self.trials = [
            {"values": [int(v) for v in t["values"]],
             "score": None if t["score"] is None else float(t["score"]),
             "curve": [float(v) for v in t["curve"]] if t.get("curve") else None,
             **({"rejected": float(t["rejected"])} if t.get("rejected") is not None else {})}
            for t in state["trials"]
        ]
        self.events = [(str(kind), int(i)) for kind, i in state["events"]]
        self.known = {}
        for r in self.history:
            curve = list(r.curve) if r.stopped_early and r.curve else None
            self._know(tuple(self.space.encode(r.architecture)), r.score, curve)
        told = {i for kind, i in self.events if kind in ("tell", "point", "reject")}
        self.pending = {}
        for kind, i in self.events:
            if kind in ("ask", "enqueue") and i not in told:
                self.pending.setdefault(tuple(self.trials[i]["values"]), []).append(i)
        self.study = self._new_study()
        if not self._replay():
            # Trial i is still number i of the study: every log entry is added in log order.
            self.study = self._new_study()
            for i, t in enumerate(self.trials):
                if i in told:
                    self._add_point(tuple(t["values"]), t["score"], t["curve"], t.get("rejected"))
                else:
                    self._run_again(tuple(t["values"]))

    def _replay(self) -> bool:
        """Feed the log to the fresh study; False if it suggests differently than recorded."""
        for kind, i in self.events:
            trial = self.trials[i]
            if kind == "ask":
                if list(self._suggest()) != trial["values"]:
                    return False
            elif kind == "enqueue":
                self._run_again(tuple(trial["values"]))
            elif kind == "reject":
                self._reject(i, trial["rejected"])
            elif kind == "tell":
                self._complete(i, trial["score"], trial["curve"])
            else:
                self._add_point(tuple(trial["values"]), trial["score"], trial["curve"])
        return True
