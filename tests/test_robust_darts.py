"""RobustDARTS's spaces S1-S4 on the DARTS cell space (``space.robust``) and its noise op."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from raynas.errors import ConfigError
from raynas.ops import OPS
from raynas.ops.robust import ROBUST_SPACES, S1_NORMAL, S1_REDUCE, robust_primitives
from raynas.runs.jobs import load_job
from raynas.spaces import SPACES
from raynas.spaces.darts_cnn import DartsSpaceConfig, num_cell_edges
from raynas.supernet import build_supernet
from raynas.types import DatasetInfo

TINY = DatasetInfo("cifar10", 3, 10, 16)


def space(robust: str, **kwargs: int) -> object:
    config = DartsSpaceConfig(robust=robust, channels=4, layers=3, **kwargs)  # type: ignore[arg-type]
    return SPACES.create("darts", config)


def test_the_spaces_are_robustdarts_s1_to_s4() -> None:
    """The authors' src/spaces.py: S1 a pair per edge (14 per cell type), S2-S4 one set everywhere."""
    assert len(S1_NORMAL) == len(S1_REDUCE) == 14 and all(len(p) == 2 for p in (*S1_NORMAL, *S1_REDUCE))
    assert Counter(S1_NORMAL) == {
        ("skip_connect", "dil_conv_3x3"): 4, ("skip_connect", "sep_conv_3x3"): 4,
        ("skip_connect", "dil_conv_5x5"): 2, ("max_pool_3x3", "skip_connect"): 2,
        ("dil_conv_3x3", "dil_conv_5x5"): 2,
    }
    assert Counter(S1_REDUCE) == {
        ("max_pool_3x3", "avg_pool_3x3"): 6, ("skip_connect", "dil_conv_5x5"): 5,
        ("max_pool_3x3", "dil_conv_3x3"): 1, ("max_pool_3x3", "sep_conv_3x3"): 1,
        ("skip_connect", "dil_conv_3x3"): 1,
    }
    assert S1_NORMAL[5] == ("max_pool_3x3", "skip_connect")
    assert S1_REDUCE[6] == ("max_pool_3x3", "sep_conv_3x3")
    assert robust_primitives("s2") == ("skip_connect", "sep_conv_3x3")
    assert robust_primitives("s3") == ("none", "skip_connect", "sep_conv_3x3")
    assert robust_primitives("s4") == ("noise", "sep_conv_3x3")
    assert set(robust_primitives("s1")) == {
        "skip_connect", "dil_conv_3x3", "dil_conv_5x5", "sep_conv_3x3", "max_pool_3x3", "avg_pool_3x3",
    }


def test_noise_is_standard_normal_of_the_output_shape_with_zero_gradient() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 4, 16, 16, requires_grad=True)
    assert OPS.get("noise")(4, 1, False)(x).shape == (8, 4, 16, 16)
    out = OPS.get("noise")(4, 2, False)(x)
    assert out.shape == (8, 4, 8, 8)
    noise = out.detach()
    assert abs(float(noise.mean())) < 0.1 and abs(float(noise.std()) - 1) < 0.1
    out.sum().backward()
    assert x.grad is not None and (x.grad == 0).all()


