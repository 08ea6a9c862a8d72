"""TEG-NAS: each indicator against an independent computation on a tiny network (an explicit
Jacobian from torch.autograd.functional.jacobian and NumPy eigenvalues; regions counted by hand on
2-D ReLU nets; the kernel regression in NumPy), masks at the code's positions, the pruning order
against one computed by hand from the measured indicators, TEG-guided evolution and REINFORCE
against hand-computed ranks and a hand-computed Adam step, and the ``te_nas`` proxy."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from raynas.config import TrainConfig
from raynas.spaces import SPACES
from raynas.spaces.darts_genotype import DartsGenotype
from raynas.spaces.nb201 import Nb201Arch
from raynas.strategies import STRATEGIES
from raynas.strategies.gradient.teg_prune import TegPrune, TegPruneConfig, dense_ranks, rank_sum_order
from raynas.strategies.sampling.evolution import EvolutionConfig
from raynas.strategies.sampling.teg import TegEvolution, TegReinforce, TegReinforceConfig, best_of, rank_sums
from raynas.supernet import build_supernet, teg
from raynas.types import DatasetInfo, EvalResult
from tests.conftest import tiny_job

INFO = DatasetInfo("digits", 1, 10, 8)


class TinyConvNet(nn.Module):
    """Conv -> BN -> ReLU -> pool -> Linear: weights, BN scale and biases."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


# -- the indicators --------------------------------------------------------------------------


def test_ntk_condition_number_matches_an_explicit_jacobian_and_numpy_eigenvalues() -> None:
    torch.manual_seed(0)
    net, x = TinyConvNet().train(), torch.randn(5, 1, 4, 4)
    rows, _ = teg.ntk_rows(net, x)
    # Independently: J of the summed logits of every input over the parameters named *weight*
    # (biases left out), the whole batch in one call (BatchNorm couples the inputs).
    names = [n for n, _ in net.named_parameters() if "weight" in n]
    params = dict(net.named_parameters())
    flat = torch.cat([params[n].detach().reshape(-1) for n in names])
    sizes = [params[n].numel() for n in names]

    def summed_logits(vector: torch.Tensor) -> torch.Tensor:
        chunks = dict(zip(names, torch.split(vector, sizes), strict=True))
        weights = {n: chunks[n].reshape(params[n].shape) if n in chunks else p for n, p in params.items()}
        return functional_call(net, weights, (x,)).sum(1)  # (B,)

    jacobian = torch.autograd.functional.jacobian(summed_logits, flat)  # (B, P)
    torch.testing.assert_close(rows, jacobian, rtol=1e-5, atol=1e-6)
    eig = np.linalg.eigvalsh((jacobian @ jacobian.T).double().numpy())
    assert teg.condition_number(rows) == pytest.approx(eig[-1] / eig[0], rel=1e-6)


def test_a_singular_ntk_is_infinitely_ill_conditioned() -> None:
    rows = torch.tensor([[1.0, 2.0], [0.0, 0.0], [0.0, 1.0]])  # an input with no gradient: lambda_min = 0
    assert teg.condition_number(rows) == math.inf


def test_the_kernel_regression_error_matches_numpy() -> None:
    g = torch.Generator().manual_seed(1)
    jx, jy = torch.randn(6, 20, generator=g), torch.randn(4, 20, generator=g)
    yx, yy = torch.tensor([0, 1, 2, 1, 0, 2]), torch.tensor([2, 0, 1, 1])
    tx, ty = teg.centred_onehot(yx, 3), teg.centred_onehot(yy, 3)
    onehot = np.eye(3)
    ex, ey = onehot[yx.numpy()], onehot[yy.numpy()]
    ex, ey = ex - ex.mean(0), ey - ey.mean(0)
    x, y = jx.double().numpy(), jy.double().numpy()
    predicted = (y @ x.T) @ np.linalg.inv(x @ x.T) @ ex
    expected = ((predicted - ey) ** 2).sum(1).mean()
    assert teg.regression_mse(jx, jy, tx, ty) == pytest.approx(expected, rel=1e-9)


