"""Cell width and depth as Shu et al. define them ("Understanding Architectures Learnt by
Cell-based Neural Architecture Search", ICLR 2020, Sec. 3.1), recorded for every candidate of a
DARTS-cell search and compared with random cells in ``raynas report`` and in MLflow."""

from __future__ import annotations

import base64
import random
import statistics
from pathlib import Path

import pytest

from raynas.runs.common import RANDOM_CELLS, cell_shapes, random_cell_shapes, shape_space
from raynas.runs.report import build_report, format_html, format_text
from raynas.spaces import SPACES
from raynas.spaces.darts_cnn import DartsSpaceConfig
from raynas.spaces.darts_genotype import DartsGenotype, cell_shape, published_genotype
from raynas.spaces.nb201 import Nb201Arch
from raynas.tracking.results import ResultsStore, SearchInfo
from raynas.types import EvalResult


def test_recurrent_cells_have_the_shapes_counted_by_hand() -> None:
    from raynas.spaces.darts_rnn import PUBLISHED
    from raynas.spaces.darts_rnn import cell_shape as recurrent_shape

    # DARTS_V2: node 1 on state 0 (the cell's input: 1 wide); the longest path is
    # 0 -> 1 -> 2 -> 5 -> 6 (or 8) -> output: 5 connections.
    v2 = PUBLISHED["DARTS_V2"]
    assert recurrent_shape(v2.recurrent, v2.concat) == (1, 5)
    # DARTS_V1: 0 -> 1 -> 2 -> 3 -> 4 -> 5 -> 7 -> output: 7.
    v1 = PUBLISHED["DARTS_V1"]
    assert recurrent_shape(v1.recurrent, v1.concat) == (1, 7)
    flat = tuple(("tanh", 0) for _ in range(8))  # every node on state 0: 8 wide, 2 deep
    assert recurrent_shape(flat, tuple(range(1, 9))) == (8, 2)
    chain = tuple(("relu", i) for i in range(8))  # each node on the one before: 1 wide, 9 deep
    assert recurrent_shape(chain, tuple(range(1, 9))) == (1, 9)
    assert recurrent_shape(chain, (1,)) == (1, 2)  # the output reads node 1 only
    space = SPACES.create("darts_rnn")
    assert space.cell_shape(v2) == {"recurrent_width": 1, "recurrent_depth": 5}
    assert cell_shapes(space, v2) == {"recurrent": (1.0, 5.0)}
    randoms = random_cell_shapes(space, cells=50)
    assert list(randoms) == ["recurrent"] and len(randoms["recurrent"]) == 50


