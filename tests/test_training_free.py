"""Training-free evaluators: each proxy against an independent computation on a tiny network
(NumPy for NASWOT, torch.func.jacrev and an analytic kernel for the NTK, hand-counted regions),
determinism, usefulness on NAS-Bench-201, config errors, and a random search end to end."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from raynas.cli import main
from raynas.errors import ConfigError
from raynas.evaluators import EVALUATORS
from raynas.evaluators.training_free import (
    NETWORK_PROXIES,
    PROXIES,
    TrainingFreeConfig,
    TrainingFreeEvaluator,
    hamming_kernel,
    linear_regions,
    naswot_score,
    ntk_condition_number,
    ntk_jacobian,
    proxy_batch,
    proxy_values,
)
from raynas.runs.jobs import parse_job
from raynas.runs.sampling import search_state
from raynas.spaces.nb201 import Nb201Arch
from raynas.tracking.results import ResultsStore
from raynas.train.checkpoint import load_checkpoint
from tests.conftest import tiny_job, write_job


def proxy_job(tmp_path: Path, evaluator: dict, **sections: dict) -> dict:
    job = tiny_job(
        tmp_path, space={"name": "nb201", "channels": 4, "cells_per_stage": 1},
        data={"name": "digits", "batch_size": 16, "limit": 96}, **sections,
    )
    for key in ("layers", "nodes"):
        job["space"].pop(key)
    job["strategy"] = {"name": "random", "evaluations": 5}
    job["evaluator"] = {"name": "training_free", "batch_size": 16, "channels": 4, "layers": 1, **evaluator}
    del job["train"]  # no supernet is trained
    return job


def evaluator(tmp_path: Path, **settings: object) -> TrainingFreeEvaluator:
    config = parse_job(proxy_job(tmp_path, dict(settings)))
    return TrainingFreeEvaluator(config.evaluator.config, search=config)


CONV_CELL = Nb201Arch(("nor_conv_3x3",) * 6)
NONE_CELL = Nb201Arch(("none",) * 6)
MIXED_CELL = Nb201Arch.parse(
    "|nor_conv_1x1~0|+|avg_pool_3x3~0|nor_conv_3x3~1|+|skip_connect~0|none~1|nor_conv_3x3~2|"
)


# -- NASWOT against NumPy -----------------------------------------------------------------------


def numpy_naswot(codes: np.ndarray) -> float:
    """log|K_H| with K_H[i, j] = N_A - Hamming(c_i, c_j), pair by pair."""
    n, units = codes.shape
    kernel = np.array([[units - np.count_nonzero(codes[i] != codes[j]) for j in range(n)] for i in range(n)])
    sign, logdet = np.linalg.slogdet(kernel.astype(np.float64))
    assert sign > 0
    return float(logdet)


def numpy_bn(h: np.ndarray, bn: nn.BatchNorm1d | nn.BatchNorm2d, axes: tuple[int, ...]) -> np.ndarray:
    """Train-mode BatchNorm: the batch's mean and biased variance."""
    shape = [1] * h.ndim
    shape[1] = -1
    mean, var = h.mean(axis=axes, keepdims=True), h.var(axis=axes, keepdims=True)
    gamma, beta = (t.detach().double().numpy().reshape(shape) for t in (bn.weight, bn.bias))
    return (h - mean) / np.sqrt(var + bn.eps) * gamma + beta


def test_naswot_of_an_mlp_with_batchnorm_matches_numpy() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(5, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 3)
    ).double().train()
    x = torch.randn(10, 5, dtype=torch.float64)
    with hamming_kernel(net) as found:
        net(x)
    ours = naswot_score(found["kernel"])

    w = [t.detach().numpy() for t in net.parameters()]  # W1, b1, gamma, beta, W2, b2, W3, b3
    h1 = numpy_bn(x.numpy() @ w[0].T + w[1], net[1], (0,))
    h2 = np.maximum(h1, 0) @ w[4].T + w[5]
    codes = np.concatenate([h1 > 0, h2 > 0], axis=1)  # (10, 40)
    assert found["units"] == 40
    assert ours == pytest.approx(numpy_naswot(codes), rel=1e-9)
    assert proxy_values(net, x, "naswot")["naswot"] == pytest.approx(ours, rel=1e-9)


