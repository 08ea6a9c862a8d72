"""DARTS variants over the gradient-strategy base: PC-DARTS (partial channels, edge
normalisation), MiLeNAS (mixed-level architecture gradient) and GDAS (sampled ops), each checked against an
independent computation and run as a tiny search."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_job
from torch import nn

from raynas.config import TrainConfig
from raynas.ops import (
    PRIMITIVES,
    AttentionPartialMixedOp,
    PartialChannelMixedOp,
    SampledMixedOp,
    WeightedMixedOp,
    channel_shuffle,
)
from raynas.runs.jobs import parse_job
from raynas.runs.supernet_worker import SupernetWorker
from raynas.strategies.gradient.darts import Darts, DartsConfig
from raynas.strategies.gradient.milenas import Milenas, MilenasConfig
from raynas.supernet import DartsSupernet


def tiny_supernet(**kwargs: object) -> DartsSupernet:
    torch.manual_seed(0)
    return DartsSupernet(
        channels=4, layers=3, nodes=2, stem_multiplier=3, primitives=PRIMITIVES,
        num_classes=3, in_channels=1, **{"mixed_op": "weighted", **kwargs},  # type: ignore[arg-type]
    )


def test_channel_shuffle_interleaves_groups() -> None:
    x = torch.arange(8.0).view(1, 8, 1, 1)
    # groups of 4: [0 1 | 2 3 | 4 5 | 6 7] -> take one from each group in turn
    assert channel_shuffle(x, 4).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]


@pytest.mark.parametrize("stride", [1, 2])
def test_partial_channel_op_sends_a_quarter_of_the_channels_through_the_candidates(stride: int) -> None:
    torch.manual_seed(0)
    op = PartialChannelMixedOp(channels=8, stride=stride, primitives=PRIMITIVES, k=4).eval()
    x = torch.randn(2, 8, 8, 8)
    w = torch.softmax(torch.randn(len(PRIMITIVES)), 0)
    out = op(x, w)
    assert out.shape == (2, 8, 8 // stride, 8 // stride)
    # Reference: the weighted op on the first 2 channels, the other 6 bypassed, then shuffled.
    active = op.mixed(x[:, :2], w)
    passive = x[:, 2:] if stride == 1 else nn.functional.max_pool2d(x[:, 2:], 2, 2)
    torch.testing.assert_close(out, channel_shuffle(torch.cat([active, passive], 1), 4))
    full = WeightedMixedOp(channels=8, stride=stride, primitives=PRIMITIVES)
    assert sum(p.numel() for p in op.parameters()) < sum(p.numel() for p in full.parameters()) / 4 + 1


def test_edge_normalisation_weighs_edges_per_node_and_ranks_the_genotype() -> None:
    model = tiny_supernet(mixed_op="partial", partial_k=2, edge_normalization=True)
    assert len(model.arch_parameters()) == 4
    with torch.no_grad():
        model.beta_normal.copy_(torch.tensor([0.0, 0.0, 3.0, 0.0, -3.0]))
    scale = model.edge_scale(False)
    # node 0 has inputs {0, 1}; node 1 has inputs {0, 1, 2}: softmax within each node
    torch.testing.assert_close(scale[:2], torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(scale[2:], torch.softmax(torch.tensor([3.0, 0.0, -3.0]), 0))
    # Op weights equal on every edge: the edge weights alone decide node 1's inputs (0 and 1).
    with torch.no_grad():
        model.alpha_normal.zero_()
    assert [index for _, index in model.genotype().normal[2:]] == [0, 1]
    out = model(torch.randn(2, 1, 8, 8))
    out.sum().backward()
    assert model.beta_normal.grad is not None and model.beta_normal.grad.abs().sum() > 0


def test_milenas_arch_gradient_is_lambda_train_plus_valid() -> None:
    """As search_algorithm/architect.py's step_milenas: lambda (lambda_train_regularizer) weighs
    the training gradient (the paper's Eq. 6 weighs the validation one)."""
    model = tiny_supernet().double().train()
    strategy = Milenas(supernet=model, config=MilenasConfig(mixed_level_lambda=0.5),
                       train=TrainConfig(epochs=1))
    gen = torch.Generator().manual_seed(0)
    train = (torch.randn(4, 1, 8, 8, generator=gen, dtype=torch.float64), torch.tensor([0, 1, 2, 0]))
    valid = (torch.randn(4, 1, 8, 8, generator=gen, dtype=torch.float64), torch.tensor([2, 1, 0, 1]))
    g_train = torch.autograd.grad(strategy.loss(train)[0], strategy.arch_params)
    g_valid = torch.autograd.grad(strategy.loss(valid)[0], strategy.arch_params)
    strategy.arch_backward(train, valid)
    for p, gt, gv in zip(strategy.arch_params, g_train, g_valid, strict=True):
        torch.testing.assert_close(p.grad, 0.5 * gt + gv)


@pytest.mark.parametrize(
    ("strategy", "space_settings"),
    [
        ({"name": "pc_darts", "k": 2, "arch_start_epoch": 1}, {"mixed_op": "partial", "partial_k": 2}),
        ({"name": "milenas"}, {"mixed_op": "weighted"}),
        ({"name": "gdas"}, {"mixed_op": "sampled"}),
        ({"name": "adarts", "k": 2, "arch_start_epoch": 0}, {"mixed_op": "attention", "partial_k": 2}),
    ],
)
def test_variant_runs_a_tiny_search(tmp_path: Path, strategy: dict, space_settings: dict) -> None:
    job = tiny_job(tmp_path)
    job["strategy"] = strategy
    config = parse_job(job)
    search = SupernetWorker(config)
    for key, value in space_settings.items():
        assert getattr(search.space.config, key) == value
    before = [a.detach().clone() for a in search.strategy.arch_params]
    search.run_epoch()
    if strategy.get("arch_start_epoch"):  # warm-up: alpha untouched in the first epoch
        for a, b in zip(search.strategy.arch_params, before, strict=True):
            assert torch.equal(a, b)
    report = search.run_epoch()
    assert any(not torch.equal(a, b) for a, b in zip(search.strategy.arch_params, before, strict=True))
    assert 0 <= report.metrics["skip_connects"] <= 4
    assert report.architecture.nodes == 2


def test_sampled_op_computes_only_the_chosen_candidate() -> None:
    torch.manual_seed(0)
    op = SampledMixedOp(channels=4, stride=1, primitives=PRIMITIVES).train()
    x = torch.randn(2, 4, 8, 8)
    probs = torch.softmax(torch.randn(len(PRIMITIVES)), 0).requires_grad_()
    hard = torch.zeros_like(probs)
    hard[4] = 1.0
    weights = hard - probs.detach() + probs  # straight-through one-hot, as GDAS builds it
    out = op(x, weights)
    torch.testing.assert_close(out, op.ops[4](x))
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    # d/dw_4 = <grad_out, op_4(x)>; every other weight gets sum(grad_out) (the added zero).
    expected = torch.full_like(probs, float(grad_out.sum()))
    expected[4] = float((grad_out * op.ops[4](x)).sum().detach())
    torch.testing.assert_close(probs.grad, expected)
    # Evaluation runs the discrete network: the strongest op alone, unscaled.
    op.eval()
    soft = torch.softmax(torch.randn(len(PRIMITIVES)), 0)
    torch.testing.assert_close(op(x, soft), op.ops[int(soft.argmax())](x))


def test_gdas_samples_one_op_per_edge_and_anneals_tau(tmp_path: Path) -> None:
    job = tiny_job(tmp_path, train={"epochs": 3})
    job["strategy"] = {"name": "gdas", "tau_max": 10.0, "tau_min": 0.1}
    search = SupernetWorker(parse_job(job))
    model = search.supernet
    assert isinstance(model.cells[0].edges[0], SampledMixedOp)
    assert model.gumbel_tau == 10.0
    model.train()
    sample = model.forward_weights(False)
    assert torch.equal(sample.detach().sum(-1), torch.ones(len(sample)))
    assert set(sample.detach().flatten().tolist()) == {0.0, 1.0}
    model.eval()
    torch.testing.assert_close(model.forward_weights(False), model.edge_weights(False))
    for expected_tau in (5.05, 0.1):
        search.run_epoch()
        assert model.gumbel_tau == pytest.approx(expected_tau)


@pytest.mark.parametrize(("name", "settings"), [
    ("rf_darts", {}), ("rf_darts", {"order": 2}), ("rf_pc_darts", {"k": 2}),
], ids=["rf_darts", "rf_darts-second-order", "rf_pc_darts"])
def test_random_features_train_only_batchnorm_affine(tmp_path: Path, name: str, settings: dict) -> None:
    job = tiny_job(tmp_path)
    job["strategy"] = {"name": name, "arch_start_epoch": 0, **settings}
    search = SupernetWorker(parse_job(job))
    model = search.supernet
    assert search.space.config.bn_affine
    trained = {id(p) for p in search.strategy.weight_params}
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bn and all(m.affine for m in bn)
    assert trained == {id(p) for m in bn for p in (m.weight, m.bias)}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    search.run_epoch()
    arch = {id(p) for p in model.arch_parameters()}
    for n, p in model.named_parameters():
        changed = not torch.equal(p, before[n])
        if id(p) in trained or id(p) in arch:
            continue
        assert not changed, f"{n} is not a BatchNorm affine parameter but changed"
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if id(p) in trained)


