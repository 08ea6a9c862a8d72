"""Auto-Keras (Jin et al., KDD 2019): network morphisms keep a network's outputs, the edit
distance and kernel against hand-computed values and a transcription of the official Bourgain
loop, the GP posterior against NumPy, the tree-structured search grows networks from evaluated
parents, and the morphism evaluator starts a child from its parent's trained weights and trains it
as the official ModelTrainer does (its early stop, best weights and score)."""

from __future__ import annotations

import copy
import itertools
import math
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import tiny_job

from raynas.errors import ConfigError, RaynasError
from raynas.evaluators.morphism import EarlyStop, MorphismConfig, MorphismEvaluator, ParentWeights
from raynas.runs.jobs import parse_job
from raynas.spaces.autokeras import (
    AutoKerasConfig,
    AutoKerasSpace,
    Morph,
    MorphArch,
    MorphNet,
    grow,
    morph,
    morph_state,
)
from raynas.strategies.sampling.autokeras import (
    AutoKeras,
    AutoKerasStrategyConfig,
    GaussianProcess,
    bourgain_kernel,
    descriptor,
    distance_matrix,
    edit_distance,
    layers_distance,
    skip_distance,
    skips_distance,
)
from raynas.types import EvalResult, best_at_equal_budget

# Two strided blocks between block 0 and block 3, skips of both kinds, one across resolutions.
BASE = MorphArch.parse("c4k3s1 c6k3s2 c5k1s1 c4k3s2 | add:0>2 concat:1>3 concat:0>3 add:2>3")


def trained_like(arch: MorphArch, seed: int = 0) -> MorphNet:
    """``arch``'s network in float64 with weights and BatchNorm statistics away from their
    initial values (zero skips and identity BatchNorm would hide mistakes), in evaluation mode."""
    torch.manual_seed(seed)
    net = MorphNet(arch, in_channels=1, num_classes=10).double()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    for proj in net.skips:
        proj.weight.data.normal_(0, 0.3)
    return net.eval()


def morphed(arch: MorphArch, net: MorphNet, m: Morph, noise: float = 0.0) -> MorphNet:
    new, state = morph_state(arch, net.state_dict(), m, noise=noise)
    child = MorphNet(new, in_channels=1, num_classes=10).double()
    child.load_state_dict(state)
    return child.eval()


MORPHS = [
    Morph("deepen", 0, kernel=1), Morph("deepen", 1, kernel=3), Morph("deepen", 3, kernel=5),
    Morph("widen", 0, seed=1), Morph("widen", 1, seed=2), Morph("widen", 2, seed=3),
    Morph("widen", 3, seed=4),
    Morph("add_skip", 0, end=1), Morph("add_skip", 1, end=2), Morph("concat_skip", 0, end=1),
    Morph("concat_skip", 2, end=3),
]


@pytest.mark.parametrize("m", MORPHS, ids=str)
def test_each_morphism_keeps_the_outputs(m: Morph) -> None:
    net = trained_like(BASE)
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)  # (B, C, H, W)
    child = morphed(BASE, net, m)
    assert child.arch == morph(BASE, m) != BASE
    with torch.no_grad():
        before, after = net(x), child(x)
    assert before.abs().max() > 0.1  # outputs that would show a change
    assert (after - before).abs().max() <= 1e-5


def test_a_chain_of_random_morphisms_keeps_the_outputs_and_the_official_noise_stays_small() -> None:
    space = AutoKerasSpace(AutoKerasConfig(seed_width=3, seed_strides=(1, 2)))
    arch, rng = space.seed_architecture(), random.Random(3)
    net = trained_like(arch)
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)  # (B, C, H, W)
    with torch.no_grad():
        reference = net(x)
    ops = set()
    for _ in range(12):
        m = space.random_morph(arch, rng)
        if m is None:
            continue
        ops.add(m.op)
        noisy = morphed(arch, net, m, noise=1e-4)  # the official NOISE_RATIO
        net, arch = morphed(arch, net, m), morph(arch, m)
        with torch.no_grad():
            assert (net(x) - reference).abs().max() <= 1e-5, m
            gap = (noisy(x) - reference).abs().max()
        assert gap <= 1e-2 * reference.abs().max(), m
    assert ops == {"deepen", "widen", "add_skip", "concat_skip"}


