"""Candidates a Tune scheduler stopped early are compared with the others at equal budget: the
shared rule (:func:`raynas.types.compare_at_equal_budget`) that ``best`` and evolution's
tournaments use, Optuna's pruned trials for Bayesian optimisation, and the learning curve the
Tune ledger records for each result."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import tiny_job
from test_controllers import ToyArch, ToySpace

from raynas.execution.controller import build_controller
from raynas.execution.tune import CandidateLedger
from raynas.runs.jobs import parse_job
from raynas.strategies import STRATEGIES
from raynas.strategies.sampling.bo import BoConfig
from raynas.strategies.sampling.enas import Enas, EnasConfig
from raynas.strategies.sampling.epnas import Epnas, EpnasConfig, one_hot
from raynas.strategies.sampling.evolution import EvolutionConfig
from raynas.strategies.sampling.progressive import Progressive, ProgressiveConfig
from raynas.types import EvalResult, best_at_equal_budget, compare_at_equal_budget, scores_at_common_budget


def space() -> ToySpace:
    return ToySpace()


def result(trial: str, curve: tuple[float, ...], full: int = 3, **kw: object) -> EvalResult:
    arch = ToyArch((len(trial) % 3, 0, 0, 0))
    return EvalResult(
        architecture=arch, metrics={"valid_acc": curve[-1]} if curve else {}, trial_id=trial,
        budget=float(len(curve)), stopped_early=len(curve) < full, curve=curve, **kw,  # type: ignore[arg-type]
    )


def test_a_candidate_stopped_early_is_judged_at_the_budget_both_reached() -> None:
    stopped = result("stopped", (0.5,))  # ASHA stopped it after epoch 1 at 0.5
    slow_start = result("full", (0.4, 0.6, 0.7))  # 0.4 after epoch 1, 0.7 at the full budget
    weak = result("weak", (0.3, 0.5, 0.55))
    assert compare_at_equal_budget(stopped, slow_start) == 1  # 0.5 > 0.4 after one epoch each
    assert compare_at_equal_budget(slow_start, stopped) == -1
    assert compare_at_equal_budget(slow_start, weak) == 1  # 0.7 > 0.55 at three epochs
    # Tied at the common budget: the one a scheduler kept on is the better.
    tied = result("tied", (0.4,))
    assert compare_at_equal_budget(slow_start, tied) == 1 and compare_at_equal_budget(tied, slow_start) == -1
    # No curves (inherited weights, proxies): more budget first, then the score.
    inherited = EvalResult(architecture=weak.architecture, metrics={"valid_acc": 0.9}, budget=0.0)
    finetuned = EvalResult(architecture=weak.architecture, metrics={"valid_acc": 0.2}, budget=2.0)
    assert compare_at_equal_budget(finetuned, inherited) == 1
    failed = EvalResult(architecture=weak.architecture, metrics={}, budget=0.0)
    assert compare_at_equal_budget(inherited, failed) == 1
    assert compare_at_equal_budget(inherited, inherited) == 0
    assert best_at_equal_budget([weak, slow_start, stopped]) is stopped
    assert best_at_equal_budget([]) is None


def test_best_and_the_evolution_tournament_compare_at_equal_budget() -> None:
    strategy = STRATEGIES.create(
        "evolution", EvolutionConfig(population_size=2, sample_size=2, evaluations=3), space=space(), seed=0
    )
    asked = [strategy.ask(), strategy.ask()]
    stopped, slow = result("stopped", (0.5,)), result("slow", (0.4, 0.6, 0.7))
    strategy.tell(EvalResult(**{**stopped.__dict__, "architecture": asked[0]}))
    strategy.tell(EvalResult(**{**slow.__dict__, "architecture": asked[1]}))
    # By last score the slow starter (0.7) would win; at equal budget (epoch 1) the other does.
    assert strategy.best().trial_id == "stopped"
    parents: list = []
    strategy.mutate = lambda arch: parents.append(arch) or arch  # type: ignore[method-assign]
    strategy.ask()  # a tournament of both
    assert parents == [asked[0]]  # the parent is the one stopped early


def test_bo_tells_a_candidate_stopped_early_as_a_pruned_trial_with_its_curve() -> None:
    strategy = STRATEGIES.create("bo", BoConfig(evaluations=4, startup=2), space=space(), seed=0)
    first, second = strategy.ask(), strategy.ask()
    strategy.tell(EvalResult(**{**result("a", (0.2, 0.3)).__dict__, "architecture": first}))
    strategy.tell(EvalResult(**{**result("b", (0.1, 0.4, 0.6)).__dict__, "architecture": second}))
    pruned, complete = strategy.study.trials  # type: ignore[attr-defined]
    assert pruned.state.name == "PRUNED" and pruned.intermediate_values == {1: 0.2, 2: 0.3}
    assert complete.state.name == "COMPLETE" and complete.value == pytest.approx(0.6)
    # The log replays into a fresh study the same way.
    fresh = STRATEGIES.create("bo", BoConfig(evaluations=4, startup=2), space=space(), seed=0)
    fresh.load_state_dict(strategy.state_dict())
    again = fresh.study.trials  # type: ignore[attr-defined]
    assert [t.state.name for t in again] == ["PRUNED", "COMPLETE"]
    assert again[0].intermediate_values == {1: 0.2, 2: 0.3}


def test_the_ledger_records_each_trial_s_learning_curve(tmp_path: Path) -> None:
    job = tiny_job(tmp_path, space={"name": "nb201", "channels": 4, "cells_per_stage": 1},
                   evaluator={"name": "scratch", "epochs": 3})
    job["strategy"] = {"name": "random", "evaluations": 2}
    for key in ("layers", "nodes"):
        job["space"].pop(key)
    del job["train"]
    controller = build_controller(parse_job(job))
    ledger = CandidateLedger(controller=controller, epochs=3)
    arch = controller.ask()
    ledger.start("t", arch)
    for epoch, acc in ((1, 0.2), (2, 0.35), (2, 0.35)):  # a repeated report is ignored
        ledger.observe("t", {"trial_id": "t", "epoch": float(epoch), "valid_acc": acc,
                             "training_iteration": epoch, "arch": arch.key()})
    ledger.finish("t", {"trial_id": "t", "epoch": 2.0, "valid_acc": 0.35, "training_iteration": 2,
                        "arch": arch.key()})
    (told,) = controller.history
    assert told.curve == (0.2, 0.35) and told.budget == 2 and told.stopped_early
    assert EvalResult.from_dict(told.to_dict()) == told
    assert math.isinf(EvalResult.from_dict({**told.to_dict(), "metrics": {}}).score)


# -- controllers that learn from scores: ENAS, PNAS-style progressive search, EPNAS ---------------
# Two results throughout: "stopped", stopped by a scheduler after epoch 1 at 0.5, and "full",
# 0.4 after epoch 1 and 0.7 at its full budget of 3. On raw scores the full one is better
# (0.7 > 0.5); at the budget both reached (epoch 1) the stopped one is (0.5 > 0.4).
STOPPED, FULL = (0.5,), (0.4, 0.6, 0.7)


def told_as(arch: object, trial: str, curve: tuple[float, ...]) -> EvalResult:
    return EvalResult(**{**result(trial, curve).__dict__, "architecture": arch})


def test_scores_at_the_common_budget_are_read_from_the_curves() -> None:
    stopped, full = result("stopped", STOPPED), result("full", FULL)
    assert scores_at_common_budget([stopped, full]) == [0.5, 0.4]
    # One budget (every candidate trained fully), or no curves: the scores as they are.
    weak = result("weak", (0.3, 0.5, 0.55))
    assert scores_at_common_budget([full, weak]) == [0.7, 0.55]
    inherited = EvalResult(architecture=weak.architecture, metrics={"valid_acc": 0.9})
    assert scores_at_common_budget([inherited, inherited]) == [0.9, 0.9]
    # A result without a curve cannot be judged at another budget: its own score.
    assert scores_at_common_budget([stopped, full, inherited]) == [0.5, 0.4, 0.9]


def test_enas_learns_from_and_ranks_rewards_at_equal_budget() -> None:
    config = EnasConfig(lstm_size=8, controller_batch=2, controller_steps=1, controller_epochs=1,
                        derive_samples=2, entropy_weight=0.0, baseline_decay=0.5)
    strategy = Enas(config, space=space(), seed=0)
    learnt: list[list[float]] = []
    advantages = strategy.advantages
    strategy.advantages = lambda rewards: learnt.append(rewards) or advantages(rewards)  # type: ignore[method-assign]
    first, second = strategy.ask(), strategy.ask()
    strategy.tell(told_as(first, "stopped", STOPPED))
    strategy.tell(told_as(second, "full", FULL))
    # The controller's batch is learnt from at epoch 1: rewards 0.5 and 0.4 (raw: 0.5 and 0.7).
    assert learnt == [pytest.approx([0.5, 0.4])]
    # b = 0.5 (0.5 * 0 + 0.5 * 0.5) + 0.5 * 0.4 = 0.325 (raw: 0.475).
    assert strategy.baseline == pytest.approx(0.325)
    derived = [strategy.ask(), strategy.ask()]
    strategy.tell(told_as(derived[1], "derived-full", FULL))
    strategy.tell(told_as(derived[0], "derived-stopped", STOPPED))
    # The derived architectures ranked at equal budget: the stopped one first (raw reward: last).
    assert [r.trial_id for r in strategy.final_results()] == ["derived-stopped", "derived-full"]
    assert strategy.best().trial_id == "derived-stopped"  # type: ignore[union-attr]


def test_the_progressive_predictor_learns_scores_at_equal_budget() -> None:
    search = Progressive(ProgressiveConfig(beam_size=2), space=space(), seed=0)
    first, second = search.ask(), search.ask()
    assert first != second
    search.tell(told_as(first, "stopped", STOPPED))
    search.tell(told_as(second, "full", FULL))
    model = search.predictor()
    assert model is not None
    predicted = model([search.encode(first), search.encode(second)]).tolist()  # type: ignore[arg-type]
    # Its targets, 0.5 and 0.4 at epoch 1, standardised (two points: +-1/sqrt(2)); raw scores
    # (0.5, 0.7) would make them -1/sqrt(2) and +1/sqrt(2).
    assert predicted == pytest.approx([2 ** -0.5, -(2 ** -0.5)], abs=0.05)


def test_epnas_rewards_and_predictor_targets_at_equal_budget() -> None:
    config = EpnasConfig(evaluations=2, batch_size=2, candidates=2, lstm_size=4)
    strategy = Epnas(config, space=space(), seed=0)
    first, second = strategy.ask(), strategy.ask()
    strategy.tell(told_as(first, "stopped", STOPPED))
    strategy.tell(told_as(second, "full", FULL))
    # The first baseline is the step's mean reward at epoch 1: (0.5 + 0.4) / 2 (raw: 0.6).
    assert strategy.baseline == pytest.approx(0.45)
    assert [r.trial_id for r in strategy.final_results()] == ["stopped", "full"]  # raw: full first
    # The ridge predictor's targets, on two networks one decision apart (ridge 0.1): closed form
    # mean(y) +- (y1 - y2) / 2 * 1 / (1 + 0.1) with y = (0.5, 0.4) at epoch 1 (raw: (0.5, 0.7)).
    fresh = Epnas(config, space=space(), seed=0)
    a, b = ToyArch((1, 0, 0, 0)), ToyArch((2, 0, 0, 0))
    fresh.tell(told_as(a, "stopped", STOPPED))
    fresh.tell(told_as(b, "full", FULL))
    model = fresh.predictor()
    assert model is not None
    predicted = model(one_hot([a.values, b.values], fresh.sizes)).tolist()
    assert predicted == pytest.approx([0.45 + 0.05 / 1.1, 0.45 - 0.05 / 1.1])


def test_ran_e_keeps_a_replacement_by_its_score_at_the_budget_the_seed_reached(tmp_path: Path) -> None:
    """RAN-e keeps a replacement within the tolerance of the seed: a candidate a scheduler stopped
    after one epoch at 0.5 is held against the seed's first epoch (0.4), not its last (0.7)."""
    from test_ran import small_space, synthetic_table

    from raynas.strategies.sampling.ran import RanE, RanEConfig

    space = small_space()
    table = synthetic_table(space, tmp_path, slow={4: 3.0})
    strategy = RanE(RanEConfig(latency_table=str(table), tolerance=0.05, evaluations=5), space=space)
    seed = strategy.ask()
    strategy.tell(EvalResult(seed, {"valid_acc": 0.7}, trial_id="seed", budget=2.0, curve=(0.4, 0.7)))
    replaced = strategy.ask()
    assert replaced is not None and replaced != seed
    strategy.tell(EvalResult(replaced, {"valid_acc": 0.5}, trial_id="r1", budget=1.0, stopped_early=True,
                             curve=(0.5,)))
    assert strategy.incumbent == replaced  # 0.5 >= 0.4 - 0.05 (on the raw scores: 0.5 < 0.7 - 0.05)
    # Without curves (every candidate trained to its budget) the scores are compared as they are.
    again = RanE(RanEConfig(latency_table=str(table), tolerance=0.05, evaluations=5), space=space)
    again.tell(EvalResult(again.ask(), {"valid_acc": 0.7}, trial_id="seed"))
    worse = again.ask()
    again.tell(EvalResult(worse, {"valid_acc": 0.5}, trial_id="r1"))
    assert again.incumbent == seed


