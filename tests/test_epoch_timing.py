"""A search epoch says where its time went (``step_seconds``, ``data_seconds``; the worker adds
``eval_seconds``, all kept out of the search's results), which ``benchmarks/overhead.py`` splits
the quick start's epochs by."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from conftest import tiny_job

from raynas.config import TrainConfig
from raynas.data import DATASETS, search_loaders
from raynas.ops import PRIMITIVES
from raynas.runs.jobs import parse_job
from raynas.runs.supernet_worker import SupernetWorker
from raynas.strategies.gradient.darts import Darts, DartsConfig
from raynas.supernet.darts import DartsSupernet
from raynas.train.loop import search_epoch


class SlowLoader:
    """Two batches, each taking ``delay`` seconds to draw."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        g = torch.Generator().manual_seed(0)
        self.batches = [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 5, (4,), generator=g))
                        for _ in range(2)]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.batches:
            time.sleep(self.delay)
            yield batch


def test_a_search_epoch_splits_its_time_between_steps_and_drawing_batches() -> None:
    torch.manual_seed(0)
    supernet = DartsSupernet(channels=4, layers=2, nodes=2, stem_multiplier=3, primitives=PRIMITIVES,
                             mixed_op="weighted", num_classes=5, in_channels=3)
    strategy = Darts(supernet=supernet, config=DartsConfig(), train=TrainConfig(epochs=1))
    tic = time.perf_counter()
    metrics = search_epoch(strategy, SlowLoader(0.2), SlowLoader(0.0), torch.device("cpu"))
    wall = time.perf_counter() - tic
    assert metrics["data_seconds"] >= 2 * 0.2  # two training batches, 0.2 s each
    assert metrics["step_seconds"] > 0
    assert metrics["data_seconds"] + metrics["step_seconds"] <= wall


def test_the_worker_keeps_an_epochs_timings_apart_from_its_metrics(tmp_path: Path) -> None:
    worker = SupernetWorker(parse_job(tiny_job(tmp_path, train={"epochs": 1})))
    report = worker.run_epoch()
    assert set(report.timings) == {"step_seconds", "data_seconds", "eval_seconds"}
    assert not set(report.timings) & set(report.metrics)  # results stay reproducible
    assert sum(report.timings.values()) <= report.seconds


class Recorder:
    """A strategy that only records the validation batches its steps are given."""

    lr = 0.0

    def __init__(self) -> None:
        self.valid: list[torch.Tensor] = []

    def step(self, train: tuple[torch.Tensor, torch.Tensor], valid: tuple[torch.Tensor, torch.Tensor]) -> Any:
        self.valid.append(valid[0])
        return SimpleNamespace(loss_sum=torch.zeros(()), correct=torch.zeros((), dtype=torch.long), count=1)

    def end_epoch(self) -> None:
        pass


def test_a_validation_half_smaller_than_the_training_half_is_drawn_anew_on_each_pass() -> None:
    """train_portion 0.75: three passes over the validation half in one epoch, each a new shuffle of
    all of it (DARTS draws a random validation batch each step), not the first pass replayed."""
    config = DATASETS.entry("digits").config(batch_size=16, limit=128, train_portion=0.75)
    data = DATASETS.create("digits", config)
    train, valid = search_loaders(data, seed=0)
    recorder = Recorder()
    search_epoch(recorder, train, valid, torch.device("cpu"))
    assert len(recorder.valid) == len(train) == 6 and len(valid) == 2
    passes = [torch.cat(recorder.valid[i : i + 2]) for i in (0, 2, 4)]
    whole = torch.stack([valid.dataset[i][0] for i in range(len(valid.dataset))])

    def rows(x: torch.Tensor) -> list[bytes]:
        return sorted(image.numpy().tobytes() for image in x)

    assert all(rows(p) == rows(whole) for p in passes)  # every pass is the whole validation half
    assert not torch.equal(passes[0], passes[1]) and not torch.equal(passes[1], passes[2])  # reshuffled
