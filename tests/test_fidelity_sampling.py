"""The sampling strategies as their papers and official code do them (issue 15, docs/fidelity.md):
ENAS's controller step computed by hand, its attention over earlier nodes and its derived answer;
PNAS's cells grown block by block."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from raynas.errors import ConfigError
from raynas.runs.sampling import _final
from raynas.spaces.darts_cnn import DartsCnnSpace, DartsSpaceConfig
from raynas.strategies.sampling.enas import Enas, EnasConfig, Step
from raynas.strategies.sampling.progressive import Progressive, ProgressiveConfig
from raynas.types import Architecture, Decision, EvalResult, decode_options

OPS = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3")


@dataclass(frozen=True)
class ToyArch(Architecture):
    space: ClassVar[str] = "fidelity-toy"
    values: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"values": list(self.values)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ToyArch:
        return cls(tuple(int(v) for v in data["values"]))


SIZES = (3, 4, 3, 4)
VALUES = ((0.0, 0.3, 0.1), (0.0, 0.2, 0.5, 0.1), (0.0, 0.4, 0.2), (0.0, 0.1, 0.2, 0.6))


def toy_score(values: tuple[int, ...]) -> float:
    return sum(table[v] for table, v in zip(VALUES, values, strict=True))


class ToySpace:
    """A flat categorical view only: 3 x 4 x 3 x 4 architectures."""

    def decisions(self) -> tuple[Decision, ...]:
        return tuple(Decision(f"d{i}", tuple(f"o{j}" for j in range(n))) for i, n in enumerate(SIZES))

    def encode(self, arch: Architecture) -> tuple[int, ...]:
        assert isinstance(arch, ToyArch)
        return arch.values

    def decode(self, values: tuple[int, ...] | list[int]) -> ToyArch:
        decode_options(self.decisions(), values)
        return ToyArch(tuple(int(v) for v in values))


def evaluate(arch: Architecture, trial: int) -> EvalResult:
    assert isinstance(arch, ToyArch)
    return EvalResult(architecture=arch, metrics={"valid_acc": toy_score(arch.values)}, trial_id=f"t{trial}")


def darts_space(nodes: int) -> DartsCnnSpace:
    return DartsCnnSpace(DartsSpaceConfig(nodes=nodes, primitives=OPS))


# -- ENAS ---------------------------------------------------------------------------------------


def _np_lstm(
    x: np.ndarray, state: list[tuple[np.ndarray, np.ndarray]], p: dict[str, np.ndarray]
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """One step of the stacked LSTM as ``stack_lstm`` in the authors' src/common_ops.py: layer
    i reads layer i - 1's new output; the top layer's output is returned with every (h, c)."""
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    new = []
    for layer, (h, c) in enumerate(state):
        w = {k: p[f"lstm.{layer}.{k}"] for k in ("weight_ih", "bias_ih", "weight_hh", "bias_hh")}
        z = x @ w["weight_ih"].T + w["bias_ih"] + h @ w["weight_hh"].T + w["bias_hh"]
        i, f, g, o = np.split(z, 4)
        c = sig(f) * c + sig(i) * np.tanh(g)
        x = sig(o) * np.tanh(c)
        new.append((x, c))
    return x, new


def _np_log_softmax(z: np.ndarray) -> np.ndarray:
    return z - np.log(np.exp(z).sum())


def enas_by_hand(p: dict[str, np.ndarray], actions: list[int], tanh_c: float, temp: float,
                 op_tanh: float) -> tuple[float, float]:
    """log p(actions) and the code's sample_entropy along them (log_prob * exp(-log_prob) of every
    action taken, summed) for a 1-node DARTS cell pair, written out as micro_controller.py's
    sampler: per cell two LSTM steps from g_emb give the inputs' keys (anchors zero); index_1,
    index_2 by attention v^T tanh(W1 h_j + W2 h); op_1, op_2 from the shared softmax; one more step
    writes the node's anchor."""
    g = p["start"][0]
    layers = sum(k.endswith("weight_ih") for k in p)
    state = [(np.zeros_like(g), np.zeros_like(g))] * layers
    log_prob = entropy = 0.0
    a = iter(actions)

    def choose(z: np.ndarray) -> int:
        nonlocal log_prob, entropy
        lp = _np_log_softmax(z)
        k = next(a)
        log_prob += lp[k]
        entropy += -np.exp(lp[k]) * lp[k]
        return k

    for _cell in ("normal", "reduce"):
        keys = []
        x = g
        for _ in range(2):
            h, state = _np_lstm(x, state, p)
            keys.append(p["attn_1.weight"] @ h)
        anchors = [np.zeros_like(g), np.zeros_like(g)]
        for _ in range(2):  # index_1, index_2
            h, state = _np_lstm(x, state, p)
            u = np.array([p["attn_v.weight"][0] @ np.tanh(k + p["attn_2.weight"] @ h) for k in keys])
            x = anchors[choose(tanh_c * np.tanh(u / temp))]
        for _ in range(2):  # op_1, op_2
            h, state = _np_lstm(x, state, p)
            u = p["heads.0.weight"] @ h + p["heads.0.bias"]
            x = p["embeddings.0.weight"][choose(op_tanh * np.tanh(u / temp))]
        h, state = _np_lstm(x, state, p)  # the node's anchor (unused: one node per cell)
    return log_prob, entropy