def test_auto_keras_fits_its_gaussian_process_to_scores_at_equal_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Auto-Keras's Gaussian process learns each network's score at the budget every evaluated
    network reached: the seed's first epoch (0.4), not its last (0.7), beside a child stopped
    after one epoch at 0.5."""
    from raynas.spaces.autokeras import AutoKerasConfig, AutoKerasSpace
    from raynas.strategies.sampling import autokeras
    from raynas.strategies.sampling.autokeras import AutoKeras, AutoKerasStrategyConfig

    fitted: list[list[float]] = []

    class Recording(autokeras.GaussianProcess):
        def fit(self, xs, ys):  # type: ignore[no-untyped-def]
            fitted.append(list(ys))
            return super().fit(xs, ys)

    monkeypatch.setattr(autokeras, "GaussianProcess", Recording)
    space = AutoKerasSpace(AutoKerasConfig(seed_width=4, seed_strides=(1, 2)))
    strategy = AutoKeras(AutoKerasStrategyConfig(evaluations=4, t_min=0.05), space=space, seed=0)
    seed = strategy.ask()
    strategy.tell(EvalResult(seed, {"valid_acc": 0.7}, trial_id="seed", budget=2.0, curve=(0.4, 0.7)))
    child = strategy.ask()
    strategy.tell(EvalResult(child, {"valid_acc": 0.5}, trial_id="c1", budget=1.0, stopped_early=True,
                             curve=(0.5,)))
    strategy.ask()
    assert fitted[-1] == [0.4, 0.5]


def test_bo_tells_a_repeated_suggestion_of_a_candidate_stopped_early_as_pruned_with_its_curve() -> None:
    strategy = STRATEGIES.create("bo", BoConfig(evaluations=4, startup=2), space=space(), seed=0)
    first = strategy.ask()
    strategy.tell(EvalResult(**{**result("a", (0.2, 0.3)).__dict__, "architecture": first}))
    # TPE suggests the stopped candidate again: the study learns it without a new evaluation, as
    # what it was, a pruned trial with its curve (not a finished trial at its partial score).
    strategy.study.enqueue_trial(strategy._params(first.values))  # type: ignore[attr-defined]
    asked = strategy.ask()
    assert asked.values != first.values  # asked anew
    told, repeated, running = strategy.study.trials  # type: ignore[attr-defined]
    assert repeated.params == told.params
    assert repeated.state.name == "PRUNED" and repeated.intermediate_values == {1: 0.2, 2: 0.3}
    assert running.state.name == "RUNNING"
    # A later finished evaluation of the same candidate is what a further repeat is told.
    strategy.tell(EvalResult(**{**result("b", (0.1, 0.4, 0.6)).__dict__, "architecture": first}))
    strategy.study.enqueue_trial(strategy._params(first.values))  # type: ignore[attr-defined]
    strategy.ask()
    trials = strategy.study.trials  # type: ignore[attr-defined]
    states = ["PRUNED", "PRUNED", "RUNNING", "COMPLETE", "COMPLETE", "RUNNING"]  # the 4th: b, unasked
    assert [t.state.name for t in trials] == states
    assert trials[4].params == told.params and trials[4].value == pytest.approx(0.6)
    # So does the study a resumed search rebuilds.
    fresh = STRATEGIES.create("bo", BoConfig(evaluations=4, startup=2), space=space(), seed=0)
    fresh.load_state_dict(strategy.state_dict())
    assert fresh.known[first.values] == (pytest.approx(0.6), None)  # type: ignore[attr-defined]
    assert [t.state.name for t in fresh.study.trials] == states  # type: ignore[attr-defined]
    assert fresh.study.trials[1].intermediate_values == {1: 0.2, 2: 0.3}  # type: ignore[attr-defined]
