"""One-shot path dropout (Bender et al., ICML 2018): the rate rising linearly per training step, the
per-path drop probability r^(1/k) over a node's incoming paths, masks drawn independently per cell
and per ghost batch, ghost-batched forward passes against per-chunk computations by hand, and a
search that trains with it (the rules as raynas reads the paper: raynas/supernet/path_dropout.py)."""

from __future__ import annotations

import copy
import random
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
NB201_NODES = [dst for _, dst in EDGES]  # the node each NAS-Bench-201 edge feeds


def supernet(space: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_supernet(SPACES.create(space, SPACE_CONFIGS[space]), DatasetInfo("x", 3, 10, 16)).eval()


def edge_nodes(space: str) -> list[int]:
    """The node each edge of a cell feeds: DARTS node i has 2 + i incoming edges."""
    return NB201_NODES if space == "nb201" else [i for i in range(2) for _ in range(2 + i)]


def by_hand(space: str, net: torch.nn.Module, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The supernet's layers applied one by one with one 0/1 mask per search cell (cells, E, O)."""
    cells = iter(masks)
    if space == "darts":
        s0 = s1 = net.stem(x)
        for cell in net.cells:
            s0, s1 = s1, cell(s0, s1, next(cells))
        return net.classifier(net.global_pooling(s1).flatten(1))
    feature = net.stem(x)
    for cell in net.cells:
        feature = cell(feature, next(cells)) if isinstance(cell, Nb201SearchCell) else cell(feature)
    return net.classifier(net.global_pooling(net.lastact(feature)).flatten(1))


def test_linear_schedule_rises_from_zero_to_the_rate_over_the_steps() -> None:
    # The paper raises the rate linearly over training: r_t = r t / (T - 1) at step t of T.
    r, steps = 0.4, 9
    rates = [scheduled_rate(r, "linear", step=t, steps=steps) for t in range(steps)]
    assert rates == pytest.approx([0.4 * t / 8 for t in range(9)])
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.4)
    assert scheduled_rate(0.4, "linear", step=0, steps=1) == 0.4
    assert scheduled_rate(0.4, "linear", step=20, steps=9) == pytest.approx(0.4)  # never past r
    assert [scheduled_rate(0.3, "constant", step=t, steps=4) for t in range(4)] == [0.3] * 4


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="path_dropout"):
        SupernetEvalConfig(path_dropout=1.5)
    with pytest.raises(ConfigError, match="linear, constant"):
        SupernetEvalConfig(path_dropout=0.5, path_dropout_schedule="cosine")
    with pytest.raises(ConfigError, match="ghost_batch"):
        SupernetEvalConfig(path_dropout=0.5, ghost_batch=-1)
    assert SupernetEvalConfig().ghost_batch == 32  # raynas's default (see path_dropout.py)


def test_each_path_is_kept_at_the_rate_of_the_formula() -> None:
    # Node 0 has two edges of 3 candidates each (k = 6), node 1 one edge of 2 (k = 2). Each path is
    # dropped with p = r^(1/k), so the node loses all with probability r and then keeps one of its
    # k paths uniformly: P(a path kept) = (1 - p) + r / k, E[kept per node] = k (1 - p) + r.
    r, draws = 0.3, 20_000
    candidates = torch.zeros(draws, 3, 4, dtype=torch.bool)
    candidates[:, :2, :3] = True
    candidates[:, 2, :2] = True
    mask = path_dropout_mask(candidates, r, [0, 0, 1], torch.Generator().manual_seed(0))
    assert mask.shape == (draws, 3, 4) and not mask[~candidates].any()
    for rows, cols, k in (([0, 1], [0, 1, 2], 6), ([2], [0, 1], 2)):
        p = r ** (1 / k)
        kept = mask[:, rows][:, :, cols]  # (draws, edges of the node, its candidates)
        assert float(kept.mean()) == pytest.approx((1 - p) + r / k, abs=0.01)
        assert float(kept.sum((1, 2)).mean()) == pytest.approx(k * (1 - p) + r, abs=0.03)