def test_enas_controller_step_by_hand() -> None:
    """One REINFORCE step of ENAS's two-layer controller on a 1-node DARTS cell, against the sampler
    written out in NumPy: the log-probability and the code's entropy term of a sample, the reward
    R + w H, the baseline b = 0.99 * 0 + 0.01 (R + w H) (started at 0, updated before use), and
    Adam's first step, which moves every parameter by -lr * sign(dL/dtheta) for
    L = -log p * (R + w H - b)."""
    config = EnasConfig(lstm_size=4, lstm_layers=2, tanh_constant=1.1, temperature=5.0, op_tanh_reduce=2.5,
                        entropy_weight=0.1, learning_rate=0.01, controller_batch=1,
                        controller_steps=1, controller_epochs=1, derive_samples=1)
    enas = Enas(config, space=darts_space(1), seed=0)
    assert [s.kind for s in enas.plan[:6]] == ["anchors", "input", "input", "op", "op", "node"]
    params = {k: v.detach().double().numpy().copy() for k, v in enas.controller.named_parameters()}
    assert len(enas.controller.heads) == 1  # one softmax shared by every op decision (w_soft)

    # normal: input 1 twice (sep_conv, skip); reduce: inputs 0 and 1 (max_pool, none is not an op)
    actions = [1, 1, 2, 1, 0, 1, 0, 2]
    arch = enas.decode_actions(actions)
    assert arch.normal == (("sep_conv_3x3", 1), ("skip_connect", 1))  # the same input twice
    assert arch.reduce == (("max_pool_3x3", 0), ("sep_conv_3x3", 1))
    assert enas.encode_actions(arch) == actions

    args = (config.tanh_constant, config.temperature, config.tanh_constant / config.op_tanh_reduce)
    log_prob, entropy = enas_by_hand(params, actions, *args)
    with torch.no_grad():
        _, torch_log_prob, torch_entropy = enas.controller(torch.tensor([actions]))
    assert float(torch_log_prob[0]) == pytest.approx(log_prob, abs=1e-6)
    assert float(torch_entropy[0]) == pytest.approx(entropy, abs=1e-6)

    score = 0.8
    reward = score + 0.1 * entropy
    baseline = 0.01 * reward
    eps = 1e-6
    grads = {}
    for name, value in params.items():
        grad = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            for sign in (1, -1):
                shifted = {k: v.copy() for k, v in params.items()}
                shifted[name][idx] += sign * eps
                lp, _ = enas_by_hand(shifted, actions, *args)
                grad[idx] += sign * -lp * (reward - baseline) / (2 * eps)
        grads[name] = grad

    enas.tell(EvalResult(architecture=arch, metrics={"valid_acc": score}, trial_id="t0"))
    assert enas.baseline == pytest.approx(baseline)
    checked = 0
    for name, p in enas.controller.named_parameters():
        step = p.detach().double().numpy() - params[name]
        big = np.abs(grads[name]) > 1e-4  # Adam's first step: -lr * g / (|g| + 1e-8)
        np.testing.assert_allclose(step[big], -0.01 * np.sign(grads[name][big]), atol=2e-6, err_msg=name)
        checked += int(big.sum())
    assert checked > 50