def test_linear_regions_of_a_two_dimensional_relu_net_counted_by_hand() -> None:
    # Inputs (x1, x2) as 2-channel 1x1 maps; units relu(x1), relu(x2), relu(x1 + x2 - 1): the
    # three lines cut the plane into regions, each point's pattern read off by hand.
    net = nn.Sequential(nn.Conv2d(2, 3, 1), nn.ReLU())
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]).reshape(3, 2, 1, 1))
        net[0].bias.copy_(torch.tensor([0.0, 0.0, -1.0]))
    points = torch.tensor([
        [2.0, 2.0],    # 1 1 1
        [0.2, 0.2],    # 1 1 0
        [0.3, 0.1],    # 1 1 0 (same region)
        [-1.0, 3.0],   # 0 1 1
        [-1.0, 0.5],   # 0 1 0
        [-1.0, -1.0],  # 0 0 0
        [-2.0, -0.5],  # 0 0 0 (same region)
    ]).reshape(1, 7, 2, 1, 1)  # one batch of seven
    codes = teg.activation_codes(net, points)
    assert codes.tolist()[1] == [1, 1, 0] and codes.tolist()[3] == [0, 1, 1]
    assert teg.count_linear_regions(codes) == pytest.approx(5.0)


def test_linear_regions_are_calc_lrs_sum_over_inputs_of_one_over_the_inputs_sharing_their_pattern() -> None:
    # calc_LR (linear_region_counter.py) in numpy: A (1 - A)^T + its transpose is 0 where two
    # patterns are the same; R sums 1 / (inputs with the same pattern).
    g = torch.Generator().manual_seed(3)
    patterns = (torch.rand(40, 12, generator=g) > 0.5).float()
    codes = patterns[torch.randint(40, (300,), generator=g)]  # 300 inputs, repeated patterns
    a = codes.double().numpy()
    differ = a @ (1 - a).T
    same = 1 - np.sign(differ + differ.T)
    expected = (1.0 / same.sum(1)).sum()
    assert teg.count_linear_regions(codes) == pytest.approx(expected, rel=1e-12)
    distinct = len({tuple(row) for row in codes.tolist()})
    assert distinct < len(codes) and teg.count_linear_regions(codes) == distinct


def test_only_relus_of_feature_maps_are_read() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(2, 3), nn.ReLU())
    codes = teg.activation_codes(net, torch.randn(1, 4, 1, 1, 1))
    assert codes.shape == (4, 2)  # the 2-D ReLU after the Linear is not read (hook_in_forward)


# -- networks and masks ------------------------------------------------------------------------


def test_an_architecture_is_a_mask_at_the_codes_positions() -> None:
    nb201 = SPACES.create("nb201")
    arch = Nb201Arch.parse(
        "|nor_conv_1x1~0|+|avg_pool_3x3~0|nor_conv_3x3~1|+|skip_connect~0|none~1|nor_conv_3x3~2|"
    )
    (mask,) = teg.arch_masks(teg.CellShape.of_space(nb201, INFO), arch)
    assert (mask == 0).nonzero().tolist() == [[0, 2], [1, 4], [2, 3], [3, 1], [4, 0], [5, 3]]
    assert int((mask == -teg.INF).sum()) == 24
    darts = SPACES.create("darts", SPACES.entry("darts").config(nodes=2))
    shape = teg.CellShape.of_space(darts, INFO)
    genotype = DartsGenotype(
        normal=(("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_3x3", 2), ("max_pool_3x3", 0)),
        normal_concat=(2, 3),
        reduce=(("avg_pool_3x3", 1), ("sep_conv_5x5", 0), ("skip_connect", 0), ("sep_conv_3x3", 2)),
        reduce_concat=(2, 3),
    )
    normal, reduce = teg.arch_masks(shape, genotype)
    ops = list(shape.primitives)
    # Node 3 (the second intermediate node) starts at row 2: (op, j) goes to row 2 + j.
    assert sorted((normal == 0).nonzero().tolist()) == sorted(
        [[0, ops.index("sep_conv_3x3")], [1, ops.index("skip_connect")], [4, ops.index("dil_conv_3x3")],
         [2, ops.index("max_pool_3x3")]]
    )
    assert sorted((reduce == 0).nonzero().tolist()) == sorted(
        [[1, ops.index("avg_pool_3x3")], [0, ops.index("sep_conv_5x5")], [2, ops.index("skip_connect")],
         [4, ops.index("sep_conv_3x3")]]
    )