def test_naswot_of_a_conv_net_matches_numpy() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3), nn.ReLU(inplace=True),
        nn.Conv2d(3, 2, 3, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(8, 4),
    ).double().train()
    x = torch.randn(12, 2, 4, 4, dtype=torch.float64)
    with hamming_kernel(net) as found:
        net(x)

    def conv(inp: np.ndarray, weight: torch.Tensor, pad: int) -> np.ndarray:  # (B, Ci, H, W)
        inp = np.pad(inp, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        patches = np.lib.stride_tricks.sliding_window_view(inp, (3, 3), axis=(2, 3))  # (B, Ci, H', W', 3, 3)
        return np.einsum("bchwij,ocij->bohw", patches, weight.detach().numpy())

    h1 = numpy_bn(conv(x.numpy(), net[0].weight, 1), net[1], (0, 2, 3))  # (12, 3, 4, 4)
    h2 = conv(np.maximum(h1, 0), net[3].weight, 0)  # (12, 2, 2, 2)
    codes = np.concatenate([(h1 > 0).reshape(12, -1), (h2 > 0).reshape(12, -1)], axis=1)
    assert found["units"] == codes.shape[1] == 56
    assert naswot_score(found["kernel"]) == pytest.approx(numpy_naswot(codes), rel=1e-9)


def test_naswot_is_minus_infinity_when_two_inputs_share_a_code() -> None:
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU())
    x = torch.randn(4, 3)
    x[3] = x[0]
    assert proxy_values(net, x, "naswot")["naswot"] == -math.inf


# -- the NTK against jacrev and an analytic kernel ---------------------------------------------


def test_ntk_condition_number_matches_jacrev() -> None:
    torch.manual_seed(2)
    net = nn.Sequential(
        # batch statistics couple the samples, as in train mode; no running statistics to update
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3, track_running_stats=False), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 4),
    ).double().train()
    x = torch.randn(6, 1, 5, 5, dtype=torch.float64)
    ours = ntk_condition_number(ntk_jacobian(net, x))

    # TE-NAS's theta: the weights (biases stay the module's own), f_i = sum of sample i's logits.
    weights = {k: v.detach() for k, v in net.named_parameters() if k.endswith("weight")}
    jac = torch.func.jacrev(lambda w: torch.func.functional_call(net, w, (x,)).sum(dim=1))(weights)
    full = torch.cat([j.detach().reshape(6, -1) for j in jac.values()], dim=1).numpy()  # (6, P)
    eig = np.linalg.eigvals(full @ full.T).real
    assert ours == pytest.approx(eig.max() / eig.min(), rel=1e-6)


def test_ntk_of_a_linear_map_is_the_inputs_gram_matrix() -> None:
    # f(x) = W x: J_i = 1 x_i^T, so Theta = K X X^T and kappa = cond(X X^T).
    torch.manual_seed(3)
    net = nn.Linear(4, 3, bias=False).double()
    x = torch.randn(4, 4, dtype=torch.float64)
    gram = (x @ x.T).numpy()
    assert ntk_condition_number(ntk_jacobian(net, x)) == pytest.approx(np.linalg.cond(gram), rel=1e-8)


def test_ntk_of_a_network_blind_to_its_input_is_infinitely_ill_conditioned() -> None:
    net = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    values = proxy_values(net, torch.zeros(4, 3), "ntk")  # every row of J is the same
    assert values["ntk_cond"] == math.inf


# -- linear regions counted by hand ------------------------------------------------------------


