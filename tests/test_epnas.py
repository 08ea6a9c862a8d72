"""EPNAS (raynas.strategies.sampling.epnas): its REINFORCE step with the resource-constrained reward
against a hand-computed update, its ridge predictor against NumPy, its resource costs against the
built network and the latency table's file, and its progressive stages and predictor-picked
targets. The registry's contract tests (tests/test_strategy_registry.py, tests/test_controllers.py)
cover the rest."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from raynas.errors import ConfigError
from raynas.spaces import SPACES
from raynas.spaces.darts_cnn import DartsSpaceConfig
from raynas.spaces.fbnet import FbnetSpaceConfig
from raynas.spaces.nb201 import Nb201SpaceConfig
from raynas.strategies.sampling.base import CellShapeLimits
from raynas.strategies.sampling.epnas import Epnas, EpnasConfig, RidgePredictor, constrained_reward, one_hot
from raynas.types import DatasetInfo, EvalResult

ROOT = Path(__file__).resolve().parents[1]
DIGITS = DatasetInfo("digits", 1, 10, 8)
# The quick-start FBNet layout with one layer per stage: every block of it is in latency_tables/cpu.json.
FBNET = FbnetSpaceConfig(
    stem_channels=8, stem_stride=1, stage_channels=(8, 16, 16, 24), stage_depths=(1, 1, 1, 1),
    stage_strides=(1, 2, 1, 2), head_channels=64,
)


def nb201() -> object:
    return SPACES.create("nb201", Nb201SpaceConfig(channels=4, cells_per_stage=1))


def result(arch: object, acc: float, trial: int) -> EvalResult:
    return EvalResult(architecture=arch, metrics={"valid_acc": acc}, trial_id=f"t{trial}")  # type: ignore[arg-type]


def test_the_reward_is_accuracy_times_each_violated_constraints_ratio() -> None:
    costs = {"params": 2000.0, "macs": 50.0, "latency_ms": 3.0}
    targets = {"params": 1000.0, "macs": 100.0, "latency_ms": 2.0}  # params and latency violated
    # 0.8 * (1000/2000)^0.5 * (2/3)^0.5 = 0.8 * sqrt(1/3)
    assert constrained_reward(0.8, costs, targets, 0.5) == pytest.approx(0.8 / math.sqrt(3))
    assert constrained_reward(0.8, costs, {"params": 0.0, "macs": 100.0}, 2.0) == 0.8  # 0: no target
    assert constrained_reward(float("-inf"), costs, targets, 1.0) == 0.0  # a failed evaluation


def manual_log_prob(
    policy: torch.nn.Module, actions: list[list[int]], order: tuple[int, ...]
) -> torch.Tensor:
    """log p of each row of ``actions`` under ``policy``'s weights, with the LSTM's gate equations
    written out (PyTorch's LSTMCell orders its gates input, forget, cell, output)."""
    w_ih, w_hh = policy.lstm.weight_ih, policy.lstm.weight_hh
    b = policy.lstm.bias_ih + policy.lstm.bias_hh
    out = []
    for row in actions:
        x, h, c = policy.start[0], torch.zeros_like(policy.start[0]), torch.zeros_like(policy.start[0])
        total = torch.zeros(())
        for decision, a in zip(order, row, strict=False):
            i, f, g, o = (w_ih @ x + w_hh @ h + b).chunk(4)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            head = policy.heads[decision]
            logits = head.weight @ h + head.bias
            total = total + logits[a] - torch.logsumexp(logits, 0)
            x = policy.embeddings[decision].weight[a]
        out.append(total)
    return torch.stack(out)


def test_a_policy_step_is_reinforce_with_the_constrained_reward_by_hand() -> None:
    space = nb201()
    accs = [0.5, 0.7, 0.9]
    # One step of three whole networks (3 evaluations: the last stage), parameters constrained.
    probe = Epnas(EpnasConfig(evaluations=3, batch_size=3, candidates=3, lstm_size=4, dataset="digits"),
                  space=space, seed=3)
    archs = [probe.ask() for _ in range(3)]
    # Parameters counted independently: every tensor of the network built on the CPU at the space
    # section's size (channels 4, one cell per stage), as the supernet scores it.
    params = [
        sum(p.numel() for p in space.build(a, DIGITS, channels=4, layers=1).parameters())  # type: ignore[attr-defined]
        for a in archs
    ]
    target = float(sorted(params)[1])  # the median: at least one network violates it
    config = EpnasConfig(
        evaluations=3, batch_size=3, candidates=3, lstm_size=4, learning_rate=0.01, dataset="digits",
        max_params=target, constraint_weight=0.5,
    )
    strategy = Epnas(config, space=space, seed=3)
    assert [strategy.ask() for _ in range(3)] == archs  # the same seed samples the same
    before = {n: p.detach().clone() for n, p in strategy.policy.named_parameters()}

    rewards = [acc * min(1.0, target / n) ** 0.5 for acc, n in zip(accs, params, strict=True)]
    assert any(r < acc for r, acc in zip(rewards, accs, strict=True))
    baseline = sum(rewards) / 3  # the first batch's own mean
    reference = Epnas(config, space=space, seed=3).policy  # the same initial weights
    actions = [[space.encode(a)[i] for i in strategy.order] for a in archs]  # type: ignore[attr-defined]
    log_p = manual_log_prob(reference, actions, strategy.order)
    loss = -(torch.tensor(rewards) - baseline).mul(log_p).mean()
    weights = dict(reference.named_parameters())
    grads = torch.autograd.grad(loss, [weights[n] for n in before], allow_unused=True)

    for trial, (arch, acc) in enumerate(zip(archs, accs, strict=True)):
        strategy.tell(result(arch, acc, trial))
    assert strategy.baseline == pytest.approx(baseline)
    # The policy's gradient is REINFORCE's; Adam's first step then moves each parameter by
    # lr * g / (|g| + eps), the sign of g times lr where g is not tiny.
    for (name, old), g in zip(before.items(), grads, strict=True):
        p = dict(strategy.policy.named_parameters())[name]
        g = torch.zeros_like(old) if g is None else g
        got = torch.zeros_like(old) if p.grad is None else p.grad  # the last choice's embedding: unused
        torch.testing.assert_close(got, g, atol=1e-7, rtol=1e-4, msg=name)
        moved = g.abs() > 1e-4
        expected = old - 0.01 * torch.sign(g)
        torch.testing.assert_close(p.detach()[moved], expected[moved], atol=1e-6, rtol=0, msg=name)
    assert strategy.done
    best = strategy.best()  # the highest reward, not the highest accuracy where that one is too big
    assert best is not None and best.architecture == archs[rewards.index(max(rewards))]


def test_the_ridge_predictor_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    sizes = (3, 4, 2)
    values = [tuple(int(rng.integers(n)) for n in sizes) for _ in range(12)]
    y = rng.normal(size=12)
    x = one_hot(values, sizes)
    model = RidgePredictor.fit(x, torch.tensor(y), ridge=0.3)
    # NumPy: the normal equations of [X 1] theta ~ y with the penalty on X's columns only.
    a = np.hstack([x.numpy(), np.ones((12, 1))])
    penalty = np.diag([0.3] * x.shape[1] + [0.0])
    theta = np.linalg.solve(a.T @ a + penalty, a.T @ y)
    np.testing.assert_allclose(model.weights.numpy(), theta[:-1], atol=1e-9)
    assert model.intercept == pytest.approx(theta[-1], abs=1e-9)
    np.testing.assert_allclose(model(x).numpy(), a @ theta, atol=1e-9)


def test_costs_are_the_networks_size_and_the_tables_sum() -> None:
    space = SPACES.create("fbnet", FBNET)
    strategy = Epnas(
        EpnasConfig(dataset="digits", max_params=1e4, max_macs=1e5, max_latency_ms=1.0, latency_table="cpu",
                    latency_dir=str(ROOT / "latency_tables")),
        space=space,
    )
    entries = json.loads((ROOT / "latency_tables" / "cpu.json").read_text())["entries"]
    options = space.decisions()[0].options
    for values in [(0, 0, 0, 0), (4, 8, 1, 3)]:
        costs = strategy.costs(values)
        network = space.build(space.decode(values), DIGITS)
        assert costs["params"] == sum(p.numel() for p in network.parameters())
        # Keys written out for this layout: 8x8 layers at stride 1 then 2, 4x4 layers, a 2x2 head.
        shapes = ["8x8->8/s1", "8x8->16/s2", "16x4->16/s1", "16x4->24/s2"]
        keys = ["stem:1x8->8/s1", *(f"{options[v]}:{s}" for v, s in zip(values, shapes, strict=True)),
                "head:24x2->64->10"]
        assert costs["latency_ms"] == pytest.approx(sum(entries[k] for k in keys))
        assert costs["macs"] > 0
    big, small = strategy.costs((8, 8, 8, 8)), strategy.costs((0, 0, 0, 0))
    assert big["macs"] > small["macs"] and big["params"] > small["params"]


def test_networks_grow_by_stages_and_the_predictor_picks_the_targets() -> None:
    space = nb201()  # six decisions, one per stage
    config = EpnasConfig(evaluations=12, batch_size=2, candidates=8, lstm_size=4, dataset="digits")
    strategy = Epnas(config, space=space, seed=0)
    assert [strategy.stage_of(s) for s in range(6)] == [0, 1, 2, 3, 4, 5]
    score = {}
    for step in range(6):
        if step == 2:  # the predictor's pick: the best predicted of the policy's new samples
            state = strategy.generator.get_state()
            with torch.no_grad():
                emitted, _ = strategy.policy(strategy.prefix(2), batch=8, generator=strategy.generator)
            strategy.generator.set_state(state)
            seen = {space.encode(r.architecture) for r in strategy.history}  # type: ignore[attr-defined]
            fresh = list(dict.fromkeys(strategy.values_of(e) for e in emitted.tolist()))
            fresh = [v for v in fresh if v not in seen]
            predicted = strategy.predictor()(one_hot(fresh, strategy.sizes)).tolist()
        archs = [strategy.ask(), strategy.ask()]
        assert strategy.ask() is None  # the step's targets are in flight
        for arch in archs:
            values = space.encode(arch)  # type: ignore[attr-defined]
            # Decisions of later stages: skip_connect (index 1 of NB201_OPS), the identity.
            assert values[step + 1 :] == (1,) * (5 - step)
            if step == 2:
                best = sorted(zip(predicted, fresh, strict=True), key=lambda p: -p[0])[:2]
                assert values in [v for _, v in best]
            score[values] = sum(values) / 30
            strategy.tell(result(arch, score[values], len(strategy.history)))
    assert strategy.done and strategy.ask() is None
    whole = strategy.final_results()
    assert whole == sorted(strategy.history[10:], key=lambda r: -r.score)


def test_decisions_not_sampled_yet_take_the_identity_so_early_cells_reach_their_output() -> None:
    """NAS-Bench-201's first stage samples the edge 0->1 only: with the other edges `none` its
    output node would be unreached (Shu et al.'s width and depth 0, the cell scoring at chance);
    with them `skip_connect` the cell is complete. FBNet's layers stay `skip` (its option 0), and
    a decision without an identity (a DARTS node's inputs) takes option 0."""
    space = nb201()
    strategy = Epnas(EpnasConfig(evaluations=12, batch_size=2, candidates=4, lstm_size=4), space=space,
                     seed=0)
    assert strategy.unset == (1,) * 6  # NB201_OPS: none, skip_connect, ...
    first = strategy.ask()
    ops = first.ops  # type: ignore[attr-defined]
    assert ops[1:] == ("skip_connect",) * 5
    assert space.cell_shape(first)["cell_depth"] > 0  # type: ignore[attr-defined]
    cut = space.decode((space.encode(first)[0], 0, 0, 0, 0, 0))  # type: ignore[attr-defined]
    assert space.cell_shape(cut) == {"cell_width": 0, "cell_depth": 0}  # type: ignore[attr-defined]

    fbnet = Epnas(EpnasConfig(candidates=4, lstm_size=4), space=SPACES.create("fbnet", FBNET), seed=0)
    assert fbnet.unset == (0,) * 4 and fbnet.decisions[0].options[0] == "skip"
    darts = SPACES.create("darts", DartsSpaceConfig(nodes=2))
    unset = Epnas(EpnasConfig(candidates=4, lstm_size=4), space=darts, seed=0).unset
    # Per cell type: node 0's inputs (one option, "0+1"), its two operations, node 1's inputs
    # (option 0: "0+1"), its two operations.
    names = [d.options[u] for d, u in zip(darts.decisions(), unset, strict=True)]  # type: ignore[attr-defined]
    assert names == ["0+1", "skip_connect", "skip_connect", "0+1", "skip_connect", "skip_connect"] * 2


def test_the_targets_are_the_best_predicted_rewards_under_the_constraints() -> None:
    space = SPACES.create("fbnet", FBNET)
    config = EpnasConfig(batch_size=4, dataset="digits", max_params=8000, max_macs=60000)
    strategy = Epnas(config, space=space, seed=0)
    rng = np.random.default_rng(1)
    pool = list(dict.fromkeys(tuple(int(v) for v in rng.integers(9, size=4)) for _ in range(24)))
    for trial, values in enumerate(pool[:8]):  # bigger blocks score higher: the constraints matter
        strategy.tell(result(space.decode(values), 0.1 + sum(values) / 40, trial))
    model = strategy.predictor()
    assert model is not None
    fresh = pool[8:]
    predicted = dict(zip(fresh, model(one_hot(fresh, strategy.sizes)).tolist(), strict=True))
    reward = {
        v: p * constrained_reward(1.0, strategy.costs(v), strategy.targets, 1.0) for v, p in predicted.items()
    }
    best = sorted(fresh, key=lambda v: -reward[v])[:4]
    assert strategy._rank(fresh, model)[:4] == best
    assert best != sorted(fresh, key=lambda v: -predicted[v])[:4]  # accuracy alone would pick others


def longest_path(edges: tuple[tuple[str, int], ...], concat: tuple[int, ...]) -> int:
    """Connections on the longest path from a DARTS cell's inputs to its output, by enumeration."""
    preds = {2 + i: [j for _, j in edges[2 * i : 2 * i + 2]] for i in range(len(edges) // 2)}

    def longest(node: int) -> int:
        return 0 if node < 2 else 1 + max(longest(j) for j in preds[node])

    return 1 + max(longest(n) for n in concat)


def test_a_cell_shape_bound_holds_for_every_target_network() -> None:
    # 2-node DARTS cells of three operations: a third of the cells have depth 2, the rest 3.
    space = SPACES.create("darts", SPACES.entry("darts").config(
        nodes=2, primitives=("skip_connect", "sep_conv_3x3", "max_pool_3x3")))
    config = EpnasConfig(evaluations=12, batch_size=2, candidates=8, lstm_size=4,
                         cell_shape=CellShapeLimits(max_depth=2))
    strategy = Epnas(config, space=space, seed=0)
    while not strategy.done:
        batch = [strategy.ask(), strategy.ask()]
        for arch in batch:
            assert arch is not None
            assert longest_path(arch.normal, arch.normal_concat) <= 2  # type: ignore[attr-defined]
            assert longest_path(arch.reduce, arch.reduce_concat) <= 2  # type: ignore[attr-defined]
            strategy.tell(result(arch, 0.5, len(strategy.history)))
    assert len(strategy.history) == 12


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"candidates": 2, "batch_size": 4}, "strategy.candidates"),
        ({"max_latency_ms": 1.0}, "strategy.latency_table"),
        ({"ridge": 0.0}, "strategy.ridge"),
    ],
)
def test_bad_settings_name_the_key(settings: dict[str, float], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        EpnasConfig(**settings)  # type: ignore[arg-type]


def test_an_unknown_dataset_for_the_costs_names_its_key() -> None:
    with pytest.raises(ConfigError, match=r"strategy\.dataset"):
        Epnas(EpnasConfig(dataset="no-such-data", max_params=1e5), space=nb201())


def test_a_latency_target_on_a_space_without_tables_is_refused() -> None:
    config = EpnasConfig(max_latency_ms=1.0, latency_table="cpu", latency_dir=str(ROOT / "latency_tables"))
    with pytest.raises(ConfigError, match="latency tables"):
        Epnas(config, space=nb201())
