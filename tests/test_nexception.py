"""The NEXcepTion macro space (Shavit et al., 2022): Xception and NEXcepTion-T/-S/-TP with the
official codes' parameter counts, the compact form, the supernet's single paths against the
stand-alone networks they stand for, and a sampling strategy searching the space through the
registries."""

from __future__ import annotations

import json
import random

import pytest
import torch

from raynas.errors import ArchitectureError, ConfigError
from raynas.profile import count_params
from raynas.spaces import SPACES
from raynas.spaces.nexception import NexceptionArch, NexceptionSpaceConfig
from raynas.strategies import STRATEGIES
from raynas.strategies.sampling.evolution import EvolutionConfig
from raynas.supernet import build_supernet
from raynas.types import DatasetInfo, EvalResult

IMAGENET = DatasetInfo("imagenet", 3, 1000, 224)
SMALL = NexceptionSpaceConfig(
    depth_choices=(1, 2),
    kernel_choices=(3, 5),
    widths=(4, 8, 8, 16, 16, 16, 24),
    stem_stride=1,
    reductions=2,
)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        # timm 1.0.31, timm.create_model("legacy_xception") (Chollet's Xception): 22,855,952.
        ("xception", 22_855_952),
        # The official code, github.com/hadarshavit/NEXcepTion: nexception_t.py (commit dff98a63) and
        # nexception_s.py (ce92d3d5) built with timm 1.0.31's layers for 1000 classes (the paper's
        # table could not be read here to compare).
        ("nexception_t", 24_544_976),
        ("nexception_s", 43_386_944),
        # nexception_tp.py (899822b2) at its defaults (stages of 3, 4, 9, 3 blocks, 96-768 wide). As
        # stored it does not build (its stage is passed ls_init_value, conv_mlp and cl_norm_layer, which
        # it does not take); the count is of that file with those three arguments left out.
        ("nexception_tp", 26_559_112),
    ],
)
def test_published_networks_have_the_official_parameter_counts(name: str, params: int) -> None:
    space = SPACES.create("nexception")
    with torch.device("meta"):  # shapes only
        net = space.build(space.parse(name), IMAGENET)
    assert count_params(net) == params


def test_the_default_space_holds_xception_and_a_matching_config_holds_nexception_t() -> None:
    space = SPACES.create("nexception")
    assert space.contains(space.parse("Xception"))
    t = space.parse("NEXcepTion-T")
    assert not space.contains(t)  # a 512-wide middle flow, a 96-channel stem
    wide = SPACES.create("nexception", NexceptionSpaceConfig(widths=t.widths))
    assert wide.contains(t) and wide.decode(wide.encode(t)) == t
    assert not wide.contains(space.parse("nexception_tp"))  # the stages layout is not searched


def test_names_and_the_compact_form() -> None:
    space = SPACES.create("nexception")
    xception = space.parse("legacy_xception")
    assert (
        str(xception)
        == "xception/xception/64-128-256-728-1024-1536-2048/8/k3/relu/bn/every/max/none/xception"
    )
    assert space.parse(str(xception)) == xception == space.parse("xception")
    t = space.parse("nexception_t")
    assert str(t) == "xception/patch2/96-128-256-512-1024-1536-2048/8/k5/gelu/bn/fewer/maxblur/se/bottleneck"
    with pytest.raises(ArchitectureError, match=r"published nexception model"):
        space.parse("nexception_xl")
    with pytest.raises(ArchitectureError, match=r"pool: unknown 'avg'"):
        space.parse("xception/xception/64-128-256-728-1024-1536-2048/8/k3/relu/bn/every/avg/none/xception")
    with pytest.raises(ArchitectureError, match=r"the xception layout has 7 widths"):
        NexceptionArch("xception", "xception", (64, 128), (8,))


