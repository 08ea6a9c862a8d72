"""DARTS genotypes (Liu et al., "DARTS: Differentiable Architecture Search", ICLR 2019): the record
of a normal and a reduction cell, its published instances, and the flat categorical view of a
two-input cell that the DARTS and Auto-DeepLab spaces share.

In a genotype each intermediate node keeps two incoming edges, each an (operation, input) pair;
inputs 0 and 1 are the cell's inputs and ``2 + i`` is intermediate node ``i``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from raynas.errors import ArchitectureError
from raynas.ops.darts import OPS
from raynas.types import Architecture, Decision, check_keys, published_record

Edge = tuple[str, int]


def check_cell_edges(edges: Sequence[Edge], *, cell: str, ops: Sequence[str], what: str) -> None:
    """Raise an :class:`ArchitectureError` naming the first bad part of a two-input cell's edges:
    not two per node, an op not in ``ops``, or an input that is not an earlier state.

    Args:
        edges: The cell's (op, input) edges, two per node.
        cell: Its name (``normal``, ``reduce``), for the message.
        ops: The ops allowed.
        what: What the record is called, for the message (``genotype``).
    """
    if not edges or len(edges) % 2:
        raise ArchitectureError(f"{what} {cell!r} must list two (op, input) edges per node, got {len(edges)}")
    for i, (op, index) in enumerate(edges):
        node = i // 2
        if op not in ops:
            raise ArchitectureError(f"{what} {cell}[{i}]: unknown op {op!r}; choose one of: {', '.join(ops)}")
        if not 0 <= index < node + 2:
            raise ArchitectureError(
                f"{what} {cell}[{i}]: node {node + 2} cannot take input {index}; "
                f"allowed inputs are 0..{node + 1}"
            )


def cell_decisions(name: str, node_names: Sequence[str], ops: tuple[str, ...]) -> list[Decision]:
    """The flat view of a cell whose nodes each take two distinct earlier states (inputs 0 and 1
    are the cell's inputs): per node, which two inputs (``"0+1"``, ...), then the op on each."""
    out: list[Decision] = []
    for node, label in enumerate(node_names):
        pairs = tuple(f"{a}+{b}" for a, b in itertools.combinations(range(node + 2), 2))
        out += [
            Decision(f"{name}.{label}.inputs", pairs),
            Decision(f"{name}.{label}.op_a", ops),
            Decision(f"{name}.{label}.op_b", ops),
        ]
    return out


def encode_cell(edges: Sequence[Edge], decisions: Sequence[Decision], node_names: Sequence[str]) -> list[int]:
    """Option indices of :func:`cell_decisions` for ``edges`` (two per node, ordered by input)."""
    values: list[int] = []
    for i in range(0, len(edges), 2):
        (op_a, a), (op_b, b) = sorted(edges[i : i + 2], key=lambda e: e[1])
        if a == b:
            raise ArchitectureError(
                f"{node_names[i // 2]} takes input {a} twice; the flat view needs two distinct inputs"
            )
        inputs, ops = decisions[len(values)], decisions[len(values) + 1]
        values += [inputs.options.index(f"{a}+{b}"), ops.options.index(op_a), ops.options.index(op_b)]
    return values


def decode_cell(names: Sequence[str]) -> tuple[Edge, ...]:
    """The edges of a cell from its decoded :func:`cell_decisions` options (three per node)."""
    edges: list[Edge] = []
    for i in range(0, len(names), 3):
        a, b = (int(v) for v in names[i].split("+"))
        edges += [(names[i + 1], a), (names[i + 2], b)]
    return tuple(edges)


def cell_edge_names(nodes: int) -> tuple[str, ...]:
    """A cell's edges in the order of its supernet's rows: ``node j → node i`` (nodes 0 and 1 are
    the cell's inputs, the outputs of the two cells before it)."""
    return tuple(f"node {j} → node {i + 2}" for i in range(nodes) for j in range(2 + i))


def cell_shapes_trait(nodes: str) -> dict[str, str]:
    """The ``cell_shapes`` trait of a space of these cells, whose node count is its setting
    ``nodes``: ``[depth, least width, most width]`` for each depth its cells can have (with every
    node's output in the cell's output). Every node takes two of the cell's inputs and earlier
    nodes: depth 2 only when all take the inputs (width = nodes); each step of depth past 2 costs
    at least half a node of width; the least width is 1.5 (node 3 takes node 2 and an input, the
    rest nodes alone), 2 at depth 3 with three nodes or more. tests/test_startup.py counts them
    from the cells."""
    n = nodes
    return {"expr": f"[[2, {n}, {n}]] + [[d, 2 if d == 3 and {n} > 2 else 1.5, {n} - (d - 2) / 2] "
                    f"for d in range(3, {n} + 2)]"}


def cell_shape(edges: Sequence[Edge], concat: Sequence[int]) -> tuple[float, int]:
    """The width and depth of a cell as Shu et al. define them ("Understanding Architectures Learnt
    by Cell-based Neural Architecture Search", ICLR 2020, Sec. 3.1), the width in units of ``c``,
    the width of one intermediate node.

    Depth: the connections along the longest path from the cell's inputs (0 and 1) to its output
    (the concatenation of the ``concat`` nodes). Width: the total width of the intermediate nodes
    connected to the cell's inputs, a node that also takes intermediate nodes counting for the share
    of its connections that come from the inputs (DARTS_V2's normal cell: 3.5c and 3).
    """
    nodes = len(edges) // 2
    inputs = [[j for _, j in edges[2 * i : 2 * i + 2]] for i in range(nodes)]
    depth = [0, 0]  # the cell's inputs
    for preds in inputs:
        depth.append(1 + max(depth[j] for j in preds))
    width = sum(sum(j < 2 for j in preds) / len(preds) for preds in inputs)
    return width, 1 + max(depth[j] for j in concat)


@dataclass(frozen=True)
class DartsGenotype(Architecture):
    """A DARTS genotype: two (op, input) edges per intermediate node, for both cell types.

    The JSON form is the published one:
    ``{"normal": [["sep_conv_3x3", 0], ...], "normal_concat": [2, 3, 4, 5], "reduce": [...], ...}``.
    """

    space = "darts"

    normal: tuple[Edge, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Edge, ...]
    reduce_concat: tuple[int, ...]

    def __post_init__(self) -> None:
        for cell in ("normal", "reduce"):
            edges: tuple[Edge, ...] = getattr(self, cell)
            check_cell_edges(edges, cell=cell, ops=OPS.names(), what="genotype")
            concat: tuple[int, ...] = getattr(self, f"{cell}_concat")
            last = len(edges) // 2 + 1
            if not concat or any(not 0 <= c <= last for c in concat):
                raise ArchitectureError(
                    f"genotype {cell}_concat {list(concat)} must name states in 0..{last}"
                )

    @property
    def nodes(self) -> int:
        """Number of intermediate nodes per cell."""
        return len(self.normal) // 2

    def to_dict(self) -> dict[str, Any]:
        return {
            "normal": [list(e) for e in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [list(e) for e in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DartsGenotype:
        check_keys(data, ("normal", "normal_concat", "reduce", "reduce_concat"), "a DARTS genotype")
        try:
            return cls(
                normal=tuple((str(op), int(i)) for op, i in data["normal"]),
                normal_concat=tuple(int(i) for i in data["normal_concat"]),
                reduce=tuple((str(op), int(i)) for op, i in data["reduce"]),
                reduce_concat=tuple(int(i) for i in data["reduce_concat"]),
            )
        except (TypeError, ValueError) as exc:
            raise ArchitectureError(f"malformed DARTS genotype: {exc}") from None

    def canonical(self) -> Any:
        # The two edges of a node are unordered: (a from 0, b from 1) == (b from 1, a from 0).
        def cell(edges: tuple[Edge, ...]) -> list[list[list[Any]]]:
            return [sorted([list(e) for e in edges[i : i + 2]]) for i in range(0, len(edges), 2)]

        return {
            "normal": cell(self.normal),
            "normal_concat": sorted(self.normal_concat),
            "reduce": cell(self.reduce),
            "reduce_concat": sorted(self.reduce_concat),
        }

    def __str__(self) -> str:
        return (
            f"Genotype(normal={list(self.normal)}, normal_concat={list(self.normal_concat)}, "
            f"reduce={list(self.reduce)}, reduce_concat={list(self.reduce_concat)})"
        )


def genotype_cell_shapes(genotype: DartsGenotype) -> dict[str, float]:
    """The width and depth (:func:`cell_shape`) of a genotype's normal and reduction cell:
    ``normal_width``, ``normal_depth``, ``reduce_width``, ``reduce_depth``."""
    normal = cell_shape(genotype.normal, genotype.normal_concat)
    reduce = cell_shape(genotype.reduce, genotype.reduce_concat)
    return {"normal_width": normal[0], "normal_depth": normal[1],
            "reduce_width": reduce[0], "reduce_depth": reduce[1]}


def _load_published() -> tuple[dict[str, DartsGenotype], dict[str, str]]:
    text = resources.files("raynas.spaces").joinpath("darts_genotypes.json").read_text()
    data = json.loads(text)
    aliases = data.pop("_aliases")
    data.pop("_source")
    return {name: DartsGenotype.from_dict(g) for name, g in data.items()}, aliases


PUBLISHED, ALIASES = _load_published()


def published_genotype(name: str) -> DartsGenotype:
    """A published genotype by name (DARTS_V1, DARTS_V2, NASNet, AmoebaNet, PC_DARTS, MiLeNAS, ...)."""
    return published_record(name, PUBLISHED, ALIASES, "genotype")


def load_genotype(text: str) -> DartsGenotype:
    """A published genotype by name, or one from JSON text or a JSON file in the published form."""
    genotype = DartsGenotype.read_json(text, form="in the published genotype form", noun="genotype")
    return genotype if genotype is not None else published_genotype(text.strip())