def test_rate_zero_keeps_every_op_and_rate_one_exactly_one_per_node() -> None:
    candidates = torch.tensor(
        [[True, False, True, True], [False, True, True, False], [True, True, False, False]]
    )
    nodes = [0, 0, 1]  # edges 0 and 1 feed node 0, edge 2 node 1
    assert torch.equal(path_dropout_mask(candidates, 0.0, nodes), candidates.float())
    for seed in range(20):
        mask = path_dropout_mask(candidates, 1.0, nodes, torch.Generator().manual_seed(seed))
        assert float(mask[:2].sum()) == 1.0 and float(mask[2].sum()) == 1.0
        assert not (mask.bool() & ~candidates).any()


def test_masks_are_independent_across_leading_draws() -> None:
    # Cells and ghost batches are leading draws: the joint keep frequency of one path in draw 0
    # and in draw 1 is the product of the marginals (independent), not the marginal (shared).
    candidates = torch.ones(20_000, 2, 1, 5, dtype=torch.bool)  # (samples, draws, 1 edge, 5 ops)
    mask = path_dropout_mask(candidates, 0.5, [0], torch.Generator().manual_seed(1))
    a, b = mask[:, 0, 0, 0], mask[:, 1, 0, 0]
    marginal = 1 - 0.5 ** (1 / 5) + 0.5 / 5  # (1 - p) + r / k, as above: about 0.23
    assert float(a.mean()) == pytest.approx(marginal, abs=0.01)
    assert float((a * b).mean()) == pytest.approx(marginal**2, abs=0.01)


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_a_node_never_loses_all_its_inputs_and_none_never_runs(space: str) -> None:
    net = supernet(space)
    none = net.primitives.index("none")
    node = torch.tensor(edge_nodes(space))
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        for seed in range(10):
            net.drop_paths(0.95, generator=torch.Generator().manual_seed(seed), ghost_batch=1)
            net(x)
            masks = net.path_dropout.last  # (ghosts, cells, edges, num_ops)
            per_node = torch.zeros(*masks.shape[:2], int(node.max()) + 1).index_add_(2, node, masks.sum(3))
            assert (per_node[..., node.unique()] >= 1).all() and not masks[..., none].any()
    net.drop_paths(0.0)
    with torch.no_grad():
        net(x)
    assert (net.path_dropout.last.sum(3) == len(net.primitives) - 1).all()


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_every_cell_and_ghost_batch_gets_a_mask_of_its_own(space: str) -> None:
    net = supernet(space)
    cells = sum(1 for c in net.cells if space == "darts" or isinstance(c, Nb201SearchCell))
    net.drop_paths(0.5, generator=torch.Generator().manual_seed(2), ghost_batch=2)
    with torch.no_grad():
        net(torch.randn(5, 3, 16, 16))  # ghost batches of 2, 2 and 1
    masks = net.path_dropout.last
    assert masks.shape == (3, cells, len(edge_nodes(space)), len(net.primitives))
    flat = masks.flatten(2)  # (ghosts, cells, paths)
    assert all(not torch.equal(flat[0, c], flat[0, d]) for c in range(cells) for d in range(c))
    assert all(not torch.equal(flat[g, 0], flat[h, 0]) for g in range(3) for h in range(g))


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_ghost_batched_forward_equals_each_chunk_computed_by_hand(space: str) -> None:
    # In training, BatchNorm normalises each ghost batch on its own statistics: the forward pass
    # equals the layers applied by hand to each chunk with that chunk's masks, concatenated.
    net = supernet(space).train()
    reference = copy.deepcopy(net)  # the same weights (running statistics are not read in training)
    x = torch.randn(6, 3, 16, 16)
    net.drop_paths(0.5, generator=torch.Generator().manual_seed(4), ghost_batch=2)
    out = net(x)
    masks = net.path_dropout.last
    expected = torch.cat([by_hand(space, reference, x[2 * g : 2 * g + 2], masks[g]) for g in range(3)])
    torch.testing.assert_close(out, expected)
    whole = by_hand(space, reference, x, masks[0])  # one batch with one mask: another answer
    assert not torch.allclose(out, whole)


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_rate_zero_forward_is_the_sum_of_all_ops(space: str) -> None:
    # The fast path (only kept ops computed) against the dense mixture with every weight 1,
    # computed with grad so that nothing is skipped.
    net = supernet(space)
    x = torch.randn(2, 3, 16, 16)
    net.drop_paths(0.0)
    with torch.no_grad():
        fast = net(x)
    net.set_path(None)
    ones = torch.tensor([p != "none" for p in net.primitives]).float().expand(len(edge_nodes(space)), -1)
    net.path = {r: ones.clone().requires_grad_() for r in (False, True)} if space == "darts" else (
        ones.clone().requires_grad_()
    )
    torch.testing.assert_close(fast, net(x).detach())