def test_a_removed_operation_weighs_zero_and_changes_the_indicators() -> None:
    shape = teg.CellShape.of_space(SPACES.create("nb201"), INFO)
    torch.manual_seed(0)
    ntk_net, thin_net = teg.build_networks(shape)
    x = torch.randn(4, 1, 8, 8)
    batch = teg.TegBatch(x, torch.tensor([0, 1, 2, 3]), x.flip(0), torch.tensor([3, 2, 1, 0]),
                         torch.randn(1, 30, 1, 3, 3), 10)
    full = teg.full_masks(shape)
    masked = [full[0].clone()]
    masked[0][:, 3] = -teg.INF  # nor_conv_3x3 off everywhere
    teg.set_masks(ntk_net, masked)
    assert float(ntk_net.edge_weights()[:, 3].detach().abs().max()) == 0.0
    a, b = teg.indicators(ntk_net, thin_net, full, batch), teg.indicators(ntk_net, thin_net, masked, batch)
    assert set(a) == {"ntk", "region", "mse"} and a != b
    assert all(math.isfinite(v) and v > 0 for v in (*a.values(), *b.values()))


def test_the_darts_ntk_network_alone_runs_on_pytorchs_own_cpu_kernels_and_gives_onednns_rows() -> None:
    darts = SPACES.create("darts", SPACES.entry("darts").config(nodes=2))
    torch.manual_seed(0)
    ntk_net, thin_net = teg.build_networks(teg.CellShape.of_space(darts, INFO))
    nb201_nets = teg.build_networks(teg.CellShape.of_space(SPACES.create("nb201"), INFO))
    assert getattr(ntk_net, teg.ONEDNN) is False
    assert all(not hasattr(net, teg.ONEDNN) for net in (thin_net, *nb201_nets))
    seen: list[bool] = []  # oneDNN's switch in the forward pass, then in each input's backward pass
    ntk_net.register_forward_pre_hook(lambda *_: seen.append(torch.backends.mkldnn.enabled))
    ntk_net.stem[0].weight.register_hook(lambda _: seen.append(torch.backends.mkldnn.enabled))
    x = torch.randn(6, 1, 8, 8)
    rows, cell_rows = teg.ntk_rows(ntk_net, x)
    assert seen == [False] * 7 and torch.backends.mkldnn.enabled  # switched back after the rows
    setattr(ntk_net, teg.ONEDNN, True)
    onednn_rows, onednn_cell_rows = teg.ntk_rows(ntk_net, x)
    assert seen == [False] * 7 + [True] * 7
    # The same up to float32 rounding of the two kernels' sums (entries up to ~1).
    assert 0.1 < float(rows.abs().max()) < 10
    torch.testing.assert_close(rows, onednn_rows, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cell_rows, onednn_cell_rows, rtol=1e-4, atol=1e-4)


# -- pruning -----------------------------------------------------------------------------------


def test_dense_ranks_and_rank_sums_by_hand() -> None:
    a, b, c = (0, 0, 1), (0, 0, 2), (0, 1, 1)
    # ntk changes 0.5, 0.1, 0.1: descending -> ranks 0, 1, 1 (equal values share a rank).
    ranks = dense_ranks([(0.1, a), (0.5, b), (0.1, c)], descending=True, precision=3)
    assert dict(ranks) == {b: 0, a: 1, c: 1}
    changes = {"ntk": [(0.1, a), (0.5, b), (0.1, c)], "region": [(0.2, a), (-0.3, b), (0.0, c)]}
    # region ascending: b 0, c 1, a 2. Sums: a 3, b 0, c 2.
    assert rank_sum_order(changes, precision=3) == [(b, 0), (c, 2), (a, 3)]


def pruner(name: str, indicators: tuple[str, ...] = teg.INDICATORS, **space: object) -> TegPrune:
    config = SPACES.entry(name).config(**space)  # type: ignore[arg-type]
    torch.manual_seed(0)
    supernet = build_supernet(SPACES.create(name, config), INFO)
    small = TegPruneConfig(indicators=indicators, repeat=1, batch_size=2, region_inputs=25, region_batches=1)
    strategy = STRATEGIES.create(
        "teg_nas_prune", supernet=supernet, config=small, train=TrainConfig(epochs=1)
    )
    assert isinstance(strategy, TegPrune)
    return strategy


