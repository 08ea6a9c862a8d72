"""The DARTS CNN space: genotype records, published genotypes, sampling, and the evaluation
networks built from genotypes, checked against the parameter counts the authors published."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from raynas.errors import ArchitectureError
from raynas.ops import OPS
from raynas.spaces import SPACES
from raynas.spaces.darts_cnn import DartsCnnSpace, DartsSpaceConfig
from raynas.spaces.darts_genotype import PUBLISHED, DartsGenotype, load_genotype
from raynas.types import Architecture, DatasetInfo

CIFAR10 = DatasetInfo("cifar10", 3, 10, 32)
IMAGENET = DatasetInfo("imagenet", 3, 1000, 224)



# DARTS_V2 as printed in quark0/darts cnn/genotypes.py (the published form, no "space" key).
DARTS_V2_JSON = {
    "normal": [
        ["sep_conv_3x3", 0], ["sep_conv_3x3", 1], ["sep_conv_3x3", 0], ["sep_conv_3x3", 1],
        ["sep_conv_3x3", 1], ["skip_connect", 0], ["skip_connect", 0], ["dil_conv_3x3", 2],
    ],
    "normal_concat": [2, 3, 4, 5],
    "reduce": [
        ["max_pool_3x3", 0], ["max_pool_3x3", 1], ["skip_connect", 2], ["max_pool_3x3", 1],
        ["max_pool_3x3", 0], ["skip_connect", 2], ["skip_connect", 2], ["max_pool_3x3", 1],
    ],
    "reduce_concat": [2, 3, 4, 5],
}


def genotype(normal: list[tuple[str, int]], reduce: list[tuple[str, int]] | None = None) -> DartsGenotype:
    concat = tuple(range(2, 2 + len(normal) // 2))
    return DartsGenotype(tuple(normal), concat, tuple(reduce or normal), concat)


def count_params(model: nn.Module) -> int:
    """Parameters without the auxiliary head, as DARTS's ``utils.count_parameters_in_MB``."""
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith("auxiliary_head"))


# --- the genotype record -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_json_round_trip_gives_an_equal_genotype_and_key(name: str) -> None:
    g = PUBLISHED[name]
    back = Architecture.from_json(g.to_json())
    assert isinstance(back, DartsGenotype)
    assert back == g
    assert hash(back) == hash(g)
    assert back.key() == g.key()
    assert json.loads(g.to_json())["space"] == "darts"


def test_key_ignores_the_order_of_a_nodes_two_edges() -> None:
    a = genotype([("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_3x3", 2), ("max_pool_3x3", 0)])
    b = genotype([("skip_connect", 1), ("sep_conv_3x3", 0), ("max_pool_3x3", 0), ("dil_conv_3x3", 2)],
                 reduce=list(a.reduce))
    assert a != b  # the records differ ...
    assert a.key() == b.key()  # ... but build the same network


def test_key_differs_for_different_genotypes() -> None:
    a = genotype([("sep_conv_3x3", 0), ("skip_connect", 1)])
    assert a.key() != genotype([("sep_conv_5x5", 0), ("skip_connect", 1)]).key()  # another op
    assert a.key() != genotype([("sep_conv_3x3", 1), ("skip_connect", 0)]).key()  # ops swap inputs
    assert a.key() != genotype(list(a.normal), reduce=[("max_pool_3x3", 0), ("skip_connect", 1)]).key()
    keys = {g.key() for g in PUBLISHED.values()}
    assert len(keys) == len(PUBLISHED)
    assert all(k.startswith("darts-") for k in keys)


def test_unknown_op_is_rejected_with_the_allowed_ops() -> None:
    with pytest.raises(ArchitectureError, match=r"normal\[1\]: unknown op 'conv_9x9'") as info:
        genotype([("sep_conv_3x3", 0), ("conv_9x9", 1)])
    for op in OPS.names():
        assert op in str(info.value)