def test_config_errors_say_what_is_allowed() -> None:
    with pytest.raises(ConfigError, match=r"space.pool_choices must list some of max, blur, maxblur"):
        NexceptionSpaceConfig(pool_choices=("avg",))
    with pytest.raises(ConfigError, match=r"space.widths must be 7 positive integers"):
        NexceptionSpaceConfig(widths=(64, 128))
    with pytest.raises(ConfigError, match=r"space.kernel_choices must be odd"):
        NexceptionSpaceConfig(kernel_choices=(3, 4))


def test_blur_pool_is_the_binomial_filter() -> None:
    """Blur pooling of a constant map is the constant; of an impulse, the filter's centre value."""
    from raynas.ops.nexception import BlurPool2d

    pool = BlurPool2d(2)
    assert torch.allclose(pool(torch.full((1, 2, 6, 6), 3.0)), torch.full((1, 2, 3, 3), 3.0))
    impulse = torch.zeros(1, 2, 5, 5)
    impulse[..., 2, 2] = 16.0
    out = pool(impulse)  # the output pixel (1, 1) sits on the input's (2, 2)
    assert out[0, 0, 1, 1] == 4.0 and out[0, 0, 0, 1] == 0.0 and out[0, 0, 1, 0] == 0.0


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("train", [False, True])
def test_a_supernet_path_computes_its_stand_alone_network(seed: int, train: bool) -> None:
    """With one-hot weights the supernet is exactly the network it extracts (its weights copied),
    in evaluation and in training mode."""
    torch.manual_seed(seed)
    space = SPACES.create("nexception", SMALL)
    data = DatasetInfo("x", 3, 5, 16)
    supernet = build_supernet(space, data)
    for p in supernet.weights():  # random norms and scales, so every copied tensor matters
        p.data.normal_(0, 0.5)
    arch = space.sample(random.Random(seed))
    supernet.set_path(arch)
    net = supernet.extract(arch)
    supernet.train(train)
    net.train(train)
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(supernet(x), net(x), atol=1e-5, rtol=1e-4)
    assert count_params(net) == count_params(space.build(arch, data))


def test_the_supernet_mixes_every_choice_and_derives_the_strongest() -> None:
    space = SPACES.create("nexception", SMALL)
    supernet = build_supernet(space, DatasetInfo("x", 3, 5, 16))
    supernet(torch.randn(2, 3, 16, 16)).sum().backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in supernet.arch_parameters())
    target = space.sample(random.Random(7))
    with torch.no_grad():
        for alpha, value in zip(supernet.arch_parameters(), space.encode(target), strict=True):
            alpha.zero_()
            alpha[value] = 1.0
    assert supernet.genotype() == target


def test_evolution_searches_the_space_through_the_registries() -> None:
    """Regularized evolution over the space's decisions finds a known optimum of an analytic score
    (NEXcepTion's design decisions)."""
    space = SPACES.create("nexception", SMALL)
    best = NexceptionArch(
        "xception", "patch2", SMALL.widths, (2,), 5, "gelu", "bn", "fewer", "maxblur", "se", "bottleneck"
    )
    target = space.encode(best)
    strategy = STRATEGIES.create(
        "evolution", EvolutionConfig(population_size=20, sample_size=5, evaluations=400), space=space, seed=0
    )
    while not strategy.done:
        arch = strategy.ask()
        score = sum(a == b for a, b in zip(space.encode(arch), target, strict=True))
        strategy.tell(EvalResult(arch, {"valid_acc": float(score)}))
    found = strategy.best()
    assert found is not None and found.architecture == best