def small_batch(seed: int, side: int = 3, size: int = 3) -> teg.TegBatch:
    g = torch.Generator().manual_seed(seed)
    return teg.TegBatch(
        torch.randn(size, 1, 8, 8, generator=g), torch.randint(0, 10, (size,), generator=g),
        torch.randn(size, 1, 8, 8, generator=g), torch.randint(0, 10, (size,), generator=g),
        torch.randn(1, 25, 1, side, side, generator=g), 10,
    )


def measured_order(
    strategy: TegPrune, choices: list[tuple[int, int, int]], batch: teg.TegBatch, seed: int
) -> tuple[list, dict]:
    """The choices ranked by hand from the indicators measured on the strategy's networks."""
    torch.manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ntk_net, thin_net = teg.build_networks(strategy.shape)
    masks = strategy.masks()
    origin = teg.indicators(ntk_net, thin_net, masks, batch)
    delta: dict[str, dict] = {k: {} for k in teg.INDICATORS}
    for ct, e, o in choices:
        trial = [m.clone() for m in masks]
        trial[ct][e, o] = -teg.INF
        value = teg.indicators(ntk_net, thin_net, trial, batch)
        for k in teg.INDICATORS:
            delta[k][(ct, e, o)] = round((origin[k] - value[k]) / origin[k], 3)

    def ranks(values: dict, descending: bool) -> dict:
        distinct = sorted(set(values.values()), reverse=descending)
        return {c: distinct.index(v) for c, v in values.items()}

    total = {c: ranks(delta["ntk"], True)[c] + ranks(delta["region"], False)[c] + ranks(delta["mse"], True)[c]
             for c in choices}
    by_ntk = sorted(choices, key=lambda c: -delta["ntk"][c])  # equal sums: in the ntk sort's order
    return sorted(by_ntk, key=lambda c: total[c]), total


def test_a_pruning_round_removes_on_each_edge_the_op_of_the_smallest_rank_sum_by_hand() -> None:
    strategy = pruner("nb201", channels=4, cells_per_stage=1)
    # A hand-prunable supernet: edges 0 and 2 keep two operations, the others one.
    with torch.no_grad():
        alpha = strategy.arch_params[0]
        alpha.fill_(-teg.INF)
        for edge, ops in {0: (1, 3), 1: (2,), 2: (2, 4), 3: (3,), 4: (1,), 5: (3,)}.items():
            for op in ops:
                alpha[edge, op] = 0.0
    choices = [(0, 0, 1), (0, 0, 3), (0, 2, 2), (0, 2, 4)]
    batch = small_batch(3)
    order, total = measured_order(strategy, choices, batch, seed=11)
    expected = {}
    for choice in order:  # the first of each edge in rank-sum order (ties: the ntk sort, stable)
        expected.setdefault(choice[:2], choice)
    removed = strategy.prune_operations(batch, seed=11)
    assert sorted(removed) == sorted(expected.values()), total
    assert all(int(on.sum()) == 1 for on in strategy.active()[0])
    kept = {1: "skip_connect", 3: "nor_conv_3x3"}
    assert strategy.genotype().ops[0] == kept[4 - expected[(0, 0)][2]]  # the other of ops 1 and 3


def test_darts_edges_are_pruned_to_two_per_node_by_hand() -> None:
    strategy = pruner("darts", channels=4, layers=3, nodes=2)
    ops = ("sep_conv_3x3", "skip_connect", "dil_conv_3x3", "max_pool_3x3", "avg_pool_3x3")
    with torch.no_grad():  # one operation per edge: the state after the operation rounds
        for ct, alpha in enumerate(strategy.arch_params):
            alpha.fill_(-teg.INF)
            for edge in range(5):
                alpha[edge, list(strategy.shape.primitives).index(ops[(edge + ct) % 5])] = 0.0
    batch = small_batch(5, side=4, size=2)
    # Node 0 has two edges (kept); node 1 three: rows 2, 3, 4, one removed, normal cell first.
    first = [(0, e, list(strategy.shape.primitives).index(ops[e % 5])) for e in (2, 3, 4)]
    order, total = measured_order(strategy, first, batch, seed=21)
    removed = strategy.prune_edges(batch, seed=21)
    assert removed[0] == order[0], total
    assert len(removed) == 2 and removed[1][0] == 1
    genotype = strategy.genotype()
    kept = [j for _, j in genotype.normal[2:]]
    assert order[0][1] - 2 not in kept and len(set(kept)) == 2


