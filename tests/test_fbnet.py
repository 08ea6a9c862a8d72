"""The FBNet space, its supernet and the latency-aware DNAS strategy."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from raynas.config import TrainConfig
from raynas.data import dataset_info
from raynas.errors import ArchitectureError, ConfigError
from raynas.latency import LatencyTable, TimingOptions, build_table
from raynas.ops.fbnet import BLOCK_SPECS, FBNET_BLOCKS, InvertedResidual, Skip, make_block
from raynas.profile import count_macs
from raynas.runs.jobs import parse_job
from raynas.runs.supernet_worker import SupernetWorker
from raynas.spaces import SPACES
from raynas.spaces.fbnet import PUBLISHED, FbnetArch, FbnetSpace, FbnetSpaceConfig, block_key, layer_specs
from raynas.strategies.gradient.fbnet import Fbnet, FbnetConfig
from raynas.supernet import build_supernet
from raynas.supernet.fbnet import FbnetMixedLayer, FbnetSupernet
from raynas.types import Architecture, ChoiceSpace, DatasetInfo

# A layout small enough for unit tests: 8x8 digits, 6 searchable layers, both kinds of stride.
SMALL = {
    "stem_channels": 8, "stem_stride": 1, "stage_channels": (8, 16, 16, 24), "stage_depths": (1, 2, 2, 1),
    "stage_strides": (1, 2, 1, 2), "head_channels": 32,
}
DIGITS = DatasetInfo(name="digits", in_channels=1, num_classes=10, image_size=8)


def small_space(**overrides: object) -> FbnetSpace:
    return FbnetSpace(FbnetSpaceConfig(**{**SMALL, **overrides}))  # type: ignore[arg-type]


# --- the space -------------------------------------------------------------------------------


def test_candidate_blocks_are_fbnets_nine() -> None:
    # ../shared/reference/papers.json "fbnet.candidate_blocks": [kernel, expansion, group]
    published = {
        "k3_e1": (3, 1, 1), "k3_e1_g2": (3, 1, 2), "k3_e3": (3, 3, 1), "k3_e6": (3, 6, 1),
        "k5_e1": (5, 1, 1), "k5_e1_g2": (5, 1, 2), "k5_e3": (5, 3, 1), "k5_e6": (5, 6, 1),
    }
    assert set(FBNET_BLOCKS) == {*published, "skip"} and len(FBNET_BLOCKS) == 9
    for name, (k, e, g) in published.items():
        spec = BLOCK_SPECS[name]
        assert (spec.kernel, spec.expansion, spec.groups) == (k, e, g)


def test_the_papers_macro_layout_has_22_searchable_layers() -> None:
    # papers.json "fbnet.macro": TBS stages (c, n, s) after a stride-2 stem of 16 channels.
    specs = layer_specs(FbnetSpaceConfig(), 224)
    assert len(specs) == 22
    stages = [(16, 1, 1), (24, 4, 2), (32, 4, 2), (64, 4, 2), (112, 4, 1), (184, 4, 2), (352, 1, 1)]
    expected, c_in, size = [], 16, 112
    for c, n, s in stages:
        for i in range(n):
            stride = s if i == 0 else 1
            expected.append((c_in, c, stride, size))
            c_in, size = c, size // stride
    assert [(x.c_in, x.c_out, x.stride, x.size) for x in specs] == expected
    assert size == 7  # the head sees 7x7, as the macro table's "7^2x352"


@pytest.mark.parametrize(("name", "params_m", "flops_m"), [
    ("fbnet_a", 4.27029, 244.52636),
    ("fbnet_b", 4.76667, 291.10164),
    ("fbnet_c", 5.52542, 378.23344),
])
def test_published_models_have_the_model_zoos_params_and_flops(
    name: str, params_m: float, flops_m: float
) -> None:
    """Source: mobile-vision's model zoo (papers.json "fbnet.reported_model_zoo_json_v2_20200103"),
    for the models of ``fbnet_modeldef_cls_fbnet.py``. The zoo counts the weights of the
    convolutions and the classifier (no biases, no BatchNorm), and FLOPs as their multiply-adds
    plus the global pooling's additions (one per input element, 7 x 7 x head channels). It rounds
    to 1e-5 M, i.e. 10 units: we must be within 5 of it."""
    model = SPACES.create("fbnet").build(PUBLISHED[name], dataset_info("imagenet"))
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    macs, _ = count_macs(model, (3, 224, 224))
    pooling = 7 * 7 * model.classifier.in_features
    assert abs(weights - params_m * 1e6) <= 5
    assert abs(macs + pooling - flops_m * 1e6) <= 5


def test_published_models_by_name_and_head() -> None:
    space = SPACES.create("fbnet")
    assert space.parse("FBNet-A") == PUBLISHED["fbnet_a"] and space.parse("fbnet_c") == PUBLISHED["fbnet_c"]
    # papers.json macro note: a 1504-channel last conv, 1984 for FBNet-B/C in mobile-vision's defs.
    assert [PUBLISHED[n].head_channels for n in ("fbnet_a", "fbnet_b", "fbnet_c")] == [1504, 1984, 1984]
    for arch in PUBLISHED.values():
        assert space.contains(arch) and len(arch.blocks) == 22


def test_blocks_follow_the_irf_block() -> None:
    x = torch.randn(2, 16, 8, 8)
    k5_e6 = make_block("k5_e6", c_in=16, c_out=16, stride=1)
    assert isinstance(k5_e6, InvertedResidual) and k5_e6.residual
    assert k5_e6.depthwise[0].kernel_size == (5, 5) and k5_e6.depthwise[0].groups == 96
    assert make_block("k3_e3", c_in=16, c_out=24, stride=2)(x).shape == (2, 24, 4, 4)
    assert not make_block("k3_e3", c_in=16, c_out=16, stride=2).residual
    e1 = make_block("k3_e1", c_in=16, c_out=16, stride=1)
    assert isinstance(e1.expand, nn.Identity)  # as mobile-vision: no 1x1 expansion when e = 1
    g2 = make_block("k5_e1_g2", c_in=16, c_out=16, stride=1)
    assert g2.project[0].groups == 2 and not isinstance(g2.shuffle, nn.Identity)
    skip = make_block("skip", c_in=16, c_out=16, stride=1)
    assert isinstance(skip, Skip) and torch.equal(skip(x), x)
    assert make_block("skip", c_in=16, c_out=24, stride=2)(x).shape == (2, 24, 4, 4)


def test_arch_round_trips_and_parses_every_form(tmp_path: Path) -> None:
    space = small_space()
    arch = space.sample(random.Random(1))
    assert space.parse(str(arch)) == arch
    assert Architecture.from_json(arch.to_json()) == arch
    path = tmp_path / "arch.json"
    path.write_text(arch.to_json())
    assert space.parse(str(path)) == arch
    assert space.parse(json.dumps({"blocks": list(arch.blocks)})) == arch
    assert FbnetArch(arch.blocks, 64).key() != arch.key()


def test_flat_choice_view_round_trips() -> None:
    space = small_space()
    assert isinstance(space, ChoiceSpace)
    decisions = space.decisions()
    assert len(decisions) == 6 and all(d.options[0] == "skip" and len(d.options) == 9 for d in decisions)
    arch = space.sample(random.Random(2))
    assert space.decode(space.encode(arch)) == arch
    with pytest.raises(ArchitectureError, match="option 9 out of range"):
        space.decode([0, 0, 0, 0, 0, 9])


@pytest.mark.parametrize(("text", "message"), [
    ("k3_e1,k3_e6,k7_e6,skip,skip,skip", "fbnet layer 2: unknown block 'k7_e6'; choose one of: k3_e1, "),
    ("k3_e1,k3_e6,skip", "has 6 layers (stages of 1, 2, 2, 1 layers), got 3"),
    ("fbnet_z", "'fbnet_z' is no published fbnet model (fbnet_a, fbnet_b, fbnet_c)"),
    ('{"blocks": ["skip"], "width": 3}', "an fbnet architecture is {\"blocks\""),
    ('{"space": "nb201", "arch": "x"}', "is an architecture of space 'nb201', not fbnet"),
    ("missing.json", "architecture file 'missing.json' does not exist"),
    ("k3_e1,,skip", "comma-separated block names"),
])
def test_bad_architectures_say_what_is_wrong_and_allowed(text: str, message: str) -> None:
    with pytest.raises(ArchitectureError, match=None) as info:
        small_space().parse(text)
    assert message in str(info.value)


def test_paper_layout_rejects_a_short_architecture_in_build() -> None:
    with pytest.raises(ArchitectureError, match="has 22 layers"):
        SPACES.create("fbnet").build(small_space().sample(random.Random(0)), dataset_info("imagenet"))


@pytest.mark.parametrize(("override", "message"), [
    ({"stage_depths": (1, 2)}, "need one entry per stage"),
    ({"stage_channels": (8, 15, 16, 24)}, "space.stage_channels[1] must be an even number"),
    ({"stage_strides": (1, 3, 1, 2)}, "must be 1 or 2"),
])
def test_bad_layouts_are_config_errors(override: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        small_space(**override)
    assert message in str(info.value)


def test_small_network_trains_forward_and_backward() -> None:
    space = small_space()
    model = space.build(space.sample(random.Random(0)), DIGITS)
    out = model(torch.randn(4, 1, 8, 8))
    assert out.shape == (4, 10)
    out.sum().backward()


# --- the supernet ----------------------------------------------------------------------------


def test_mixed_layer_with_one_hot_weights_is_that_block() -> None:
    torch.manual_seed(0)
    layer = FbnetMixedLayer(c_in=8, c_out=16, stride=2, sampled=False, affine=True).eval()
    x = torch.randn(2, 8, 8, 8)
    for i in range(len(FBNET_BLOCKS)):
        weights = F.one_hot(torch.tensor(i), len(FBNET_BLOCKS)).float()
        torch.testing.assert_close(layer(x, weights), layer.candidates[i](x))


def test_supernet_soft_gumbel_weights_and_genotype() -> None:
    torch.manual_seed(0)
    net = build_supernet(small_space(), DIGITS)
    assert isinstance(net, FbnetSupernet) and net.theta.shape == (6, 9)
    net.train()
    assert torch.equal(net.forward_weights(), F.softmax(net.theta, -1))  # no tau: the softmax
    net.gumbel_tau = 5.0
    w = net.forward_weights()
    torch.testing.assert_close(w.sum(-1), torch.ones(6))
    assert (w.max(-1).values < 1).all() and (w.min(-1).values > 0).all()  # soft, as FBNet
    with torch.no_grad():
        net.theta.zero_()
        net.theta[torch.arange(6), torch.tensor([8, 0, 3, 7, 5, 1])] = 1.0
    assert net.genotype() == FbnetArch(("skip", "k3_e1", "k3_e6", "k5_e6", "k5_e1_g2", "k3_e1_g2"))
    loss = F.cross_entropy(net(torch.randn(4, 1, 8, 8)), torch.arange(4))
    loss.backward()
    assert net.theta.grad is not None and net.theta.grad.abs().sum() > 0
    assert {id(p) for p in net.weights()}.isdisjoint({id(net.theta)})
    assert 0 < net.arch_entropy() <= net.max_entropy() + 1e-6


def test_a_set_path_computes_that_network() -> None:
    torch.manual_seed(0)
    net = build_supernet(small_space(), DIGITS).eval()
    arch = small_space().sample(random.Random(4))
    x = torch.randn(2, 1, 8, 8)
    net.set_path(arch)
    out = net(x)
    torch.testing.assert_close(out, net(x, net.forward_weights()))  # one-hot mixture, all blocks run
    net.set_path(None)
    assert not torch.allclose(net(x), out)


def test_sampled_supernet_draws_one_hot_blocks() -> None:
    torch.manual_seed(0)
    net = build_supernet(small_space(mixed_op="sampled"), DIGITS).train()
    net.gumbel_tau = 1.0
    w = net.forward_weights()
    assert set(w.detach().flatten().tolist()) == {0.0, 1.0}
    net(torch.randn(2, 1, 8, 8)).sum().backward()
    assert net.theta.grad is not None


# --- the latency-aware strategy --------------------------------------------------------------


def _table(space: FbnetSpace, tmp_path: Path, name: str = "dev", **scale: float) -> Path:
    """A table for ``space`` on DIGITS: every block k ms, times ``scale[block]``."""
    entries = {}
    for spec in layer_specs(space.config, DIGITS.image_size):
        for i, block in enumerate(FBNET_BLOCKS):
            entries[block_key(block, spec)] = (1.0 + i) * scale.get(block, 1.0)
    return LatencyTable(device=name, description="made up", entries=entries).save(tmp_path / f"{name}.json")


def test_loss_is_ce_times_alpha_times_log_lat_to_the_beta(tmp_path: Path) -> None:
    space = small_space()
    path = _table(space, tmp_path)
    torch.manual_seed(0)
    net = build_supernet(space, DIGITS)
    strategy = Fbnet(
        supernet=net, config=FbnetConfig(latency_table=str(path), alpha=0.3, beta=0.7), train=TrainConfig()
    )
    assert net.gumbel_tau == 5.0
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    net.train()
    torch.manual_seed(1)
    loss, logits = strategy.loss((x, y))

    # Independently: the same Gumbel sample, LAT from the JSON file, the paper's formula.
    torch.manual_seed(1)
    weights = F.gumbel_softmax(net.theta.detach(), tau=5.0, hard=False, dim=-1)  # (6, 9)
    entries = json.loads(path.read_text())["entries"]
    lat = sum(
        float(weights[row, i]) * entries[block_key(b, spec)]
        for row, spec in enumerate(layer_specs(space.config, 8)) for i, b in enumerate(FBNET_BLOCKS)
    )
    ce = F.cross_entropy(net(x, weights), y)
    assert math.isclose(float(loss.detach()), float(ce.detach()) * 0.3 * math.log(lat) ** 0.7, rel_tol=1e-5)
    torch.testing.assert_close(logits, net(x, weights))


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")  # no optimiser step here
def test_temperature_anneals_by_0956_per_epoch(tmp_path: Path) -> None:
    space = small_space()
    net = build_supernet(space, DIGITS)
    strategy = Fbnet(supernet=net, config=FbnetConfig(latency_table=str(_table(space, tmp_path))),
                     train=TrainConfig(epochs=5))
    for epoch in range(4):
        assert math.isclose(net.gumbel_tau, 5.0 * 0.956**epoch)
        strategy.end_epoch()
    state = strategy.state_dict()
    other = Fbnet(supernet=build_supernet(space, DIGITS), config=strategy.config, train=TrainConfig(epochs=5))
    other.load_state_dict(state)
    assert math.isclose(other.model.gumbel_tau, 5.0 * 0.956**4)


def test_latency_table_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"strategy\.latency_table is required"):
        FbnetConfig()
    space = small_space()
    _table(space, tmp_path, "t4")
    config = FbnetConfig(latency_table="a100", latency_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"no latency table for device 'a100'.*tables in .*: t4"):
        Fbnet(supernet=build_supernet(space, DIGITS), config=config, train=TrainConfig())
    # A device name found at parse time becomes an absolute path (workers may run elsewhere).
    resolved = FbnetConfig(latency_table="t4", latency_dir=str(tmp_path))
    assert Path(resolved.latency_table).is_absolute()
    tiny = _table(space, tmp_path, "fast", **{b: 1e-3 for b in FBNET_BLOCKS})
    fast = FbnetConfig(latency_table=str(tiny))
    with pytest.raises(ConfigError, match=r"set strategy\.latency_unit: us"):
        Fbnet(supernet=build_supernet(space, DIGITS), config=fast, train=TrainConfig())
    other = FbnetSpace(FbnetSpaceConfig(**{**SMALL, "stage_channels": (8, 16, 16, 32)}))
    with pytest.raises(ConfigError, match="has no entry 'k3_e1:16x4->32/s2'"):
        Fbnet(supernet=build_supernet(other, DIGITS), config=fast, train=TrainConfig())


def _search(tmp_path: Path, table: Path) -> FbnetArch:
    job = {
        "name": "fbnet-tables", "seed": 0,
        "space": {"name": "fbnet", **{k: list(v) if isinstance(v, tuple) else v for k, v in SMALL.items()}},
        "strategy": {"name": "fbnet", "latency_table": str(table), "latency_unit": "us",
                     "arch_learning_rate": 0.3, "beta": 4.0, "arch_start_epoch": 0},  # no warm-up: 2 epochs
        "data": {"name": "digits", "batch_size": 16, "limit": 128},
        "train": {"epochs": 2, "learning_rate": 0.05},
        "execution": {"backend": "local"},
        "tracking": {"output_dir": str(tmp_path / "runs")},
    }
    search = SupernetWorker(parse_job(job), threads=1)
    while not search.done:
        report = search.run_epoch()
    assert report.metrics["latency_us"] > 0 and "skip_connects" not in report.metrics
    return report.architecture  # type: ignore[return-value]


def test_two_device_tables_lead_to_two_architectures(tmp_path: Path) -> None:
    """A real table of this CPU, where ``skip`` (mostly an identity) is by far the cheapest block,
    and the same table for a device where ``skip`` is very slow: the first search settles on
    skips, the second keeps away from them. ``beta`` = 4 lets the latency term lead within the
    few steps of a test (with the paper's 0.6 it takes many epochs)."""
    space = small_space()
    real = build_table(space, DIGITS, device_name="cpu", options=TimingOptions(warmup=2, repeats=5))
    slow_skip = {k: v * (1000 if k.startswith("skip") else 1) for k, v in real.entries.items()}
    a = real.save(tmp_path / "cpu.json")
    b = LatencyTable(device="slow-skip", description="", entries=slow_skip).save(tmp_path / "slow-skip.json")
    arch_a, arch_b = _search(tmp_path / "a", a), _search(tmp_path / "b", b)
    assert arch_a.blocks.count("skip") >= 4, arch_a
    assert "skip" not in arch_b.blocks, arch_b


def test_gdas_runs_on_the_fbnet_space(tmp_path: Path) -> None:
    job = {
        "name": "fbnet-gdas", "seed": 0,
        "space": {"name": "fbnet", **{k: list(v) if isinstance(v, tuple) else v for k, v in SMALL.items()}},
        "strategy": {"name": "gdas"},
        "data": {"name": "digits", "batch_size": 16, "limit": 64},
        "train": {"epochs": 1},
        "execution": {"backend": "local"},
        "tracking": {"output_dir": str(tmp_path)},
    }
    search = SupernetWorker(parse_job(job), threads=1)
    assert search.supernet.config.mixed_op == "sampled"
    report = search.run_epoch()
    assert small_space().contains(report.architecture)


def test_a_strided_skip_is_the_strided_1x1_convolution() -> None:
    """FBNet's ``skip`` where the layer halves the resolution: conv 1x1 stride 2 + BN + ReLU,
    computed on every other row and column (same numbers, channels-last included)."""
    from raynas.ops.fbnet import Skip

    torch.manual_seed(0)
    skip = Skip(c_in=4, c_out=8, stride=2).double().to(memory_format=torch.channels_last)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64).to(memory_format=torch.channels_last)
    conv, norm = skip.conv[0], skip.conv[1]
    weight = torch.empty(conv.weight.shape, dtype=torch.float64).copy_(conv.weight.detach())
    ref = torch.relu(torch.nn.functional.batch_norm(
        torch.nn.functional.conv2d(x.contiguous(), weight, stride=2), None, None,
        norm.weight.detach(), norm.bias.detach(), training=True,
    ))
    out = skip(x)
    assert out.shape == (2, 8, 4, 4)
    torch.testing.assert_close(out.detach(), ref, rtol=1e-10, atol=1e-10)
    out.square().sum().backward()  # the backward that aborts with a strided channels-last 1x1


