"""The DARTS supernet (cnn/model_search.py of quark0/darts) and the derivation of a genotype from
its architecture parameters."""

from __future__ import annotations

import math

import pytest
import torch

from raynas.ops import PRIMITIVES
from raynas.spaces.darts_cnn import DartsCnnSpace, DartsSpaceConfig
from raynas.spaces.darts_genotype import DartsGenotype
from raynas.supernet import DartsSupernet, build_supernet, derive_cell
from raynas.supernet.darts import num_edges
from raynas.types import DatasetInfo


def tiny_supernet(**overrides: object) -> DartsSupernet:
    torch.manual_seed(0)
    kwargs: dict = dict(
        channels=4, layers=3, nodes=2, stem_multiplier=3, primitives=PRIMITIVES,
        mixed_op="weighted", num_classes=5, in_channels=1,
    )
    return DartsSupernet(**{**kwargs, **overrides})


def weights_row(**values: float) -> list[float]:
    """One edge's operation weights, 0.0 for every op not named."""
    return [values.get(p, 0.0) for p in PRIMITIVES]


def test_forward_and_backward_shapes() -> None:
    model = tiny_supernet()
    x = torch.randn(4, 1, 8, 8)  # (B, C, H, W)
    logits = model(x)
    assert logits.shape == (4, 5)
    logits.logsumexp(1).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name
    assert torch.count_nonzero(model.alpha_normal.grad) > 0
    assert torch.count_nonzero(model.alpha_reduce.grad) > 0


def test_cells_reduce_at_one_and_two_thirds() -> None:
    model = tiny_supernet(layers=6)
    assert [cell.reduction for cell in model.cells] == [False, False, True, False, True, False]
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 5)


@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_alphas_have_one_row_per_edge_and_one_column_per_op(nodes: int) -> None:
    model = tiny_supernet(nodes=nodes)
    assert num_edges(nodes) == sum(2 + i for i in range(nodes))
    assert num_edges(4) == 14  # the paper's cell
    for alpha in model.arch_parameters():
        assert alpha.shape == (num_edges(nodes), len(PRIMITIVES))
        assert alpha.abs().max() < 0.01  # DARTS initialises them as 1e-3 * N(0, 1)
    assert len(model.cells[0].edges) == num_edges(nodes)


def test_weights_exclude_the_alphas() -> None:
    model = tiny_supernet()
    weights = list(model.weights())
    arch = model.arch_parameters()
    arch_ids = {id(p) for p in arch}
    assert len(arch) == 2
    assert not any(id(p) in arch_ids for p in weights)
    assert {id(p) for p in weights} | arch_ids == {id(p) for p in model.parameters()}
    assert len(weights) + len(arch) == len(list(model.parameters()))


def test_space_builds_the_supernet_of_its_config() -> None:
    space = DartsCnnSpace(DartsSpaceConfig(channels=4, layers=3, nodes=2))
    model = build_supernet(space, DatasetInfo("digits", 1, 10, 8))
    assert isinstance(model, DartsSupernet)
    assert model.alpha_normal.shape == (5, len(PRIMITIVES))
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_derive_cell_keeps_the_two_strongest_inputs_by_best_non_none_op() -> None:
    weights = torch.tensor([
        # node 2 (inputs 0, 1): both kept; 'none' is the largest on input 0 but never chosen.
        weights_row(none=0.70, skip_connect=0.20, sep_conv_3x3=0.10),
        weights_row(none=0.10, max_pool_3x3=0.30, dil_conv_3x3=0.60),
        # node 3 (inputs 0, 1, 2): input 0 has the largest weight of the node, but on 'none',
        # so inputs 2 (0.5) and 1 (0.4) win over input 0 (best non-none op 0.1).
        weights_row(none=0.90, sep_conv_5x5=0.10),
        weights_row(avg_pool_3x3=0.40, sep_conv_3x3=0.35, none=0.25),
        weights_row(dil_conv_5x5=0.50, skip_connect=0.45, none=0.05),
    ])
    edges = derive_cell(weights, PRIMITIVES, nodes=2)
    assert edges == (
        ("dil_conv_3x3", 1), ("skip_connect", 0),  # strongest first, as DARTS's genotype()
        ("dil_conv_5x5", 2), ("avg_pool_3x3", 1),
    )
    assert "none" not in {op for op, _ in edges}


def test_derive_cell_picks_a_real_op_when_none_dominates_every_edge() -> None:
    row = weights_row(none=0.93, skip_connect=0.01, sep_conv_3x3=0.06)
    edges = derive_cell(torch.tensor([row] * 5), PRIMITIVES, nodes=2)
    assert [op for op, _ in edges] == ["sep_conv_3x3"] * 4
    assert [i for _, i in edges] == [0, 1, 0, 1]  # ties keep the lower input first


def test_derive_cell_without_none_in_the_primitives() -> None:
    primitives = ("skip_connect", "sep_conv_3x3")
    weights = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.5, 0.5]])
    assert derive_cell(weights, primitives, nodes=2) == (
        ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 1), ("skip_connect", 0),
    )


def test_genotype_follows_the_alphas_and_concatenates_every_node() -> None:
    model = tiny_supernet()
    with torch.no_grad():
        model.alpha_normal.zero_()
        model.alpha_reduce.zero_()
        sep = PRIMITIVES.index("sep_conv_3x3")
        pool = PRIMITIVES.index("max_pool_3x3")
        model.alpha_normal[:, sep] = 5.0
        model.alpha_reduce[:, pool] = 5.0
        model.alpha_reduce[4, PRIMITIVES.index("skip_connect")] = 9.0  # node 3 from node 2
    g = model.genotype()
    assert isinstance(g, DartsGenotype)
    assert g.normal_concat == g.reduce_concat == (2, 3)
    assert g.normal == (("sep_conv_3x3", 0), ("sep_conv_3x3", 1)) * 2
    assert g.reduce == (("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0))
    assert DartsCnnSpace(DartsSpaceConfig(channels=4, layers=3, nodes=2)).contains(g)


@pytest.mark.parametrize("nodes", [2, 4])
def test_genotype_concat_is_every_intermediate_node(nodes: int) -> None:
    g = tiny_supernet(nodes=nodes).genotype()
    assert g.normal_concat == g.reduce_concat == tuple(range(2, 2 + nodes))
    assert g.nodes == nodes


def test_arch_entropy_is_log_num_ops_for_equal_alphas() -> None:
    model = tiny_supernet()
    with torch.no_grad():
        for alpha in model.arch_parameters():
            alpha.fill_(0.3)
    assert model.arch_entropy() == pytest.approx(math.log(len(PRIMITIVES)), rel=1e-6)
    assert model.max_entropy() == pytest.approx(math.log(len(PRIMITIVES)))
    with torch.no_grad():
        model.alpha_normal[:, 0] = 20.0  # nearly one-hot: entropy falls
    assert model.arch_entropy() < model.max_entropy() / 2 + 0.01


def test_arch_state_is_the_raw_alphas() -> None:
    model = tiny_supernet()
    state = model.arch_state()
    assert set(state) == {"alpha_normal", "alpha_reduce"}
    assert torch.tensor(state["alpha_normal"]).equal(model.alpha_normal.detach())
