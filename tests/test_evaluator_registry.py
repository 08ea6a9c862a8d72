"""Tests every registered evaluator gets automatically, the day it registers: built from a parsed
search job as the sampling search builds it, it scores a sampled NAS-Bench-201 cell with a finite
objective for that architecture and trial, at a cost it reports; it scores the same architecture
the same way whenever it is asked (each candidate is seeded by its key); and a one-shot evaluator
trains its supernet an epoch on sampled paths before scoring.
"""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from raynas.evaluators import EVALUATORS
from raynas.runs.jobs import parse_job
from raynas.spaces import SPACES
from raynas.types import Architecture
from tests.conftest import tiny_job
from tests.fixtures import write_nb201_table, write_random_ptb

NAMES = EVALUATORS.names()
ONE_SHOT = [n for n in NAMES if hasattr(EVALUATORS.get(n), "train_epoch")]

# Small budgets, applied to the config fields an evaluator has: one epoch from scratch, networks
# of one 4-channel cell per stage, proxies on 8 images, BatchNorm recalibrated on one batch.
SMALL_CONFIG = {"epochs": 1, "channels": 4, "layers": 1, "batch_size": 8, "bn_batches": 1}
# The supernet's `epochs` are fine-tuning epochs under Tune (tests/test_tune.py): none here.
# The table's schedules are the benchmark's (200 or 12 epochs).
SMALL_CONFIG_OF: dict[str, dict[str, Any]] = {"supernet": {"epochs": 0}, "nb201_table": {"epochs": 200},
                                              "language_model": {"streams": 4, "valid_streams": 2}}
# Evaluators of one kind of space, with a strategy of it (else NAS-Bench-201 cells, random search).
SEARCH_OF: dict[str, dict[str, Any]] = {
    "morphism": {"space": {"name": "autokeras", "seed_width": 4, "seed_strides": [1, 2]},
                 "strategy": {"name": "autokeras", "evaluations": 2}},
    "language_model": {"space": {"name": "darts_rnn", "channels": 8, "nodes": 2}},
}
# Evaluators of one kind of data (else 64 digits): a text corpus in PTB's files.
DATA_OF: dict[str, Any] = {
    "language_model": lambda folder: {
        "name": "ptb", "bptt": 5, "batch_size": 4,
        "path": str(write_random_ptb(folder / "ptb", train_words=200, valid_words=100)),
    },
}


# Evaluators that read a file: written for the test (NAS-Bench-201's table of the cells sampled here).
FILES_OF: dict[str, Any] = {
    "nb201_table": lambda folder, cells: {"path": str(write_nb201_table(folder / "nb201.pth", cells))},
}


def small_settings(name: str) -> dict[str, Any]:
    config = EVALUATORS.entry(name).config
    fields = {f.name for f in dataclasses.fields(config)} if config is not None else set()
    return {k: v for k, v in SMALL_CONFIG.items() if k in fields} | SMALL_CONFIG_OF.get(name, {})


def search_job(name: str, tmp_path: Path, **settings: Any) -> Any:
    """A parsed random search over 4-channel NAS-Bench-201 cells (one per stage) on 64 digits,
    scored by evaluator ``name`` (with ``settings`` of its own besides the small ones)."""
    job = tiny_job(tmp_path)
    job["space"] = {"name": "nb201", "channels": 4, "cells_per_stage": 1}
    job["strategy"] = {"name": "random", "evaluations": 2}
    job.update(SEARCH_OF.get(name, {}))
    digits = {"name": "digits", "batch_size": 16, "limit": 64}
    job["data"] = DATA_OF[name](tmp_path) if name in DATA_OF else digits
    if "table" in (EVALUATORS.entry(name).traits or {}):  # (a table's search names no data)
        del job["data"]
    cells = [str(sample(SPACES.create("nb201"), seed)) for seed in range(4)]
    files = FILES_OF[name](tmp_path, cells) if name in FILES_OF else {}
    job["evaluator"] = {"name": name, **small_settings(name), **files, **settings}
    if name != "supernet":
        del job["train"]  # the supernet's training: only the one-shot evaluator has one
    else:
        job["train"] = {"epochs": 1, "learning_rate": 0.05}
    return parse_job(job)


