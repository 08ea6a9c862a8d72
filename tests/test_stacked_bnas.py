"""The Stacked BCNN space, its search network and Knowledge Embedding Search (``stacked_bnas``).

The structure is checked against counts made by hand from the layer shapes (every convolution's
and BatchNorm's parameters written out), the knowledge embeddings' mixture and its gradient
against a computation that does not go through the module (the weighted sum written out and the
softmax Jacobian in NumPy). No published Stacked BNAS network is reproduced here: the paper's
searched cells and their parameter counts are not among the project's references.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from raynas.config import TrainConfig
from raynas.errors import ArchitectureError, ConfigError
from raynas.ops.bnas import KNOWLEDGE_PRIMITIVES, MixedKnowledge, knowledge_op
from raynas.profile import count_params
from raynas.spaces import SPACES
from raynas.spaces.darts_genotype import DartsGenotype, published_genotype
from raynas.spaces.stacked_bnas import CONNECTIONS, StackedBnasArch, StackedBnasSpaceConfig
from raynas.strategies import STRATEGIES
from raynas.supernet import build_supernet
from raynas.types import DatasetInfo

DIGITS = DatasetInfo("digits", 1, 10, 8)


def space(**settings: object) -> object:
    return SPACES.create("stacked_bnas", StackedBnasSpaceConfig(**settings))  # type: ignore[arg-type]


# --- counts by hand: ReLU-conv-BN, factorized reduction, separable and dilated convolutions ----


def rcb(c_in: int, c_out: int) -> int:
    """1x1 ReLU-conv-BN: the conv's weights and the BatchNorm's scale and shift."""
    return c_in * c_out + 2 * c_out


def fr(c_in: int, c_out: int) -> int:
    """Factorized reduction: two 1x1 convs of c_out/2 outputs each, then BatchNorm."""
    return 2 * c_in * (c_out // 2) + 2 * c_out


def dil(c_in: int, c_out: int) -> int:
    """ReLU, 3x3 depthwise, 1x1 pointwise, BatchNorm."""
    return 9 * c_in + c_in * c_out + 2 * c_out


def sep(c_in: int, c_out: int) -> int:
    """Two stacked dil(): c_in -> c_in, then c_in -> c_out."""
    return dil(c_in, c_in) + dil(c_in, c_out)


def test_parameters_equal_a_count_by_hand() -> None:
    """A two-block network whose cells hold pooling only (their parameters are the 1x1
    preprocessing convs), with a different knowledge embedding on every arrow."""
    pools = (("max_pool_3x3", 0), ("avg_pool_3x3", 1), ("max_pool_3x3", 1), ("avg_pool_3x3", 2))
    cells = DartsGenotype(pools, (2, 3), pools, (2, 3))
    arch = StackedBnasArch(
        cells, ("conv_1x1", "sep_conv_3x3", "dil_conv_3x3", "max_pool_3x3", "avg_pool_3x3")
    )
    net = space(nodes=2, stem_multiplier=3).build(
        arch, DatasetInfo("cifar10", 3, 10, 32), channels=4, layers=1
    )

    def block(c_in: int, c: int) -> int:
        w = 2 * c  # the broad cell, the enhancement cell and the embeddings
        deep = rcb(c_in, c) + rcb(c_in, c)  # its two inputs are both the block's input
        broad = rcb(c_in, w) + rcb(2 * c, w)  # inputs: the block's input, the deep cell (2 nodes x c)
        enhancement = rcb(w, w) + rcb(w, w)
        knowledge = (
            rcb(2 * c, w)
            + fr(w, w)  # deep -> enhancement: conv_1x1, halved by factorized reduction
            + sep(2 * w, w)  # broad -> enhancement
            + dil(2 * c, w)  # deep -> output (stride 2 in the depthwise conv: no parameters)
            + rcb(2 * w, w)  # broad -> output: max pooling, then 1x1
            + rcb(2 * w, w)  # enhancement -> output: average pooling, then 1x1
        )
        return deep + broad + enhancement + knowledge

    stem = 3 * 9 * 12 + 2 * 12
    expected = stem + block(12, 4) + block(3 * 8, 8) + (3 * 16 * 10 + 10)  # output node: 3 x 2c
    assert count_params(net) == expected == 8_622


def test_the_network_fuses_three_scales_and_halves_the_resolution_per_block() -> None:
    sp = space(nodes=2)
    arch = sp.sample(random.Random(3))
    net = sp.build(arch, DatasetInfo("cifar10", 3, 10, 16), channels=4, layers=2)
    x = torch.randn(2, 3, 16, 16)  # (B, C, H, W)
    s = net.stem(x)
    shapes = []
    for block in net.blocks:
        s = block(s)
        shapes.append(tuple(s.shape[1:]))
    assert shapes == [(3 * 8, 8, 8), (3 * 16, 4, 4)]  # output node: deep, broad, enhancement, each 2c
    assert net(x).shape == (2, 10)


# --- KES: the mixture and its gradient ---------------------------------------------------------


def test_mixed_knowledge_is_the_softmax_weighted_sum_with_the_softmax_gradient() -> None:
    torch.manual_seed(0)
    mixed = MixedKnowledge(c_in=6, c_out=4, stride=2, primitives=KNOWLEDGE_PRIMITIVES).double().eval()
    x = torch.randn(2, 6, 8, 8, dtype=torch.float64)  # (B, C, H, W)
    gamma = torch.randn(len(KNOWLEDGE_PRIMITIVES), dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 4, 4, 4, dtype=torch.float64)  # dL/d(output)
    out = mixed(x, torch.softmax(gamma, 0))
    (out * upstream).sum().backward()

    with torch.no_grad():
        candidates = [op(x).numpy() for op in mixed.ops]  # each (2, 4, 4, 4)
    g = gamma.detach().numpy()
    p = np.exp(g - g.max()) / np.exp(g - g.max()).sum()
    np.testing.assert_allclose(
        out.detach().numpy(), sum(pk * ck for pk, ck in zip(p, candidates, strict=True)), rtol=1e-12
    )
    # dL/dgamma_j = p_j (s_j - sum_k p_k s_k), s_k = <dL/d(output), candidate k>
    s = np.array([(c * upstream.numpy()).sum() for c in candidates])
    np.testing.assert_allclose(gamma.grad.numpy(), p * (s - (p * s).sum()), rtol=1e-10)


def test_every_knowledge_embedding_maps_channels_and_resolution() -> None:
    x = torch.randn(2, 6, 8, 8)  # (B, C, H, W)
    for name in KNOWLEDGE_PRIMITIVES:
        for stride, side in ((1, 8), (2, 4)):
            assert knowledge_op(name, 6, 4, stride)(x).shape == (2, 4, side, side), (name, stride)
    with pytest.raises(ValueError, match="unknown knowledge embedding 'conv'; choose from: conv_1x1"):
        knowledge_op("conv", 6, 4, 1)


def test_the_supernet_derives_each_arrows_strongest_embedding() -> None:
    torch.manual_seed(0)
    supernet = build_supernet(space(channels=4, nodes=2), DIGITS)
    chosen = [4, 0, 3, 1, 2]
    with torch.no_grad():
        supernet.gamma.zero_()
        for row, column in enumerate(chosen):
            supernet.gamma[row, column] = 1.0
    assert supernet.genotype().knowledge == tuple(KNOWLEDGE_PRIMITIVES[c] for c in chosen)
    state = supernet.arch_state()
    assert np.array(state["gamma"]).shape == (len(CONNECTIONS), len(KNOWLEDGE_PRIMITIVES))


def test_the_strategy_searches_cells_and_knowledge_and_kes_off_keeps_bnas_embeddings() -> None:
    cls, entry = STRATEGIES.get("stacked_bnas"), STRATEGIES.entry("stacked_bnas")
    assert entry.config is not None
    for kes in (True, False):
        config = entry.config(kes=kes, arch_start_epoch=0, arch_learning_rate=0.1)
        overrides = cls.space_overrides(config)
        assert overrides == {
            "mixed_op": "partial",
            "partial_k": 4,
            "edge_normalization": True,
            "knowledge_search": kes,
        }
        sp = space(channels=4, blocks=1, nodes=1, **overrides)
        torch.manual_seed(0)
        supernet = build_supernet(sp, DIGITS)
        strategy = STRATEGIES.create(
            "stacked_bnas", supernet=supernet, config=config, train=TrainConfig(epochs=1)
        )
        names = {id(p): n for n, p in supernet.named_parameters()}
        assert {names[id(p)] for p in strategy.arch_params} == {
            "alpha_normal",
            "alpha_reduce",
            "beta_normal",
            "beta_reduce",
            *(["gamma"] if kes else []),
        }
        if not kes:  # BNAS's embeddings on every arrow, whatever the cells
            assert sp.contains(strategy.genotype()) and strategy.genotype().knowledge == ("conv_1x1",) * 5
            continue
        g = torch.Generator().manual_seed(1)
        batches = [
            (torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(2)
        ]
        before = [p.detach().clone() for p in strategy.arch_params]
        strategy.step(*batches)
        assert all(not torch.equal(a, b) for a, b in zip(before, strategy.arch_params, strict=True))
        assert sp.contains(strategy.genotype())


# --- the architecture's forms ------------------------------------------------------------------


def test_a_genotype_name_takes_bnas_embeddings_and_the_bar_form_names_each() -> None:
    sp = space()
    arch = sp.parse("DARTS_V2")
    assert arch.cells == published_genotype("DARTS_V2") and arch.knowledge == ("conv_1x1",) * 5
    text = "DARTS_V2|max_pool_3x3,avg_pool_3x3,conv_1x1,sep_conv_3x3,dil_conv_3x3"
    assert sp.parse(text).knowledge == tuple(text.split("|")[1].split(","))
    with pytest.raises(
        ArchitectureError, match=r"knowledge deep→enhancement: unknown embedding 'conv'; choose one of"
    ):
        sp.parse("DARTS_V2|conv,conv_1x1,conv_1x1,conv_1x1,conv_1x1")
    with pytest.raises(ArchitectureError, match="knowledge names 5 embeddings"):
        sp.parse("DARTS_V2|conv_1x1")


def test_bad_settings_name_their_key() -> None:
    with pytest.raises(
        ConfigError, match=r"space.knowledge_ops: unknown embedding 'conv'; choose from: conv_1x1"
    ):
        StackedBnasSpaceConfig(knowledge_ops=("conv",))
    with pytest.raises(ConfigError, match=r"space.blocks must be at least 1"):
        StackedBnasSpaceConfig(blocks=0)
    with pytest.raises(ConfigError, match=r"space.partial_k must divide space.channels"):
        StackedBnasSpaceConfig(mixed_op="partial", channels=6, partial_k=4)
    assert StackedBnasSpaceConfig(knowledge_search=False).knowledge_ops == ("conv_1x1",)


def test_describe_gives_the_readmes_figure_for_darts_v2_cells(capsys: pytest.CaptureFixture[str]) -> None:
    """README: `raynas describe --space stacked_bnas --arch DARTS_V2 --dataset cifar10` (DARTS_V2's
    cells with BNAS's embeddings at the space's defaults) has 888,094 parameters."""
    from raynas.cli import main

    assert main(["describe", "--space", "stacked_bnas", "--arch", "DARTS_V2", "--dataset", "cifar10"]) == 0
    out = capsys.readouterr().out
    assert "parameters              888,094" in out


def test_more_blocks_than_the_images_can_halve_are_one_line_naming_the_setting() -> None:
    """Each mini-BCNN halves the feature map: on the 8x8 digits three leave one pixel, a fourth
    nothing (a RuntimeError deep in a convolution before this check)."""
    from raynas.data import dataset_info

    digits = dataset_info("digits")
    three = space(blocks=3)
    with torch.device("meta"):
        three.build(three.sample(random.Random(0)), digits)  # type: ignore[attr-defined]
    four = space(blocks=4)
    message = "space.blocks: 4 mini-BCNNs halve the 8x8 images of digits 4 times, to nothing; at most 3"
    with pytest.raises(ConfigError, match=message):
        four.build(four.sample(random.Random(0)), digits)  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=message):
        build_supernet(four, digits)