def test_linear_regions_of_a_one_dimensional_relu_net() -> None:
    # Units ReLU(x + 1), ReLU(x), ReLU(x - 1): breakpoints at -1, 0, 1, four regions on the line.
    net = nn.Sequential(nn.Linear(1, 3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.copy_(torch.tensor([1.0, 0.0, -1.0]))
    x = torch.tensor([[-2.0], [-1.5], [-0.5], [0.5], [0.7], [1.5], [2.0]])
    assert proxy_values(net, x, "linear_regions")["linear_regions"] == 4  # 000, 100, 110, 111
    assert proxy_values(net, x[:3], "linear_regions")["linear_regions"] == 2
    assert proxy_values(net, x[2:5], "linear_regions")["linear_regions"] == 2


def test_linear_regions_of_a_two_dimensional_relu_net_are_quadrants() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2))
        net[0].bias.zero_()
    three = torch.tensor([[1.0, 1.0], [2.0, 0.5], [-1.0, 1.0], [-1.0, -1.0]])  # quadrants I, I, II, III
    assert proxy_values(net, three, "linear_regions")["linear_regions"] == 3
    four = torch.cat([three, torch.tensor([[1.0, -3.0]])])
    assert proxy_values(net, four, "linear_regions")["linear_regions"] == 4
    with hamming_kernel(net) as found:
        net(four)
    assert linear_regions(found["kernel"], found["units"]) == 4


# -- the evaluator ------------------------------------------------------------------------------


def test_the_evaluator_is_registered_and_reports_every_proxy(tmp_path: Path) -> None:
    assert "training_free" in EVALUATORS.names()
    ev = evaluator(tmp_path, proxy="te_nas", batch_size=4, region_inputs=50, region_batches=1)
    result = ev.evaluate(MIXED_CELL, trial_id="00001")
    assert result.objective == "te_nas" and result.budget == 0 and result.trial_id == "00001"
    m = result.metrics
    assert m["te_nas"] == pytest.approx(
        math.log(m["linear_regions"]) - math.log(m["ntk_cond"]) - math.log(m["ntk_mse"])
    )
    assert m["params"] == sum(p.numel() for p in ev.build(MIXED_CELL).parameters())
    assert 0 < m["proxy_seconds"] <= result.seconds
    ntk = evaluator(tmp_path, proxy="ntk").evaluate(MIXED_CELL)  # on the candidate's own network
    assert ntk.objective == "ntk" and ntk.score == -ntk.metrics["ntk_cond"]


def test_same_architecture_same_score_different_architectures_different_scores(tmp_path: Path) -> None:
    ev = evaluator(tmp_path, proxy="naswot")
    state = torch.get_rng_state()
    first = ev.evaluate(MIXED_CELL)
    assert torch.equal(state, torch.get_rng_state())  # scoring leaves the caller's stream alone
    assert ev.evaluate(CONV_CELL).score != first.score
    assert ev.evaluate(MIXED_CELL).metrics["naswot"] == first.metrics["naswot"]
    assert evaluator(tmp_path, proxy="naswot").evaluate(MIXED_CELL).score == first.score  # a new evaluator


def test_repeats_average_independent_initialisations(tmp_path: Path) -> None:
    ev = evaluator(tmp_path, proxy="naswot", repeats=2)
    each = [proxy_values(ev.build(CONV_CELL, repeat=r), ev.inputs, "naswot")["naswot"] for r in range(2)]
    assert each[0] != each[1]
    assert ev.evaluate(CONV_CELL).score == pytest.approx(sum(each) / 2)


def test_naswot_ranks_a_convolutional_cell_above_an_empty_one(tmp_path: Path) -> None:
    ev = evaluator(tmp_path, proxy="naswot")
    empty, conv = ev.evaluate(NONE_CELL).score, ev.evaluate(CONV_CELL).score
    assert math.isfinite(conv) and empty < conv


def test_ray_replicas_of_a_training_free_evaluator_have_no_weights_to_share(tmp_path: Path) -> None:
    # RayPool.sync_replicas hands the first actor's weights to the others before every search.
    from raynas.execution.pool import _EvaluatorActor

    actor = _EvaluatorActor()
    actor.evaluator = evaluator(tmp_path)
    assert actor.weights() is None
    actor.load_weights(actor.weights())


