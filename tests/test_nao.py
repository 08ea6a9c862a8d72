"""NAO (Luo et al., NeurIPS 2018; ``raynas.strategies.sampling.nao``): the strategy builds from a job's
strategy section; its encoder-predictor-decoder, trained as the search trains it, decodes the
architectures it was trained on and ranks unseen ones by a known synthetic score; the step along the
predictor's gradient is the gradient (against finite differences) and raises the prediction; the
ask/tell loop asks seeds, waits, asks new architectures per round, ends, and resumes from a
``torch.save``d state as the same run; and decoded candidates are always architectures of the space.
"""

from __future__ import annotations

import copy
import io
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from scipy.stats import kendalltau

from raynas.errors import ConfigError
from raynas.runs.jobs import component, load_job
from raynas.spaces import SPACES
from raynas.strategies import STRATEGIES
from raynas.strategies.sampling.nao import START, Nao, NaoConfig
from raynas.types import Architecture, Decision, EvalResult, decode_options

JOBS = Path(__file__).resolve().parents[1] / "jobs"


def darts() -> Any:
    """DARTS cells of two nodes: 12 decisions (per cell and node an inputs pair of 1 or 3 options
    and two ops of 7), about 5e7 architectures."""
    return SPACES.create("darts", SPACES.entry("darts").config(nodes=2))


def synthetic(space: Any, arch: Architecture) -> float:
    """A known score of the decisions: 1 per 3x3 separable convolution, 0.5 per skip connection."""
    names = decode_options(space.decisions(), space.encode(arch))
    return sum(n == "sep_conv_3x3" for n in names) + 0.5 * sum(n == "skip_connect" for n in names)


def distinct_random(space: Any, n: int, seed: int) -> list[Architecture]:
    rng, out, keys = random.Random(seed), [], set()
    while len(out) < n:
        arch = space.decode([rng.randrange(len(d.options)) for d in space.decisions()])
        if arch.key() not in keys:
            keys.add(arch.key())
            out.append(arch)
    return out


def result(space: Any, arch: Architecture, n: int) -> EvalResult:
    return EvalResult(architecture=arch, metrics={"valid_acc": synthetic(space, arch)}, trial_id=f"t{n}")