def test_attention_op_sends_the_most_attended_channels_through_the_candidates() -> None:
    torch.manual_seed(0)
    op = AttentionPartialMixedOp(channels=8, stride=1, primitives=PRIMITIVES, k=4).eval()
    last = op.attention.mlp[2]
    with torch.no_grad():  # attention independent of the input: channels 5 and 2 score highest
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, -1, 3, -2, 1, 4, -3, 2]))
    x = torch.randn(2, 8, 8, 8)
    w = torch.softmax(torch.randn(len(PRIMITIVES)), 0)
    weighted, chosen, rest = op.select(x)
    assert chosen.tolist() == [2, 5] and rest.tolist() == [0, 1, 3, 4, 6, 7]
    scores = torch.sigmoid(last.bias)
    torch.testing.assert_close(weighted, x * scores[None, :, None, None])
    # Every channel goes back where it came from (issue 15: edges summed into a node add aligned
    # channels); the old expectation concatenated the chosen channels first.
    expected = weighted.clone()
    expected[:, [2, 5]] = op.mixed(weighted[:, [2, 5]], w)
    torch.testing.assert_close(op(x, w), expected)


@pytest.mark.parametrize("name", ["milenas", "darts"])
def test_milenas_steps_its_weights_unclipped_as_train_milenas_py(name: str) -> None:
    """train_milenas.py clips alpha's gradient after the weights' backward pass, not the weights':
    MiLeNAS's weight step is plain SGD on the raw gradient (DARTS's clips it to grad_clip)."""
    model = tiny_supernet().double().train()
    train = TrainConfig(epochs=1, learning_rate=0.1, weight_decay=3e-4, grad_clip=1e-3)
    strategy = (Milenas(supernet=model, config=MilenasConfig(), train=train) if name == "milenas"
                else Darts(supernet=model, config=DartsConfig(), train=train))
    gen = torch.Generator().manual_seed(0)
    batch = (torch.randn(4, 1, 8, 8, generator=gen, dtype=torch.float64), torch.tensor([0, 1, 2, 0]))
    params = list(strategy.weight_params)
    before = [p.detach().clone() for p in params]
    grads = torch.autograd.grad(strategy.loss(batch)[0], params)
    norm = torch.cat([g.flatten() for g in grads]).norm()
    assert norm > 10 * train.grad_clip  # clipping would shrink this step
    scale = 1.0 if name == "milenas" else float(train.grad_clip / (norm + 1e-6))
    strategy.weight_step(batch)
    for p, p0, g in zip(params, before, grads, strict=True):  # SGD's first step: momentum buffer = d_p
        torch.testing.assert_close(p.detach(), p0 - 0.1 * (scale * g + 3e-4 * p0))