def test_the_strategy_prunes_a_nb201_supernet_to_one_op_per_edge_and_stops() -> None:
    strategy = pruner("nb201", ("ntk", "region"), channels=4, cells_per_stage=1)  # TE-NAS's two
    g = torch.Generator().manual_seed(0)
    draws = []
    while not strategy.pruned:
        batch = (torch.randn(4, 1, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g))
        draws.append(strategy.step(batch, batch))
        assert len(draws) <= 3  # none first, then 4 -> 3 -> 2 -> 1
    assert len(draws) == 3 and [len(r) for r in strategy.history] == [6, 6, 6]
    assert all(int(on.sum()) == 1 for on in strategy.active()[0])
    metrics = strategy.epoch_metrics()
    assert metrics["pruned"] == 1.0 and metrics["ops_on"] == 6
    assert TegPrune.stop_reason(strategy.config, [metrics]) is not None
    assert "none" not in strategy.genotype().ops


# -- single-path search --------------------------------------------------------------------------


def teg_result(arch: object, ntk: float, regions: float, mse: float, trial: str) -> EvalResult:
    metrics = {"ntk_cond": ntk, "linear_regions": regions, "ntk_mse": mse, "te_nas": 0.0}
    return EvalResult(architecture=arch, metrics=metrics, objective="te_nas", trial_id=trial)  # type: ignore[arg-type]


def test_evolution_tournaments_are_won_by_the_rank_sum_by_hand() -> None:
    space = SPACES.create("nb201")
    archs = [space.sample(__import__("random").Random(i)) for i in range(3)]
    results = [
        teg_result(archs[0], 10.0, 100.0, 0.5, "a"),  # rewards -10, 100, -0.5: ranks 1, 1, 0 -> 2
        teg_result(archs[1], 5.0, 50.0, 0.9, "b"),    # -5, 50, -0.9: ranks 0, 2, 2 -> 4
        teg_result(archs[2], 20.0, 200.0, 0.7, "c"),  # -20, 200, -0.7: ranks 2, 0, 1 -> 3
    ]
    assert rank_sums(results) == [2, 4, 3]
    assert best_of(results) is results[0]
    strategy = TegEvolution(EvolutionConfig(population_size=3, sample_size=3, evaluations=4), space=space)
    for result in results:
        assert strategy.ask() is not None
        strategy.tell(result)
    child = strategy.ask()  # one mutation of the tournament's winner: archs[0]
    assert child is not None and sum(a != b for a, b in zip(child.ops, archs[0].ops, strict=True)) == 1
    assert [r.trial_id for r in strategy.final_results()] == ["a", "c", "b"]


def test_a_reinforce_step_equals_a_hand_computed_adam_update() -> None:
    space = SPACES.create("nb201")
    config = TegReinforceConfig(evaluations=4, learning_rate=0.04, ema_momentum=0.9, buffer_size=10)
    strategy = TegReinforce(config, space=space, seed=3)
    first, second = strategy.ask(), None
    assert first is not None and strategy.ask() is None  # one sample per step
    strategy.tell(teg_result(first, 10.0, 100.0, 0.5, "a"))
    assert strategy.rewards == [0.0]
    before = strategy.logits.detach().clone()
    second = strategy.ask()
    assert second is not None
    strategy.tell(teg_result(second, 8.0, 120.0, 0.6, "b"))
    # By hand: each indicator's change over its range (two values: the change itself + 1e-6).
    reward = -(8 - 10) / (2 + 1e-6) + (120 - 100) / (20 + 1e-6) - (0.6 - 0.5) / (0.1 + 1e-6)
    assert strategy.rewards[1] == pytest.approx(reward)
    # Baseline: EMA over the rewards 0 and r, debiased: 0.1 r / (0.1 + 0.09).
    baseline = (0.1 * reward) / (0.9 * 0.1 + 0.1)
    p = torch.softmax(before, -1).numpy()
    actions = space.encode(second)
    grad = np.zeros_like(p)
    for d, a in enumerate(actions):  # d/dlogits of -log p(a) (r - b)
        grad[d] = p[d] * (reward - baseline)
        grad[d, a] -= reward - baseline
    # Adam's second step (the first had a zero gradient: reward 0 = baseline 0).
    m, v = 0.1 * grad, 0.001 * grad**2
    m_hat, v_hat = m / (1 - 0.9**2), v / (1 - 0.999**2)
    expected = before.numpy() - 0.04 * m_hat / (np.sqrt(v_hat) + 1e-8)
    np.testing.assert_allclose(strategy.logits.detach().numpy(), expected, rtol=1e-6, atol=1e-9)


