"""ConvNeXt-style operations in DARTS cells (raynas.ops.convnext): shapes, gradients, hand-counted
parameters, LayerNorm semantics, every mixed op, the operation-set config and the networks."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from raynas.errors import ConfigError
from raynas.ops import MIXED_OPS, OPS
from raynas.ops.convnext import CONVNEXT_PRIMITIVES, LayerNorm2d
from raynas.ops.darts import PRIMITIVES
from raynas.profile import count_params
from raynas.runs.jobs import load_job
from raynas.spaces.darts_cnn import DartsCnnSpace, DartsSpaceConfig
from raynas.spaces.darts_genotype import DartsGenotype, load_genotype
from raynas.supernet import build_supernet
from raynas.types import Architecture, DatasetInfo

NEW_OPS = [n for n in OPS.names() if n.startswith(("convnext_", "pib_conv_", "sep_conv_gelu_"))]
TINY = DatasetInfo("cifar10", 3, 10, 16)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_the_new_operations_are_registered() -> None:
    assert set(NEW_OPS) == {
        "convnext_3x3", "convnext_5x5", "convnext_7x7", "pib_conv_3x3", "pib_conv_5x5", "pib_conv_7x7",
        "sep_conv_gelu_3x3", "sep_conv_gelu_5x5",
    }
    assert set(CONVNEXT_PRIMITIVES) <= set(OPS.names())


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", NEW_OPS)
def test_op_keeps_channels_divides_resolution_and_backpropagates(name: str, stride: int) -> None:
    op = OPS.get(name)(8, stride, False)
    x = torch.randn(2, 8, 10, 10, requires_grad=True)  # (B, C, H, W)
    out = op(x)
    assert out.shape == (2, 8, 10 // stride, 10 // stride)
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in op.named_parameters():
        assert p.grad is not None, f"{name}.{pname} got no gradient"


# Weights by hand. ConvNeXt block (C channels, K kernel, F = 4): depthwise K*K*C + C bias;
# LayerNorm 2C; 1x1 C -> 4C: 4C^2 + 4C; 1x1 4C -> C: 4C^2 + C. The weights alone are
# 2*F*C^2 + K^2*C, PIBConv's Table 1 formula. Pseudo-inverted bottleneck (F = 2, no biases, as the
# authors' PseudoInvBn in mahdihosseini/PIBConv cnn/operations.py): depthwise K*K*C; BatchNorm 2C;
# 1x1 C -> 2C: 2C^2; KxK 2C -> C in C groups: C*2*K*K; 1x1 C -> C: C^2.
@pytest.mark.parametrize("c", [8, 36])
@pytest.mark.parametrize("k", [3, 5, 7])
def test_parameter_counts_by_hand(c: int, k: int) -> None:
    convnext = OPS.get(f"convnext_{k}x{k}")(c, 1, True)
    assert count_params(convnext) == (2 * 4 * c * c + k * k * c) + (c + 2 * c + 4 * c + c)
    pib = OPS.get(f"pib_conv_{k}x{k}")(c, 2, True)
    assert count_params(pib) == k * k * c + 2 * c + 2 * c * c + c * 2 * k * k + c * c
    if k < 7:  # sep_conv: twice (depthwise K*K*C, pointwise C^2, LayerNorm 2C)
        assert count_params(OPS.get(f"sep_conv_gelu_{k}x{k}")(c, 1, True)) == 2 * (k * k * c + c * c + 2 * c)
    # Search ops (affine=False) lose only the norms' scales and shifts.
    assert count_params(OPS.get(f"pib_conv_{k}x{k}")(c, 1, False)) == 3 * c * c + 3 * k * k * c


def conv_weights(module: nn.Module) -> int:
    """The weights of a module's convolutions, the count of PIBConv's Table 1 (no biases or norms)."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("f", [2, 4])
