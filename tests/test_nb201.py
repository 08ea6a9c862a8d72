"""The NAS-Bench-201 space: the benchmark's strings, all 15,625 cells, the isomorphism key, the
benchmark's own parameter and FLOP figures, the network, the supernet under the DARTS family, and
the ImageNet16-120 batches."""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from conftest import tiny_job

from raynas.cli import main
from raynas.data import DATASETS, dataset_info
from raynas.errors import ArchitectureError, ConfigError, DataError
from raynas.runs import run_search
from raynas.runs.jobs import parse_job
from raynas.runs.supernet_worker import SupernetWorker
from raynas.spaces import SPACES
from raynas.spaces.nb201 import EDGES, NB201_OPS, InferCell, Nb201Arch, Nb201Space, Nb201SpaceConfig
from raynas.supernet import build_supernet
from raynas.supernet.nb201 import Nb201Supernet
from raynas.types import Architecture, DatasetInfo
from tests.fixtures import write_imagenet16

# The best CIFAR-10 cell of the benchmark (the example).
BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
ALL_NONE = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
ALL_C3 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
# Architecture index 0 of the benchmark.
INDEX_0 = "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|"
NATS_36 = "|skip_connect~0|+|none~0|nor_conv_3x3~1|+|avg_pool_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
DIGITS = DatasetInfo(name="digits", in_channels=1, num_classes=10, image_size=8)


def arch(text: str) -> Nb201Arch:
    return Nb201Arch.parse(text)


@pytest.fixture(scope="module")
def every_cell() -> list[Nb201Arch]:
    return list(Nb201Space().enumerate())


# --- the record and its string form --------------------------------------------------------


def test_space_is_registered_with_its_config() -> None:
    entry = SPACES.entry("nb201")
    assert entry.target is Nb201Space and entry.config is Nb201SpaceConfig
    cfg = Nb201SpaceConfig()
    assert (cfg.channels, cfg.cells_per_stage, cfg.mixed_op) == (16, 5, "weighted")


def test_benchmark_string_round_trips() -> None:
    a = arch(BEST)
    assert str(a) == BEST
    assert a.ops == ("nor_conv_3x3", "nor_conv_3x3", "nor_conv_3x3", "skip_connect", "nor_conv_3x3",
                     "nor_conv_3x3")
    assert a.edges()[3] == ("skip_connect", 0, 3)  # edge order: 0->1, 0->2, 1->2, 0->3, 1->3, 2->3
    assert a.to_dict() == {"arch": BEST}
    assert Nb201Arch.from_dict(a.to_dict()) == a
    assert Architecture.from_json(a.to_json()) == a and hash(a) == hash(arch(BEST))
    assert a.key().startswith("nb201-")


def test_space_parses_strings_json_text_and_files(tmp_path: Path) -> None:
    space = Nb201Space()
    a = arch(BEST)
    assert space.parse(f"  {BEST}\n") == a
    assert space.parse(a.to_json()) == a
    path = tmp_path / "cell.json"
    path.write_text(json.dumps({"arch": BEST}))
    assert space.parse(str(path)) == a
    with pytest.raises(ArchitectureError, match=r"'missing\.json' does not exist"):
        space.parse("missing.json")
    with pytest.raises(ArchitectureError, match="space 'darts', not nb201"):
        space.parse(json.dumps({"space": "darts", "arch": BEST}))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("|nor_conv_3x3~0|+|none~0|none~1|", r"has 3 '\+'-separated nodes of the form"),
        ("|conv_5x5~0|+|none~0|none~1|+|none~0|none~1|none~2|",
         "edge 0->1: unknown op 'conv_5x5' in 'conv_5x5~0'; choose one of: none, skip_connect, "
         "nor_conv_1x1, nor_conv_3x3, avg_pool_3x3"),
        ("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "node 1: input 0 must be written 'op~0'"),
        ("|none~0|+|none~0|+|none~0|none~1|none~2|", r"node 2 must be written \|op~0\|op~1\|"),
        ("|none~0|+|none~0|none~1|+|none~0|none~1|none~2", r"node 3 must be written"),
        ("|none0|+|none~0|none~1|+|none~0|none~1|none~2|", "got 'none0'"),
        ('{"arch": 3}', 'an nb201 architecture is {"arch": '),
        ("nor_conv_3x3", r"3 '\+'-separated nodes"),
    ],
)
def test_malformed_strings_name_the_bad_part(text: str, message: str) -> None:
    with pytest.raises(ArchitectureError, match=message):
        Nb201Space().parse(text)