def test_seeded_mask_forward_equals_the_kept_ops_summed_by_hand() -> None:
    torch.manual_seed(0)
    cell = Nb201SearchCell(channels=4, mixed_op="weighted").eval()
    candidates = torch.tensor([op != "none" for op in NB201_OPS]).expand(len(EDGES), len(NB201_OPS))
    mask = path_dropout_mask(candidates, 0.5, NB201_NODES, torch.Generator().manual_seed(3))
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


def test_evaluator_steps_the_rate_per_training_step_with_ghost_batches(tmp_path: Path) -> None:
    job = parse_job(sampling_job(
        tmp_path, {"name": "random", "evaluations": 1},
        {"name": "supernet", "path_dropout": 0.5, "ghost_batch": 8}, train={"epochs": 2},
    ))
    evaluator = SupernetEvaluator(job.evaluator.config, search=job)
    seen: list[tuple[float, int]] = []
    drop_paths = evaluator.supernet.drop_paths

    def record(rate: float, generator: torch.Generator | None = None, *, ghost_batch: int = 0) -> None:
        seen.append((rate, ghost_batch))
        drop_paths(rate, generator, ghost_batch=ghost_batch)

    evaluator.supernet.drop_paths = record
    space = SPACES.create(job.space.name, job.space.config)
    paths = [space.sample(random.Random(0))]
    first = evaluator.train_epoch(paths)
    assert evaluator.supernet.path_dropout is None  # the epoch ends path dropout
    evaluator.train_epoch(paths)
    steps = 2 * evaluator.steps_per_epoch  # 96 training digits in batches of 32: 3 a epoch
    assert steps == 6
    assert [r for r, _ in seen] == pytest.approx([0.5 * t / (steps - 1) for t in range(steps)])
    assert {g for _, g in seen} == {8}
    assert first["path_dropout"] == pytest.approx(0.5 * 2 / 5)  # the epoch's last step's rate


def test_replicas_training_together_each_run_an_equal_share_of_every_ghost_batch(tmp_path: Path) -> None:
    # The equality with one replica alone: tests/test_one_shot_parallel.py (on Ray).
    job = parse_job(sampling_job(
        tmp_path, {"name": "random", "evaluations": 1},
        {"name": "supernet", "path_dropout": 0.5, "ghost_batch": 8},
    ))
    rank1 = SupernetEvaluator(job.evaluator.config, search=job, rank=1, world_size=2)
    assert rank1.ghost_chunk == 4
    seen: list[int] = []
    drop_paths = rank1.supernet.drop_paths

    def record(rate: float, generator: torch.Generator | None = None, *, ghost_batch: int = 0) -> None:
        seen.append(ghost_batch)
        drop_paths(rate, generator, ghost_batch=ghost_batch)

    rank1.supernet.drop_paths = record
    rank1.train_epoch([SPACES.create(job.space.name, job.space.config).sample(random.Random(0))])
    assert seen and set(seen) == {4}
    with pytest.raises(ConfigError, match=r"ghost_batch \(8\) must be a multiple of the 3 replicas"):
        SupernetEvaluator(job.evaluator.config, search=job, rank=0, world_size=3)


def test_search_trains_the_one_shot_model_with_scheduled_path_dropout(tmp_path: Path) -> None:
    job = sampling_job(
        tmp_path, {"name": "random", "evaluations": 3},
        {"name": "supernet", "bn_batches": 1, "path_dropout": 0.5}, train={"epochs": 3},
    )
    result = run_search(parse_job(job), echo=lambda _: None)
    client = MlflowClient(job["tracking"]["tracking_uri"])
    history = sorted(client.get_metric_history(result.run_id, "path_dropout"), key=lambda m: m.step)
    # 3 steps an epoch (96 training digits, batches of 32): the rate at steps 2, 5 and 8 of 9.
    assert [m.value for m in history] == pytest.approx([0.5 * t / 8 for t in (2, 5, 8)])
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