def test_the_pseudo_inverted_bottlenecks_weights_follow_the_official_code_not_table_1(f: int) -> None:
    """Built at the evaluation width (C = 36, K = 7): the ConvNeXt block's weights are Table 1's
    2FC^2 + K^2C (F = 4). The pseudo-inverted bottleneck's are (F + 1)C^2 + (F + 1)K^2C, the
    authors' PseudoInvBn, whose grouped KxK convolution has F*K^2*C weights where Table 1's
    (F + 1)C^2 + 2K^2C counts K^2*C. Its ratio to the ConvNeXt block is 0.757 at F = 2, not the
    README's "approximately 0.63" (Table 1's formula gives 0.611)."""
    from raynas.ops.convnext import PseudoInvertedBottleneck

    c, k = 36, 7
    convnext = conv_weights(OPS.get(f"convnext_{k}x{k}")(c, 1, False))
    assert convnext == 2 * 4 * c * c + k * k * c == 12_132
    pib = conv_weights(PseudoInvertedBottleneck(c, k, 1, affine=False, expansion=f))
    assert pib == (f + 1) * c * c + (f + 1) * k * k * c
    assert pib - ((f + 1) * c * c + 2 * k * k * c) == (f - 1) * k * k * c
    if f == 2:
        assert pib == 9_180 and round(pib / convnext, 3) == 0.757


def test_the_pseudo_inverted_bottleneck_has_the_authors_layers_in_their_order() -> None:
    """mahdihosseini/PIBConv cnn/operations.py (commit 605fea4), PseudoInvBn: depthwise KxK (the
    stride), BatchNorm, 1x1 C -> 2C, KxK 2C -> C in C groups, GELU, 1x1 C -> C, no biases."""
    pib = OPS.get("pib_conv_5x5")(6, 2, False)
    dw, norm, expand, grouped, _, project = pib
    assert [type(m) for m in pib] == [nn.Conv2d, nn.BatchNorm2d, nn.Conv2d, nn.Conv2d, nn.GELU, nn.Conv2d]
    assert (dw.in_channels, dw.out_channels, dw.groups) == (6, 6, 6)
    assert (dw.kernel_size, dw.stride) == ((5, 5), (2, 2))
    assert not norm.affine and norm.num_features == 6
    assert (expand.in_channels, expand.out_channels, expand.kernel_size) == (6, 12, (1, 1))
    assert (grouped.in_channels, grouped.out_channels, grouped.groups) == (12, 6, 6)
    assert grouped.kernel_size == (5, 5)
    assert grouped.stride == (1, 1) and grouped.padding == (2, 2)
    assert (project.in_channels, project.out_channels, project.kernel_size) == (6, 6, (1, 1))
    assert all(m.bias is None for m in (dw, expand, grouped, project))


def test_the_convnext_set_is_the_authors_final_primitives() -> None:
    """mahdihosseini/PIBConv cnn/genotypes.py (605fea4) PRIMITIVES, pseudo_inv_bn_KxK named pib_conv_KxK."""
    assert CONVNEXT_PRIMITIVES == (
        "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "pib_conv_3x3", "pib_conv_5x5",
        "dil_conv_3x3", "dil_conv_5x5",
    )


def test_the_cifar10_job_takes_the_authors_search_settings() -> None:
    """jobs/convnext_darts_cifar10.yaml against mahdihosseini/PIBConv's README (605fea4 and d1fe8bb:
    train_search_adas.py --learning_rate 0.0025 --batch_size 32 --epochs 50 --layers 8 --node 4
    --unrolled, SGD) and cnn/train_search_adas.py's defaults (16 channels, portion 0.5, momentum
    0.9, weight decay 3e-4, lr min 0.001, grad clip 5, arch lr 3e-4 and decay 1e-3, seed 0), with
    architect.py's Adam betas (0.5, 0.999)."""
    from pathlib import Path

    config = load_job(Path(__file__).parents[1] / "jobs" / "convnext_darts_cifar10.yaml")
    space, strategy, train, data = (config.space.config, config.strategy.config, config.train,
                                    config.data.config)
    assert space.primitives == CONVNEXT_PRIMITIVES
    assert (space.channels, space.layers, space.nodes) == (16, 8, 4)
    assert config.strategy.name == "darts" and strategy.order == 2
    assert (strategy.arch_learning_rate, strategy.arch_weight_decay) == (3e-4, 1e-3)
    assert tuple(strategy.arch_betas) == (0.5, 0.999)
    assert (train.epochs, train.learning_rate, train.learning_rate_min) == (50, 0.0025, 0.001)
    assert (train.momentum, train.weight_decay, train.grad_clip, train.nesterov) == (0.9, 3e-4, 5.0, False)
    assert config.data.name == "cifar10" and (data.batch_size, data.train_portion) == (32, 0.5)
    assert config.seed == 0