def test_describe_prints_nexception_t_s_official_parameter_count(capsys: pytest.CaptureFixture[str]) -> None:
    from raynas.cli import main

    args = ["describe", "--space", "nexception", "--arch", "nexception_t", "--dataset", "imagenet", "--json"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["params"] == 24_544_976  # the official nexception_t.py


def test_stochastic_depth_drops_each_block_s_branch_per_sample_at_one_rate() -> None:
    """The official networks' ``drop_path`` (nexception_t.py: ``x = self.drop_path(x) + skip`` in
    every Block and BottleneckBlock, one rate for all): each sample of a block's output in training
    is its shortcut plus its branch scaled by 1 / keep, or its shortcut alone; none in evaluation."""
    from raynas.ops.nexception import BottleneckBlock, XceptionBlock, XceptionMiddleBlock

    space = SPACES.create("nexception")
    net = space.build(space.parse("nexception_t"), DatasetInfo("cifar10", 3, 10, 32), channels=16,
                      drop_path_prob=0.3)
    kinds = (XceptionBlock, XceptionMiddleBlock, BottleneckBlock)
    blocks = [m for m in net.modules() if isinstance(m, kinds)]
    assert len(blocks) == 12 and {b.drop_path_prob for b in blocks} == {0.3}  # 3 + 8 middle + 1 exit
    block = next(b for b in blocks if isinstance(b, XceptionBlock))
    torch.manual_seed(0)
    x = torch.randn(64, _in_channels(block), 8, 8)
    block.drop_path_prob = 0.5
    block.train()
    out = block(x)
    with torch.no_grad():  # the same batch statistics: BatchNorm in training mode sees the same x
        branch, skip = block.end(block.rep(x)), block.skip(x)
    kept = [torch.allclose(out[i], skip[i] + branch[i] / 0.5, atol=1e-5) for i in range(64)]
    dropped = [torch.allclose(out[i], skip[i], atol=1e-6) for i in range(64)]
    assert all(k != d for k, d in zip(kept, dropped, strict=True))  # each sample one or the other
    assert 16 < sum(kept) < 48  # about half of 64 (binomial: outside this once in 10^4)
    block.eval()
    torch.testing.assert_close(block(x), block.end(block.rep(x)) + block.skip(x))


def test_nexception_tp_s_blocks_drop_paths_rise_linearly_from_0_to_the_rate_as_in_nexception_tp_py() -> None:
    """NEXcepTion-TP (the ``stages`` layout) builds its blocks' stochastic depth as
    nexception_tp.py does: ``dp_rates = [x.tolist() for x in torch.linspace(0, drop_path_rate,
    sum(depths)).split(depths)]``, block j of stage i at ``dp_rates[i][j]``; written out here as
    rate * k / (blocks - 1) for the k-th block of all 3 + 4 + 9 + 3. A block's branch is dropped
    per sample in training (its output then its input alone); none in evaluation."""
    from raynas.ops.nexception import BottleneckBlock

    space = SPACES.create("nexception")
    net = space.build(space.parse("nexception_tp"), DatasetInfo("cifar10", 3, 10, 32), channels=8,
                      drop_path_prob=0.18)
    stages = [[m for m in stage.modules() if isinstance(m, BottleneckBlock)] for stage in net.stages]
    assert [len(blocks) for blocks in stages] == [3, 4, 9, 3]
    rates = [b.drop_path_prob for blocks in stages for b in blocks]
    assert rates == pytest.approx([0.18 * k / 18 for k in range(19)], abs=1e-7)
    assert rates[0] == 0.0 and stages[3][-1].drop_path_prob == pytest.approx(0.18)
    block = stages[3][-1]
    block.drop_path_prob = 0.5
    block.train()
    torch.manual_seed(0)
    x = torch.randn(64, _in_channels(block), 2, 2)
    out = block(x)
    dropped = [torch.equal(out[i], x[i]) for i in range(64)]
    assert 16 < sum(dropped) < 48  # about half of 64 (binomial: outside this once in 10^4)
    block.eval()
    torch.testing.assert_close(block(x), x + block.end(block.rep(x)))
    plain = space.build(space.parse("nexception_tp"), DatasetInfo("cifar10", 3, 10, 32), channels=8)
    assert {m.drop_path_prob for m in plain.modules() if isinstance(m, BottleneckBlock)} == {0.0}


def _in_channels(block: torch.nn.Module) -> int:
    return next(m for m in block.modules() if isinstance(m, torch.nn.Conv2d)).in_channels