def test_enas_attention_picks_each_input_on_its_own() -> None:
    """Two independent attention choices per node: samples of a 2-node cell take the same input
    twice as well as two different ones, and every earlier state (both cell inputs and node 2)."""
    enas = Enas(EnasConfig(lstm_size=8), space=darts_space(2), seed=1)
    inputs = [s for s in enas.plan if s.kind == "input"]
    assert [s.size for s in inputs] == [2, 2, 3, 3, 2, 2, 3, 3]
    twice = different = 0
    sources = set()
    for _ in range(60):
        genotype = enas.sample_path()
        for k in range(0, 4, 2):
            (_, a), (_, b) = genotype.normal[k : k + 2]
            twice += a == b
            different += a != b
        sources |= {i for _, i in genotype.normal[2:]}
        assert enas.decode_actions(enas.encode_actions(genotype)) == genotype
    assert twice and different and sources == {0, 1, 2}


def test_enas_reward_on_language_models_is_c_over_perplexity() -> None:
    enas = Enas(EnasConfig(), space=darts_space(1), seed=0)
    arch = enas.sample_path()
    ppl = EvalResult(architecture=arch, metrics={"valid_loss": math.log(40), "valid_ppl": 40.0})
    assert enas.reward(ppl) == pytest.approx(80 / 40)
    capped = EvalResult(architecture=arch, metrics={"valid_loss": 12.0, "valid_ppl": math.exp(12)})
    assert enas.reward(capped) == pytest.approx(80 / math.exp(10))  # the loss is capped at 10
    assert enas.reward(EvalResult(architecture=arch, metrics={"valid_acc": 0.7})) == 0.7
    assert enas.reward(EvalResult(architecture=arch, metrics={})) == 0.0


def test_enas_answer_is_the_best_derived_architecture() -> None:
    """Candidates scored while the controller learnt do not compete with the derived ones, however
    well they scored; the search's answer (the driver's _final) is the best derived."""
    config = EnasConfig(lstm_size=4, controller_batch=2, controller_steps=1, controller_epochs=1,
                        derive_samples=2)
    enas = Enas(config, space=darts_space(1), seed=0)
    for i, score in enumerate([0.9, 0.1, 0.3, 0.5]):
        arch = enas.ask()
        assert arch is not None
        enas.tell(EvalResult(architecture=arch, metrics={"valid_acc": score}, trial_id=f"t{i}"))
    assert enas.done
    assert [r.score for r in enas.final_results()] == [0.5, 0.3]
    assert enas.best() is not None and enas.best().score == 0.5  # type: ignore[union-attr]
    search = SimpleNamespace(retrained=[], strategy=enas, _controller_call=lambda call: call(),
                             config=SimpleNamespace(name="x"))
    assert _final(search).trial_id == "t3"  # type: ignore[arg-type]


def test_enas_plan_has_no_attention_on_flat_spaces() -> None:
    from raynas.spaces.nb201 import Nb201Space

    enas = Enas(EnasConfig(lstm_size=4), space=Nb201Space(), seed=0)
    assert all(s == Step("op", s.decision, 5) for s in enas.plan)
    assert not enas.controller.attention and len(enas.controller.heads) == 1