def test_layernorm2d_normalises_each_pixel_over_channels() -> None:
    x = torch.randn(2, 6, 4, 5) * 3 + 1
    norm = LayerNorm2d(6, affine=False)
    ours = norm(x)
    reference = nn.functional.layer_norm(x.permute(0, 2, 3, 1), (6,), eps=1e-6).permute(0, 3, 1, 2)
    assert torch.allclose(ours, reference, atol=1e-6)
    assert torch.allclose(ours.mean(dim=1), torch.zeros(2, 4, 5), atol=1e-5)
    # Unlike GroupNorm(1, C), which normalises over (C, H, W) together.
    assert not torch.allclose(ours, nn.GroupNorm(1, 6, affine=False, eps=1e-6)(x), atol=1e-3)


def test_bad_kernels_and_strides_are_rejected() -> None:
    from raynas.ops.convnext import ConvNeXtBlock, PseudoInvertedBottleneck

    with pytest.raises(ValueError, match="stride must be 1 or 2, got 3"):
        ConvNeXtBlock(8, 7, 3)
    with pytest.raises(ValueError, match="kernel size must be odd, got 4"):
        ConvNeXtBlock(8, 4, 1)
    with pytest.raises(ValueError, match="stride must be 1 or 2, got 4"):
        PseudoInvertedBottleneck(8, 3, 4)
    with pytest.raises(ValueError, match="kernel size must be odd, got 2"):
        PseudoInvertedBottleneck(8, 2, 1)