def test_morphisms_on_records() -> None:
    deeper = morph(BASE, Morph("deepen", 1, kernel=5))
    assert str(deeper) == "c4k3s1 c6k3s2 c6k5s1 c5k1s1 c4k3s2 | add:0>3 concat:1>4 concat:0>4 add:3>4"
    assert str(morph(BASE, Morph("widen", 1))).startswith("c4k3s1 c12k3s2 c5k1s1")
    assert str(morph(BASE, Morph("concat_skip", 0, end=1))).endswith("add:2>3 concat:0>1")
    grown_by = (Morph("deepen", 1, kernel=5),)
    lineage = MorphArch(deeper.blocks, deeper.skips, parent=BASE.key(), morphs=grown_by)
    assert lineage.key() == deeper.key()  # the key names the network, not how it was grown
    assert grow(BASE, lineage.morphs) == deeper


# --- the edit distance and the kernel ---------------------------------------------------------

A = MorphArch.parse("c8k3s1 c8k3s2")
B = MorphArch.parse("c16k3s1 c8k3s2 | add:0>1")


def test_hand_computed_distances() -> None:
    # D_l: block 0's convolutions differ in filters only, (8/16 + 0 + 0) / 3; the rest match.
    assert layers_distance(descriptor(A)[0], descriptor(B)[0]) == pytest.approx(1 / 6)
    # A block more is three layers more (conv, BN, ReLU), each inserted at cost 1.
    assert layers_distance(descriptor(A)[0], descriptor(MorphArch.parse("c8k3s1 c8k3s2 c8k3s1"))[0]) == 3
    # D_s: no skip against one, 1; lambda = 1.
    assert edit_distance(A, B) == pytest.approx(1 / 6 + 1)
    assert edit_distance(A, B, kernel_lambda=0.5) == pytest.approx(1 / 6 + 0.5)
    # One skip (3 -> 5, add) against two: (3 -> 8, add) costs (0 + |2 - 5|) / (3 + 5) = 3/8, the
    # concat skip 1 (another kind); the Hungarian matching takes 3/8 and leaves one skip over.
    assert skip_distance((3, 5, "add"), (3, 8, "add")) == pytest.approx(3 / 8)
    assert skips_distance(((3, 5, "add"),), ((3, 8, "add"), (6, 8, "concat"))) == pytest.approx(3 / 8 + 1)
    assert descriptor(B)[1] == ((3, 5, "add"),)  # leaves block 0's output, joins block 1 before its ReLU


def test_hand_computed_kernel() -> None:
    d = 7 / 6
    # Two networks: Bourgain's embedding draws one of them, so each network's coordinate is its
    # distance to it (0 and d): rho(d) = d, and the kernel exp(-d^2) = 0.2564.
    k = bourgain_kernel(distance_matrix([descriptor(A), descriptor(B)]))
    assert k == pytest.approx(np.array([[1.0, math.exp(-d * d)], [math.exp(-d * d), 1.0]]))
    assert math.exp(-d * d) == pytest.approx(0.25638, abs=1e-5)  # exp(-49/36)
    gp = GaussianProcess()
    gp.fit([descriptor(A)], [0.5])
    mean, std = gp.predict([descriptor(B)])  # one observation: mean k y / (1 + alpha)
    assert mean[0] == pytest.approx(0.5 * math.exp(-d * d))
    assert std[0] == pytest.approx(math.sqrt(1 - math.exp(-2 * d * d)))


def official_bourgain(distances: np.ndarray) -> np.ndarray:
    """A line-by-line transcription of the official ``bourgain_embedding_matrix`` (its loop
    variable ``t`` shadowing the bound included) and scikit-learn's rbf_kernel (gamma = 1/features)."""
    n = len(distances)
    np.random.seed(123)
    distort_elements: list[list[float]] = []
    r = range(n)
    k = math.ceil(math.log(n) / math.log(2) - 1)
    t = math.ceil(math.log(n))
    for i in range(0, k + 1):
        for t in range(t):  # noqa: B020 (as the official code writes it)
            s = np.random.choice(r, 2**i)
            for j in r:
                d = min([distances[j][s] for s in s])
                if i == 0 and t == 0:
                    distort_elements.append([d])
                else:
                    distort_elements[j].append(d)
    x = np.array(distort_elements)
    squared = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return np.exp(-squared / x.shape[1])


def networks(n: int, seed: int = 0) -> list[MorphArch]:
    space = AutoKerasSpace(AutoKerasConfig(seed_width=4))
    rng = random.Random(seed)
    return [space.sample(rng) for _ in range(n)]