def test_the_record_checks_its_ops() -> None:
    with pytest.raises(ArchitectureError, match="has 6 edge ops"):
        Nb201Arch(("none",) * 5)
    with pytest.raises(ArchitectureError, match="edge 2->3: unknown op 'sep_conv_3x3'"):
        Nb201Arch(("none",) * 5 + ("sep_conv_3x3",))


def test_cli_reports_a_bad_string_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["describe", "--space", "nb201", "--arch", "|nor_conv_5x5~0|+", "--json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("raynas: error: ") and len(err.strip().splitlines()) == 1


# --- the space --------------------------------------------------------------------------------


def test_enumerate_gives_every_cell_once(every_cell: list[Nb201Arch]) -> None:
    assert len(every_cell) == 5**6 == 15_625
    assert len(set(every_cell)) == 15_625
    assert len({str(a) for a in every_cell}) == 15_625
    space = Nb201Space()
    assert all(space.contains(a) for a in every_cell[:50])
    rng = random.Random(0)
    drawn = [space.sample(rng) for _ in range(30)]
    assert set(drawn) <= set(every_cell) and len(set(drawn)) > 1
    assert space.sample(random.Random(3)) == space.sample(random.Random(3))


# --- the isomorphism key ------------------------------------------------------------------------


def autodl_unique_str(a: Nb201Arch) -> str:
    """The benchmark's own rule: ``Structure.to_unique_str(consider_zero=True)`` of
    xautodl/models/cell_searchs/genotypes.py (D-X-Y/AutoDL-Projects), re-implemented."""
    nodes = {0: "0"}
    for dst in range(1, 4):
        terms = []
        for op, src, to in a.edges():
            if to != dst:
                continue
            if op == "none" or nodes[src] == "#":
                terms.append("#")
            elif op == "skip_connect":
                terms.append(nodes[src])
            else:
                terms.append(f"({nodes[src]})@{op}")
        nodes[dst] = "+".join(sorted(terms))
    return nodes[3]


def reaches_output(a: Nb201Arch) -> bool:
    live = {0}
    for op, src, dst in a.edges():  # edges come in order of their destination
        if op != "none" and src in live:
            live.add(dst)
    return 3 in live


def test_dead_edges_out_of_an_unreachable_node_do_not_matter() -> None:
    # Node 1 has only a 'none' input: whatever leaves it (edges 1->2 and 1->3) is dead.
    base = Nb201Arch(("none", "nor_conv_3x3", "nor_conv_1x1", "skip_connect", "avg_pool_3x3",
                      "nor_conv_3x3"))
    for op12 in NB201_OPS:
        for op13 in NB201_OPS:
            other = Nb201Arch(("none", "nor_conv_3x3", op12, "skip_connect", op13, "nor_conv_3x3"))
            assert other.key() == base.key()
    # Edges into a node that never reaches the output do not matter either (2->3 is none).
    a = Nb201Arch(("nor_conv_1x1", "avg_pool_3x3", "nor_conv_3x3", "skip_connect", "nor_conv_3x3", "none"))
    b = Nb201Arch(("nor_conv_1x1", "skip_connect", "none", "skip_connect", "nor_conv_3x3", "none"))
    assert a.key() == b.key()
    assert a.key() != Nb201Arch((*a.ops[:5], "skip_connect")).key()


def test_cells_with_no_path_to_the_output_share_the_all_none_key(every_cell: list[Nb201Arch]) -> None:
    zero = arch(ALL_NONE)
    assert zero.canonical() == "out="
    assert zero.key() == Nb201Arch(("nor_conv_3x3",) * 3 + ("none",) * 3).key()
    dead = [a for a in every_cell if a.key() == zero.key()]
    assert dead == [a for a in every_cell if not reaches_output(a)]
    # No path: all 3 edges into node 3 are none (125 cells), or only dead nodes feed it.
    # Edge 0->3 is none and every route through nodes 1 and 2 is cut: 225 cells where node 1 is
    # unreached (op 0->1 none) plus 116 where it is reached (4 ops x (5 + 24)).
    assert len(dead) == 225 + 116


def test_nodes_1_and_2_are_interchangeable_when_their_roles_swap() -> None:
    # node1 = conv3(x), node2 = conv1(x), out = pool(node1) + node2 ...
    a = Nb201Arch(("nor_conv_3x3", "nor_conv_1x1", "none", "none", "avg_pool_3x3", "skip_connect"))
    # ... and the same cell with nodes 1 and 2 renamed (valid: there is no 1->2 edge).
    b = Nb201Arch(("nor_conv_1x1", "nor_conv_3x3", "none", "none", "skip_connect", "avg_pool_3x3"))
    assert a.key() == b.key() and a != b
    # Summands of a node are unordered: conv3 + pool into node 3 in either order.
    c = Nb201Arch(("nor_conv_3x3", "avg_pool_3x3", "none", "none", "skip_connect", "skip_connect"))
    d = Nb201Arch(("avg_pool_3x3", "nor_conv_3x3", "none", "none", "skip_connect", "skip_connect"))
    assert c.key() == d.key()


def test_skip_connections_are_contracted() -> None:
    # x -skip-> 1 -conv-> 2 -skip-> 3 computes conv(x), as does a single 0->3 conv.
    chain = Nb201Arch(("skip_connect", "none", "nor_conv_3x3", "none", "none", "skip_connect"))
    direct = Nb201Arch(("none", "none", "none", "nor_conv_3x3", "none", "none"))
    assert chain.key() == direct.key()
    assert direct.canonical() == "0:nor_conv_3x3(x);out=0"
    # But x + x (two skip routes) is not x.
    double = Nb201Arch(("skip_connect", "none", "none", "skip_connect", "skip_connect", "none"))
    single = Nb201Arch(("none", "none", "none", "skip_connect", "none", "none"))
    assert double.canonical() == "out=x,x" and double.key() != single.key()


def test_shared_operations_are_not_merged_with_copies() -> None:
    # One 1x1 conv whose output reaches node 3 twice (through node 1 and node 2) ...
    shared = arch("|nor_conv_1x1~0|+|none~0|skip_connect~1|+|none~0|skip_connect~1|skip_connect~2|")
    # ... and two different 1x1 convs of the input: same unfolded expression, other function.
    copies = arch("|nor_conv_1x1~0|+|nor_conv_1x1~0|none~1|+|none~0|skip_connect~1|skip_connect~2|")
    assert shared.key() != copies.key()
    assert autodl_unique_str(shared) == autodl_unique_str(copies)  # the benchmark's rule merges them
    space = Nb201Space()
    params = [sum(p.numel() for p in space.build(a, DIGITS).parameters()) for a in (shared, copies)]
    assert params[0] < params[1]


def test_number_of_distinct_keys(every_cell: list[Nb201Arch]) -> None:
    """The NB201 paper reports 6,466 unique topologies; that is the count of the benchmark's own
    rule (``to_unique_str(consider_zero=True)``), reproduced here. Our key finds 5,425 functions.

    The two rules part in both directions. The benchmark's rule keeps the zero terms of a sum as
    ``#`` and treats only a whole node equal to ``#`` as zero, so for example the all-none cell
    and a cell whose only live edge leaves a dead node get different strings; our key drops every
    zero term, merging such cells (721 of our classes hold several of its strings). It also
    unfolds shared operations into copies, merging a 1x1 conv used twice with two 1x1 convs
    (644 of its classes hold several of our keys; see the test above).
    """
    ours = {a.key() for a in every_cell}
    assert len(ours) == 5_425
    theirs = {autodl_unique_str(a) for a in every_cell}
    assert len(theirs) == 6_466
    by_key: dict[str, set[str]] = defaultdict(set)
    by_str: dict[str, set[str]] = defaultdict(set)
    for a in every_cell:
        by_key[a.key()].add(autodl_unique_str(a))
        by_str[autodl_unique_str(a)].add(a.key())
    assert sum(len(v) > 1 for v in by_key.values()) == 721
    assert sum(len(v) > 1 for v in by_str.values()) == 644


def test_cells_with_equal_keys_compute_the_same_function(every_cell: list[Nb201Arch]) -> None:
    """Equal keys -> equal outputs, when every op of a kind holds the same weights (so that an
    isomorphism maps weights onto weights). A sample of the classes with several members."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 5)  # (B, C, H, W)
    weights = {k: torch.randn(3, 3, k, k, generator=torch.Generator().manual_seed(k)) for k in (1, 3)}

    def output(a: Nb201Arch) -> torch.Tensor:
        cell = InferCell(a, 3).eval()
        for m in cell.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.data.copy_(weights[m.kernel_size[0]])
        with torch.no_grad():
            return cell(x)

    classes: dict[str, list[Nb201Arch]] = defaultdict(list)
    for a in every_cell:
        classes[a.key()].append(a)
    multi = [v for v in classes.values() if len(v) > 1]
    for members in random.Random(0).sample(multi, 80):
        torch.testing.assert_close(output(members[0]), output(members[-1]))


# --- the benchmark's own parameter counts and FLOPs --------------------------------------------
# The benchmark counts parameters / 1e6 and FLOPs / 1e6 with xautodl/utils/flop_benchmark.py
# (get_model_infos): multiply-adds of every Conv2d and Linear, plus one addition per output of a
# layer with a bias; pooling is hooked but not summed. Its networks' convolutions have no bias,
# so its FLOPs are raynas's MACs plus the classifier's bias additions (num_classes).
#
# Sources of the figures:
#  [bounds] minima and maxima over all architectures of NAS-Bench-201-v1_1-096897, per dataset,
#     printed by a public HPOBench-based script ("CIFAR 10 VALID: min_params 0.073306, max_params
#     1.531546, min_flop 7.78305, max_flop 220.11969; CIFAR 100: 0.079156, 1.537396, 7.7889,
#     220.12554; IMAGE NET: 0.080456, 1.538696, 1.9534, 55.03756"); the same FLOP bounds appear in
#     public MONAS / EvoXBench problem definitions. The ranges 0.073M..1.531M and
#     7.78M..220.11M are these, truncated. Minima: any cell without convolutions (all-none,
#     all-skip); maxima: the all-nor_conv_3x3 cell.
#  [NATS-Bench#24] github.com/D-X-Y/NATS-Bench/issues/24: architecture index 0, flops 15.64737
#     (cifar10-valid), 15.65322 (cifar100), 3.91948 (ImageNet16-120).
#  [NASLib] automl/NASLib tests/test_nb201_search_space.py: the benchmark's cost_info of index 0
#     (INDEX_0), cifar10-valid: flops 15.64737, params 0.129306.
#  [NATS-Bench#36] github.com/D-X-Y/NATS-Bench/issues/36: get_cost_info(..., 'cifar10', hp='12')
#     of NATS_36: flops 113.95137, params 0.802426 (its hp='200' params, 0.6404, is the bug the
#     issue reports).
PUBLISHED = [
    # (arch, dataset, params in M or None, FLOPs in M), as pytest.param(..., id=source)
    pytest.param(ALL_NONE, "cifar10", 0.073306, 7.78305, id="bounds-min-all_none-cifar10"),
    pytest.param(ALL_SKIP, "cifar10", 0.073306, 7.78305, id="bounds-min-all_skip-cifar10"),
    pytest.param(ALL_C3, "cifar10", 1.531546, 220.11969, id="bounds-max-all_3x3-cifar10"),
    pytest.param(ALL_NONE, "cifar100", 0.079156, 7.7889, id="bounds-min-cifar100"),
    pytest.param(ALL_C3, "cifar100", 1.537396, 220.12554, id="bounds-max-cifar100"),
    pytest.param(ALL_NONE, "ImageNet16-120", 0.080456, 1.9534, id="bounds-min-ImageNet16-120"),
    pytest.param(ALL_C3, "ImageNet16-120", 1.538696, 55.03756, id="bounds-max-ImageNet16-120"),
    pytest.param(INDEX_0, "cifar10", 0.129306, 15.64737, id="NASLib+NATS-Bench#24-index0-cifar10"),
    pytest.param(INDEX_0, "cifar100", None, 15.65322, id="NATS-Bench#24-index0-cifar100"),
    pytest.param(INDEX_0, "ImageNet16-120", None, 3.91948, id="NATS-Bench#24-index0-ImageNet16-120"),
    pytest.param(NATS_36, "cifar10", 0.802426, 113.95137, id="NATS-Bench#36-cifar10"),
]


@pytest.mark.parametrize(("text", "dataset", "params", "flops"), PUBLISHED)
def test_describe_gives_the_benchmarks_figures(
    text: str, dataset: str, params: float | None, flops: float,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["describe", "--space", "nb201", "--arch", text, "--dataset", dataset, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    classes = dataset_info(dataset).num_classes
    if params is not None:
        assert out["params"] == round(params * 1e6)
    assert out["params_with_aux"] == out["params"]  # no auxiliary head
    # The benchmark's FLOPs are multiply-adds plus bias additions (only the classifier's here).
    assert out["flops"] == round(flops * 1e6)
    assert out["flops"] == out["macs"] + classes


def test_the_best_cell_lies_within_the_published_bounds(capsys: pytest.CaptureFixture[str]) -> None:
    # No published figure of BEST was found; it must lie inside [bounds] on CIFAR-10.
    assert main(["describe", "--space", "nb201", "--arch", BEST, "--dataset", "cifar10", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 73_306 < out["params"] < 1_531_546 and 7_783_050 < out["flops"] < 220_119_690
    # Five of its six edges are 3x3 convs: exactly the all-3x3 cell minus one conv per cell.
    per_conv = {16: 16 * 16 * 9 + 2 * 16, 32: 32 * 32 * 9 + 2 * 32, 64: 64 * 64 * 9 + 2 * 64}
    assert out["params"] == 1_531_546 - 5 * sum(per_conv.values())


# --- the network ------------------------------------------------------------------------------


def test_tiny_network_follows_the_benchmark_skeleton() -> None:
    net = Nb201Space().build(arch(BEST), dataset_info("cifar10"))
    assert len(net.cells) == 3 * 5 + 2
    assert net.stem[0].out_channels == 16 and net.classifier.in_features == 64
    assert [type(c).__name__ for c in net.cells].count("ResNetBasicBlock") == 2
    # In the trained network the convolutions have no bias (the benchmark's bias=not affine).
    assert all(m.bias is None for m in net.modules() if isinstance(m, torch.nn.Conv2d))


def test_small_network_forward_and_backward() -> None:
    torch.manual_seed(0)
    net = Nb201Space().build(arch(NATS_36), DIGITS, channels=4, layers=1)
    x = torch.randn(3, 1, 8, 8)  # (B, C, H, W)
    logits = net(x)
    assert logits.shape == (3, 10)
    logits.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    with pytest.raises(ArchitectureError, match="builds Nb201Arch"):
        Nb201Space().build(object(), DIGITS)  # type: ignore[arg-type]


# --- the supernet -----------------------------------------------------------------------------


def test_supernet_interface() -> None:
    torch.manual_seed(0)
    model = build_supernet(Nb201Space(Nb201SpaceConfig(channels=4, cells_per_stage=1)), DIGITS)
    assert isinstance(model, Nb201Supernet)
    (alpha,) = model.arch_parameters()
    assert alpha.shape == (len(EDGES), len(NB201_OPS)) == (6, 5)
    assert {id(p) for p in model.weights()}.isdisjoint({id(alpha)})
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    # Search cells: non-affine BatchNorm, so the benchmark's convs carry a bias (bias=not affine).
    cell_convs = [m for m in model.cells[0].modules() if isinstance(m, torch.nn.Conv2d)]
    assert cell_convs and all(m.bias is not None for m in cell_convs)

    with torch.no_grad():  # the derived cell keeps the argmax of every edge, 'none' included
        alpha.zero_()
        for k, op in enumerate(("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3",
                                "avg_pool_3x3", "skip_connect")):
            alpha[k, NB201_OPS.index(op)] = 1.0
    assert model.genotype() == Nb201Arch(("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3",
                                          "avg_pool_3x3", "skip_connect"))
    assert model.skip_connects() == 2
    assert model.arch_state()["alpha"] == alpha.tolist()
    with torch.no_grad():
        alpha.zero_()
    assert model.arch_entropy() == pytest.approx(math.log(5)) == model.max_entropy()
    torch.testing.assert_close(model.edge_weights(), torch.full((6, 5), 0.2))
    with pytest.raises(ValueError, match="no searched reduction cell"):
        model.edge_weights(True)


def test_gumbel_sampling_and_edge_normalisation() -> None:
    torch.manual_seed(0)
    cfg = Nb201SpaceConfig(channels=4, cells_per_stage=1, mixed_op="sampled")
    model = build_supernet(Nb201Space(cfg), DIGITS)
    model.gumbel_tau = 1.0
    sample = model.forward_weights()
    assert sorted(sample.sum(-1).tolist()) == [1.0] * 6 and set(sample.flatten().tolist()) == {0.0, 1.0}
    model.eval()
    torch.testing.assert_close(model.forward_weights(), model.edge_weights())

    cfg = Nb201SpaceConfig(channels=4, cells_per_stage=1, mixed_op="partial", partial_k=2,
                           edge_normalization=True)
    model = build_supernet(Nb201Space(cfg), DIGITS)
    assert len(model.arch_parameters()) == 2
    scale = model.edge_scale()
    # Softmax over each node's inputs: node 1 has one (weight 1), node 2 two, node 3 three.
    torch.testing.assert_close(
        torch.stack([scale[:1].sum(), scale[1:3].sum(), scale[3:].sum()]), torch.ones(3)
    )
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    assert all(p.grad is not None for p in model.arch_parameters())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mixed_op": "partial", "channels": 6, "partial_k": 4}, "partial_k must divide"),
        ({"mixed_op": "blended"}, "unknown mixed op 'blended'"),
        ({"cells_per_stage": 0}, "cells_per_stage must be at least 1"),
    ],
)
def test_config_errors(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Nb201SpaceConfig(**fields)


# --- searches ---------------------------------------------------------------------------------


def nb201_job(tmp_path: Path, strategy: dict) -> dict:
    job = tiny_job(tmp_path)  # tiny_job merges sections: replace the space and strategy whole
    job["space"] = {"name": "nb201", "channels": 4, "cells_per_stage": 1}
    job["strategy"] = strategy
    return job


@pytest.mark.parametrize(
    "strategy",
    [{"name": "darts", "order": 1, "arch_learning_rate": 0.01}, {"name": "gdas"}],
    ids=["darts-order1", "gdas"],
)
def test_search_finds_an_nb201_cell(tmp_path: Path, strategy: dict) -> None:
    config = parse_job(nb201_job(tmp_path, strategy))
    result = run_search(config, echo=lambda _: None)
    assert isinstance(result.architecture, Nb201Arch)
    assert str(result.architecture).count("~") == 6
    assert result.params_cifar10 >= 73_306  # the benchmark's network of the found cell


@pytest.mark.parametrize(
    "strategy",
    [{"name": "darts", "order": 2}, {"name": "pc_darts", "k": 2, "arch_start_epoch": 0}],
    ids=["darts-order2", "pc_darts"],
)
def test_supernet_search_runs_an_epoch(tmp_path: Path, strategy: dict) -> None:
    job = nb201_job(tmp_path, strategy)
    job["data"] = {**job["data"], "limit": 32}
    job["train"] = {**job["train"], "epochs": 1}
    search = SupernetWorker(parse_job(job))
    before = [p.detach().clone() for p in search.supernet.arch_parameters()]
    report = search.run_epoch()
    assert isinstance(report.architecture, Nb201Arch)
    assert not torch.equal(before[0], search.supernet.arch_parameters()[0])
    assert set(report.arch_weights) == ({"alpha", "beta"} if strategy["name"] == "pc_darts" else {"alpha"})


# --- ImageNet16-120 ---------------------------------------------------------------------------


def test_imagenet16_info_and_missing_files(tmp_path: Path) -> None:
    info = dataset_info("ImageNet16-120")
    assert (info.in_channels, info.num_classes, info.image_size) == (3, 120, 16)
    data = DATASETS.create("ImageNet16-120", DATASETS.entry("ImageNet16-120").config(path=str(tmp_path)))
    with pytest.raises(DataError, match="holds no ImageNet16 batches: expected train_data_batch_1"):
        data.train_set()


def test_imagenet16_reads_the_benchmarks_batches(tmp_path: Path) -> None:
    write_imagenet16(tmp_path)  # batch i's labels: 1, 120, 121, 1000, i (1-based; 1..120 kept)
    cfg = DATASETS.entry("ImageNet16-120").config(path=str(tmp_path), augment=False)
    images = DATASETS.create("ImageNet16-120", cfg).train_set()
    assert len(images) == 10 * 3
    x, y = images[0]
    assert x.shape == (3, 16, 16) and y == 0
    assert sorted({int(images[i][1]) for i in range(len(images))}) == [0, *range(1, 10), 119]
    # val_data's labels: 2, 500, 120
    augmenting = DATASETS.entry("ImageNet16-120").config(path=str(tmp_path))
    test = DATASETS.create("ImageNet16-120", augmenting).test_set()  # never augmented
    assert [int(test[i][1]) for i in range(len(test))] == [1, 119] and test.augment is None


def test_edge_names_name_the_rows_of_the_supernet_s_architecture_weights() -> None:
    space = Nb201Space(Nb201SpaceConfig(channels=4, cells_per_stage=1))
    supernet = build_supernet(space, DatasetInfo("x", 3, 10, 16))
    assert isinstance(supernet, Nb201Supernet)
    with torch.no_grad():  # row k picks operation k % 5: the derived cell shows where row k went
        supernet.alpha.zero_()
        for k in range(len(EDGES)):
            supernet.alpha[k, k % len(NB201_OPS)] = 1.0
    derived = str(supernet.genotype())  # |op~j| groups per target node i
    for k, name in enumerate(space.edge_names):
        j, i = (int(part.split()[1]) for part in name.split(" → "))
        group = derived.strip("|").split("|+|")[i - 1].split("|")
        assert f"{NB201_OPS[k % len(NB201_OPS)]}~{j}" in group, (name, derived)
    assert space.edge_names[0] == "node 0 → node 1" and space.edge_names[-1] == "node 2 → node 3"