@pytest.mark.parametrize("mixed_op", MIXED_OPS.names())
@pytest.mark.parametrize("stride", [1, 2])
def test_every_mixed_op_runs_the_convnext_set(mixed_op: str, stride: int) -> None:
    from raynas.ops.mixed import mixed_op_factory

    edge = mixed_op_factory(mixed_op, primitives=CONVNEXT_PRIMITIVES, partial_k=2, affine=False)(8, stride)
    x = torch.randn(2, 8, 8, 8, requires_grad=True)
    alpha = torch.zeros(len(CONVNEXT_PRIMITIVES), requires_grad=True)
    weights = torch.softmax(alpha, -1)
    if mixed_op == "sampled":  # one-hot in value, as GDAS's hard Gumbel-softmax gives
        pib = CONVNEXT_PRIMITIVES.index("pib_conv_5x5")
        weights = weights + (torch.eye(len(CONVNEXT_PRIMITIVES))[pib] - weights).detach()
    out = edge(x, weights)
    assert out.shape == (2, 8, 8 // stride, 8 // stride)
    out.sum().backward()
    assert alpha.grad is not None and torch.isfinite(alpha.grad).all()


def test_operations_config_selects_the_set_and_primitives_may_mix_both() -> None:
    assert DartsSpaceConfig().primitives == PRIMITIVES
    assert DartsSpaceConfig(operations="convnext").primitives == CONVNEXT_PRIMITIVES
    mixed = ("skip_connect", "sep_conv_3x3", "pib_conv_5x5", "convnext_7x7")
    assert DartsSpaceConfig(operations="convnext", primitives=mixed).primitives == mixed
    message = r"space.operations: unknown operation set 'resnet'; choose from: darts, convnext"
    with pytest.raises(ConfigError, match=message):
        DartsSpaceConfig(operations="resnet")  # type: ignore[arg-type]


def test_job_file_selects_the_convnext_set(tmp_path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("name: t\nspace: {name: darts, operations: convnext}\nstrategy: {name: darts}\n"
                   "data: {name: digits}\n")
    assert load_job(job).space.config.primitives == CONVNEXT_PRIMITIVES
    with pytest.raises(ConfigError, match=r"space.operations.*allowed: 'darts', 'convnext'"):
        load_job(job, ["space.operations=vit"])


def test_convnext_space_samples_derives_and_builds_stand_alone_networks() -> None:
    space = DartsCnnSpace(DartsSpaceConfig(operations="convnext", channels=4, layers=3, nodes=2))
    arch = space.sample(random.Random(1))
    assert space.contains(arch)
    uses_new_ops = any(op.startswith(("pib", "convnext")) for op, _ in (*arch.normal, *arch.reduce))
    assert uses_new_ops
    assert not DartsCnnSpace(DartsSpaceConfig(nodes=2)).contains(arch)  # the darts set lacks them
    assert Architecture.from_json(arch.to_json()) == arch

    supernet = build_supernet(space, TINY)
    supernet(torch.randn(2, 3, 16, 16)).sum().backward()
    derived = supernet.genotype()
    assert {op for op, _ in (*derived.normal, *derived.reduce)} <= set(CONVNEXT_PRIMITIVES)

    # The auxiliary heads need 8x8 (CIFAR) and 14x14 (ImageNet) features at two thirds of the depth.
    for dataset, size in ((TINY, 32), (DatasetInfo("imagenet", 3, 5, 224), 224)):
        net = space.build(derived, dataset, channels=4, layers=3, auxiliary=True, drop_path_prob=0.2)
        net.train()
        logits, aux = net(torch.randn(2, 3, size, size))
        assert logits.shape == aux.shape == (2, dataset.num_classes)
        (logits.sum() + aux.sum()).backward()


def test_a_published_style_genotype_with_convnext_ops_builds_and_counts() -> None:
    g = DartsGenotype(
        normal=(("pib_conv_3x3", 0), ("pib_conv_5x5", 1), ("convnext_7x7", 0), ("skip_connect", 2)),
        normal_concat=(2, 3),
        reduce=(("pib_conv_7x7", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("pib_conv_3x3", 1)),
        reduce_concat=(2, 3),
    )
    net = DartsCnnSpace().build(g, TINY, channels=4, layers=3)
    assert net(torch.randn(1, 3, 16, 16)).shape == (1, 10)
    assert count_params(net) > 0


@pytest.mark.parametrize(
    ("layers", "params", "readme_millions"), [(10, 2_993_014, 3.02), (5, 1_293_094, 1.30)]
)
def test_the_authors_genotype_builds_with_the_parameters_of_their_code(
    layers: int, params: int, readme_millions: float
) -> None:
    # DARTS_PseudoInvBn from mahdihosseini/PIBConv cnn/genotypes.py (605fea4), by name and alias.
    g = load_genotype("PIBConv")
    assert g == load_genotype("DARTS_PseudoInvBn")
    assert g.normal[:2] == (("pib_conv_3x3", 0), ("pib_conv_5x5", 1))
    assert g.reduce[3] == ("dil_conv_5x5", 2)
    assert DartsCnnSpace(DartsSpaceConfig(operations="convnext")).contains(g)
    # Their model.py's NetworkCIFAR is DARTS's (raynas's DARTS_V2 count equals quark0's 3,349,342:
    # tests/test_darts_space.py) and their PseudoInvBn is counted layer by layer above, so these
    # are the counts their code gives at 36 channels, auxiliary head left out as their
    # count_parameters_in_MB does; their README's table rounds them to 3.02M and 1.30M.
    net = DartsCnnSpace().build(g, DatasetInfo("cifar10", 3, 10, 32), channels=36, layers=layers)
    assert count_params(net) == params
    assert abs(params / 1e6 - readme_millions) / readme_millions < 0.01


GRADIENT_STRATEGIES = [
    {"name": "darts", "order": 1},
    {"name": "darts", "order": 2},
    {"name": "pc_darts", "k": 2, "arch_start_epoch": 0},
    {"name": "milenas", "track_model_size": False},
    {"name": "gdas"},
    {"name": "adarts", "k": 2, "arch_start_epoch": 0},
    {"name": "rf_darts"},
]


@pytest.mark.parametrize("strategy", GRADIENT_STRATEGIES, ids=lambda s: f"{s['name']}{s.get('order', '')}")
def test_every_darts_strategy_searches_the_convnext_set(tmp_path, strategy: dict) -> None:
    from conftest import tiny_job

    from raynas.runs.jobs import parse_job
    from raynas.runs.supernet_worker import SupernetWorker

    job = tiny_job(tmp_path, space={"operations": "convnext"}, data={"limit": 32})
    job["strategy"] = {**strategy, "arch_learning_rate": 0.05}
    search = SupernetWorker(parse_job(job))
    assert search.space.config.primitives == CONVNEXT_PRIMITIVES
    before = [a.detach().clone() for a in search.strategy.arch_params]
    report = search.run_epoch()
    assert all(not torch.equal(a, b) for a, b in zip(search.strategy.arch_params, before, strict=True))
    assert isinstance(report.architecture, DartsGenotype)
    assert search.space.contains(report.architecture)