def test_enas_searches_darts_cells_end_to_end_with_a_node_taking_one_input_twice(tmp_path: Path) -> None:
    """ENAS on DARTS cells through run_search (the path behind `raynas search`): the shared child
    trains on the controller's cells, the controller trains after each child epoch, and the
    answer is a cell of the space derived from the trained policy; every candidate's Parquet row
    and child run hold its cells' width and depth. A node may take the same input twice (ENAS's
    two independent choices): such a cell is one the supernet trains."""
    from mlflow.tracking import MlflowClient

    from raynas.runs import run_search
    from raynas.runs.jobs import parse_job
    from raynas.spaces.darts_genotype import DartsGenotype
    from raynas.supernet import build_supernet
    from raynas.tracking.results import ResultsStore
    from raynas.types import DatasetInfo
    from tests.conftest import tiny_job

    job = tiny_job(tmp_path, data={"limit": 32}, train={"epochs": 1})
    job["strategy"] = {"name": "enas", "lstm_size": 8, "controller_epochs": 1, "controller_batch": 2,
                       "controller_steps": 1, "derive_samples": 2}
    job["evaluator"] = {"name": "supernet", "bn_batches": 1}
    config = parse_job(job)
    result = run_search(config, echo=lambda _: None)
    space = DartsCnnSpace(DartsSpaceConfig(channels=4, layers=3, nodes=2))
    assert isinstance(result.architecture, DartsGenotype) and space.contains(result.architecture)
    # Every candidate's cells' width and depth (Shu et al.) in its Parquet row and child run.
    rows = ResultsStore(tmp_path / "runs" / "results").read_frame()
    assert len(rows) >= 2
    client = MlflowClient(job["tracking"]["tracking_uri"])
    children = {c.data.tags["raynas.trial_id"]: c.data.metrics for c in client.search_runs(
        [client.get_run(result.run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'")}
    for _, row in rows.iterrows():
        shape = space.cell_shape(Architecture.from_json(row["architecture"]))
        assert {k: row[f"metric.{k}"] for k in shape} == shape
        assert {k: children[row["trial_id"]][k] for k in shape} == shape
    normal = (("sep_conv_3x3", 0), ("skip_connect", 0), ("max_pool_3x3", 2), ("sep_conv_3x3", 2))
    reduce = (("avg_pool_3x3", 1), ("avg_pool_3x3", 1), ("skip_connect", 2), ("sep_conv_3x3", 0))
    twice = DartsGenotype(normal, (2, 3), reduce, (2, 3))
    net = build_supernet(space, DatasetInfo("digits", 1, 10, 8))
    net.set_path(twice)
    net(torch.randn(2, 1, 8, 8)).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


# -- PNAS ---------------------------------------------------------------------------------------


def test_progressive_grows_darts_cells_block_by_block() -> None:
    """PNAS on DARTS cells (Algorithm 1): stage 1 evaluates every 1-block cell, stage b ranks the
    one-block expansions of EVERY cell of S_{b-1} (after stage 1: every 1-block cell, not only the
    best K by score) and asks the top K; the normal and the reduction cell are the same cell of b
    blocks, its output all b blocks; the answer is a cell of all B blocks."""
    space = darts_space(3)
    search = Progressive(ProgressiveConfig(beam_size=2, predictor_steps=5), space=space, seed=0)
    ranked: list[list[tuple[int, ...]]] = []  # what each stage ranks
    rank = search._rank
    search._rank = lambda new: ranked.append(list(new)) or rank(new)  # type: ignore[method-assign]
    stages: list[list] = [[], [], []]
    scores = {}
    n = 0
    while not search.done:
        arch = search.ask()
        assert arch is not None
        blocks = len(arch.normal) // 2
        assert arch.reduce == arch.normal and arch.normal_concat == tuple(range(2, 2 + blocks))
        stages[blocks - 1].append(arch)
        # a score that prefers sep_conv_3x3 on the blocks a cell has
        score = sum(op == "sep_conv_3x3" for op, _ in arch.normal) + 0.01 * n
        scores[arch.normal] = score
        search.tell(EvalResult(architecture=arch, metrics={"valid_acc": score}, trial_id=str(n)))
        n += 1
    assert len(stages[0]) == 3 * 3  # every 1-block cell: inputs 0+1, 3 x 3 ops
    assert len(stages[1]) == len(stages[2]) == 2  # the top K of the expansions
    # Stage 2 ranks the expansions of all nine 1-block cells (3 input pairs x 3 x 3 ops each),
    # stage 3 those of both cells of S_2 (6 x 3 x 3 each).
    assert len(ranked) == 3
    assert len(ranked[1]) == 9 * 27 and len(set(ranked[1])) == 9 * 27
    assert {v[:3] for v in ranked[1]} == {search.encode(a) for a in stages[0]}
    assert len(ranked[2]) == 2 * 54
    assert {v[:6] for v in ranked[2]} == {search.encode(a) for a in stages[1]}
    assert all(a.normal[:2] in {b.normal for b in stages[0]} for a in stages[1])
    assert all(a.normal[:4] in {b.normal for b in stages[1]} for a in stages[2])
    best = search.best()
    assert best is not None and space.contains(best.architecture)
    assert all(len(r.architecture.normal) == 6 for r in search.final_results())


def stand_in_score(values: tuple[int, ...]) -> float:
    """A cell's decisions read as a number, the last decision its most significant digit (every
    option index is below 10, so no two cells of one size tie)."""
    return float(sum(x * 10 ** i for i, x in enumerate(values)))


class StandIn:
    """A predictor whose scores are known: :func:`stand_in_score`."""

    def __call__(self, values: list[tuple[int, ...]]) -> torch.Tensor:
        return torch.tensor([stand_in_score(v) for v in values])


def test_progressive_asks_the_expansions_the_predictor_ranks_first() -> None:
    """Stage 2 asks exactly the top K by the predictor of the expansions of every 1-block cell,
    enumerated here from the space's decisions; the measured scores of stage 1 do not narrow it
    (they prefer other parents)."""
    space = darts_space(3)
    k = 3
    search = Progressive(ProgressiveConfig(beam_size=k, predictor_steps=5), space=space, seed=0)
    first = [search.ask() for _ in range(9)]
    assert search.ask() is None and all(a is not None for a in first)
    search.predictor = StandIn  # type: ignore[assignment,method-assign]  # ranks stage 2
    measured = {}
    for n, arch in enumerate(first):
        values = search.encode(arch)  # type: ignore[arg-type]
        measured[values] = -float(sum(values))  # prefers low option indices
        search.tell(EvalResult(architecture=arch, metrics={"valid_acc": measured[values]},  # type: ignore[arg-type]
                               trial_id=str(n)))
    asked = []
    while (arch := search.ask()) is not None:
        asked.append(arch)
    # Every expansion of every 1-block cell, from the decisions of the first two nodes.
    decisions = space.decisions()[:6]
    n1, a1, b1, n2, a2, b2 = (len(d.options) for d in decisions)
    cells = [(p, a, b) for p in range(n1) for a in range(a1) for b in range(b1)]
    assert len(cells) == 9
    expansions = [(*c, p, a, b) for c in cells for p in range(n2) for a in range(a2) for b in range(b2)]
    assert len(expansions) == 9 * 27
    top = sorted(expansions, key=stand_in_score, reverse=True)[:k]

    def normal(values: tuple[int, ...]) -> tuple[tuple[str, int], ...]:
        edges = []
        for b in range(0, len(values), 3):
            pair, op_a, op_b = values[b : b + 3]
            first_in, second_in = (int(x) for x in decisions[b].options[pair].split("+"))
            edges += [(decisions[b + 1].options[op_a], first_in), (decisions[b + 2].options[op_b], second_in)]
        return tuple(edges)

    assert [a.normal for a in asked] == [normal(v) for v in top]  # best predicted first
    # The parents are not the best K of stage 1 by measured score.
    best_measured = set(sorted(measured, key=measured.__getitem__, reverse=True)[:k])
    assert not {v[:3] for v in top} & best_measured


def test_progressive_answers_the_best_cell_of_the_last_stage_at_equal_budget() -> None:
    """The answer is the best of S_B by measured score, at equal budget where a scheduler stopped
    one early: not a smaller cell that scored higher, not the one the predictor ranked first, not
    the one with the higher raw score."""
    space = darts_space(2)
    search = Progressive(ProgressiveConfig(beam_size=2, predictor_steps=5), space=space, seed=0)
    first = [search.ask() for _ in range(9)]
    for n, arch in enumerate(first):
        score = 0.99 if n == 0 else 0.1 * (n % 4)
        search.tell(EvalResult(architecture=arch, metrics={"valid_acc": score}, trial_id=f"s1-{n}"))  # type: ignore[arg-type]
    predicted_first, second = search.ask(), search.ask()
    assert search.ask() is None and predicted_first is not None and second is not None
    # 0.4 after epoch 1, 0.7 at its full budget of 3; the other stopped after epoch 1 at 0.5.
    full = EvalResult(architecture=predicted_first, metrics={"valid_acc": 0.7}, trial_id="full",
                      budget=3.0, curve=(0.4, 0.6, 0.7))
    stopped = EvalResult(architecture=second, metrics={"valid_acc": 0.5}, trial_id="stopped",
                         budget=1.0, stopped_early=True, curve=(0.5,))
    search.tell(full)
    search.tell(stopped)
    assert search.done
    assert [r.trial_id for r in search.final_results()] == ["stopped", "full"]
    best = search.best()
    assert best is not None and best.trial_id == "stopped" and len(best.architecture.normal) == 4


def test_progressive_cells_need_an_evaluator_that_builds_them() -> None:
    search = Progressive(ProgressiveConfig(), space=darts_space(2), seed=0)
    with pytest.raises(ConfigError, match="block by block"):
        search.check_search(supernet_epochs=3)
    search.check_search(supernet_epochs=0)


# -- SPOS ---------------------------------------------------------------------------------------


def _toy_spos(**config: object):  # type: ignore[no-untyped-def]
    from raynas.strategies.sampling.evolution import Spos, SposConfig

    return Spos(SposConfig(**config), space=ToySpace(), seed=0)  # type: ignore[arg-type]


def test_spos_crossover_takes_every_decision_from_a_parent() -> None:
    """SPOS's crossover on known parents: each decision from one parent or the other, each with
    probability 1/2, drawn in decision order from the strategy's random stream."""
    import random

    spos = _toy_spos(population_size=4, sample_size=2, evaluations=8)
    first, second = ToyArch((0, 0, 0, 0)), ToyArch((1, 2, 1, 3))
    spos.rng.seed(7)
    child = spos.crossover(first, second)
    rng = random.Random(7)
    expected = tuple(rng.choice((a, b)) for a, b in zip(first.values, second.values, strict=True))
    assert child == ToyArch(expected)
    children = {spos.crossover(first, second).values for _ in range(200)}
    assert len(children) == 16  # every mix of the two parents, and nothing else
    assert all(v in (0, p) for c in children for v, p in zip(c, second.values, strict=True))


def test_spos_mutation_redraws_each_decision_with_mutation_prob() -> None:
    """SPOS's mutation (the code's get_mutation): every decision, in order, redrawn among all its
    options (its own included) when a draw from the strategy's random stream falls below
    mutation_prob; replayed here on a copy of the stream, and the rate checked over many children."""
    import random

    spos = _toy_spos(population_size=4, sample_size=2, evaluations=8, mutation_prob=0.3)
    parent = ToyArch((1, 2, 1, 3))
    sizes = [len(d.options) for d in spos.decisions]
    spos.rng.seed(11)
    child = spos.mutation(parent)
    rng = random.Random(11)
    expected = [rng.randrange(n) if rng.random() < 0.3 else v
                for v, n in zip(parent.values, sizes, strict=True)]
    assert child == ToyArch(tuple(expected))
    # Over 4,000 children the share of redrawn decisions that changed is mutation_prob times the
    # chance that a redraw lands elsewhere ((n - 1) / n per decision).
    changed = [sum(a != b for a, b in zip(spos.mutation(parent).values, parent.values, strict=True))
               for _ in range(4000)]
    rate = sum(changed) / (4000 * len(sizes))
    assert rate == pytest.approx(0.3 * sum((n - 1) / n for n in sizes) / len(sizes), abs=0.02)


def test_spos_generations_mutate_and_cross_the_best() -> None:
    """A random first generation; the next is mutation_num mutants and crossover_num crosses of
    the sample_size best so far (never a candidate asked before), filled up at random."""
    spos = _toy_spos(population_size=6, sample_size=2, evaluations=12, mutation_num=2, crossover_num=2,
                     mutation_prob=0.5)
    first = [spos.ask() for _ in range(6)]
    assert spos.ask() is None  # the generation is being evaluated
    for i, arch in enumerate(first):
        spos.tell(evaluate(arch, i))  # type: ignore[arg-type]
    best = sorted(first, key=lambda a: -toy_score(a.values))[:2]  # type: ignore[union-attr]
    assert spos.parents() == best
    second = [spos.ask() for _ in range(6)]
    assert not set(second) & set(first) and len(set(second)) == 6
    crosses = second[2:4]
    for child in crosses:
        assert all(v in (a, b) for v, a, b in zip(child.values, best[0].values, best[1].values, strict=True))  # type: ignore[union-attr]
    assert spos.ask() is None and not spos.done


# -- EN²AS ---------------------------------------------------------------------------------------


def test_novelty_search_step_on_known_points() -> None:
    """One step of EN²AS's novelty search: archive {(0, 0, 0, 0)}, k = 1, theta = 0, sigma = 1;
    perturbation 1 points at (0, 0, 0, 0) (novelty 0), perturbation 2 at (1, 2, 1, 3) (novelty 4).
    The standardised novelties are (-1, 1), so theta moves by lr / (2 sigma) * (eps_2 - eps_1);
    the most novel candidate is trained and joins the archive."""
    from raynas.strategies.sampling.novelty import NoveltyConfig, NoveltySearch

    config = NoveltyConfig(population_size=5, sample_size=2, evaluations=5, candidates=2, neighbours=1,
                           sigma=1.0, es_learning_rate=0.5)
    search = NoveltySearch(config, space=ToySpace(), seed=0)
    search.paths = torch.tensor([[0, 0, 0, 0]])
    sizes = (3, 4, 3, 4)

    def pointing(values: tuple[int, ...]) -> torch.Tensor:
        parts = []
        for n, v in zip(sizes, values, strict=True):
            part = torch.zeros(n)
            part[v] = 1.0
            parts.append(part)
        return torch.cat(parts)

    eps = torch.stack([pointing((0, 0, 0, 0)), pointing((1, 2, 1, 3))])
    path = search.novelty_step(eps)
    assert path == ToyArch((1, 2, 1, 3))
    assert search.paths.tolist() == [[0, 0, 0, 0], [1, 2, 1, 3]]
    torch.testing.assert_close(search.theta, 0.5 / 2 * (eps[1] - eps[0]))
    # a second step from there: the archive now holds both points
    again = search.novelty_step(torch.stack([pointing((2, 3, 2, 1)), pointing((1, 2, 1, 3))]))
    assert again == ToyArch((2, 3, 2, 1)) and len(search.paths) == 3