# --- the end of the paper's search: architectures drawn from P_theta, trained from scratch ------


def test_answers_are_distinct_draws_from_p_theta_in_proportion_to_it() -> None:
    # Layer l's block i is drawn with probability softmax(theta_l)_i; the draws of a seed repeat.
    # Among 9^12 architectures 1,000 distinct draws are almost independent ones: each block's
    # share of a layer is within 4.5 standard deviations (0.06) of its probability.
    theta = torch.zeros(12, len(FBNET_BLOCKS))
    theta[0, 2], theta[1, 5] = 1.0, 2.0  # the other layers uniform
    state = {"theta": theta.tolist()}
    drawn = Fbnet.draw_answers(state, 1000, seed=3)
    assert len({a.key() for a in drawn}) == 1000 and drawn == Fbnet.draw_answers(state, 1000, seed=3)
    for layer in range(3):
        p = torch.softmax(theta[layer], dim=0)
        for i, block in enumerate(FBNET_BLOCKS):
            share = sum(a.blocks[layer] == block for a in drawn) / len(drawn)
            assert abs(share - float(p[i])) < 0.06, (layer, block, share, float(p[i]))
    settled = torch.full((3, len(FBNET_BLOCKS)), -50.0)
    settled[:, 0] = 50.0  # one architecture left: it alone is drawn
    assert [a.blocks for a in Fbnet.draw_answers({"theta": settled.tolist()}, 6, seed=0)] == [
        (FBNET_BLOCKS[0],) * 3
    ]


