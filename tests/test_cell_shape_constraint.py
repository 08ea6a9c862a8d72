"""``strategy.cell_shape``: a sampling search held to cells of a given width and depth (Shu et al.,
ICLR 2020). Every candidate a constrained strategy asks fits, its evaluation budget goes to
candidates that fit, and a space without cell shapes refuses the setting in one line."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from raynas.errors import ConfigError
from raynas.runs.jobs import component
from raynas.spaces import SPACES
from raynas.spaces.darts_genotype import DartsGenotype
from raynas.strategies import STRATEGIES
from raynas.strategies.sampling import SamplingStrategy
from raynas.strategies.sampling.base import CellShapeLimits
from raynas.types import Architecture, EvalResult

# 2-node cells of three operations: node 3 takes the cell's inputs only (depth 2) in a third of
# the cells, so "max_depth: 2" keeps one random architecture in nine (both cells).
SPACE = {"nodes": 2, "primitives": ("skip_connect", "sep_conv_3x3", "max_pool_3x3")}
LIMITS = {"max_depth": 2}
BUDGETS: dict[str, dict[str, Any]] = {
    "random": {"evaluations": 12},
    "random_ws": {"evaluations": 12},
    "evolution": {"population_size": 4, "sample_size": 2, "evaluations": 12},
    "teg_evolution": {"population_size": 4, "sample_size": 2, "evaluations": 12},
    "novelty": {"population_size": 4, "sample_size": 2, "evaluations": 12, "candidates": 4},
    "spos": {"population_size": 4, "sample_size": 2, "evaluations": 12},
    "bo": {"evaluations": 12, "startup": 4},
    "enas": {"lstm_size": 8, "controller_batch": 2, "controller_steps": 1, "controller_epochs": 2,
             "derive_samples": 2},
    "teg_reinforce": {"evaluations": 12},
    "epnas": {"evaluations": 8, "batch_size": 2, "candidates": 8, "lstm_size": 8},
}


def space() -> Any:
    return SPACES.create("darts", SPACES.entry("darts").config(**SPACE))


def depth(edges: tuple[tuple[str, int], ...], concat: tuple[int, ...]) -> int:
    """The longest path from the cell's inputs to its output, counted here by enumerating paths."""
    preds = {2 + i: [j for _, j in edges[2 * i : 2 * i + 2]] for i in range(len(edges) // 2)}

    def longest(node: int) -> int:
        return 0 if node < 2 else 1 + max(longest(j) for j in preds[node])

    return 1 + max(longest(n) for n in concat)


def fits(arch: Architecture) -> bool:
    assert isinstance(arch, DartsGenotype)
    return depth(arch.normal, arch.normal_concat) <= 2 and depth(arch.reduce, arch.reduce_concat) <= 2


def make(name: str, limits: dict[str, Any] | None = LIMITS, seed: int = 0) -> SamplingStrategy:
    settings = {"name": name, **BUDGETS[name], **({"cell_shape": limits} if limits else {})}
    chosen = component(settings, "strategy", STRATEGIES)  # as a job file gives it
    return STRATEGIES.create(name, chosen.config, space=space(), seed=seed)


def result(arch: Architecture, n: int) -> EvalResult:
    return EvalResult(architecture=arch, metrics={"valid_acc": random.Random(arch.key()).random()},
                      trial_id=f"t{n}")


def drive(strategy: SamplingStrategy, limit: int = 200) -> list[Architecture]:
    """Ask and tell, two in flight, as a driver does (paths sampled first for one-shot ones)."""
    asked: list[Architecture] = []
    in_flight: list[Architecture] = []
    for n in itertools.count():
        assert n < limit, f"{strategy.name} did not finish"
        while len(in_flight) < 2 and (arch := strategy.ask()) is not None:
            asked.append(arch)
            in_flight.append(arch)
        if not in_flight:
            assert strategy.done
            return asked
        arch = in_flight.pop(0)
        strategy.tell(result(arch, n))
    raise AssertionError


def test_the_bound_binds_on_this_space() -> None:
    rng = random.Random(0)
    drawn = [space().sample(rng) for _ in range(300)]
    share = sum(map(fits, drawn)) / len(drawn)
    assert 0.05 < share < 0.2  # about 1/9: a strategy that ignored the bound would break it


@pytest.mark.parametrize("name", sorted(BUDGETS))
def test_every_candidate_a_constrained_strategy_asks_fits(name: str) -> None:
    strategy = make(name)
    asked = drive(strategy)
    assert asked and all(map(fits, asked)), [a for a in asked if not fits(a)][:1]
    assert strategy.asked == len(asked)  # none asked outside the bound counted against the budget
    if "evaluations" in BUDGETS[name]:
        assert len(strategy.history) == BUDGETS[name]["evaluations"]


def test_bo_tells_optuna_the_rejected_suggestions_as_infeasible_and_resumes_with_them() -> None:
    from optuna.trial import TrialState

    strategy = make("bo")
    for n in range(6):
        arch = strategy.ask()
        assert arch is not None and fits(arch)
        strategy.tell(result(arch, n))
    trials = strategy.study.get_trials(deepcopy=False)
    rejected = [t for t in trials if t.state == TrialState.PRUNED]
    assert rejected and all(t.constraints["cell_shape"] > 0 for t in rejected)
    assert strategy.asked == 6 and len(trials) == 6 + len(rejected)
    state = strategy.state_dict()
    resumed = make("bo")
    resumed.load_state_dict(state)
    for n in range(6, 10):  # the study rebuilt with its infeasible trials suggests the same
        ours, theirs = strategy.ask(), resumed.ask()
        assert ours == theirs
        assert ours is not None
        for s in (strategy, resumed):
            s.tell(result(ours, n))


def test_progressive_holds_maximums_at_every_stage_and_minimums_in_its_answers() -> None:
    limits = {"max_depth": 2, "min_width": 2.0, "cells": "normal"}
    strategy = STRATEGIES.create(
        "progressive", component({"name": "progressive", "beam_size": 2, "predictor_steps": 10,
                                  "cell_shape": limits}, "strategy", STRATEGIES).config,
        space=space(),
    )
    asked = drive(strategy)
    shapes = [space().cell_shape(a) for a in asked]
    assert all(s["normal_depth"] <= 2 for s in shapes)
    finals = [s for a, s in zip(asked, shapes, strict=True) if len(a.normal) == 2 * SPACE["nodes"]]
    assert finals and all(s["normal_width"] >= 2.0 for s in finals)
    answer = strategy.best()
    assert answer is not None and space().cell_shape(answer.architecture)["normal_width"] >= 2.0


def test_the_training_paths_of_a_one_shot_search_stay_uniform() -> None:
    paths = [make("spos").sample_path() for _ in range(1)] + [make("spos", seed=s).sample_path()
                                                               for s in range(1, 60)]
    assert not all(map(fits, paths))  # the supernet trains on the whole space


def test_a_space_without_cell_shapes_refuses_the_setting_in_one_line() -> None:
    config = component({"name": "random", "cell_shape": LIMITS}, "strategy", STRATEGIES).config
    refusal = r"strategy\.cell_shape: the FbnetSpace space has no cells"
    with pytest.raises(ConfigError, match=refusal) as error:
        STRATEGIES.create("random", config, space=SPACES.create("fbnet"))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({}, "sets no bound"),
        ({"min_depth": 4, "max_depth": 2}, "min_depth must be at most"),
        ({"max_width": -1}, "strategy.cell_shape.max_width"),
        ({"cells": "stem"}, "cells"),
    ],
)
def test_bad_limits_name_the_key(limits: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        component({"name": "random", "cell_shape": limits}, "strategy", STRATEGIES)


def test_limits_no_cell_of_the_space_can_keep_are_refused() -> None:
    with pytest.raises(ConfigError, match="no cell of 1000 random architectures"):
        make("random", {"min_depth": 4})


def test_the_violation_is_the_distance_to_the_bounds() -> None:
    limits = CellShapeLimits(max_depth=2, min_width=3.0)
    shape = {"normal_width": 2.0, "normal_depth": 3, "reduce_width": 3.5, "reduce_depth": 2}
    assert limits.violation(shape) == pytest.approx((3 - 2) + (3.0 - 2.0))
    assert limits.violation(shape, upper_only=True) == 1
    assert CellShapeLimits(max_depth=2, cells="reduce").violation(shape) == 0


def test_nas_bench_201_cells_are_held_to_the_bounds_and_have_one_kind() -> None:
    """NAS-Bench-201 measures one cell (``cell``): the bounds hold for it, and a ``cells`` naming
    a DARTS cell type it does not have is refused rather than bounding nothing."""
    nb201 = SPACES.create("nb201")
    limits = {"max_depth": 1, "min_width": 1.0}
    section = {"name": "random", "evaluations": 20, "cell_shape": limits}
    config = component(section, "strategy", STRATEGIES).config
    strategy = STRATEGIES.create("random", config, space=nb201)
    for _ in range(20):
        arch = strategy.ask()
        assert arch is not None
        assert nb201.cell_shape(arch) == {"cell_width": 1.0, "cell_depth": 1}  # the only such shape
    config = component({"name": "random", "cell_shape": {**limits, "cells": "normal"}}, "strategy",
                       STRATEGIES).config
    with pytest.raises(ConfigError, match=r"^strategy\.cell_shape\.cells is 'normal', a cell the Nb201Space "
                                          r"space does not have \(its cells: cell\); leave cells out$"):
        STRATEGIES.create("random", config, space=nb201)


@pytest.mark.parametrize(("name", "kind", "limits", "share_below"), [
    # DARTS's recurrent cell: no deeper than 3 and at least 5 nodes on state 0 (one random cell in 80).
    ("darts_rnn", "recurrent", {"max_depth": 3, "min_width": 5}, 0.05),
    # Auto-DeepLab's cell, every block in its output: depth at most 3, width at least 4 blocks
    # (about one random cell in 20).
    ("auto_deeplab", "cell", {"max_depth": 3, "min_width": 4}, 0.1),
])
def test_one_kind_cells_are_held_to_the_bounds(
    name: str, kind: str, limits: dict, share_below: float
) -> None:
    """Spaces that measure one cell: evolution asks only cells within the bounds, which rare random
    cells meet, and a ``cells`` naming a DARTS cell type the space does not have is refused."""
    space = SPACES.create(name)
    section = {"name": "evolution", "population_size": 4, "sample_size": 2, "evaluations": 12,
               "cell_shape": limits}
    strategy = STRATEGIES.create("evolution", component(section, "strategy", STRATEGIES).config, space=space)
    asked = drive(strategy)

    def fits(shape: dict[str, float]) -> bool:
        return shape[f"{kind}_depth"] <= limits["max_depth"] and shape[f"{kind}_width"] >= limits["min_width"]

    assert len(asked) == 12 and all(fits(space.cell_shape(a)) for a in asked)
    rng = random.Random(0)
    drawn = [space.cell_shape(space.sample(rng)) for _ in range(2000)]
    assert sum(map(fits, drawn)) / len(drawn) < share_below  # rare among random cells: the bound binds
    config = component({"name": "random", "cell_shape": {**limits, "cells": "reduce"}}, "strategy",
                       STRATEGIES).config
    with pytest.raises(ConfigError, match=rf"its cells: {kind}\); leave cells out$"):
        STRATEGIES.create("random", config, space=space)


def test_stacked_bnas_cells_are_held_to_the_bounds_of_both_kinds() -> None:
    """Stacked BNAS measures its deep cells' topology (``normal``) and its broad and enhancement
    cells' (``reduce``): a random search asks only those whose both topologies are at most 2 deep."""
    bnas = SPACES.create("stacked_bnas", SPACES.entry("stacked_bnas").config(nodes=2))
    section = {"name": "random", "evaluations": 12, "cell_shape": LIMITS}
    strategy = STRATEGIES.create("random", component(section, "strategy", STRATEGIES).config, space=bnas)
    asked = drive(strategy)
    assert len(asked) == 12
    for arch in asked:
        cells = arch.cells  # type: ignore[attr-defined]
        assert depth(cells.normal, cells.normal_concat) <= 2 and depth(cells.reduce, cells.reduce_concat) <= 2