def test_published_cells_have_the_shapes_counted_by_hand() -> None:
    # DARTS_V2's normal cell: nodes 2, 3, 4 take only the cell's inputs (1c each); node 5 takes
    # input 0 and node 2 (half its connections from the inputs: 0.5c); the longest path is
    # input -> node 2 -> node 5 -> output: 3 connections.
    darts = published_genotype("DARTS_V2")
    assert cell_shape(darts.normal, darts.normal_concat) == (3.5, 3)
    # Its reduction cell: node 2 on both inputs (1c); nodes 3, 4 and 5 each on node 2 and one
    # input (0.5c each): 2.5c; input -> node 2 -> node 3 -> output: 3.
    assert cell_shape(darts.reduce, darts.reduce_concat) == (2.5, 3)
    # NASNet's normal cell: five nodes, every one on the inputs: the widest and shallowest.
    nasnet = published_genotype("NASNet")
    assert cell_shape(nasnet.normal, nasnet.normal_concat) == (5.0, 2)
    # A chain: each node on the one before (node 2 on both inputs): 1c wide, 5 deep.
    chain = (("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 2), ("skip_connect", 2),
             ("skip_connect", 3), ("skip_connect", 3), ("skip_connect", 4), ("skip_connect", 4))
    assert cell_shape(chain, (2, 3, 4, 5)) == (1.0, 5)
    assert cell_shape(chain, (2,)) == (1.0, 2)  # the output reads node 2 only


def test_auto_deeplab_and_stacked_bnas_cells_have_the_shapes_counted_by_hand() -> None:
    # Auto-DeepLab's found cell (the paper's Fig. 3, `hnasnet`): blocks 0 and 1 on both of the
    # cell's inputs (1 each), block 2 on block 1 and H^(l-2) (0.5), block 3 on blocks 2 and 0,
    # block 4 on blocks 1 and 3 (0 each): 2.5 wide; input -> block 0 -> block 3 -> block 4, and
    # block 1 -> block 2 -> block 3 -> block 4: output after 5 connections.
    adl = SPACES.create("auto_deeplab")
    assert adl.cell_shape(adl.parse("hnasnet")) == {"cell_width": 2.5, "cell_depth": 5}
    assert list(random_cell_shapes(adl, cells=20)) == ["cell"]
    # Stacked BNAS on DARTS_V2's cells: the deep cells' topology is its normal cell's, the broad
    # and enhancement cells' its reduction cell's (as counted above).
    bnas = SPACES.create("stacked_bnas")
    assert cell_shapes(bnas, bnas.parse("DARTS_V2")) == {"normal": (3.5, 3.0), "reduce": (2.5, 3.0)}


def test_enas_cells_have_the_shapes_counted_by_hand() -> None:
    # ENAS's final arc (cifar10_micro_final.sh). Normal cell: every node takes the cell's inputs
    # only (node 2 both branches on state 0, ..., node 6 on states 0 and 1): 5 wide, the output
    # after 2 connections. Reduction cell: node 4 takes state 1 and node 3 (0.5), the other four
    # nodes the inputs only: 4.5 wide; input -> node 3 -> node 4 -> output: 3 connections. A node
    # taking one state twice counts it twice, and an unused input is part of the output.
    enas = SPACES.create("enas_micro")
    assert enas.cell_shape(enas.parse("ENAS")) == {
        "normal_width": 5.0, "normal_depth": 2, "reduce_width": 4.5, "reduce_depth": 3}
    small = SPACES.create("enas_micro", SPACES.entry("enas_micro").config(nodes=2))
    chain = small.parse("1 4 1 4 2 0 2 1 " * 2)  # node 2 twice on state 1, node 3 twice on node 2
    assert chain.normal_concat == (0, 3)  # state 0, unused, is 1 connection from the output
    assert small.cell_shape(chain) == {
        "normal_width": 1.0, "normal_depth": 3, "reduce_width": 1.0, "reduce_depth": 3}


def test_random_cells_are_narrower_and_deeper_than_darts_found() -> None:
    """Shu et al.'s finding, on this space's own random cells: DARTS_V2's normal cell is wider
    and shallower than random cells of its space on average."""
    space = shape_space(published_genotype("DARTS_V2"))
    assert space is not None
    shapes = random_cell_shapes(space, cells=RANDOM_CELLS, seed=0)
    assert len(shapes["normal"]) == len(shapes["reduce"]) == RANDOM_CELLS
    widths = [w for w, _ in shapes["normal"]]
    depths = [d for _, d in shapes["normal"]]
    # Uniform cells: node i's two inputs from its i + 2 states; each is an input with probability
    # 2 / (i + 2), so the expected width is sum over i = 0..3 of 2 / (i + 2) = 2.5667c.
    assert statistics.fmean(widths) == pytest.approx(sum(2 / (i + 2) for i in range(4)), abs=0.05)
    assert statistics.fmean(widths) < 3.5 and statistics.fmean(depths) > 3


def test_the_shape_of_other_node_counts_and_other_spaces() -> None:
    small = SPACES.create("darts", DartsSpaceConfig(nodes=2))
    arch = small.sample(random.Random(0))
    assert isinstance(arch, DartsGenotype) and arch.nodes == 2
    assert shape_space(arch).config.nodes == 2  # random cells for it have its node count
    width, depth = cell_shapes(small, arch)["normal"]
    assert 0 < width <= 2 and 2 <= depth <= 3
    fbnet = SPACES.create("fbnet")
    assert cell_shapes(fbnet, fbnet.sample(random.Random(0))) == {}  # it measures none


def test_nas_bench_201_cells_have_the_shapes_counted_by_hand() -> None:
    """One input (node 0), a summing output (node 3); only what reaches the output counts."""
    nb201 = SPACES.create("nb201")

    def shape(text: str) -> tuple[float, float]:
        return cell_shapes(nb201, Nb201Arch.parse(text))["cell"]

    # Every edge a convolution: node 1 on the input (1c), node 2 on the input and node 1 (1/2),
    # node 3 on the input, 1 and 2 (1/3): 11/6 c; input -> 1 -> 2 -> 3: 3 connections.
    conv = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    assert shape(conv) == (pytest.approx(1 + 1 / 2 + 1 / 3), 3)
    # Nodes 1 and 2 each on the input alone, node 3 on both and the input: 1 + 1 + 1/3, depth 2.
    wide = "|skip_connect~0|+|avg_pool_3x3~0|none~1|+|nor_conv_1x1~0|nor_conv_3x3~1|skip_connect~2|"
    assert shape(wide) == (pytest.approx(7 / 3), 2)
    # Node 2 reaches nothing (2->3 is none): it does not count; node 1 on the input, node 3 on
    # the input and node 1 (1/2): 1.5c, depth 2.
    dead_end = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_1x1~1|none~2|"
    assert shape(dead_end) == (1.5, 2)
    # Node 1 takes nothing (0->1 none): its edges carry zeros; the output on the input alone.
    unfed = "|none~0|+|none~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    assert shape(unfed) == (1.0, 1)
    # Nothing reaches the output: the cell outputs zeros, 0 wide and 0 deep.
    assert shape("|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|none~0|none~1|none~2|") == (0.0, 0)


def test_report_compares_the_best_cells_with_random_cells(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results", spool_dir=tmp_path / "spool")
    darts = published_genotype("DARTS_V2")
    store.append([
        EvalResult(architecture=darts, metrics={"valid_acc": 0.9, "params": 1.0}, trial_id="a"),
        EvalResult(architecture=darts, metrics={"valid_acc": 0.8, "params": 1.0}, trial_id="b"),
    ], info=SearchInfo(search="s", name="s", strategy="darts", dataset="cifar10", seed=0))
    report = build_report(store)
    (shape,) = report.shapes
    assert shape.found == {"normal": (3.5, 3.0), "reduce": (2.5, 3.0)} and shape.n_found == 1
    random_normal = random_cell_shapes(shape_space(darts))["normal"]
    assert shape.random["normal"] == pytest.approx(
        (statistics.fmean(w for w, _ in random_normal), statistics.fmean(d for _, d in random_normal))
    )
    text = format_text(report)
    assert "Cell shapes of the best architectures" in text and "normal: found 3.50c wide, 3.00 deep" in text
    page = format_html(report)
    assert "Cell shapes against random cells" in page
    # The plot of the best cells against the random ones, embedded as a PNG image.
    assert shape.found_points == {"normal": ((3.5, 3),), "reduce": ((2.5, 3),)}
    assert shape.random_points["normal"] == tuple(random_normal)
    tag = "<img alt='cell shapes of darts (4 nodes)' src='data:image/png;base64,"
    image = page.split(tag)[1].split("'")[0]
    assert base64.b64decode(image).startswith(b"\x89PNG")
    axes = shape.figure().axes
    assert [ax.get_title() for ax in axes] == ["normal cell", "reduce cell"]


@pytest.mark.parametrize(("space", "settings"), [
    ("stacked_bnas", {"channels": 4, "nodes": 2}), ("auto_deeplab", {"channels": 4, "layers": 2}),
    ("enas_micro", {"channels": 4, "layers": 1, "nodes": 2}),
])
def test_a_candidates_record_holds_its_cells_shape(space: str, settings: dict, tmp_path: Path) -> None:
    """What a sampling search records of each candidate (its child run's metrics, its Parquet
    row) holds the width and depth of its cells, on the spaces measured beside DARTS's."""
    from conftest import tiny_job

    from raynas.runs.common import CandidateCosts
    from raynas.runs.jobs import parse_job

    job = tiny_job(tmp_path, space={"name": space, **settings}, evaluator={"name": "scratch", "epochs": 1})
    job["space"] = {"name": space, **settings}
    if space == "auto_deeplab":  # its networks label every pixel
        job["data"] = {"name": "cityscapes", "path": str(tmp_path)}
    job["strategy"] = {"name": "random", "evaluations": 2}
    del job["train"]  # the scratch evaluator trains each candidate itself
    measured = SPACES.create(space, SPACES.entry(space).config(**settings))
    arch = measured.sample(random.Random(0))
    shape = measured.cell_shape(arch)
    recorded = CandidateCosts(parse_job(job)).complete(
        EvalResult(architecture=arch, metrics={"valid_acc": 0.5}, trial_id="t0")
    ).metrics
    assert {k: recorded[k] for k in shape} == shape and len(shape) in (2, 4)