@pytest.mark.parametrize("n", [3, 6, 11])
def test_bourgain_kernel_is_the_official_one_and_valid(n: int) -> None:
    distances = distance_matrix([descriptor(a) for a in networks(n)])
    k = bourgain_kernel(distances)
    assert k == pytest.approx(official_bourgain(distances))
    assert np.allclose(k, k.T) and np.allclose(np.diag(k), 1.0)
    assert np.linalg.eigvalsh(k).min() > -1e-10  # positive semi-definite: a valid kernel


def test_gp_posterior_matches_numpy() -> None:
    archs = networks(9, seed=1)
    train, test = [descriptor(a) for a in archs[:6]], [descriptor(a) for a in archs[6:]]
    y = np.array([0.3, 0.5, 0.2, 0.8, 0.6, 0.4])
    gp = GaussianProcess()
    gp.fit(train, list(y))
    mean, std = gp.predict(test)
    k = bourgain_kernel(distance_matrix(train)) + 1e-10 * np.eye(6)
    k_star = np.exp(-distance_matrix(test, train) ** 2)
    k_inv = np.linalg.inv(k)
    assert mean == pytest.approx(k_star @ k_inv @ y, rel=1e-6, abs=1e-9)
    var = 1 - np.einsum("ij,jk,ik->i", k_star, k_inv, k_star)
    assert std == pytest.approx(np.sqrt(np.clip(var, 0, None)), rel=1e-6, abs=1e-9)
    assert gp.predict(train[:1])[1][0] == pytest.approx(0.0, abs=1e-4)  # no doubt at an observation


# --- the search -------------------------------------------------------------------------------


def made_up_score(arch: MorphArch) -> float:
    """Depth up to four blocks and skips are good; width beyond 8 is not."""
    return min(len(arch.blocks), 4) / 4 + 0.1 * len(arch.skips) - 0.05 * sum(b.width > 8 for b in arch.blocks)


def test_the_search_grows_each_network_from_an_evaluated_parent() -> None:
    space = AutoKerasSpace(AutoKerasConfig(seed_width=4, seed_strides=(1, 2)))
    strategy = AutoKeras(AutoKerasStrategyConfig(evaluations=8, t_min=0.05), space=space, seed=0)
    seen: dict[str, MorphArch] = {}
    while not strategy.done:
        arch = strategy.ask()
        assert isinstance(arch, MorphArch) and arch.key() not in seen and space.contains(arch)
        if seen:  # after the seed: grown by its morphisms from a network evaluated before
            assert arch.parent in seen and arch.morphs
            assert grow(seen[arch.parent], arch.morphs) == arch.graph()
        else:
            assert arch == space.seed_architecture()
        seen[arch.key()] = arch
        strategy.tell(EvalResult(architecture=arch, metrics={"valid_acc": made_up_score(arch)},
                                 trial_id=str(len(seen))))
    best = strategy.best()
    assert len(seen) == 8 and best is not None
    assert best.score > made_up_score(space.seed_architecture()) + 0.2


class FixedTree:
    """A space whose morphisms are a fixed table: each network's neighbours, in order."""

    def __init__(self, seed: MorphArch, table: dict[str, list[tuple[Morph, MorphArch]]]) -> None:
        self.seed, self.table = seed, table
        self.expanded: list[str] = []  # the networks whose neighbours were asked for, in turn

    def seed_architecture(self) -> MorphArch:
        return self.seed

    def neighbours(self, arch: MorphArch, rng: Any, n: int) -> list[tuple[Morph, MorphArch]]:
        self.expanded.append(arch.key())
        return self.table.get(arch.key(), [])


class Draws:
    """``uniform(0, 1)`` answered from a script, which must be used up exactly."""

    def __init__(self, values: list[float]) -> None:
        self.values = values

    def uniform(self, low: float, high: float) -> float:
        assert (low, high) == (0, 1)
        return self.values.pop(0)