def _final_job(tmp_path: Path, table: Path) -> dict:
    from conftest import mlflow_store

    return {
        "name": "fbnet-final", "seed": 0,
        "space": {"name": "fbnet", **{k: list(v) if isinstance(v, tuple) else v for k, v in SMALL.items()}},
        "strategy": {"name": "fbnet", "latency_table": str(table), "latency_unit": "us",
                     "arch_start_epoch": 0},
        "data": {"name": "digits", "batch_size": 16, "limit": 96},
        "train": {"epochs": 1, "learning_rate": 0.05},
        "final": {"top": 2, "epochs": 1, "learning_rate": 0.05},
        "execution": {"backend": "local"},
        "tracking": {"experiment": "fbnet-final", "tracking_uri": mlflow_store(tmp_path),
                     "output_dir": str(tmp_path / "runs")},
    }


def test_final_retrains_architectures_drawn_from_p_theta_and_answers_the_best_after_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    from raynas.evaluators.scratch import ScratchEvaluator
    from raynas.runs import run_search
    from raynas.train.checkpoint import load_checkpoint

    config = parse_job(_final_job(tmp_path, _table(small_space(), tmp_path)))
    evaluate, calls = ScratchEvaluator.evaluate, []

    def crash_on_the_second(self: ScratchEvaluator, arch: Architecture, **kw: object) -> object:
        calls.append(kw["trial_id"])
        if len(calls) == 2:
            raise KeyboardInterrupt  # the driver dies during the second retraining
        return evaluate(self, arch, **kw)

    monkeypatch.setattr(ScratchEvaluator, "evaluate", crash_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        run_search(config, echo=lambda _: None)
    lines: list[str] = []
    result = run_search(config, echo=lines.append)  # resumes: the first is not retrained again
    assert calls == ["retrain-draw-1", "retrain-draw-2", "retrain-draw-2"]
    assert lines[0].startswith("Resuming 'fbnet-final' after epoch 1")
    state = load_checkpoint(result.checkpoint)
    theta = state["history"][-1]["arch_weights"]
    drawn = Fbnet.draw_answers(theta, 2, seed=0)  # P_theta of the last epoch, the job's seed
    retrained = state["retrained"]
    assert [r["trial_id"] for r in retrained] == ["retrain-draw-1", "retrain-draw-2"]
    assert [r["architecture"] for r in retrained] == [a.to_json() for a in drawn]
    best = max(retrained, key=lambda r: r["metrics"]["valid_acc"])
    assert result.architecture.to_json() == best["architecture"]
    assert result.metrics["valid_acc"] == best["metrics"]["valid_acc"]
    client = MlflowClient(config.tracking.tracking_uri)
    children = client.search_runs(
        [client.get_run(result.run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'",
    )
    trials = sorted(c.data.tags["raynas.trial_id"] for c in children)
    assert [t for t in trials if t.startswith("retrain")] == [r["trial_id"] for r in retrained]
    assert client.get_run(result.run_id).data.metrics["final.valid_acc"] == best["metrics"]["valid_acc"]
