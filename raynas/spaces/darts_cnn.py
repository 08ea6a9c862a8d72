"""The DARTS CNN cell space (Liu et al., "DARTS: Differentiable Architecture Search", ICLR 2019).

A cell has two inputs (the outputs of the two previous cells), ``nodes`` intermediate nodes and
an output that concatenates the intermediate nodes. In a genotype each intermediate node keeps
two incoming edges, each an (operation, input) pair; inputs 0 and 1 are the cell's inputs and
``2 + i`` is intermediate node ``i``. A network stacks normal cells and, at one and two thirds
of its depth, reduction cells that halve the resolution and double the channels.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

from torch import nn

from raynas.config import Check, Rule, check_rules
from raynas.errors import ArchitectureError
from raynas.ops.convnext import CONVNEXT_PRIMITIVES
from raynas.ops.darts import OPS, PRIMITIVES
from raynas.ops.mixed import MIXED_OP_CHECKS
from raynas.ops.morphological import MORPHOLOGICAL_PRIMITIVES
from raynas.ops.robust import ROBUST_EDGES, ROBUST_SPACES, robust_primitives
from raynas.spaces.base import expect_arch
from raynas.spaces.darts_genotype import (
    DartsGenotype,
    Edge,
    cell_decisions,
    cell_edge_names,
    cell_shapes_trait,
    decode_cell,
    encode_cell,
    genotype_cell_shapes,
    load_genotype,
)
from raynas.spaces.registry import SPACES
from raynas.types import Architecture, DatasetInfo, Decision, decode_options

if TYPE_CHECKING:  # matplotlib loads only where a picture is drawn
    from matplotlib.figure import Figure

# Named candidate-operation sets for ``space.operations``.
OPERATION_SETS: dict[str, tuple[str, ...]] = {
    "darts": PRIMITIVES, "convnext": CONVNEXT_PRIMITIVES, "morphological": MORPHOLOGICAL_PRIMITIVES,
}


@dataclass(frozen=True)
class DartsSpaceConfig:
    """The DARTS search space and its supernet (defaults: DARTS ``train_search.py``).

    Attributes:
        channels: Initial channels of the supernet.
        layers: Number of cells in the supernet.
        nodes: Intermediate nodes per cell.
        stem_multiplier: The stem has ``stem_multiplier * channels`` channels.
        operations: The named set of candidate operations: ``darts`` (the paper's eight) or
            ``convnext`` (PIBConv's: pseudo-inverted bottlenecks for the separable convolutions, see
            :mod:`raynas.ops.convnext`) or ``morphological`` (learnable grey-scale dilation,
            erosion, opening, closing and gradient, see :mod:`raynas.ops.morphological`).
        primitives: Candidate operations on every edge, any names of the operation table (both
            sets may be mixed); empty: the ``operations`` set.
        mixed_op: How an edge combines its candidates (a name in ``raynas.ops.MIXED_OPS``).
        partial_k: With ``mixed_op: partial`` or ``attention``, 1/k of the channels go through the
            candidates.
        edge_normalization: Learn PC-DARTS's per-edge weights ``beta``.
        max_skip_connect: Derive normal cells with at most this many skip connections
            (P-DARTS uses 2); -1: no limit.
        bn_affine: Learnable BatchNorm scale and shift in the search cells (RF-DARTS).
        robust: One of RobustDARTS's reduced spaces ``s1`` ... ``s4`` (:mod:`raynas.ops.robust`):
            the candidates of every edge (in S1 each edge its own pair); empty: ``primitives``
            on every edge. Needs four nodes; sets the primitives itself.
        stem: The supernet's stem: ``cifar`` (one 3x3 convolution, DARTS's ``model_search.py``) or
            ``imagenet`` (three stride-2 3x3 convolutions in two stems, the first cell reading both:
            PC-DARTS's ``model_search_imagenet.py``, 224 pixels in, 28 at the first cell).
    """

    channels: Annotated[int, Rule(ge=2, even=True)] = 16
    layers: Annotated[int, Rule(ge=3, says="must be at least 3 (two reduction cells)")] = 8
    nodes: Annotated[int, Rule(ge=1)] = 4
    stem_multiplier: Annotated[int, Rule(ge=1)] = 3
    operations: Literal["darts", "convnext", "morphological"] = "darts"
    primitives: tuple[str, ...] = ()
    mixed_op: str = "weighted"
    partial_k: int = 4
    edge_normalization: bool = False
    max_skip_connect: Annotated[int, Rule(ge=-1, says="must be >= 0, or -1: no limit")] = -1
    bn_affine: bool = False
    robust: Literal["", "s1", "s2", "s3", "s4"] = ""
    stem: Literal["cifar", "imagenet"] = "cifar"

    checks: ClassVar[tuple[Check, ...]] = (
        Check(
            "not robust or (operations == 'darts' and primitives in ((), robust_primitives[robust]))",
            "space.robust sets every edge's candidates; leave space.operations and space.primitives unset",
            tables={"robust_primitives": {name: robust_primitives(name) for name in ROBUST_SPACES}},
        ),
        Check(
            "not robust or nodes * (nodes + 3) // 2 == robust_edges",  # num_cell_edges(nodes)
            "space.robust: RobustDARTS's spaces have 4 nodes (14 edges), got space.nodes={nodes}",
            tables={"robust_edges": ROBUST_EDGES},
        ),
        Check(
            "item in ops", "space.primitives: unknown op {item!r}; choose from: {join(ops)}",
            each="primitives", tables={"ops": OPS},
        ),
        Check("not primitives or set(primitives) - {'none'}",
              "space.primitives needs at least one op besides 'none'"),
        *MIXED_OP_CHECKS,
    )

    def __post_init__(self) -> None:
        from raynas.errors import ConfigError

        check_rules(self, "space")
        if self.robust:
            if self.robust not in ROBUST_SPACES:
                raise ConfigError(
                    f"space.robust: unknown space {self.robust!r}; choose from: {', '.join(ROBUST_SPACES)}"
                )
            object.__setattr__(self, "primitives", robust_primitives(self.robust))
        if self.operations not in OPERATION_SETS:
            raise ConfigError(
                f"space.operations: unknown operation set {self.operations!r}; "
                f"choose from: {', '.join(OPERATION_SETS)}"
            )
        if not self.primitives:
            object.__setattr__(self, "primitives", OPERATION_SETS[self.operations])

    def edge_ops(self, reduction: bool) -> tuple[tuple[str, ...], ...]:
        """The candidates of every edge of a cell (node by node, inputs in order), ``none`` included."""
        if self.robust:
            return ROBUST_SPACES[self.robust][int(reduction)]
        return (tuple(self.primitives),) * num_cell_edges(self.nodes)


def num_cell_edges(nodes: int) -> int:
    """Edges of a cell with ``nodes`` intermediate nodes: node i has 2 + i inputs."""
    return sum(2 + i for i in range(nodes))


# Evaluation settings of the papers: (initial channels, cells) per dataset family.
EVAL_DEFAULTS = {"cifar": (36, 20), "imagenet": (48, 14)}


@SPACES.register(
    "darts", config=DartsSpaceConfig,
    traits={
        "choices": True, "cell_shape": True, "two_input_cells": True, "one_shot": True, "drop_paths": True,
        "cell_shapes": cell_shapes_trait("nodes"),
    },
)
class DartsCnnSpace:
    """The DARTS CNN cell space.

    Args:
        config: Sizes of the supernet and the candidate operations.
    """

    architecture_type = DartsGenotype

    def __init__(self, config: DartsSpaceConfig | None = None) -> None:
        self.config = config or DartsSpaceConfig()

    def _ops(self, reduction: bool) -> list[tuple[str, ...]]:
        """The candidates a genotype may take on each edge of a cell (``none`` never)."""
        return [tuple(p for p in ops if p != "none") for ops in self.config.edge_ops(reduction)]

    def _per_edge(self) -> bool:
        """Whether edges differ in their candidates (RobustDARTS's S1)."""
        return len({ops for r in (False, True) for ops in self._ops(r)}) > 1

    def sample(self, rng: random.Random) -> DartsGenotype:
        """A uniformly random genotype: two distinct inputs per node, on each its edge's
        candidates other than ``none``."""

        def cell(reduction: bool) -> tuple[Edge, ...]:
            ops = self._ops(reduction)
            edges: list[Edge] = []
            for node in range(self.config.nodes):
                for index in sorted(rng.sample(range(node + 2), 2) if node else [0, 1]):
                    edges.append((rng.choice(ops[num_cell_edges(node) + index]), index))
            return tuple(edges)

        concat = tuple(range(2, 2 + self.config.nodes))
        return DartsGenotype(cell(False), concat, cell(True), concat)

    def decisions(self) -> tuple[Decision, ...]:
        """Per cell (normal, then reduce) and node: which two inputs (``"0+1"``, ...), then the op
        on the first and on the second input (every primitive but ``none``). Where edges have
        candidates of their own (RobustDARTS's S1), the op of every input of the node instead
        (``op_from_0``, ...): those of the two inputs taken count."""
        nodes = [f"node{node + 2}" for node in range(self.config.nodes)]
        if not self._per_edge():
            ops = self._ops(False)[0]
            return tuple(d for cell in ("normal", "reduce") for d in cell_decisions(cell, nodes, ops))
        out: list[Decision] = []
        for cell, reduction in (("normal", False), ("reduce", True)):
            ops = self._ops(reduction)
            for node, label in enumerate(nodes):
                pairs = tuple(f"{a}+{b}" for a, b in itertools.combinations(range(node + 2), 2))
                out.append(Decision(f"{cell}.{label}.inputs", pairs))
                out += [
                    Decision(f"{cell}.{label}.op_from_{j}", ops[num_cell_edges(node) + j])
                    for j in range(node + 2)
                ]
        return tuple(out)

    def encode(self, arch: Architecture) -> tuple[int, ...]:
        """Option indices of :meth:`decisions`; a node's two edges are ordered by input."""
        if not self.contains(arch):
            raise ArchitectureError(f"not a genotype of this darts space: {arch}")
        assert isinstance(arch, DartsGenotype)
        decisions = self.decisions()
        if self._per_edge():
            values: list[int] = []
            for edges in (arch.normal, arch.reduce):
                for node in range(self.config.nodes):
                    (op_a, a), (op_b, b) = sorted(edges[2 * node : 2 * node + 2], key=lambda e: e[1])
                    chosen = {a: op_a, b: op_b}
                    values.append(decisions[len(values)].options.index(f"{a}+{b}"))
                    for j in range(node + 2):
                        options = decisions[len(values)].options
                        values.append(options.index(chosen[j]) if j in chosen else 0)
            return tuple(values)
        per_cell = 3 * self.config.nodes
        nodes = [f"node {node + 2}" for node in range(self.config.nodes)]
        return tuple(
            v for k, cell in enumerate((arch.normal, arch.reduce))
            for v in encode_cell(cell, decisions[k * per_cell : (k + 1) * per_cell], nodes)
        )

    def decode(self, values: tuple[int, ...] | list[int]) -> DartsGenotype:
        """The genotype with these option indices (see :meth:`decisions`)."""
        names = decode_options(self.decisions(), values)
        concat = tuple(range(2, 2 + self.config.nodes))
        if self._per_edge():
            cells: list[tuple[Edge, ...]] = []
            for _ in range(2):
                edges: list[Edge] = []
                for node in range(self.config.nodes):
                    a, b = (int(v) for v in names.pop(0).split("+"))
                    ops = [names.pop(0) for _ in range(node + 2)]
                    edges += [(ops[a], a), (ops[b], b)]
                cells.append(tuple(edges))
            return DartsGenotype(cells[0], concat, cells[1], concat)
        per_cell = 3 * self.config.nodes
        return DartsGenotype(decode_cell(names[:per_cell]), concat, decode_cell(names[per_cell:]), concat)

    def contains(self, arch: Architecture) -> bool:
        """Whether ``arch`` is a genotype of this space (node count, and on every edge one of
        that edge's candidates)."""
        if not (
            isinstance(arch, DartsGenotype)
            and arch.nodes == self.config.nodes
            and len(arch.reduce) == len(arch.normal)
        ):
            return False
        for edges, reduction in ((arch.normal, False), (arch.reduce, True)):
            allowed = self.config.edge_ops(reduction)
            for i, (op, index) in enumerate(edges):
                if op not in allowed[num_cell_edges(i // 2) + index]:
                    return False
        return True

    def parse(self, text: str) -> DartsGenotype:
        """A genotype from a published name, a JSON file, or JSON text."""
        return load_genotype(text)

    def build(
        self,
        arch: Architecture,
        dataset: DatasetInfo,
        *,
        channels: int | None = None,
        layers: int | None = None,
        auxiliary: bool = False,
        drop_path_prob: float = 0.0,
    ) -> nn.Module:
        """The evaluation network of a genotype: NetworkImageNet for ImageNet, else NetworkCIFAR;
        for segmentation data, the ImageNet network as a DeepLabv3+ encoder
        (:class:`~raynas.spaces.darts_segmentation.DartsSegmentationNet`).

        Args:
            arch: A :class:`DartsGenotype`.
            dataset: Input channels, classes, image size and task.
            channels: Initial channels (default: 36 for CIFAR-style data, 48 for ImageNet and
                segmentation).
            layers: Number of cells (default: 20 for CIFAR-style data, 14 for ImageNet and
                segmentation).
            auxiliary: Add the auxiliary head (used during training only; classification only).
            drop_path_prob: Drop-path probability on the cells' non-identity edges.
        """
        from raynas.spaces.darts_nets import NetworkCIFAR, NetworkImageNet

        arch = expect_arch(arch, DartsGenotype)
        if dataset.task == "segmentation":
            from raynas.errors import ConfigError
            from raynas.spaces.darts_segmentation import DartsSegmentationNet

            if auxiliary:
                raise ConfigError(
                    f"the darts segmentation network for {dataset.name} has no auxiliary head; "
                    "set retrain.auxiliary_weight to 0"
                )
            default_c, default_l = EVAL_DEFAULTS["imagenet"]
            return DartsSegmentationNet(
                genotype=arch, channels=channels or default_c, layers=layers or default_l,
                num_classes=dataset.num_classes, in_channels=dataset.in_channels,
                drop_path_prob=drop_path_prob,
            )
        family = "imagenet" if dataset.name.lower() == "imagenet" else "cifar"
        default_c, default_l = EVAL_DEFAULTS[family]
        network = NetworkImageNet if family == "imagenet" else NetworkCIFAR
        return network(
            genotype=arch,
            channels=channels or default_c,
            layers=layers or default_l,
            num_classes=dataset.num_classes,
            in_channels=dataset.in_channels,
            auxiliary=auxiliary,
            drop_path_prob=drop_path_prob,
        )

    @property
    def op_names(self) -> tuple[str, ...]:
        """The candidates, in the column order of the supernet's architecture weights."""
        return tuple(self.config.primitives)

    @property
    def edge_names(self) -> tuple[str, ...]:
        """The edges, in the row order of the supernet's architecture weights: ``node j → node i``
        (nodes 0 and 1 are the cell's inputs, the outputs of the two cells before it)."""
        return cell_edge_names(self.config.nodes)

    def cell_shape(self, arch: Architecture) -> dict[str, float]:
        """The width (in units of a node's channels) and depth of the normal and the reduction
        cell (:func:`~raynas.spaces.darts_genotype.cell_shape`): ``normal_width``,
        ``normal_depth``, ``reduce_width``, ``reduce_depth``."""
        return genotype_cell_shapes(expect_arch(arch, DartsGenotype, "measures"))

    def draw(self, arch: Architecture) -> Figure:
        """The normal and the reduction cell, drawn as in the DARTS paper's Figures 4 and 5."""
        from raynas.spaces.drawing import draw_darts_cells

        arch = expect_arch(arch, DartsGenotype, "draws")
        fig = draw_darts_cells(arch, ("normal cell", "reduction cell"))
        fig.suptitle(arch.key(), fontsize=10)
        return fig


