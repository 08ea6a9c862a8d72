"""One-shot path dropout (Bender et al., ICML 2018): the rate schedule, the per-op masks, the
supernets' forward under a mask against sums computed by hand, and a search that trains with it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from raynas.errors import ConfigError
from raynas.evaluators.supernet import SupernetEvalConfig, SupernetEvaluator, scheduled_rate
from raynas.ops.darts import Zero
from raynas.runs import run_search
from raynas.runs.jobs import parse_job
from raynas.spaces import SPACES
from raynas.spaces.darts_cnn import DartsSpaceConfig
from raynas.spaces.nb201 import EDGES, NB201_OPS, NODES, Nb201SpaceConfig
from raynas.supernet import build_supernet
from raynas.supernet.nb201 import Nb201SearchCell
from raynas.supernet.path_dropout import path_dropout_mask
from raynas.types import DatasetInfo
from tests.test_sampling_search import sampling_job

SPACE_CONFIGS = {
    "darts": DartsSpaceConfig(channels=4, layers=3, nodes=2),
    "nb201": Nb201SpaceConfig(channels=4, cells_per_stage=1),
}


def supernet(space: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_supernet(SPACES.create(space, SPACE_CONFIGS[space]), DatasetInfo("x", 3, 10, 16)).eval()


def masks(net: torch.nn.Module) -> list[torch.Tensor]:
    return list(net.path.values()) if isinstance(net.path, dict) else [net.path]


def test_linear_schedule_ramps_from_zero_to_the_rate_over_the_epochs() -> None:
    rates = [scheduled_rate(0.4, "linear", epoch=e, epochs=5) for e in range(5)]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])  # r * e / (E - 1)
    assert scheduled_rate(0.4, "linear", epoch=0, epochs=1) == 0.4
    assert scheduled_rate(0.4, "linear", epoch=9, epochs=5) == pytest.approx(0.4)  # never past r
    assert [scheduled_rate(0.3, "constant", epoch=e, epochs=4) for e in range(4)] == [0.3] * 4


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="path_dropout"):
        SupernetEvalConfig(path_dropout=1.5)
    with pytest.raises(ConfigError, match="linear, constant"):
        SupernetEvalConfig(path_dropout=0.5, path_dropout_schedule="cosine")


@pytest.mark.parametrize("k", [1, 3, 7])
def test_mask_keeps_ops_at_the_rate_of_the_formula(k: int) -> None:
    # Each op dropped with p = r^(1/k); an edge that lost all (probability r) keeps one:
    # E[kept per edge] = k (1 - p) + r.
    r, edges = 0.3, 20_000
    candidates = torch.zeros(edges, 8, dtype=torch.bool)
    candidates[:, :k] = True
    mask = path_dropout_mask(candidates, r, torch.Generator().manual_seed(0))
    assert mask.shape == (edges, 8) and not mask[:, k:].any()
    assert (mask.sum(1) >= 1).all()
    expected = k * (1 - r ** (1 / k)) + r
    assert float(mask.sum(1).mean()) == pytest.approx(expected, abs=0.03)


def test_rate_zero_keeps_every_op_and_rate_one_exactly_one() -> None:
    candidates = torch.tensor([[True, False, True, True], [False, True, True, False]])
    assert torch.equal(path_dropout_mask(candidates, 0.0), candidates.float())
    for seed in range(20):
        mask = path_dropout_mask(candidates, 1.0, torch.Generator().manual_seed(seed))
        assert mask.sum(1).tolist() == [1.0, 1.0] and not (mask.bool() & ~candidates).any()


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_at_least_one_op_per_edge_and_never_none(space: str) -> None:
    net = supernet(space)
    none = net.primitives.index("none")
    for seed in range(50):
        net.drop_paths(0.9, generator=torch.Generator().manual_seed(seed))
        for mask in masks(net):
            assert (mask.sum(1) >= 1).all() and not mask[:, none].any()
    net.drop_paths(0.0)
    assert all((m.sum(1) == len(net.primitives) - 1).all() for m in masks(net))


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_rate_zero_forward_is_the_sum_of_all_ops(space: str) -> None:
    # The fast path (only kept ops computed) against the dense mixture with every weight 1,
    # computed with grad so that nothing is skipped.
    net = supernet(space)
    x = torch.randn(2, 3, 16, 16)
    net.drop_paths(0.0)
    with torch.no_grad():
        fast = net(x)
    net.path = (
        {r: torch.ones_like(m).requires_grad_() for r, m in net.path.items()} if isinstance(net.path, dict)
        else torch.ones_like(net.path).requires_grad_()
    )
    torch.testing.assert_close(fast, net(x).detach())


def test_seeded_mask_forward_equals_the_kept_ops_summed_by_hand() -> None:
    torch.manual_seed(0)
    cell = Nb201SearchCell(channels=4, mixed_op="weighted").eval()
    candidates = torch.tensor([op != "none" for op in NB201_OPS]).expand(len(EDGES), len(NB201_OPS))
    mask = path_dropout_mask(candidates, 0.5, torch.Generator().manual_seed(3))
    assert 0 < mask.sum() < candidates.sum()  # some dropped, some kept
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        out = cell(x, mask)
        nodes = [x]
        for dst in range(1, NODES):
            total = torch.zeros_like(x)
            for k, (src, to) in enumerate(EDGES):
                if to == dst:
                    for i, op in enumerate(cell.edges[k].ops):
                        if mask[k, i] == 1.0 and not isinstance(op, Zero):
                            total = total + op(nodes[src])
            nodes.append(total)
    torch.testing.assert_close(out, nodes[-1])


def test_search_trains_the_one_shot_model_with_scheduled_path_dropout(tmp_path: Path) -> None:
    job = sampling_job(
        tmp_path, {"name": "random", "evaluations": 3},
        {"name": "supernet", "bn_batches": 1, "path_dropout": 0.5}, train={"epochs": 3},
    )
    result = run_search(parse_job(job), echo=lambda _: None)
    client = MlflowClient(job["tracking"]["tracking_uri"])
    history = sorted(client.get_metric_history(result.run_id, "path_dropout"), key=lambda m: m.step)
    assert [m.value for m in history] == pytest.approx([0.0, 0.25, 0.5])
    assert 0.0 <= result.metrics["valid_acc"] <= 1.0


def test_path_dropout_needs_a_supernet_that_sums_ops(tmp_path: Path) -> None:
    job = sampling_job(
        tmp_path, {"name": "random", "evaluations": 1}, {"name": "supernet", "path_dropout": 0.5}
    )
    job["space"] = {"name": "fbnet", "stem_channels": 8, "stem_stride": 1, "stage_channels": [8, 16],
                    "stage_depths": [1, 1], "stage_strides": [1, 2], "head_channels": 16}
    with pytest.raises(ConfigError, match="drop_paths"):  # the job's rule, before anything is built
        parse_job(job)
    config = parse_job({**job, "evaluator": {"name": "supernet"}})
    with pytest.raises(ConfigError, match="drop_paths"):  # and the evaluator's own, built directly
        SupernetEvaluator(SupernetEvalConfig(path_dropout=0.5), search=config)