def test_a_bad_sample_takes_the_worst_value_of_the_buffer() -> None:
    space = SPACES.create("nb201")
    strategy = TegReinforce(TegReinforceConfig(evaluations=3), space=space, seed=0)
    for trial, (ntk, mse) in enumerate(((10.0, 0.5), (30.0, 0.4), (math.inf, 0.7))):
        arch = strategy.ask()
        strategy.tell(teg_result(arch, ntk, 100.0, mse, f"t{trial}"))
    assert strategy.buffer.values["ntk_cond"] == [10.0, 30.0, 30.0]
    assert strategy.buffer.values["ntk_mse"] == [0.5, 0.4, 0.5]


# -- the te_nas proxy ------------------------------------------------------------------------------


def test_te_nas_scores_a_candidate_as_its_masked_tiny_supernets(tmp_path: Path) -> None:
    from raynas.evaluators.training_free import TrainingFreeEvaluator
    from raynas.runs.jobs import parse_job

    job = tiny_job(tmp_path, space={"name": "nb201", "channels": 4, "cells_per_stage": 1},
                   data={"name": "digits", "batch_size": 16, "limit": 96})
    job["strategy"] = {"name": "teg_reinforce", "evaluations": 2}
    job["evaluator"] = {"name": "training_free", "proxy": "te_nas", "batch_size": 4, "channels": 4,
                        "layers": 1, "region_inputs": 50, "region_batches": 2}
    del job["train"]
    for key in ("layers", "nodes"):  # tiny_job's DARTS keys
        job["space"].pop(key)
    config = parse_job(job)
    ev = TrainingFreeEvaluator(config.evaluator.config, search=config)
    cell = Nb201Arch.parse(
        "|nor_conv_1x1~0|+|avg_pool_3x3~0|nor_conv_3x3~1|+|skip_connect~0|none~1|nor_conv_3x3~2|"
    )
    result = ev.evaluate(cell)
    m = result.metrics
    assert ev.teg is not None
    shape, batch = ev.teg
    assert batch.x.shape[0] == 4 and batch.crops.shape == (2, 50, 1, 3, 3)
    with torch.random.fork_rng():
        torch.manual_seed(ev.seed(cell))
        ntk_net, thin_net = teg.build_networks(shape)
    found = teg.indicators(ntk_net, thin_net, teg.arch_masks(shape, cell), batch)
    assert (m["ntk_cond"], m["linear_regions"], m["ntk_mse"]) == pytest.approx(
        (found["ntk"], found["region"], found["mse"]), rel=1e-9
    )
    assert result.score == m["te_nas"] == pytest.approx(
        math.log(m["linear_regions"]) - math.log(m["ntk_cond"]) - math.log(m["ntk_mse"])
    )


def test_the_jobs_carry_the_official_codes_settings() -> None:
    """jobs/teg_nas_darts_cifar10.yaml has VITA-Group/TENAS prune_launch.py's settings for DARTS on
    CIFAR-10 (prune_number 3, batch_size 14, repeat 3, precision 3; prune_tenas.py's region count
    on 3 batches of 1,000 crops, its DARTS cells of 4 steps pruned to 2 edges per node), and
    jobs/teg_evolution_quickstart.yaml runs R_EA.py's tournaments (teg_evolution) on te_nas; both
    run end to end, shrunk, in tests/test_jobs.py."""
    from raynas.runs.jobs import load_job

    root = Path(__file__).resolve().parents[1] / "jobs"
    darts = load_job(root / "teg_nas_darts_cifar10.yaml")
    assert (darts.space.name, darts.space.config.nodes, darts.data.name) == ("darts", 4, "cifar10")
    assert darts.strategy.name == "teg_nas_prune"
    assert darts.strategy.config == TegPruneConfig(
        indicators=("ntk", "region", "mse"), prune_number=3, repeat=3, precision=3, batch_size=14,
        region_inputs=1000, region_batches=3, edges_per_node=2,
    )
    evolution = load_job(root / "teg_evolution_quickstart.yaml")
    assert evolution.strategy.name == "teg_evolution" and evolution.evaluator is not None
    assert (evolution.evaluator.name, evolution.evaluator.config.proxy) == ("training_free", "te_nas")