@pytest.mark.parametrize(("name", "order"), [("gdas", ["weights", "alpha"]), ("darts", ["alpha", "weights"])])
def test_gdas_steps_the_weights_before_alpha_as_gdas_py(name: str, order: list[str], tmp_path: Path) -> None:
    """exps/algos/GDAS.py's search_func_gdas moves the weights first, then alpha; DARTS's
    train_search.py alpha first (architect.step before the weights' optimizer.step)."""
    job = tiny_job(tmp_path)
    job["strategy"] = {"name": name}
    search = SupernetWorker(parse_job(job))
    strategy = search.strategy
    steps: list[str] = []
    weight_step, a_step = strategy.weight_step, strategy.a_optimizer.step
    strategy.weight_step = lambda batch: steps.append("weights") or weight_step(batch)  # type: ignore[method-assign]
    strategy.a_optimizer.step = lambda *a, **k: steps.append("alpha") or a_step(*a, **k)  # type: ignore[method-assign]
    gen = torch.Generator().manual_seed(0)
    batch = (torch.randn(4, 1, 8, 8, generator=gen), torch.tensor([0, 1, 2, 0]))
    strategy.step(batch, batch)
    assert steps == order


@pytest.mark.parametrize("nesterov", [True, False])
def test_the_weights_take_nesterov_momentum_when_train_nesterov_says_so(nesterov: bool) -> None:
    """SGD with Nesterov momentum (GDAS's search config, `nesterov: 1`), checked against its update
    rule written out: with buffer b = g + wd p, the step is lr (g + wd p + mu b) under Nesterov and
    lr b without; on the first step b is the gradient itself."""
    model = tiny_supernet().double().train()
    train = TrainConfig(epochs=1, learning_rate=0.1, momentum=0.9, weight_decay=5e-4, grad_clip=1e9,
                        nesterov=nesterov)
    strategy = Darts(supernet=model, config=DartsConfig(), train=train)
    gen = torch.Generator().manual_seed(0)
    batch = (torch.randn(4, 1, 8, 8, generator=gen, dtype=torch.float64), torch.tensor([0, 1, 2, 0]))
    params = list(strategy.weight_params)
    before = [p.detach().clone() for p in params]
    grads = torch.autograd.grad(strategy.loss(batch)[0], params)
    strategy.weight_step(batch)
    factor = 1.9 if nesterov else 1.0
    for p, p0, g in zip(params, before, grads, strict=True):
        torch.testing.assert_close(p.detach(), p0 - 0.1 * factor * (g + 5e-4 * p0))


