"""Guards against DARTS's collapse to skip connections: the skip count recorded every epoch, a
limit on skips in the derived cell (P-DARTS), and early stopping when skips dominate (DARTS+)."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import tiny_job
from mlflow.tracking import MlflowClient

from raynas.runs import run_search
from raynas.runs.jobs import parse_job
from raynas.supernet.darts import derive_cell

OPS = ("none", "skip_connect", "sep_conv_3x3", "max_pool_3x3")


def cell_weights() -> torch.Tensor:
    # 2 nodes -> 5 edges (node 0: inputs 0, 1; node 1: inputs 0, 1, 2); columns follow OPS.
    return torch.tensor([
        [0.0, 0.9, 0.1, 0.0],   # node 0 <- 0: skip 0.9
        [0.0, 0.7, 0.3, 0.0],   # node 0 <- 1: skip 0.7, conv 0.3
        [0.0, 0.8, 0.0, 0.2],   # node 1 <- 0: skip 0.8, pool 0.2
        [0.0, 0.1, 0.6, 0.0],   # node 1 <- 1: conv 0.6
        [0.9, 0.05, 0.0, 0.05],  # node 1 <- 2: 'none' is never chosen
    ])


def test_derivation_without_a_limit_follows_the_paper() -> None:
    assert derive_cell(cell_weights(), OPS, 2) == (
        ("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 0), ("sep_conv_3x3", 1),
    )


def test_skip_limit_keeps_the_strongest_skips() -> None:
    # The weakest skip (node 0 <- 1, 0.7) gives way to that edge's next op (conv 0.3): still the
    # node's second strongest input, so the edge stays and only its op changes.
    assert derive_cell(cell_weights(), OPS, 2, max_skip=2) == (
        ("skip_connect", 0), ("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 1),
    )
    # With one skip allowed, node 1 <- 0 (0.8) loses its skip next; its pool (0.2) still beats
    # node 1 <- 2 (0.05), so node 1 keeps inputs 1 and 0.
    assert derive_cell(cell_weights(), OPS, 2, max_skip=1) == (
        ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 1), ("max_pool_3x3", 0),
    )
    assert derive_cell(cell_weights(), OPS, 2, max_skip=0) == (
        ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("max_pool_3x3", 0),
    )


def test_search_stops_early_when_skips_dominate(tmp_path: Path) -> None:
    # Only skip connections to choose from: the first epoch's cell is all skips.
    job = tiny_job(
        tmp_path,
        space={"primitives": ["none", "skip_connect"]},
        train={"epochs": 3, "stop_at_skip_connects": 2},
    )
    lines: list[str] = []
    result = run_search(parse_job(job), echo=lines.append)
    assert [line for line in lines if line.startswith("epoch")][-1].startswith("epoch   1/3")
    assert any(line.startswith("Stopping early: the normal cell has 4 skip") for line in lines)
    run = MlflowClient(job["tracking"]["tracking_uri"]).get_run(result.run_id)
    assert run.data.params["final.stopped_early"] == "True"
    assert run.data.metrics["final.epochs_run"] == 1  # a number: a metric the UI sorts runs by
    assert run.data.metrics["skip_connects"] == 4


def test_space_limit_reaches_the_derived_genotype(tmp_path: Path) -> None:
    job = tiny_job(tmp_path, space={"primitives": ["none", "skip_connect", "max_pool_3x3"],
                                    "max_skip_connect": 1}, train={"epochs": 1})
    result = run_search(parse_job(job), echo=lambda _: None)
    assert sum(op == "skip_connect" for op, _ in result.architecture.normal) <= 1