# -- several candidates per pass ------------------------------------------------------------------


STACKED = [
    MIXED_CELL, CONV_CELL, NONE_CELL,
    Nb201Arch.parse("|skip_connect~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|none~0|nor_conv_3x3~1|skip_connect~2|"),
    Nb201Arch.parse("|avg_pool_3x3~0|+|none~0|nor_conv_1x1~1|+|nor_conv_3x3~0|skip_connect~1|nor_conv_1x1~2|"),
]


def test_stacked_networks_compute_what_each_computes_alone_with_the_same_gradients(tmp_path: Path) -> None:
    ev = evaluator(tmp_path)
    alone = [ev.build(arch) for arch in STACKED]
    together = [ev.build(arch) for arch in STACKED]
    x = ev.inputs  # (B, 1, 8, 8)
    logits = ev.space.stack(together)(x)  # (B, N, classes)
    assert logits.shape == (x.shape[0], len(STACKED), 10)
    logits.square().sum().backward()
    for k, net in enumerate(alone):
        out = net(x)
        torch.testing.assert_close(logits[:, k], out, rtol=1e-5, atol=1e-5)
        out.square().sum().backward()
        for (name, p), q in zip(net.named_parameters(), together[k].parameters(), strict=True):
            # To 1e-5 of the gradient's scale: float32 sums over the batch in another order differ
            # by that much in an element far smaller than the largest.
            scale = float(p.grad.abs().max())
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-5 * max(1.0, scale), msg=name)


# te_nas is scored one candidate at a time (its networks are the space's tiny supernets).
@pytest.mark.parametrize("proxy", NETWORK_PROXIES)
def test_candidates_scored_together_score_as_each_does_alone(tmp_path: Path, proxy: str) -> None:
    single = evaluator(tmp_path, proxy=proxy)
    stacked = evaluator(tmp_path, proxy=proxy, stack=2)  # groups of 2, 2 and 1
    together = stacked.evaluate_many(STACKED, trial_ids=[f"t{i}" for i in range(len(STACKED))])
    assert [r.trial_id for r in together] == [f"t{i}" for i in range(len(STACKED))]
    for arch, result in zip(STACKED, together, strict=True):
        alone = single.evaluate(arch)
        assert result.architecture == arch
        assert result.metrics.keys() == alone.metrics.keys()
        for key in alone.metrics.keys() - {"proxy_seconds"}:
            assert result.metrics[key] == pytest.approx(alone.metrics[key], rel=1e-6), key


def test_a_local_pool_scores_stack_candidates_per_call_in_order(tmp_path: Path) -> None:
    from raynas.execution.pool import LocalPool

    calls: list[int] = []
    pool = LocalPool(parse_job(proxy_job(tmp_path, {"proxy": "naswot", "stack": 3})))
    many = pool.evaluator.evaluate_many
    pool.evaluator.evaluate_many = lambda archs, **kw: calls.append(len(archs)) or many(archs, **kw)
    assert pool.capacity == 3
    order = []
    for batch in (STACKED[:3], STACKED[3:]):
        for i, arch in enumerate(batch):
            pool.submit(arch, f"{len(order) + i}")
        order += [pool.next_result() for _ in batch]
    assert calls == [3, 2] and pool.in_flight == 0
    assert [r.architecture for r in order] == STACKED
    reference = evaluator(tmp_path, proxy="naswot")
    assert [r.score for r in order] == pytest.approx([reference.evaluate(a).score for a in STACKED], rel=1e-6)


