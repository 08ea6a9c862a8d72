"""Tests every registered strategy gets automatically, the day it registers: its config dataclass
builds from its defaults and names the field of a bad value; a sampling strategy asks for
architectures of the space, takes their results, knows the best, finishes within its budget and
resumes from a ``torch.save``d state asking what it would have asked; a gradient strategy's step,
built as the supernet worker builds it, moves the architecture parameters, reports finite
statistics, derives an architecture of the space and resumes bit for bit from its state.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import pytest
import torch

from raynas.config import TrainConfig
from raynas.errors import ConfigError
from raynas.spaces import SPACES
from raynas.strategies import STRATEGIES
from raynas.strategies.gradient.base import GradientStrategy
from raynas.strategies.sampling import SamplingStrategy
from raynas.supernet import build_supernet
from raynas.types import Architecture, DatasetInfo, EvalResult

ROOT = Path(__file__).resolve().parents[1]
NAMES = STRATEGIES.names()
SAMPLING = [n for n in NAMES if issubclass(STRATEGIES.get(n), SamplingStrategy)]
GRADIENT = [n for n in NAMES if issubclass(STRATEGIES.get(n), GradientStrategy)]
ONE_SHOT = [n for n in SAMPLING if STRATEGIES.get(n).needs_supernet]

# Settings a strategy has no default for (its config refuses to build without them, naming them):
# FBNet searches against a device's latency table.
REQUIRED: dict[str, dict[str, Any]] = {
    "fbnet": {"latency_table": "cpu"}, "prunet": {"latency_table": "cpu"}, "ran_e": {"latency_table": "cpu"},
}

# --- sampling strategies: small budgets on NAS-Bench-201's flat view (6 decisions of 5 options)

# Applied to the config fields a strategy has; a strategy sized by other fields lists its own
# small settings in SMALL_CONFIG_OF.
SMALL_CONFIG = {"evaluations": 6, "population_size": 3, "sample_size": 2, "startup": 2}
SMALL_CONFIG_OF: dict[str, dict[str, Any]] = {
    # 4 random seeds, then two rounds of 2 decoded candidates: 8 evaluations.
    "nao": {"seed_architectures": 4, "iterations": 2, "new_architectures": 2, "top_k": 4, "epochs": 5},
    "novelty": {"candidates": 2, "neighbours": 2},
    # One controller epoch of 2 steps of 2 candidates, then 2 derived: 6 evaluations.
    "enas": {
        "lstm_size": 8, "controller_batch": 2, "controller_steps": 2, "controller_epochs": 1,
        "derive_samples": 2,
    },
    # A beam of one: one candidate per decision, 6 evaluations.
    "progressive": {"beam_size": 1, "predictor_hidden": 8, "predictor_steps": 5},
    # A shorter annealing (T from 1 to 0.05): a few expansions per ask.
    "autokeras": {"t_min": 0.05},
    # Every scaled network of the small ran_i space below (its six multiplier pairs).
    "ran_i": {"mass_ratio": 0.01},
}
BUDGET = 12  # results within which every strategy at its small settings is done
# Strategies that search a space of their own kind (needs_choices False), on a small one of it;
# the others search NAS-Bench-201's flat view.
SAMPLING_SPACE_OF: dict[str, tuple[str, dict[str, Any]]] = {
    "autokeras": ("autokeras", {"seed_width": 4, "seed_strides": (1, 2)}),
    # The quick-start layout, timed in latency_tables/cpu.json (8x8 digits): six layers to replace.
    "ran_e": ("ran_e", {
        "stem_channels": 8, "stem_stride": 1, "stage_channels": (8, 16, 16, 24), "stage_depths": (1, 2, 2, 1),
        "stage_strides": (1, 2, 1, 2), "halved_layers": (4,), "head_channels": 64, "head_kernel": 3,
        "kernels": (3, 5),
    }),
    "ran_i": ("ran_i", {
        "base_depths": (1, 1), "base_widths": (8, 16), "width_multipliers": (0.5, 0.75, 1.0),
        "depth_multipliers": (1.0, 2.0), "stem_stride": 2,
    }),
}

# --- gradient strategies: built as the supernet worker builds them, on 8x8 single-channel inputs

# The space a strategy searches (else darts): TEG-NAS's pruning measures every operation's
# removal, NAS-Bench-201's 24 fewer than DARTS's.
SPACE_OF = {"fbnet": "fbnet", "prunet": "fbnet", "teg_nas_prune": "nb201", "stacked_bnas": "stacked_bnas"}
SMALL_SPACE: dict[str, dict[str, Any]] = {
    "darts": {"channels": 4, "layers": 3, "nodes": 2},
    # One mini-BCNN of one-node cells: six mixed ops and five mixed knowledge embeddings.
    "stacked_bnas": {"channels": 4, "blocks": 1, "nodes": 1},
    "nb201": {"channels": 4, "cells_per_stage": 1},
    # Two searchable layers, both timed in latency_tables/cpu.json (8x8 digits, quick-start layout).
    "fbnet": {
        "stem_channels": 8, "stem_stride": 1, "stage_channels": (8, 16), "stage_depths": (1, 1),
        "stage_strides": (1, 2), "head_channels": 32,
    },
}
GRADIENT_CONFIG_OF: dict[str, dict[str, Any]] = {
    "fbnet": {"latency_dir": str(ROOT / "latency_tables"), "latency_unit": "us"},
    "prunet": {"latency_dir": str(ROOT / "latency_tables"), "latency_unit": "us"},
    # TE-NAS's two indicators on two images (tests/test_teg_nas.py checks all three).
    "teg_nas_prune": {
        "indicators": ("ntk", "region"), "repeat": 1, "batch_size": 2, "region_inputs": 20,
        "region_batches": 1,
    },
}
INFO = DatasetInfo("digits", 1, 10, 8)
TRAIN = TrainConfig(epochs=2, learning_rate=0.05)


def round_trip(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` through ``torch.save`` and ``torch.load(weights_only=True)``, as checkpoints go."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def numeric_fields(config: Any) -> list[str]:
    return [
        f.name for f in dataclasses.fields(config)
        if isinstance(getattr(config, f.name), int | float) and not isinstance(getattr(config, f.name), bool)
    ]


# --- every strategy --------------------------------------------------------------------------


def test_the_built_in_strategies_are_registered() -> None:
    sampling = {
        "random", "random_ws", "evolution", "spos", "novelty", "enas", "progressive", "bo", "autokeras",
        "epnas", "ran_e", "ran_i", "teg_evolution", "teg_reinforce", "nao",
    }
    gradient = {
        "darts", "pc_darts", "milenas", "gdas", "adarts", "rf_darts", "rf_pc_darts", "fbnet", "prunet",
        "stacked_bnas", "teg_nas_prune",
    }
    # Every built-in one by name, so that a lost registration fails here rather than shrinking
    # the tests parametrized over the registry.
    assert set(SAMPLING) == sampling and set(GRADIENT) == gradient
    assert set(SAMPLING) | set(GRADIENT) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_config_builds_from_its_defaults(name: str) -> None:
    entry = STRATEGIES.entry(name)
    assert entry.config is not None and dataclasses.is_dataclass(entry.config)
    assert isinstance(entry.config(**REQUIRED.get(name, {})), entry.config)


# A bad value whose message does not name its key as the job file spells it.

@pytest.mark.parametrize("name", NAMES)
def test_bad_values_are_config_errors_naming_their_field(name: str) -> None:
    entry = STRATEGIES.entry(name)
    assert entry.config is not None
    config = entry.config(**REQUIRED.get(name, {}))
    refused = []
    for field in numeric_fields(config):  # -1: a negative count, rate, size or temperature
        try:
            dataclasses.replace(config, **{field: -1})
        except ConfigError as exc:
            assert f"strategy.{field}" in str(exc), (field, str(exc))
            refused.append(field)
    assert refused, f"no numeric setting of {name!r} refuses -1: {numeric_fields(config)}"


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_a_required_setting_left_out_is_named(name: str) -> None:
    for key in REQUIRED[name]:
        with pytest.raises(ConfigError, match=rf"strategy\.{key}"):
            STRATEGIES.entry(name).config(**{k: v for k, v in REQUIRED[name].items() if k != key})


# --- sampling strategies ---------------------------------------------------------------------


def small_sampling(name: str, space: Any, seed: int = 0) -> SamplingStrategy:
    entry = STRATEGIES.entry(name)
    assert entry.config is not None
    config = entry.config(**REQUIRED.get(name, {}))
    fields = {f.name for f in dataclasses.fields(config)}
    config = dataclasses.replace(
        config, **{k: v for k, v in SMALL_CONFIG.items() if k in fields}, **SMALL_CONFIG_OF.get(name, {})
    )
    return STRATEGIES.create(name, config, space=space, seed=seed)


def nb201() -> Any:
    return SPACES.create("nb201")


def space_of(name: str) -> Any:
    """The space strategy ``name`` is tested on: NAS-Bench-201, or its own kind of space."""
    if name not in SAMPLING_SPACE_OF:
        return nb201()
    space, settings = SAMPLING_SPACE_OF[name]
    entry = SPACES.entry(space)
    assert entry.config is not None
    return SPACES.create(space, entry.config(**settings))


def evaluation(space: Any, arch: Architecture, trial: int) -> EvalResult:
    """A made-up score that depends on the architecture only."""
    if hasattr(space, "encode"):
        values = space.encode(arch)
        score = sum((i + 1) * v for i, v in enumerate(values)) / 100
    else:  # a space without the flat view: from the key
        score = int(arch.key().rsplit("-", 1)[1], 16) % 100 / 100
    return EvalResult(architecture=arch, metrics={"valid_acc": score}, trial_id=f"t{trial}")


def ask(strategy: SamplingStrategy) -> Architecture:
    """The next candidate: with nothing in flight, a strategy that is not done asks one."""
    arch = strategy.ask()
    assert arch is not None, f"{strategy.name} asks nothing, with nothing in flight, and is not done"
    return arch


@pytest.mark.parametrize("name", SAMPLING)
def test_sampling_asks_architectures_of_the_space_and_knows_the_best_told(name: str) -> None:
    space = space_of(name)
    strategy = small_sampling(name, space)
    told = []
    for trial, score in enumerate((0.5, 0.9, 0.7)):  # the best is neither the first nor the last
        arch = ask(strategy)
        assert type(arch) is space.architecture_type and space.contains(arch)
        result = EvalResult(architecture=arch, metrics={"valid_acc": score}, trial_id=f"t{trial}")
        strategy.tell(result)
        told.append(result)
    assert strategy.history == told
    assert strategy.best() == told[1]


@pytest.mark.parametrize("name", SAMPLING)
def test_sampling_is_done_within_its_budget(name: str) -> None:
    space = space_of(name)
    strategy = small_sampling(name, space)
    told = 0
    while not strategy.done:
        assert told < BUDGET, f"{name} is not done after {BUDGET} results: give it smaller settings"
        arch = ask(strategy)
        assert space.contains(arch)
        strategy.tell(evaluation(space, arch, told))
        told += 1
    assert told >= 1 and strategy.ask() is None
    best = strategy.best()
    assert best is not None and best in strategy.history


@pytest.mark.parametrize("name", SAMPLING)
def test_sampling_state_survives_torch_save_and_a_fresh_strategy_asks_the_same(name: str) -> None:
    space = space_of(name)
    strategy = small_sampling(name, space)
    for trial in range(2):
        strategy.tell(evaluation(space, ask(strategy), trial))
    fresh = small_sampling(name, space)
    fresh.load_state_dict(round_trip(strategy.state_dict()))
    assert fresh.history == strategy.history and fresh.best() == strategy.best()
    for trial in range(2, 5):
        arch = ask(strategy)
        assert ask(fresh) == arch, f"ask {trial}"
        strategy.tell(evaluation(space, arch, trial))
        fresh.tell(evaluation(space, arch, trial))
    assert fresh.best() == strategy.best()


@pytest.mark.parametrize("name", ONE_SHOT)
def test_one_shot_strategies_sample_supernet_paths_of_the_space(name: str) -> None:
    space = space_of(name)
    paths = small_sampling(name, space).sample_paths(5)
    assert len(paths) == 5
    assert all(type(p) is space.architecture_type and space.contains(p) for p in paths)


# --- gradient strategies ---------------------------------------------------------------------


def small_gradient(name: str, seed: int = 0) -> tuple[Any, GradientStrategy]:
    """The space and the strategy over a fresh supernet (initialised from ``seed``), as
    ``SupernetWorker`` builds them: the strategy's overrides applied to the space's config."""
    cls = STRATEGIES.get(name)
    entry = STRATEGIES.entry(name)
    assert entry.config is not None
    config = entry.config(**REQUIRED.get(name, {}), **GRADIENT_CONFIG_OF.get(name, {}))
    if "arch_start_epoch" in {f.name for f in dataclasses.fields(config)}:
        config = dataclasses.replace(config, arch_start_epoch=0)  # architecture steps from the first
    space_name = SPACE_OF.get(name, "darts")
    space_entry = SPACES.entry(space_name)
    assert space_entry.config is not None
    space_config = dataclasses.replace(
        space_entry.config(**SMALL_SPACE[space_name]), **cls.space_overrides(config)
    )
    space = SPACES.create(space_name, space_config)
    torch.manual_seed(seed)
    supernet = build_supernet(space, INFO)
    return space, STRATEGIES.create(name, supernet=supernet, config=config, train=TRAIN)


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)  # (B, C, H, W)


def arch_values(strategy: GradientStrategy) -> list[torch.Tensor]:
    return [p.detach().clone() for p in strategy.arch_params]


@pytest.mark.parametrize("name", GRADIENT)
def test_gradient_step_moves_the_architecture_and_reports_finite_statistics(name: str) -> None:
    _, strategy = small_gradient(name)
    before = arch_values(strategy)
    assert before
    torch.manual_seed(1)  # Gumbel samples (GDAS, FBNet)
    result = strategy.step(batch(1), batch(2))
    after = arch_values(strategy)
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert all(torch.isfinite(p).all() for p in after)
    assert torch.isfinite(result.loss_sum) and int(result.count) == 8
    assert 0 <= int(result.correct) <= int(result.count)


@pytest.mark.parametrize("name", GRADIENT)
def test_a_gradient_step_trains_the_weights_exactly_when_the_strategy_says_it_does(name: str) -> None:
    # What `raynas search` prints of the answer's score depends on it (cli.scored_by).
    # (Parameters, not buffers: a forward pass in training mode moves BatchNorm's statistics.)
    _, strategy = small_gradient(name)
    arch = {id(p) for p in strategy.model.arch_parameters()}
    weights = [p for p in strategy.model.parameters() if id(p) not in arch]
    before = [p.detach().clone() for p in weights]
    torch.manual_seed(1)
    strategy.step(batch(1), batch(2))
    moved = any(not torch.equal(b, p) for b, p in zip(before, weights, strict=True))
    assert moved == type(strategy).trains_weights


@pytest.mark.parametrize("name", GRADIENT)
def test_gradient_genotype_is_an_architecture_of_the_space(name: str) -> None:
    space, strategy = small_gradient(name)
    genotype = strategy.genotype()
    assert type(genotype) is space.architecture_type and space.contains(genotype)


@pytest.mark.parametrize("name", GRADIENT)
def test_gradient_state_dict_gives_a_bit_identical_next_step(name: str) -> None:
    _, strategy = small_gradient(name)
    torch.manual_seed(1)
    strategy.step(batch(1), batch(2))
    _, fresh = small_gradient(name, seed=7)  # other initial weights and alphas: the state restores all
    fresh.load_state_dict(round_trip(strategy.state_dict()))
    for s in (strategy, fresh):
        torch.manual_seed(2)  # the same Gumbel samples for both
        s.step(batch(3), batch(4))
    for a, b in zip(arch_values(strategy), arch_values(fresh), strict=True):
        assert torch.equal(a, b)
    weights, fresh_weights = strategy.model.state_dict(), fresh.model.state_dict()
    assert all(torch.equal(weights[k], fresh_weights[k]) for k in weights)