def round_trip(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.fixture(scope="module")
def trained() -> tuple[Nao, list[Architecture], list[Architecture]]:
    """A strategy whose network the search's own code (``fit``) trained on 80 random DARTS
    architectures scored by :func:`synthetic` (200 epochs of one batch); and 40 others it never saw."""
    space = darts()
    strategy = STRATEGIES.create("nao", NaoConfig(epochs=200), space=space, seed=0)
    archs = distinct_random(space, 120, seed=1)
    for n, arch in enumerate(archs[:80]):
        strategy.tell(result(space, arch, n))  # told without being asked: they join the history
    strategy.fit(strategy.training_data())
    return strategy, archs[:80], archs[80:]


def reconstructed(strategy: Nao, archs: list[Architecture]) -> float:
    """The share of ``archs`` that greedy decoding of their own encodings gives back."""
    values = [strategy.space.encode(a) for a in archs]
    with torch.no_grad():
        decoded = strategy.model.greedy(strategy.model.encode(strategy.tokens(values))).tolist()
    return sum(tuple(d) == v for d, v in zip(decoded, values, strict=True)) / len(archs)


# 1 ---------------------------------------------------------------------------------------------


def test_nao_is_registered_and_builds_from_a_job_strategy_section() -> None:
    assert "nao" in STRATEGIES.names()
    section = {"name": "nao", "seed_architectures": 8, "iterations": 2, "new_architectures": 4, "epochs": 5}
    chosen = component(section, "strategy", STRATEGIES)  # as a job file gives it
    assert isinstance(chosen.config, NaoConfig) and chosen.config.new_architectures == 4
    strategy = STRATEGIES.create("nao", chosen.config, space=darts(), seed=0)
    assert isinstance(strategy, Nao) and strategy.config == chosen.config
    # The defaults are NAO_V1/train_search.py's (see the module docstring for each).
    assert NaoConfig() == NaoConfig(
        seed_architectures=600, iterations=3, new_architectures=300, top_k=100, epochs=1000, batch_size=100,
        learning_rate=1e-3, l2_reg=0.0, grad_bound=5.0, trade_off=0.8, emb_size=32, hidden_size=64,
        mlp_layers=0, mlp_hidden_size=200, mlp_dropout=0.1, step_size=1.0, max_step_size=50.0,
    )
    with pytest.raises(ConfigError, match=r"strategy\.step_size"):
        component({"name": "nao", "step_size": 60.0}, "strategy", STRATEGIES)  # above max_step_size
    with pytest.raises(ConfigError, match=r"strategy\.trade_off"):
        component({"name": "nao", "trade_off": 1.5}, "strategy", STRATEGIES)
    for job in ("nao_morphological_quickstart.yaml", "nao_morphological_cifar10.yaml"):
        config = load_job(JOBS / job)
        assert config.strategy.name == "nao" and config.space.config.operations == "morphological"


# 2 ---------------------------------------------------------------------------------------------


def test_the_trained_decoder_reconstructs_the_architectures_it_was_trained_on(trained: Any) -> None:
    strategy, seen, _ = trained
    # Untrained, a full match is chance: 1/7 per op and 1/3 per node-3 inputs pair, ~2e-8 per
    # architecture; trained, every one of the 80 comes back (measured), so 90% leaves a margin.
    untrained = STRATEGIES.create("nao", NaoConfig(), space=strategy.space, seed=0)
    assert reconstructed(untrained, seen) < 0.1
    assert reconstructed(strategy, seen) >= 0.9
    # The greedy decoder runs the same steps as the teacher-forced one trained: where greedy gets
    # an architecture back, the teacher-forced argmax is that architecture's tokens.
    model = strategy.model
    tokens = strategy.tokens([strategy.space.encode(a) for a in seen])
    with torch.no_grad():
        outputs = model.encode(tokens)
        forced = model.reconstruct(outputs, tokens).argmax(dim=-1)  # (N, T)
        greedy = model.tokens(model.greedy(outputs))  # (N, T)
    back = (greedy == tokens).all(dim=1)
    assert torch.equal(forced[back], tokens[back])
    assert torch.equal(forced[:, 0], greedy[:, 0])  # both read the start symbol first


# 3 ---------------------------------------------------------------------------------------------


def test_the_trained_predictor_ranks_unseen_architectures_by_the_synthetic_score(trained: Any) -> None:
    strategy, _, unseen = trained
    truth = [synthetic(strategy.space, a) for a in unseen]

    tokens = strategy.tokens([strategy.space.encode(a) for a in unseen])

    def tau(model: Any) -> float:
        with torch.no_grad():
            predicted = model.predict(model.encode(tokens))
        return float(kendalltau(predicted.tolist(), truth)[0])

    # On 40 architectures a predictor unrelated to the score has tau ~ N(0, 0.11): 0.5 is ~4.5
    # standard deviations (the untrained network: -0.25; trained: ~0.7).
    assert tau(STRATEGIES.create("nao", NaoConfig(), space=strategy.space, seed=0).model) < 0.5
    assert tau(strategy.model) > 0.5


def test_targets_are_min_max_normalised_over_finite_scores_once_per_architecture(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    space = darts()
    strategy = STRATEGIES.create("nao", NaoConfig(epochs=1), space=space, seed=0)
    a, b, c, d = distinct_random(space, 4, seed=3)
    told = [(a, 0.2), (b, 0.6), (c, -math.inf), (a, 0.4), (d, 1.0)]  # c failed; a told twice
    for n, (arch, score) in enumerate(told):
        strategy.tell(EvalResult(architecture=arch, metrics={"valid_acc": score}, trial_id=f"t{n}"))
    seen: list[torch.Tensor] = []
    monkeypatch.setattr(strategy, "train_network", lambda tokens, targets: seen.append(targets) or (0.0, 0.0))
    ranked = strategy.fit(strategy.training_data())
    # Once per architecture (a's best, 0.4), in the order first told, c left out: min 0.4, max 1.0.
    assert seen[0].tolist() == pytest.approx([0.0, (0.6 - 0.4) / 0.6, 1.0])
    assert ranked == [space.encode(x) for x in (d, b, a)]


# 4 ---------------------------------------------------------------------------------------------


def test_the_step_is_the_predictor_gradient_and_raises_the_prediction(trained: Any) -> None:
    strategy, seen, _ = trained
    model = strategy.model
    with torch.no_grad():
        h = model.encode(strategy.tokens([strategy.space.encode(a) for a in seen[:10]]))  # (10, T, H)
    grad = model.predictor_gradient(h)
    # Central differences of the predictor in double precision, on coordinates drawn at random.
    double = copy.deepcopy(model).double().eval()
    h64 = h.double()
    g = torch.Generator().manual_seed(0)
    for _ in range(25):
        i, t, k = (int(torch.randint(n, (1,), generator=g)) for n in h.shape)
        step = torch.zeros_like(h64)
        step[i, t, k] = 1e-6
        with torch.no_grad():
            up, down = double.predict(h64 + step), double.predict(h64 - step)
        assert float(grad[i, t, k]) == pytest.approx(float((up[i] - down[i]) / 2e-6), abs=1e-5)
        # No other row's prediction moves: the gradient of their sum is each row's own.
        assert torch.equal(torch.cat([up[:i], up[i + 1 :]]), torch.cat([down[:i], down[i + 1 :]]))
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # h' = normalise(h + s * grad) per time step, and it predicts higher at the first step size.
    moved = model.move(h, 1.0)
    expected = h + 1.0 * grad
    assert torch.allclose(moved, expected / expected.norm(dim=-1, keepdim=True), atol=1e-6)
    with torch.no_grad():
        assert (model.predict(moved) > model.predict(h)).all()


def test_the_step_size_grows_until_enough_new_architectures_or_the_maximum(
    trained: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    strategy, seen, _ = trained
    steps: list[float] = []
    move = strategy.model.move
    monkeypatch.setattr(strategy.model, "move", lambda h, s: steps.append(s) or move(h, s))
    starts = [strategy.space.encode(a) for a in seen[:10]]
    before = set(strategy.seen)
    impossible = copy.copy(strategy)
    impossible.config = NaoConfig(new_architectures=10_000, step_size=2.0, max_step_size=9.0)
    impossible.seen = set(before)
    found = impossible.generate(starts)
    assert steps == [2.0, 4.0, 6.0, 8.0]  # every multiple of step_size up to the maximum
    assert 0 < len(found) <= 10 * len(steps) and not {a.key() for a in found} & before
    steps.clear()
    few = copy.copy(strategy)
    few.config = NaoConfig(new_architectures=3)
    few.seen = set(before)
    found = few.generate(starts)
    assert len(found) == 3 and steps == [float(s) for s in range(1, len(steps) + 1)]
    assert len(steps) < 50  # stopped as soon as three were found
    assert len({a.key() for a in found}) == 3 and not {a.key() for a in found} & before


# 5 ---------------------------------------------------------------------------------------------

# Twenty seeds and every one a starting point: each round finds its three new architectures (with
# the starting points of so few seeds, a decoder that learnt them all may decode too few new ones).
LOOP = NaoConfig(seed_architectures=20, iterations=2, new_architectures=3, top_k=20, epochs=30)


def run(strategy: Nao, plan: list[str]) -> list[Architecture | None]:
    """Play ``plan`` ("ask", or "tell": the oldest candidate asked and not told) and return what
    each ask returned."""
    out: list[Architecture | None] = []
    for action in plan:
        if action == "ask":
            out.append(strategy.ask())
        else:
            arch = strategy.in_flight[0]
            strategy.tell(result(strategy.space, arch, len(strategy.history)))
    return out


def test_the_loop_asks_seeds_then_new_architectures_per_round_and_resumes_exactly() -> None:
    space = darts()
    strategy = STRATEGIES.create("nao", LOOP, space=space, seed=0)
    seeds = run(strategy, ["ask"] * 21)
    assert all(a is not None for a in seeds[:20]) and seeds[20] is None  # waits for the seeds' results
    assert len({a.key() for a in seeds[:20]}) == 20 and not strategy.done  # type: ignore[union-attr]
    asked = list(seeds[:20])
    for round_ in (1, 2):
        run(strategy, ["tell"] * len(strategy.in_flight))  # the last tell trains and generates
        assert strategy.round == round_ and not strategy.done
        new = run(strategy, ["ask"] * 4)
        assert new[3] is None and all(a is not None and space.contains(a) for a in new[:3])
        keys = {a.key() for a in new[:3]}  # type: ignore[union-attr]
        assert len(keys) == 3 and not keys & {a.key() for a in asked}  # never asked before
        asked += new[:3]
    run(strategy, ["tell"] * 3)
    assert strategy.done and strategy.ask() is None and len(strategy.history) == 26

    # The same run, saved and restored into a strategy of another seed (other weights, other random
    # streams) in the seeds phase and in the first round, each time with candidates in flight.
    segments = [
        ["ask"] * 12 + ["tell"], ["tell"] * 5 + ["ask"] * 9 + ["tell"] * 14 + ["ask"] * 2 + ["tell"],
        ["ask"] * 2 + ["tell"] * 2 + ["ask"] * 4 + ["tell"] * 3 + ["ask"],
    ]
    plan = [action for segment in segments for action in segment]
    whole = run(STRATEGIES.create("nao", LOOP, space=space, seed=0), plan)
    assert [a for a in whole if a is not None] == asked
    for cut in (len(segments[0]), len(segments[0]) + len(segments[1])):
        first = STRATEGIES.create("nao", LOOP, space=space, seed=0)
        before = run(first, plan[:cut])
        assert first.in_flight
        fresh = STRATEGIES.create("nao", LOOP, space=space, seed=7)
        fresh.load_state_dict(round_trip(first.state_dict()))
        lost = list(first.in_flight)  # the driver's queue, lost when it stopped: asked again first
        assert [fresh.ask() for _ in lost] == lost
        after = run(fresh, plan[cut:])
        assert before + after == whole, f"cut at {cut}"
        assert fresh.done and [r.to_dict() for r in fresh.history] == [r.to_dict() for r in strategy.history]


def test_failed_results_neither_break_the_round_nor_are_asked_again() -> None:
    space = darts()
    strategy = STRATEGIES.create("nao", LOOP, space=space, seed=0)
    failed = []
    for n in range(20):
        arch = strategy.ask()
        assert arch is not None
        score = -math.inf if n % 2 else synthetic(space, arch)
        strategy.tell(EvalResult(architecture=arch, metrics={"valid_acc": score}, trial_id=f"t{n}"))
        failed += [arch.key()] if n % 2 else []
    assert strategy.round == 1  # the last seed's result trained the network on the finite ten
    assert all(torch.isfinite(w).all() for w in strategy.model.state_dict().values())
    new = [strategy.ask() for _ in range(3)]
    assert all(a is not None and a.key() not in failed for a in new)  # type: ignore[union-attr]


def test_a_predictor_mlp_with_dropout_trains_and_resumes_exactly() -> None:
    """``mlp_layers`` > 0: dropout is on in training only, its masks drawn from the strategy's own
    generator, so a restored strategy trains and generates as the uninterrupted one."""
    config = NaoConfig(seed_architectures=8, iterations=1, new_architectures=2, top_k=8, epochs=5,
                       mlp_layers=2, mlp_hidden_size=16, mlp_dropout=0.5)
    space = darts()
    strategy = STRATEGIES.create("nao", config, space=space, seed=0)
    assert len(strategy.model.mlp) == 2 and strategy.model.regressor.in_features == 16
    h = torch.nn.functional.normalize(torch.randn(4, 12, 64), dim=-1)
    strategy.model.train()
    draws = [strategy.model.predict(h, torch.Generator().manual_seed(s)) for s in (0, 1)]
    assert not torch.equal(*draws)  # a mask per generator state
    strategy.model.eval()
    assert torch.equal(strategy.model.predict(h), strategy.model.predict(h))
    plan = ["ask"] * 8 + ["tell"] * 8 + ["ask"] * 3 + ["tell"] * 2
    whole = run(STRATEGIES.create("nao", config, space=space, seed=0), plan)
    first = STRATEGIES.create("nao", config, space=space, seed=0)
    before = run(first, plan[:12])
    fresh = STRATEGIES.create("nao", config, space=space, seed=3)
    fresh.load_state_dict(round_trip(first.state_dict()))
    assert before + run(fresh, plan[12:]) == whole and fresh.done


# 6 ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Values(Architecture):
    space: ClassVar[str] = "nao-test"
    values: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"values": list(self.values)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Values:
        return cls(tuple(int(v) for v in data["values"]))


class Uneven:
    """A flat view whose positions have 1 to 5 options, some names shared and some not."""

    def decisions(self) -> tuple[Decision, ...]:
        return (
            Decision("a", ("x",)), Decision("b", ("x", "y", "z")), Decision("c", ("p", "q")),
            Decision("d", ("z", "y", "x", "w", "v")), Decision("e", ("q", "r")),
        )

    def encode(self, arch: Architecture) -> tuple[int, ...]:
        assert isinstance(arch, Values)
        return arch.values

    def decode(self, values: tuple[int, ...] | list[int]) -> Values:
        decode_options(self.decisions(), values)  # a clear error when out of range
        return Values(tuple(int(v) for v in values))


@pytest.mark.parametrize("which", ["darts", "nb201", "uneven"])
def test_decoded_candidates_are_always_architectures_of_the_space(which: str, trained: Any) -> None:
    space = {"darts": darts, "nb201": lambda: SPACES.create("nb201"), "uneven": Uneven}[which]()
    decisions = space.decisions()
    strategies = [STRATEGIES.create("nao", NaoConfig(), space=space, seed=s) for s in (0, 1)]
    if which == "darts":
        strategies.append(trained[0])
    for strategy in strategies:
        # One token per option name, shared by every position that has it; 0 only starts.
        names = {o for d in decisions for o in d.options}
        assert set(strategy.vocabulary) == names and sorted(strategy.vocabulary.values()) == list(
            range(1, len(names) + 1)
        )
        model = strategy.model
        for t, d in enumerate(decisions):
            expected = [strategy.vocabulary[o] for o in d.options]
            assert model.option_tokens[t, : len(d.options)].tolist() == expected
        starts = [space.encode(a) for a in distinct_random(space, 12, seed=5)]
        with torch.no_grad():
            outputs = model.encode(strategy.tokens(starts))
        for step in (0.0, 1.0, 50.0, 1e4):
            with torch.no_grad():
                decoded = model.greedy(model.move(outputs, step) if step else outputs)  # (N, T)
            for row in decoded.tolist():
                assert all(0 <= v < len(d.options) for v, d in zip(row, decisions, strict=True))
                arch = space.decode(row)
                assert not hasattr(space, "contains") or space.contains(arch)
            tokens = model.tokens(decoded)
            assert (tokens != START).all()
            assert all(model.valid[t, tokens[:, t]].all() for t in range(len(decisions)))