def test_input_out_of_range_is_rejected() -> None:
    # Node 3 (the second intermediate node) may read states 0, 1 and 2 only.
    with pytest.raises(ArchitectureError, match=r"normal\[3\]: node 3 cannot take input 3; .* 0\.\.2"):
        genotype([("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 3)])
    with pytest.raises(ArchitectureError, match="cannot take input -1"):
        genotype([("sep_conv_3x3", -1), ("sep_conv_3x3", 1)])


def test_odd_edge_count_and_bad_concat_are_rejected() -> None:
    with pytest.raises(ArchitectureError, match=r"two .* edges per node, got 3"):
        genotype([("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 0)])
    with pytest.raises(ArchitectureError, match=r"normal_concat \[2, 7\] must name states in 0\.\.3"):
        DartsGenotype(
            (("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 2)), (2, 7),
            (("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 2)), (2, 3),
        )


def test_from_dict_names_unknown_and_missing_keys() -> None:
    with pytest.raises(ArchitectureError, match="unknown: normals"):
        DartsGenotype.from_dict({**DARTS_V2_JSON, "normals": []})
    with pytest.raises(ArchitectureError, match="missing: reduce_concat"):
        DartsGenotype.from_dict({k: v for k, v in DARTS_V2_JSON.items() if k != "reduce_concat"})
    with pytest.raises(ArchitectureError, match="malformed"):
        DartsGenotype.from_dict({**DARTS_V2_JSON, "normal": [["sep_conv_3x3"]]})


def test_from_json_rejects_an_unknown_space() -> None:
    with pytest.raises(ArchitectureError, match=r"names space 'nope'; known: .*darts"):
        Architecture.from_json(json.dumps({"space": "nope"}))


# --- published genotypes ------------------------------------------------------------------


def test_load_genotype_reads_a_json_file_in_the_published_form(tmp_path: Path) -> None:
    path = tmp_path / "darts_v2.json"
    path.write_text(json.dumps(DARTS_V2_JSON))
    assert load_genotype(str(path)) == PUBLISHED["DARTS_V2"]
    # The output of to_json (with its "space" key) reads back too.
    path.write_text(PUBLISHED["DARTS_V1"].to_json(indent=2))
    assert load_genotype(str(path)) == PUBLISHED["DARTS_V1"]


def test_load_genotype_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ArchitectureError, match=r"missing\.json' does not exist"):
        load_genotype(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ArchitectureError, match=r"bad\.json' is not valid JSON"):
        load_genotype(str(bad))
    # Bytes that are not UTF-8 were a UnicodeDecodeError's traceback; a folder "did not exist".
    bad.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ArchitectureError, match=r"bad\.json' is not UTF-8 text \(byte 0xff at offset 0\)"):
        load_genotype(str(bad))
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(ArchitectureError, match=r"folder\.json' is not a file"):
        load_genotype(str(tmp_path / "folder.json"))
    bad.write_text(json.dumps({**DARTS_V2_JSON, "normal": [["conv_9x9", 0], ["sep_conv_3x3", 1]]}))
    with pytest.raises(ArchitectureError, match=r"bad\.json'.*unknown op 'conv_9x9'"):
        load_genotype(str(bad))


def test_load_genotype_by_name_and_alias() -> None:
    assert load_genotype("DARTS_V2") == PUBLISHED["DARTS_V2"]
    assert load_genotype("DARTS") == PUBLISHED["DARTS_V2"]  # quark0/darts: DARTS = DARTS_V2
    assert load_genotype("DARTS_V2").normal == tuple(tuple(e) for e in DARTS_V2_JSON["normal"])
    assert load_genotype("PCDARTS") == PUBLISHED["PC_DARTS_cifar"]  # PC-DARTS genotypes.py


def test_unknown_genotype_name_lists_the_published_ones() -> None:
    with pytest.raises(ArchitectureError, match="unknown genotype 'DARTS_V3'") as info:
        load_genotype("DARTS_V3")
    for name in [*PUBLISHED, "DARTS"]:
        assert name in str(info.value)


def test_space_parse_accepts_names_and_json_text() -> None:
    space = DartsCnnSpace()
    assert space.parse("DARTS") == PUBLISHED["DARTS_V2"]
    assert space.parse(PUBLISHED["DARTS_V1"].to_json()) == PUBLISHED["DARTS_V1"]


# --- the space ------------------------------------------------------------------------------


def test_space_is_registered_with_its_config() -> None:
    entry = SPACES.entry("darts")
    assert entry.target is DartsCnnSpace and entry.config is DartsSpaceConfig


@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_sample_gives_genotypes_the_space_contains_reproducibly(nodes: int) -> None:
    space = DartsCnnSpace(DartsSpaceConfig(nodes=nodes))
    samples = [space.sample(random.Random(7)) for _ in range(2)]
    assert samples[0] == samples[1]
    rng = random.Random(0)
    drawn = [space.sample(rng) for _ in range(20)]
    for g in drawn:
        assert space.contains(g)
        assert g.nodes == nodes
        assert "none" not in {op for op, _ in (*g.normal, *g.reduce)}
        for i in range(nodes):  # two distinct inputs per node
            assert g.normal[2 * i][1] != g.normal[2 * i + 1][1]
    assert len({g.key() for g in drawn}) > 1


def test_contains_rejects_other_node_counts_and_ops() -> None:
    space = DartsCnnSpace(DartsSpaceConfig(nodes=4))
    assert space.contains(PUBLISHED["DARTS_V2"])
    assert not space.contains(PUBLISHED["NASNet"])  # 5 nodes, sep_conv_7x7
    small = DartsCnnSpace(DartsSpaceConfig(nodes=4, primitives=("none", "skip_connect", "sep_conv_3x3")))
    assert not small.contains(PUBLISHED["DARTS_V2"])  # uses dil_conv_3x3 and max_pool_3x3


# --- evaluation networks and their published parameter counts -----------------------------
# Exact counts of this implementation; they equal those of the authors' code: quark0/darts
# cnn/train.py prints "param size = 3.349342MB" for DARTS_V2 on CIFAR-10 and
# cnn/train_imagenet.py 4.718752MB on ImageNet (both without the auxiliary head).


@pytest.mark.parametrize(
    ("name", "dataset", "exact", "published", "digits"),
    [
        # papers.json darts.reported["README.md"].CIFAR10_params_M: 3.3
        pytest.param("DARTS_V2", CIFAR10, 3_349_342, 3.3, 1, id="DARTS_V2-cifar10"),
        # No published figure is checked: the paper's first-order row (3.3M, papers.json
        # darts.reported["paper_via_PC-DARTS_README_and_MiLeNAS_Table1/2"]) does not match the
        # DARTS_V1 genotype in cnn/genotypes.py, which has 3.17M parameters in the authors' code too.
        pytest.param("DARTS_V1", CIFAR10, 3_169_414, None, 1, id="DARTS_V1-cifar10"),
        # papers.json pc_darts.reported["README.md"].CIFAR10.params_M: 3.6
        pytest.param("PC_DARTS_cifar", CIFAR10, 3_634_678, 3.6, 1, id="PC_DARTS-cifar10"),
        # papers.json milenas.reported.paper_Table1_CIFAR10[0].params_M: 3.87 (MiLeNAS Table 1)
        pytest.param("MiLeNAS", CIFAR10, 3_874_222, 3.87, 2, id="MiLeNAS-cifar10"),
        # papers.json milenas.reported.paper_Table1_CIFAR10[1..3]: 2.87, 2.86, 2.09 (MiLeNAS
        # Table 1); which genotype each row is: milenas.other_paper_rows_to_genotypes.
        pytest.param("MiLeNAS_r118_e100_92_n4r1", CIFAR10, None, 2.87, 2, id="MiLeNAS_r118-cifar10"),
        pytest.param("MiLeNAS_V2_r2_e100", CIFAR10, None, 2.86, 2, id="MiLeNAS_V2_r2-cifar10"),
        pytest.param("MiLeNAS_v2_r5_e200", CIFAR10, None, 2.09, 2, id="MiLeNAS_v2_r5-cifar10"),
        # papers.json darts.reported["README.md"].ImageNet_params_M: 4.7
        pytest.param("DARTS_V2", IMAGENET, 4_718_752, 4.7, 1, id="DARTS_V2-imagenet"),
    ],
)
def test_published_network_has_the_published_parameter_count(
    name: str, dataset: DatasetInfo, exact: int | None, published: float | None, digits: int
) -> None:
    model = DartsCnnSpace().build(load_genotype(name), dataset, auxiliary=True)
    params = count_params(model)
    if exact is not None:
        assert params == exact
    if published is not None:
        assert round(params / 1e6, digits) == published
    assert model.auxiliary_head is not None


def test_build_uses_the_papers_sizes() -> None:
    space = DartsCnnSpace()
    cifar = space.build(PUBLISHED["DARTS_V2"], CIFAR10)
    assert len(cifar.cells) == 20 and cifar.stem[0].out_channels == 3 * 36
    imagenet = space.build(PUBLISHED["DARTS_V2"], IMAGENET)
    assert len(imagenet.cells) == 14 and imagenet.classifier.out_features == 1000
    assert cifar.auxiliary_head is None


def test_build_rejects_other_architectures() -> None:
    class Other(Architecture):
        space = "other-test-space"

        def to_dict(self) -> dict:
            return {}

        @classmethod
        def from_dict(cls, data: dict) -> Other:
            return cls()

    with pytest.raises(ArchitectureError, match="builds DartsGenotype, got Other"):
        DartsCnnSpace().build(Other(), CIFAR10)


def test_small_eval_network_returns_aux_logits_in_training_only() -> None:
    torch.manual_seed(0)
    model = DartsCnnSpace().build(
        PUBLISHED["DARTS_V2"], CIFAR10, channels=8, layers=5, auxiliary=True, drop_path_prob=0.2
    )
    x = torch.randn(2, 3, 32, 32)  # (B, C, H, W)

    model.train()
    logits, aux = model(x)
    assert logits.shape == (2, 10) and aux.shape == (2, 10)
    (logits.sum() + 0.4 * aux.sum()).backward()
    assert all(p.grad is not None for p in model.parameters())

    model.eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)
    with torch.no_grad():
        assert torch.equal(model(x), out)  # no drop path in eval mode
