"""The Stacked BCNN space (Ding, Chen, Li, Zhao and Chen, "Stacked BNAS: Rethinking Broad
Convolutional Neural Network for Neural Architecture Search", 2021).

BNAS's broad network (BCNN) reuses two cell topologies: a convolution block is deep cells (DARTS
normal cells) closed by a broad cell (a reduction cell), and an enhancement cell (the reduction
cell's topology at stride 1) enhances the blocks' outputs; the outputs are fused for the
classifier through *knowledge embeddings* (BNAS-v2's ``model.py``: a 1x1 conv, and a factorized
reduction where the resolution differs). Stacked BNAS stacks *mini-BCNNs*, each a whole small BCNN::

    x ─ deep cells ─┬─ broad cell ─┬──────────────────────┐
                    │              ke1                   ke3
                    ├─ ke0 ─── enhancement cell ─ ke4 ─── output node (concatenation) ─ next block
                    └─ ke2 ──────────────────────────────┘

The deep and broad cells' outputs feed the enhancement cell (multi-scale feature enhancement);
the deep, broad and enhancement cells' outputs meet at the output node (multi-scale feature
fusion), which feeds the next mini-BCNN, the last one the global pooling and the classifier. Every
arrow ``ke*`` is a knowledge embedding (:mod:`raynas.ops.bnas`) to the block's width (twice its
input width, as the broad cell doubles it), halving the resolution from the deep cells. Its
Knowledge Embedding Search (KES) learns which embedding each arrow takes.

An architecture (:class:`StackedBnasArch`) is the two cells (a DARTS genotype: ``normal`` for the
deep cells, ``reduce`` for the broad and enhancement cells) and the five knowledge embeddings,
shared by every mini-BCNN as the cells are, so the search network's choice builds an evaluation
network of any depth. Written as a DARTS-space genotype name, JSON, or ``<genotype>|ke0,...,ke4``;
a genotype alone takes BNAS's hand-designed embedding (``conv_1x1``) on every arrow.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import torch
from torch import nn

from raynas.config import Check, Rule, check_rules
from raynas.errors import ArchitectureError, ConfigError
from raynas.ops.bnas import KNOWLEDGE_PRIMITIVES, knowledge_op
from raynas.ops.darts import OPS, PRIMITIVES
from raynas.ops.mixed import MIXED_OP_CHECKS
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
from raynas.spaces.darts_nets import EvalCell
from raynas.spaces.registry import SPACES
from raynas.types import Architecture, DatasetInfo, Decision, check_keys, decode_options

if TYPE_CHECKING:  # matplotlib loads only where a picture is drawn
    from matplotlib.figure import Figure

# The knowledge embeddings of a mini-BCNN, in the order of an architecture's ``knowledge``, and
# the stride of each (2: from the deep cells, at twice the broad cell's resolution).
CONNECTIONS: tuple[str, ...] = (
    "deep→enhancement",
    "broad→enhancement",
    "deep→output",
    "broad→output",
    "enhancement→output",
)
STRIDES: tuple[int, ...] = (2, 1, 2, 1, 1)
HAND_DESIGNED = "conv_1x1"  # BNAS's knowledge embedding
_FORM = "a DARTS-space genotype name or JSON, or '<genotype>|ke0,ke1,ke2,ke3,ke4'"


@dataclass(frozen=True)
class StackedBnasArch(Architecture):
    """A Stacked BCNN architecture: the two cells and the five knowledge embeddings.

    Attributes:
        cells: ``normal`` is the deep cells' topology, ``reduce`` the broad and enhancement cells'.
        knowledge: The embedding on each arrow of :data:`CONNECTIONS`, by name (:mod:`raynas.ops.bnas`).
    """

    space = "stacked_bnas"

    cells: DartsGenotype
    knowledge: tuple[str, ...] = (HAND_DESIGNED,) * len(CONNECTIONS)

    def __post_init__(self) -> None:
        if not isinstance(self.cells, DartsGenotype):
            raise ArchitectureError(
                f"stacked_bnas cells must be a DARTS genotype, got {type(self.cells).__name__}"
            )
        if not isinstance(self.knowledge, tuple) or len(self.knowledge) != len(CONNECTIONS):
            raise ArchitectureError(
                f"stacked_bnas knowledge names {len(CONNECTIONS)} embeddings ({', '.join(CONNECTIONS)}), "
                f"got {self.knowledge!r}"
            )
        for arrow, name in zip(CONNECTIONS, self.knowledge, strict=True):
            if name not in KNOWLEDGE_PRIMITIVES:
                raise ArchitectureError(
                    f"stacked_bnas knowledge {arrow}: unknown embedding {name!r}; choose one of: "
                    f"{', '.join(KNOWLEDGE_PRIMITIVES)}"
                )

    def to_dict(self) -> dict[str, Any]:
        return {"cells": self.cells.to_dict(), "knowledge": list(self.knowledge)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StackedBnasArch:
        if not isinstance(data, dict):
            raise ArchitectureError(
                f"a stacked_bnas architecture is a JSON object, got {type(data).__name__}"
            )
        check_keys(data, ("cells", "knowledge"), "a stacked_bnas architecture")
        if not isinstance(data["cells"], dict) or not isinstance(data["knowledge"], list):
            raise ArchitectureError(
                "a stacked_bnas architecture has a genotype object 'cells' and a list 'knowledge'"
            )
        return cls(DartsGenotype.from_dict(data["cells"]), tuple(str(k) for k in data["knowledge"]))

    def canonical(self) -> Any:
        return {"cells": self.cells.canonical(), "knowledge": list(self.knowledge)}

    def __str__(self) -> str:
        return f"{self.cells}|{','.join(self.knowledge)}"


@dataclass(frozen=True)
class StackedBnasSpaceConfig:
    """The Stacked BCNN space and its search network.

    Attributes:
        channels: Width of the first mini-BCNN's deep cells in the search network (each mini-BCNN
            doubles it).
        blocks: Mini-BCNNs stacked (each halves the resolution).
        deep_cells: Deep cells per mini-BCNN in the search network.
        nodes: Intermediate nodes per cell.
        stem_multiplier: The stem has ``stem_multiplier * channels`` channels.
        primitives: Candidate operations on every cell edge (DARTS's eight).
        mixed_op: How a cell edge combines its candidates (a name in ``raynas.ops.MIXED_OPS``).
        partial_k: With a partial-channel mixed op, 1/k of the channels go through the candidates.
        edge_normalization: Learn a weight per cell edge (PC-DARTS's ``beta``, kept by BNAS-v2).
        knowledge_ops: The candidate knowledge embeddings (:mod:`raynas.ops.bnas`).
        knowledge_search: Search the knowledge embeddings (KES); false: every arrow takes BNAS's
            hand-designed ``conv_1x1`` and only the cells are searched.
        eval_channels: ``build``'s default width of the first mini-BCNN.
        eval_deep_cells: ``build``'s default deep cells per mini-BCNN.
    """

    channels: Annotated[int, Rule(ge=2, even=True)] = 16
    blocks: Annotated[int, Rule(ge=1)] = 2
    deep_cells: Annotated[int, Rule(ge=1)] = 1
    nodes: Annotated[int, Rule(ge=1)] = 4
    stem_multiplier: Annotated[int, Rule(ge=1)] = 3
    primitives: tuple[str, ...] = PRIMITIVES
    mixed_op: str = "weighted"
    partial_k: int = 4
    edge_normalization: bool = False
    knowledge_ops: tuple[str, ...] = KNOWLEDGE_PRIMITIVES
    knowledge_search: bool = True
    eval_channels: Annotated[int, Rule(ge=2, even=True)] = 36
    eval_deep_cells: Annotated[int, Rule(ge=1)] = 2

    checks: ClassVar[tuple[Check, ...]] = (
        Check(
            "item in ops", "space.primitives: unknown op {item!r}; choose from: {join(ops)}",
            each="primitives", tables={"ops": OPS},
        ),
        Check("set(primitives) - {'none'}", "space.primitives needs at least one op besides 'none'"),
        *MIXED_OP_CHECKS,
        Check(
            "knowledge_ops and len(set(knowledge_ops)) == len(knowledge_ops)",
            "space.knowledge_ops must list embeddings once each, got {list(knowledge_ops)}",
        ),
        Check(
            "item in embeddings",
            "space.knowledge_ops: unknown embedding {item!r}; choose from: {join(embeddings)}",
            each="knowledge_ops", tables={"embeddings": KNOWLEDGE_PRIMITIVES},
        ),
    )

    def __post_init__(self) -> None:
        check_rules(self, "space")
        if not self.knowledge_search:
            object.__setattr__(self, "knowledge_ops", (HAND_DESIGNED,))

    @property
    def cell_ops(self) -> tuple[str, ...]:
        """The operations a derived cell edge may take (``none`` never)."""
        return tuple(p for p in self.primitives if p != "none")


class MiniBcnn(nn.Module):
    """One mini-BCNN of an evaluation network: deep cells, a broad cell, an enhancement cell and
    the output node, joined by the five knowledge embeddings.

    Args:
        arch: The cells and knowledge embeddings.
        c_in: Channels of the block's input.
        channels: Width of the deep cells (the broad and enhancement cells and the embeddings
            have twice as many).
        deep_cells: Number of deep cells.
    """

    def __init__(self, *, arch: StackedBnasArch, c_in: int, channels: int, deep_cells: int) -> None:
        super().__init__()
        g, wide = arch.cells, 2 * channels
        self.deep = nn.ModuleList()
        c_prev_prev = c_prev = c_in
        for _ in range(deep_cells):
            cell = EvalCell(g, c_prev_prev, c_prev, channels, False, False)
            self.deep.append(cell)
            c_prev_prev, c_prev = c_prev, cell.multiplier * channels
        c_deep = c_prev
        self.broad = EvalCell(g, c_prev_prev, c_prev, wide, True, False)
        c_broad = self.broad.multiplier * wide
        self.enhancement = EvalCell(g, wide, wide, wide, True, False, stride=1)
        c_sources = (c_deep, c_broad, c_deep, c_broad, self.enhancement.multiplier * wide)
        self.knowledge = nn.ModuleList(
            knowledge_op(name, c, wide, stride)
            for name, c, stride in zip(arch.knowledge, c_sources, STRIDES, strict=True)
        )
        self.out_channels = 3 * wide

    def forward(self, x: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        # x: (B, c_in, H, W) -> (B, 6 * channels, H/2, W/2)
        s0 = s1 = x
        for cell in self.deep:
            s0, s1 = s1, cell(s0, s1, drop_prob)
        deep = s1  # (B, m*C, H, W)
        broad = self.broad(s0, s1, drop_prob)  # (B, m*2C, H/2, W/2)
        ke = self.knowledge
        enhanced = self.enhancement(ke[0](deep), ke[1](broad), drop_prob)  # (B, m*2C, H/2, W/2)
        return torch.cat([ke[2](deep), ke[3](broad), ke[4](enhanced)], dim=1)  # (B, 3*2C, H/2, W/2)


class StackedBcnn(nn.Module):
    """The evaluation network: a stem, ``blocks`` mini-BCNNs, global pooling and a classifier.

    Args:
        arch: The cells and knowledge embeddings.
        channels: Width of the first mini-BCNN's deep cells.
        blocks: Mini-BCNNs.
        deep_cells: Deep cells per mini-BCNN.
        num_classes: Output classes.
        in_channels: Image channels.
        stem_multiplier: The stem has ``stem_multiplier * channels`` channels.
        drop_path_prob: Drop-path probability on the cells' non-identity edges (training only).
    """

    def __init__(
        self,
        *,
        arch: StackedBnasArch,
        channels: int,
        blocks: int,
        deep_cells: int,
        num_classes: int,
        in_channels: int = 3,
        stem_multiplier: int = 3,
        drop_path_prob: float = 0.0,
    ) -> None:
        super().__init__()
        self.drop_path_prob = drop_path_prob
        c_stem = stem_multiplier * channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem)
        )
        self.blocks = nn.ModuleList()
        c_in, width = c_stem, channels
        for _ in range(blocks):
            block = MiniBcnn(arch=arch, c_in=c_in, channels=width, deep_cells=deep_cells)
            self.blocks.append(block)
            c_in, width = block.out_channels, 2 * width
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in, H, W) -> (B, classes)
        s = self.stem(x)
        for block in self.blocks:
            s = block(s, self.drop_path_prob)
        return self.classifier(self.global_pooling(s).flatten(1))


@SPACES.register(
    "stacked_bnas", config=StackedBnasSpaceConfig,
    traits={"choices": True, "cell_shape": True, "cell_shapes": cell_shapes_trait("nodes")},
)
class StackedBnasSpace:
    """The Stacked BCNN space: two DARTS cells and five knowledge embeddings.

    Args:
        config: Sizes of the search network, its candidates and the evaluation defaults.
    """

    architecture_type = StackedBnasArch

    def __init__(self, config: StackedBnasSpaceConfig | None = None) -> None:
        self.config = config or StackedBnasSpaceConfig()

    def _node_names(self) -> list[str]:
        return [f"node{node + 2}" for node in range(self.config.nodes)]

    def sample(self, rng: random.Random) -> StackedBnasArch:
        """Uniformly random cells (two distinct inputs per node, ops other than ``none``) and
        knowledge embeddings."""
        ops = self.config.cell_ops

        def cell() -> tuple[Edge, ...]:
            edges: list[Edge] = []
            for node in range(self.config.nodes):
                for index in sorted(rng.sample(range(node + 2), 2)):
                    edges.append((rng.choice(ops), index))
            return tuple(edges)

        concat = tuple(range(2, 2 + self.config.nodes))
        cells = DartsGenotype(cell(), concat, cell(), concat)
        return StackedBnasArch(cells, tuple(rng.choice(self.config.knowledge_ops) for _ in CONNECTIONS))

    def decisions(self) -> tuple[Decision, ...]:
        """The cells' decisions (per node: its two inputs, the op on each; normal, then reduce),
        then the embedding of each arrow of :data:`CONNECTIONS`."""
        nodes, ops = self._node_names(), self.config.cell_ops
        return (
            *cell_decisions("normal", nodes, ops),
            *cell_decisions("reduce", nodes, ops),
            *(Decision(f"knowledge.{arrow}", self.config.knowledge_ops) for arrow in CONNECTIONS),
        )

    def encode(self, arch: Architecture) -> tuple[int, ...]:
        """Option indices of :meth:`decisions`."""
        if not self.contains(arch):
            raise ArchitectureError(f"not an architecture of this stacked_bnas space: {arch}")
        assert isinstance(arch, StackedBnasArch)
        decisions, per_cell, nodes = self.decisions(), 3 * self.config.nodes, self._node_names()
        return (
            *encode_cell(arch.cells.normal, decisions[:per_cell], nodes),
            *encode_cell(arch.cells.reduce, decisions[per_cell : 2 * per_cell], nodes),
            *(self.config.knowledge_ops.index(k) for k in arch.knowledge),
        )

    def decode(self, values: tuple[int, ...] | list[int]) -> StackedBnasArch:
        """The architecture with these option indices (see :meth:`decisions`)."""
        names = decode_options(self.decisions(), values)
        per_cell = 3 * self.config.nodes
        concat = tuple(range(2, 2 + self.config.nodes))
        cells = DartsGenotype(
            decode_cell(names[:per_cell]), concat, decode_cell(names[per_cell : 2 * per_cell]), concat
        )
        return StackedBnasArch(cells, tuple(names[2 * per_cell :]))

    def contains(self, arch: Architecture) -> bool:
        """Whether ``arch`` has this space's node count, cell ops and knowledge embeddings."""
        if not isinstance(arch, StackedBnasArch) or arch.cells.nodes != self.config.nodes:
            return False
        g = arch.cells
        if len(g.reduce) != len(g.normal):
            return False
        ops = set(self.config.cell_ops)
        return all(op in ops for op, _ in (*g.normal, *g.reduce)) and set(arch.knowledge) <= set(
            self.config.knowledge_ops
        )

    def parse(self, text: str) -> StackedBnasArch:
        """An architecture from JSON text or a file, or ``<genotype>[|ke0,...,ke4]`` with a
        DARTS-space genotype name or JSON (alone: BNAS's ``conv_1x1`` on every arrow)."""
        arch = StackedBnasArch.read_json(text, form='{"cells": {...genotype...}, "knowledge": [...]}')
        if arch is not None:
            return arch
        cells_text, bar, knowledge = text.strip().rpartition("|") if "|" in text else (text.strip(), "", "")
        try:
            cells = load_genotype(cells_text)
        except ArchitectureError as exc:
            raise ArchitectureError(
                f"{text!r} is not a stacked_bnas architecture ({exc}); write {_FORM}"
            ) from None
        if not bar:
            return StackedBnasArch(cells)
        return StackedBnasArch(cells, tuple(k.strip() for k in knowledge.split(",")))

    def check_fits(self, dataset: DatasetInfo) -> None:
        """Every mini-BCNN's broad cell halves the feature map: ``blocks`` of them must leave at
        least one pixel of ``dataset``'s images.

        Raises:
            ConfigError: They would halve it to nothing; names the most blocks the data allows.
        """
        most = max(dataset.image_size.bit_length() - 1, 0)  # halvings that leave >= 1 pixel
        if self.config.blocks > most:
            raise ConfigError(
                f"space.blocks: {self.config.blocks} mini-BCNNs halve the {dataset.image_size}x"
                f"{dataset.image_size} images of {dataset.name} {self.config.blocks} times, to "
                f"nothing; at most {most} on this data"
            )

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
        """The evaluation network of ``arch`` (:class:`StackedBcnn`) with the config's blocks.

        Args:
            arch: A :class:`StackedBnasArch`.
            dataset: Input channels and classes (classification only).
            channels: Width of the first mini-BCNN (default ``eval_channels``).
            layers: Deep cells per mini-BCNN (default ``eval_deep_cells``).
            auxiliary: Ignored: the network has no auxiliary head.
            drop_path_prob: Drop-path probability on the cells' non-identity edges.
        """
        arch = expect_arch(arch, StackedBnasArch)
        if dataset.task != "classification":
            raise ConfigError(
                f"the stacked_bnas network classifies; {dataset.name} is a {dataset.task} dataset"
            )
        self.check_fits(dataset)
        c = self.config
        return StackedBcnn(
            arch=arch,
            channels=channels or c.eval_channels,
            blocks=c.blocks,
            deep_cells=layers or c.eval_deep_cells,
            num_classes=dataset.num_classes,
            in_channels=dataset.in_channels,
            stem_multiplier=c.stem_multiplier,
            drop_path_prob=drop_path_prob,
        )

    @property
    def op_names(self) -> tuple[str, ...]:
        """The cell candidates, in the column order of the supernet's cell weights."""
        return tuple(self.config.primitives)

    @property
    def edge_names(self) -> tuple[str, ...]:
        """The cell edges, in the row order of the supernet's cell weights."""
        return cell_edge_names(self.config.nodes)

    def cell_shape(self, arch: Architecture) -> dict[str, float]:
        """The width and depth (:func:`~raynas.spaces.darts_genotype.cell_shape`) of the deep
        cells' topology (``normal_width``, ``normal_depth``) and of the broad and enhancement
        cells' (``reduce_width``, ``reduce_depth``)."""
        return genotype_cell_shapes(expect_arch(arch, StackedBnasArch, "measures").cells)

    def draw(self, arch: Architecture) -> Figure:
        """The deep cell, the broad/enhancement cell and the knowledge embeddings."""
        from raynas.spaces.drawing import draw_darts_cells

        arch = expect_arch(arch, StackedBnasArch, "draws")
        fig = draw_darts_cells(arch.cells, ("deep cell", "broad and enhancement cell"), extra_height=1.2)
        lines = "; ".join(f"{arrow}: {k}" for arrow, k in zip(CONNECTIONS, arch.knowledge, strict=True))
        fig.suptitle(f"{arch.key()}\nknowledge embeddings: {lines}", fontsize=8)
        return fig