@pytest.mark.parametrize("robust", list(ROBUST_SPACES))
def test_samples_take_each_edges_candidates_and_the_flat_view_round_trips(robust: str) -> None:
    s = space(robust)
    for seed in range(20):
        arch = s.sample(random.Random(seed))
        assert s.contains(arch)
        for edges, reduction in ((arch.normal, False), (arch.reduce, True)):
            allowed = ROBUST_SPACES[robust][int(reduction)]
            for i, (op, j) in enumerate(edges):
                assert op in allowed[num_cell_edges(i // 2) + j] and op != "none"
        assert s.decode(s.encode(arch)) == arch
    rng = random.Random(0)
    for _ in range(20):  # every choice of option indices is a genotype of the space
        values = [rng.randrange(len(d.options)) for d in s.decisions()]
        assert s.contains(s.decode(values))


def test_s1_refuses_an_op_from_another_edge() -> None:
    s, darts = space("s1"), SPACES.create("darts")
    arch = s.sample(random.Random(0))
    assert arch.normal[0][1] == 0  # node 2's edge from input 0: skip_connect or dil_conv_3x3
    edges = (("sep_conv_3x3", 0), *arch.normal[1:])
    foreign = type(arch)(edges, arch.normal_concat, arch.reduce, arch.reduce_concat)
    assert not s.contains(foreign) and darts.contains(foreign)


def test_s1_supernet_gives_other_edges_candidates_weight_zero_and_derives_within_s1() -> None:
    torch.manual_seed(0)
    s = space("s1")
    supernet = build_supernet(s, TINY)
    with torch.no_grad():
        for alpha in supernet.arch_parameters():
            alpha.normal_(0, 3)  # strong preferences, also for candidates an edge lacks
    for reduction, pairs in ((False, S1_NORMAL), (True, S1_REDUCE)):
        weights = supernet.edge_weights(reduction)
        for row, pair in zip(weights, pairs, strict=True):
            for p, w in zip(supernet.primitives, row, strict=True):
                assert (w > 0) == (p in pair)
    assert s.contains(supernet.genotype())
    supernet(torch.randn(2, 3, 16, 16)).sum().backward()
    grad = supernet.alpha_normal.grad
    allowed = torch.tensor([[p in pair for p in supernet.primitives] for pair in S1_NORMAL])
    assert grad is not None and (grad[~allowed] == 0).all() and (grad[allowed] != 0).any()


@pytest.mark.parametrize("robust", ["s2", "s3", "s4"])
def test_uniform_spaces_search_their_candidates(robust: str) -> None:
    s = space(robust)
    supernet = build_supernet(s, TINY)
    assert supernet.primitives == robust_primitives(robust)
    assert supernet(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    assert s.contains(supernet.genotype())


def test_robust_settings_that_cannot_hold_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"4 nodes \(14 edges\), got space.nodes=2"):
        DartsSpaceConfig(robust="s1", nodes=2)
    with pytest.raises(ConfigError, match=r"leave space.operations and space.primitives unset"):
        DartsSpaceConfig(robust="s2", primitives=("skip_connect",))


JOBS = Path(__file__).parents[1] / "jobs"


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "svhn"])
def test_the_rf_darts_grid_is_a_job_per_dataset_and_space_robust(dataset: str) -> None:
    for robust in ROBUST_SPACES:
        config = load_job(JOBS / f"rf_darts_robust_{dataset}.yaml", [f"space.robust={robust}"])
        assert config.data.name == dataset and config.strategy.name == "rf_darts"
        assert config.space.config.primitives == robust_primitives(robust)


def test_an_rf_darts_step_in_s1_keeps_to_s1() -> None:
    """RF-DARTS's override (affine BatchNorm, its only trained weights) applies to an S1 space,
    and a search step's gradient reaches only the candidates S1's edges have."""
    import dataclasses

    from raynas.config import TrainConfig
    from raynas.strategies import STRATEGIES

    torch.manual_seed(0)
    strategy_cls = STRATEGIES.get("rf_darts")
    strategy_config = STRATEGIES.entry("rf_darts").config()  # type: ignore[misc]
    base = DartsSpaceConfig(robust="s1", channels=4, layers=3)
    s = SPACES.create("darts", dataclasses.replace(base, **strategy_cls.space_overrides(strategy_config)))
    supernet = build_supernet(s, TINY)
    strategy = STRATEGIES.create("rf_darts", supernet=supernet, config=strategy_config, train=TrainConfig())
    before = supernet.alpha_normal.detach().clone()
    batch = (torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,)))
    strategy.step(batch, batch)
    allowed = torch.tensor([[p in pair for p in supernet.primitives] for pair in S1_NORMAL])
    grad = supernet.alpha_normal.grad  # the architecture step's (weight decay aside, all it moves by)
    assert grad is not None and (grad[~allowed] == 0).all()
    assert (supernet.alpha_normal.detach() != before)[allowed].any()
    assert s.contains(strategy.genotype())