def test_the_gdas_cifar10_job_takes_the_authors_search_settings() -> None:
    """jobs/gdas_cifar10.yaml against D-X-Y/AutoDL-Projects: configs/search-opts/GDAS-NASNet-CIFAR.config
    (cos, LR 0.025, eta_min 0.001, 250 epochs, warm-up 0, SGD, decay 5e-4, momentum 0.9, nesterov 1,
    batch 256), scripts-search/NASNet-space-search-by-GDAS.sh (tau 10 -> 0.1, arch lr 3e-4, arch
    decay 1e-3) and exps/NAS-Bench-201-algos/GDAS.py (Adam betas (0.5, 0.999), clip 5)."""
    from raynas.runs import load_job

    config = load_job(Path(__file__).parents[1] / "jobs" / "gdas_cifar10.yaml")
    train, strategy = config.train, config.strategy.config
    assert (train.epochs, train.learning_rate, train.learning_rate_min) == (250, 0.025, 0.001)
    assert (train.momentum, train.nesterov, train.weight_decay, train.grad_clip) == (0.9, True, 5e-4, 5.0)
    assert config.data.config.batch_size == 256 and config.data.config.train_portion == 0.5
    assert config.strategy.name == "gdas" and (strategy.tau_max, strategy.tau_min) == (10.0, 0.1)
    assert (strategy.arch_learning_rate, strategy.arch_weight_decay) == (3e-4, 1e-3)
    assert tuple(strategy.arch_betas) == (0.5, 0.999)