def test_algorithm_1_pops_accepts_cools_and_chooses_as_the_official_code(monkeypatch: Any) -> None:
    """Against a hand trace of the official ``BayesianOptimizer.generate`` (keras-team/autokeras
    0.2-0.3 ``bayesian.py``; NNI's ``networkmorphism_tuner/bayesian.py``), with a stub GP and fixed
    neighbours. The official loop: the evaluated networks in a priority queue by score, the
    largest popped first; a popped network is expanded with probability
    ``exp(min((c - c_opt) / T, 1))`` (one draw of uniform(0, 1) per pop), its children not
    searched before queued under the acquisition with the root they grew from, ``c_opt`` and the
    answer updated by each larger acquisition; ``T`` starts at 1 and is multiplied by 0.9 after
    every pop while ``T > t_min``."""
    r1, r2 = MorphArch.parse("c4k3s1 c4k3s2"), MorphArch.parse("c8k3s1 c4k3s2")  # evaluated: 0.5, 0.8
    ma, mb = Morph("widen", 1), Morph("add_skip", 0, end=1)
    mc, md = Morph("widen", 0), Morph("deepen", 1, kernel=3)
    a, b = morph(r2, ma), morph(r2, mb)
    c, d = morph(a, mc), morph(b, md)
    tree = FixedTree(r1, {
        r2.key(): [(ma, a), (mb, b)],
        a.key(): [(mc, c), (Morph("widen", 0), r1)],  # r1 was evaluated: not queued, not scored
        b.key(): [(md, d)],
        r1.key(): [(Morph("widen", 0), morph(r1, Morph("widen", 0)))],  # never popped
    })
    # (mean, std) per network; beta = 2.576 makes d's acquisition 1.0 + 0.2576 = 1.2576.
    posterior = {a.key(): (0.9, 0.0), b.key(): (0.6, 0.0), c.key(): (0.85, 0.0), d.key(): (1.0, 0.1)}
    fitted: list[list[float]] = []
    scored: list[list[str]] = []

    class StubGP:
        def __init__(self, *, kernel_lambda: float) -> None:
            assert kernel_lambda == 1.0

        def fit(self, xs: list[Any], ys: list[float]) -> None:
            fitted.append(list(ys))

        def predict(self, xs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
            keys = [next(k for k, arch in ((n.key(), n) for n in (a, b, c, d)) if descriptor(arch) == x)
                    for x in xs]
            scored.append(keys)
            return np.array([posterior[k][0] for k in keys]), np.array([posterior[k][1] for k in keys])

    monkeypatch.setattr("raynas.strategies.sampling.autokeras.GaussianProcess", StubGP)
    # t_min 0.7: pops at T = 1, 0.9, 0.81, 0.729; then T = 0.6561 ends the loop.
    strategy = AutoKeras(AutoKerasStrategyConfig(t_min=0.7), space=tree)
    for arch, score in ((r1, 0.5), (r2, 0.8)):
        strategy.tell(EvalResult(architecture=arch, metrics={"valid_acc": score}, trial_id=arch.key()))
    # The hand trace, pop by pop (probability: exp(min((c - c_opt) / T, 1))):
    # 1. r2 (0.8 > 0.5), T = 1, c_opt = -inf: exp(1) = 2.718, a draw of 2.71 expands it (a cap of
    #    0, probability 1, would not); a (0.9) and b (0.6) queued, c_opt = 0.9, answer (r2, [ma], a).
    # 2. a (0.9), T = 0.9: exp(0) = 1 >= 0.999: expanded; c (0.85) queued.
    # 3. c (0.85), T = 0.81: exp(-0.05 / 0.81) = 0.94014 < 0.945: not expanded (uncooled T = 1
    #    gives 0.95123, T = 0.9025 for a factor 0.95 gives 0.94611, the reversed sign 1.0637: all
    #    would expand it).
    # 4. b (0.6), T = 0.729: exp(-0.3 / 0.729) = 0.66264 >= 0.66: expanded (T cooled once more,
    #    0.6561, gives 0.63301: not); d (1.2576) queued, c_opt = 1.2576, answer (r2, [mb, md], d).
    assert math.exp(-0.05 / 0.81) == pytest.approx(0.94014, abs=1e-5)
    assert math.exp(-0.3 / 0.729) == pytest.approx(0.66264, abs=1e-5)
    strategy.rng = Draws([2.71, 0.999, 0.945, 0.66])  # type: ignore[assignment]
    found = strategy.generate(strategy.history)
    assert fitted == [[0.5, 0.8]]
    assert tree.expanded == [r2.key(), a.key(), b.key()]  # c was popped third and not expanded
    assert scored == [[a.key(), b.key()], [c.key()], [d.key()]]
    assert strategy.rng.values == []  # type: ignore[attr-defined]  # four pops, one draw each
    assert isinstance(found, MorphArch) and found.key() == d.key()
    assert (found.parent, found.morphs) == (r2.key(), (mb, md))
    assert grow(r2, found.morphs) == d.graph()


def test_the_strategy_refuses_a_space_without_morphisms() -> None:
    from raynas.spaces import SPACES

    with pytest.raises(ConfigError, match=r"set space\.name to 'autokeras'"):
        AutoKeras(AutoKerasStrategyConfig(), space=SPACES.create("nb201"))


# --- weight inheritance -----------------------------------------------------------------------


def morphism_job(tmp_path: Path, evaluations: int = 2) -> Any:
    job = tiny_job(tmp_path)
    del job["train"]
    job["space"] = {"name": "autokeras", "seed_width": 4, "seed_strides": [1, 2]}
    job["strategy"] = {"name": "autokeras", "evaluations": evaluations}
    job["data"] = {"name": "digits", "batch_size": 16, "limit": 64}
    job["evaluator"] = {"name": "morphism", "epochs": 1, "noise": 0.0}
    return parse_job(job)


def test_a_child_starts_from_its_parents_trained_weights(tmp_path: Path) -> None:
    config = morphism_job(tmp_path)
    evaluator = MorphismEvaluator(MorphismConfig(epochs=1, noise=0.0), search=config)
    keeper = ParentWeights(config)  # the driver's side
    parent = AutoKerasSpace(AutoKerasConfig(seed_width=4, seed_strides=(1, 2))).seed_architecture()
    handed = evaluator.evaluate(parent, trial_id="1")
    trained = evaluator.network
    assert trained is not None and handed.handover["architecture"] == parent.to_json()
    kept = keeper.keep(handed)  # saved beside the search's checkpoint, and taken off the result
    assert kept.handover is None and kept == handed and Path(keeper.path(parent.key())).is_file()
    morphs = (Morph("widen", 0, seed=5), Morph("deepen", 0, kernel=3), Morph("add_skip", 0, end=2))
    child = grow(parent, morphs)
    child = MorphArch(child.blocks, child.skips, parent=parent.key(), morphs=morphs)
    evaluator.receive(keeper.given(child))
    start = evaluator.initial_network(child)
    x = torch.randn(3, 1, 8, 8)  # (B, C, H, W)
    with torch.no_grad():
        assert torch.allclose(start.eval()(x), trained.cpu().eval()(x), atol=1e-5)
    fresh = evaluator.initial_network(child.graph())  # no parent: freshly initialised
    with torch.no_grad():
        assert not torch.allclose(fresh.eval()(x), trained.eval()(x), atol=1e-3)
    result = evaluator.evaluate(child, trial_id="2")
    assert math.isfinite(result.score) and result.handover["architecture"] == child.to_json()
    orphan = MorphArch(child.blocks, child.skips, parent="autokeras-000000000000", morphs=morphs)
    with pytest.raises(RaynasError, match=r"autokeras-000000000000.* not at"):
        keeper.given(orphan)
    with pytest.raises(RaynasError, match=r"autokeras-000000000000.* not given"):
        evaluator.initial_network(orphan)


def test_a_search_killed_between_candidates_resumes_growing_children_from_the_weights_it_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver dies after its second result (the parents' weights on disk, beside the
    checkpoint); the same search run again asks the rest, and its children start from the weights
    of parents trained before the crash, read back from that folder."""
    from raynas.evaluators import morphism
    from raynas.runs import run_search
    from raynas.runs.sampling import search_state

    config = morphism_job(tmp_path, evaluations=4)

    def die_after_two(line: str) -> None:
        if line.startswith("candidate    2 "):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(config, echo=die_after_two)
    folder = Path(morphism.weights_folder(config))
    before = {path.stem for path in folder.glob("*.pt")}
    assert len(before) == 2  # the seed network and its first child, trained
    grown_from: list[str] = []
    grow_state = morphism.grow_state

    def spy(parent: Any, state: Any, morphs: Any, **kw: Any) -> Any:
        grown_from.append(parent.key())
        return grow_state(parent, state, morphs, **kw)

    monkeypatch.setattr(morphism, "grow_state", spy)
    lines: list[str] = []
    run_search(config, echo=lines.append)
    assert any(line.startswith("Resuming 'tiny'") for line in lines)
    state = search_state(str(tmp_path / "runs" / "tiny" / "checkpoint.pt"))
    told = [r["trial_id"] for r in state["results"]]
    assert state["finished"] and len(told) == 4 == len(set(told))  # each candidate once
    assert len(grown_from) == 2  # the two candidates asked after the resume, each grown...
    assert set(grown_from) & before  # ...one at least from a parent trained before the crash
    assert {path.stem for path in folder.glob("*.pt")} >= before | set(grown_from)


class OfficialEarlyStop:
    """A transcription of ``EarlyStop`` in keras-team/autokeras ``autokeras/nn/model_trainer.py``
    (0.3-0.4), to check :class:`EarlyStop` against."""

    def __init__(self, max_no_improvement_num: int, min_loss_dec: float) -> None:
        self._max_no_improvement_num, self._min_loss_dec = max_no_improvement_num, min_loss_dec
        self.no_improvement_count, self._done, self.minimum_loss = 0, False, float("inf")

    def on_epoch_end(self, loss: float) -> bool:
        if self._done and loss > (self.minimum_loss - self._min_loss_dec):
            return False
        if loss > (self.minimum_loss - self._min_loss_dec):
            self.no_improvement_count += 1
        else:
            self.no_improvement_count = 0
            self.minimum_loss = loss
        if self.no_improvement_count > self._max_no_improvement_num:
            self._done = True
        return True


def test_the_early_stop_ends_training_where_the_official_early_stop_does() -> None:
    # By hand: the best at epoch 2, then epochs 3-5 without improvement (more than 2: done), and
    # epoch 6 without it ends training: patience + 2 epochs after the best.
    stop = EarlyStop(patience=2, min_decrease=1e-4)
    assert [stop.epoch_end(loss) for loss in (1.0, 0.9, 0.95, 0.9, 0.89995, 0.93)] == [True] * 5 + [False]
    # An improvement once done does not take it back: the next epoch without one ends training.
    stop = EarlyStop(patience=1, min_decrease=0.0)
    assert [stop.epoch_end(loss) for loss in (1.0, 2.0, 2.0, 0.5, 0.6)] == [True] * 4 + [False]
    rng = random.Random(0)
    for _ in range(200):
        patience, decrease = rng.randint(1, 4), rng.choice([0.0, 1e-4, 0.05])
        ours, official = EarlyStop(patience, decrease), OfficialEarlyStop(patience, decrease)
        losses = [rng.choice([1.0, 0.98, 0.95, 0.9999]) * (1 - 0.01 * i) for i in range(30)]
        for loss in losses:
            going = ours.epoch_end(loss)
            assert going == official.on_epoch_end(loss)
            assert ours.since_lowest == official.no_improvement_count
            if not going:
                break


def test_a_candidate_stopped_early_goes_back_to_its_best_epoch_and_scores_its_last_epochs(
    tmp_path: Path
) -> None:
    """As the official ``train_model``: with no epoch after the first counted as an improvement,
    training stops after patience + 3 epochs of the ten allowed, the handed-over weights are the
    first epoch's (the lowest validation loss), and the validation accuracy and loss scored are the
    means of the last ``patience`` epochs'. Checked against the same training run epoch by epoch."""
    config = morphism_job(tmp_path)
    settings = MorphismConfig(epochs=10, patience=2, min_loss_decrease=1e9, noise=0.0)
    arch = AutoKerasSpace(AutoKerasConfig(seed_width=4, seed_strides=(1, 2))).seed_architecture()
    result = MorphismEvaluator(settings, search=config).evaluate(arch)
    epochs = [
        (metrics, copy.deepcopy(state["model"]))
        for metrics, state in itertools.islice(MorphismEvaluator(settings, search=config).train(arch), 5)
    ]
    assert result.metrics["epoch"] == 5
    # Ranked by its score, not behind a candidate that trained longer: the budget is the one given.
    longer = replace(result, metrics={**result.metrics, "valid_acc": result.score - 0.1, "epoch": 10})
    assert result.budget == longer.budget == 10 and best_at_equal_budget([longer, result]) is result
    for key in ("valid_acc", "valid_loss"):
        assert result.metrics[key] == pytest.approx((epochs[3][0][key] + epochs[4][0][key]) / 2)
    assert result.metrics["train_loss"] == epochs[4][0]["train_loss"]  # the rest: the last epoch's
    first, last = epochs[0][1], epochs[4][1]
    assert all(torch.equal(result.handover["state"][k], v) for k, v in first.items())
    assert not all(torch.equal(first[k], last[k]) for k in first)  # (it did train on)


def test_a_candidate_that_keeps_improving_trains_its_whole_budget_and_scores_its_epochs_mean(
    tmp_path: Path
) -> None:
    """Three epochs within a patience of five: no early stop; the score is the mean of all three
    epochs' validation accuracy (``last_num = min(max_no_improvement_num, max_iter_num)``)."""
    config = morphism_job(tmp_path)
    settings = MorphismConfig(epochs=3, noise=0.0)
    arch = AutoKerasSpace(AutoKerasConfig(seed_width=4, seed_strides=(1, 2))).seed_architecture()
    evaluator = MorphismEvaluator(settings, search=config)
    result = evaluator.evaluate(arch)
    epochs = [metrics for metrics, _ in MorphismEvaluator(settings, search=config).train(arch)]
    assert result.metrics["epoch"] == 3
    assert result.score == pytest.approx(sum(m["valid_acc"] for m in epochs) / 3)
    assert evaluator.network is not None
    assert all(torch.equal(result.handover["state"][k], v) for k, v in evaluator.network.state_dict().items())


def test_the_morphism_evaluators_defaults_are_the_official_trainers() -> None:
    """keras-team/autokeras ``nn/model_trainer.py`` (SGD 0.025, momentum 0.9, weight decay 3e-4,
    no clip) and ``constant.py`` (MAX_NO_IMPROVEMENT_NUM 5, MIN_LOSS_DEC 1e-4)."""
    cfg = MorphismConfig()
    assert (cfg.learning_rate, cfg.momentum, cfg.weight_decay, cfg.grad_clip) == (0.025, 0.9, 3e-4, 0.0)
    assert (cfg.patience, cfg.min_loss_decrease) == (5, 1e-4)


def test_the_autokeras_cifar10_job_takes_the_official_settings() -> None:
    """jobs/autokeras_cifar10.yaml against keras-team/autokeras 0.3-0.4: ``constant.py`` (BETA,
    KERNEL_LAMBDA, T_MIN, N_NEIGHBOURS, MODEL_WIDTH, MAX_LAYER_WIDTH, MAX_MODEL_SIZE,
    MAX_MODEL_NUM, SEARCH_MAX_ITER, MAX_NO_IMPROVEMENT_NUM, MIN_LOSS_DEC, MAX_BATCH_SIZE,
    VALIDATION_SET_SIZE, CUTOUT_RATIO), ``nn/model_trainer.py`` (SGD 0.025, momentum 0.9, weight
    decay 3e-4) and ``image/image_supervised.py``'s transforms (crop, flip, Cutout; the validation
    images plain)."""
    from raynas.runs.jobs import load_job

    job = load_job(Path(__file__).parents[1] / "jobs" / "autokeras_cifar10.yaml")
    strategy, space, evaluator = job.strategy.config, job.space.config, job.evaluator.config
    data = job.data.config
    assert (strategy.beta, strategy.kernel_lambda, strategy.t_min) == (2.576, 1.0, 1e-4)
    assert strategy.neighbours == 8
    assert (strategy.cooling, strategy.evaluations) == (0.9, 1000)
    assert (space.seed_width, space.max_width, space.max_params) == (64, 4096, 1 << 25)
    assert (evaluator.epochs, evaluator.patience, evaluator.min_loss_decrease) == (200, 5, 1e-4)
    assert (evaluator.learning_rate, evaluator.momentum, evaluator.weight_decay) == (0.025, 0.9, 3e-4)
    assert evaluator.grad_clip == 0.0 and job.execution.concurrency == 1
    assert (job.data.name, data.batch_size) == ("cifar10", 128)
    assert data.train_portion == pytest.approx(1 - 0.08333)
    assert (data.augment, data.cutout, data.augment_valid) == (True, int(32 * 0.5), False)


def test_the_morphism_evaluator_refuses_another_space(tmp_path: Path) -> None:
    job = tiny_job(tmp_path)
    del job["train"]
    job["space"] = {"name": "nb201", "channels": 4, "cells_per_stage": 1}
    job["strategy"] = {"name": "random", "evaluations": 2}
    job["evaluator"] = {"name": "morphism"}
    with pytest.raises(ConfigError, match=r"set space\.name to 'autokeras'"):
        MorphismEvaluator(MorphismConfig(), search=parse_job(job))