def build(name: str, tmp_path: Path, **settings: Any) -> tuple[Any, Any]:
    """The job's space and evaluator ``name``, built as the sampling search builds it."""
    job = search_job(name, tmp_path, **settings)
    assert job.evaluator.name == name
    space = SPACES.create(job.space.name, job.space.config)
    return space, EVALUATORS.create(name, job.evaluator.config, search=job)


def sample(space: Any, seed: int) -> Architecture:
    return space.sample(random.Random(seed))


def train_first(evaluator: Any, space: Any) -> dict[str, float] | None:
    """A one-shot evaluator's supernet epoch on sampled paths (what it scores with); None for others."""
    if not hasattr(evaluator, "train_epoch"):
        return None
    return evaluator.train_epoch([sample(space, seed) for seed in range(4)])


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_the_built_in_evaluators_are_registered() -> None:
    assert {"supernet", "scratch", "training_free"} <= set(NAMES)
    assert "supernet" in ONE_SHOT


@pytest.mark.parametrize("name", NAMES)
def test_config_builds_from_its_defaults(name: str, tmp_path: Path) -> None:
    """From its defaults, and the file it reads where it reads one (a setting a job must give)."""
    entry = EVALUATORS.entry(name)
    assert entry.config is not None and dataclasses.is_dataclass(entry.config)
    files = FILES_OF[name](tmp_path, []) if name in FILES_OF else {}
    assert isinstance(entry.config(**files), entry.config)


@pytest.mark.parametrize("name", NAMES)
def test_evaluate_scores_the_architecture_with_a_finite_objective(name: str, tmp_path: Path) -> None:
    space, evaluator = build(name, tmp_path)
    train_first(evaluator, space)
    arch = sample(space, 0)
    result = evaluator.evaluate(arch, trial_id="t1")
    assert result.architecture == arch and result.trial_id == "t1"
    assert result.objective in result.metrics
    score = result.metrics[result.objective]
    assert math.isfinite(score) and result.score == score
    assert result.budget >= 0 and result.seconds >= 0


@pytest.mark.parametrize("name", NAMES)
def test_the_same_architecture_scores_the_same_twice(name: str, tmp_path: Path) -> None:
    space, evaluator = build(name, tmp_path)
    train_first(evaluator, space)
    a, b = sample(space, 0), sample(space, 1)
    assert a != b
    first = evaluator.evaluate(a, trial_id="t1")
    evaluator.evaluate(b, trial_id="t2")  # another candidate in between
    again = evaluator.evaluate(a, trial_id="t3")
    assert again.score == first.score


@pytest.mark.parametrize("name", ONE_SHOT)
def test_one_shot_evaluator_trains_an_epoch_on_sampled_paths(name: str, tmp_path: Path) -> None:
    space, evaluator = build(name, tmp_path)
    before = {k: v.clone() for k, v in evaluator.supernet.state_dict().items()}
    metrics = train_first(evaluator, space)
    assert metrics is not None and math.isfinite(metrics["train_loss"])
    after = evaluator.supernet.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_one_shot_evaluator_with_path_dropout_trains_and_scores_as_without(tmp_path: Path) -> None:
    """Path dropout (Bender et al., ICML 2018; evaluator.path_dropout) changes how the one-shot
    model trains, not what the evaluator promises: an epoch on sampled paths moves the weights,
    and a candidate scores finite and the same twice (scoring drops nothing)."""
    space, evaluator = build("supernet", tmp_path, path_dropout=0.5)
    before = {k: v.clone() for k, v in evaluator.supernet.state_dict().items()}
    metrics = train_first(evaluator, space)
    assert metrics is not None and math.isfinite(metrics["train_loss"])
    assert any(not torch.equal(before[k], v) for k, v in evaluator.supernet.state_dict().items())
    a, b = sample(space, 0), sample(space, 1)
    first = evaluator.evaluate(a, trial_id="t1")
    evaluator.evaluate(b, trial_id="t2")
    assert math.isfinite(first.score) and evaluator.evaluate(a, trial_id="t3").score == first.score