@pytest.mark.integration
def test_ray_actors_score_stack_candidates_per_call(tmp_path: Path, ray_head: str) -> None:
    from raynas.runs import run_search

    job = proxy_job(tmp_path, {"proxy": "naswot", "stack": 3},
                    execution={"backend": "ray", "address": ray_head, "concurrency": 2, "cpus_per_worker": 1})
    job["strategy"]["evaluations"] = 6
    result = run_search(parse_job(job), echo=lambda _: None)
    results = search_state(result.checkpoint)["results"]
    assert len(results) == 6 and len({r["trial_id"] for r in results}) == 6
    # A call scores its candidates together: they share its start and end.
    calls = {(r["started"], r["ended"], r["node_id"]) for r in results}
    assert len(calls) == 2
    reference = evaluator(tmp_path, proxy="naswot")
    for r in results:
        alone = reference.evaluate(Nb201Arch.from_json(r["architecture"])).score
        assert r["metrics"]["naswot"] == pytest.approx(alone, rel=1e-6)


# -- config ------------------------------------------------------------------------------------


def test_an_unknown_proxy_is_a_config_error_listing_the_proxies(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"evaluator\.proxy") as error:
        parse_job(proxy_job(tmp_path, {"proxy": "synflow"}))
    assert all(repr(name) in str(error.value) for name in PROXIES)
    with pytest.raises(ConfigError, match=r"evaluator\.proxy.*'naswot', 'ntk', 'linear_regions', 'te_nas'"):
        TrainingFreeConfig(proxy="synflow")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"evaluator\.repeats"):
        parse_job(proxy_job(tmp_path, {"repeats": 0}))


def test_a_batch_larger_than_the_training_half_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"evaluator\.batch_size \(64\).*48 images"):
        evaluator(tmp_path, batch_size=64)  # 96 images, half of them train


# -- end to end --------------------------------------------------------------------------------


def test_random_search_with_naswot_records_every_candidate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Retraining the best (final.top) is run by tests/test_jobs.py on jobs/naswot_quickstart.yaml.
    job = proxy_job(tmp_path, {"proxy": "naswot"})
    assert main(["search", str(write_job(tmp_path, job))]) == 0  # as users run it
    out = capsys.readouterr().out
    checkpoint = load_checkpoint(tmp_path / "runs" / "tiny" / "checkpoint.pt")
    state = search_state(str(tmp_path / "runs" / "tiny" / "checkpoint.pt"))
    assert len(state["results"]) == 5
    assert all(r["objective"] == "naswot" and r["budget"] == 0 for r in state["results"])
    best = max(state["results"], key=lambda r: r["metrics"]["naswot"])
    assert f"naswot {best['metrics']['naswot']:.3f}" in out  # a number, not a percentage
    assert f"naswot score {best['metrics']['naswot']:.4g} (untrained)" in out  # the summary

    client = MlflowClient(job["tracking"]["tracking_uri"])
    run = client.get_run(checkpoint["run_id"])
    assert run.info.status == "FINISHED"
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'"
    )
    assert {c.data.tags["raynas.trial_id"] for c in children} == {r["trial_id"] for r in state["results"]}
    assert all({"naswot", "proxy_seconds", "params"} <= set(c.data.metrics) for c in children)
    rows = ResultsStore(tmp_path / "runs" / "results").read_frame()
    assert len(rows) == 5 and rows["trial_id"].is_unique


def test_the_proxy_batch_is_the_training_half_s_images_unaugmented(tmp_path: Path) -> None:
    """NASWOT's code scores unaugmented images (``--augtype none``): the batch is the first images
    the search's loader draws, without the random crop and flip the search trains with."""
    from raynas.data import DATASETS, search_loaders
    from tests.fixtures import write_cifar10

    root = str(write_cifar10(tmp_path))
    config = DATASETS.entry("cifar10").config
    augmented = DATASETS.create("cifar10", config(path=root, batch_size=8))
    plain = DATASETS.create("cifar10", config(path=root, batch_size=8, augment=False))
    batch = proxy_batch(augmented, seed=3, size=8)
    expected, _ = next(iter(search_loaders(plain, seed=3)[0]))
    assert torch.equal(batch, expected)
    drawn, _ = next(iter(search_loaders(augmented, seed=3)[0]))
    assert not torch.equal(drawn, expected)  # the search's own batch is augmented
