"""ENAS's cell space (Pham et al., "Efficient Neural Architecture Search via Parameter Sharing",
ICML 2018, Sec. 2.3 "Designing Convolutional Cells"), as ``melodyguan/enas`` searches and trains
it (``src/cifar10/micro_child.py``, ``micro_controller.py``, ``scripts/cifar10_micro_*.sh``).

A cell has two inputs (states 0 and 1, the outputs of the two layers before it) and ``nodes``
nodes (states 2, 3, ...). Node ``k`` takes two inputs among the states before it, **the same one
twice allowed**, puts each through one of five operations (:data:`~raynas.ops.enas.ENAS_OPS`) and
adds them; the cell's output concatenates every state no node took, the inputs included. The
code's ``arc`` lists ``index_1 op_1 index_2 op_2`` for every node, normal cell then reduction cell:
:meth:`EnasMicroCells.parse` reads it, :meth:`EnasMicroCells.arc` writes it.

The flat view follows the controller's order of decisions (``micro_controller.py``'s
``_build_sampler``): per node, the first input, the second input, the first op, the second op.

The evaluation network (:class:`EnasMicroNetwork`) is ``_model`` with a ``fixed_arc``: a 3x3 stem of
``3 C`` channels, ``layers`` normal layers with a reduction layer (stride 2, twice the channels)
after a third and after two thirds of them, ``_fixed_layer``'s calibration and ``layer_base``
convolutions, the auxiliary head after the second reduction's next layer, drop path on every
operation but the identity, ReLU, global pooling, dropout and a linear layer without bias.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import torch
from torch import nn

from raynas.config import Rule, check_rules
from raynas.errors import ArchitectureError, ConfigError
from raynas.ops.darts import FactorizedReduce, ReLUConvBN
from raynas.ops.enas import (
    ENAS_OPS,
    AuxiliaryHead,
    FactorizedReduction,
    SamePool,
    SameSepConv,
    code_batch_norms,
)
from raynas.spaces.base import OptionsSpace, expect_arch, load_record
from raynas.spaces.darts_genotype import Edge, cell_shape, check_cell_edges
from raynas.spaces.darts_nets import drop_path
from raynas.spaces.registry import SPACES
from raynas.types import Architecture, DatasetInfo, Decision, check_keys, decode_options

if TYPE_CHECKING:  # matplotlib loads only where a picture is drawn
    from matplotlib.figure import Figure


def unused_states(edges: tuple[Edge, ...]) -> tuple[int, ...]:
    """The states of a cell no node takes (``used[i] == 0`` in the code): the cell's output."""
    taken = {index for _, index in edges}
    return tuple(i for i in range(len(edges) // 2 + 2) if i not in taken)


@dataclass(frozen=True)
class EnasMicroCells(Architecture):
    """A normal and a reduction cell of ENAS's space: two (op, input) edges per node, the first
    the code's ``x`` (``index_1``, ``op_1``), the second its ``y``.

    The JSON form is ``{"normal": [["sep_conv_3x3", 0], ...], "reduce": [...]}``; the output of a
    cell (its unused states) follows from its edges.
    """

    space = "enas_micro"

    normal: tuple[Edge, ...]
    reduce: tuple[Edge, ...]

    def __post_init__(self) -> None:
        for cell in ("normal", "reduce"):
            check_cell_edges(getattr(self, cell), cell=cell, ops=ENAS_OPS, what="enas_micro")
        if len(self.normal) != len(self.reduce):
            raise ArchitectureError(
                f"enas_micro cells differ in size: {len(self.normal) // 2} and {len(self.reduce) // 2} nodes"
            )

    @property
    def nodes(self) -> int:
        """Nodes per cell."""
        return len(self.normal) // 2

    @property
    def normal_concat(self) -> tuple[int, ...]:
        """The normal cell's output: the states no node takes."""
        return unused_states(self.normal)

    @property
    def reduce_concat(self) -> tuple[int, ...]:
        """The reduction cell's output: the states no node takes."""
        return unused_states(self.reduce)

    def arc(self) -> str:
        """The code's ``fixed_arc``: ``index_1 op_1 index_2 op_2`` per node, normal cell first."""
        return " ".join(
            f"{index} {ENAS_OPS.index(op)}" for edges in (self.normal, self.reduce) for op, index in edges
        )

    @classmethod
    def parse(cls, text: str) -> EnasMicroCells:
        """The cells of a ``fixed_arc`` string (4 integers a node, both cells: 40 for 5 nodes)."""
        parts = text.split()
        if not parts or not all(p.isdigit() for p in parts) or len(parts) % 8:
            raise ArchitectureError(
                f"an enas_micro arc is 'index_1 op_1 index_2 op_2' for every node of both cells "
                f"(a multiple of 8 integers); got {text!r}"
            )
        values = [int(p) for p in parts]
        edges: list[Edge] = []
        for i in range(0, len(values), 2):
            index, op = values[i], values[i + 1]
            if op >= len(ENAS_OPS):
                raise ArchitectureError(f"enas_micro arc {text!r}: op {op} is not 0..{len(ENAS_OPS) - 1}")
            edges.append((ENAS_OPS[op], index))
        half = len(edges) // 2
        return cls(tuple(edges[:half]), tuple(edges[half:]))

    def to_dict(self) -> dict[str, Any]:
        return {"normal": [list(e) for e in self.normal], "reduce": [list(e) for e in self.reduce]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnasMicroCells:
        check_keys(data, ("normal", "reduce"), "an enas_micro architecture")
        try:
            return cls(
                normal=tuple((str(op), int(i)) for op, i in data["normal"]),
                reduce=tuple((str(op), int(i)) for op, i in data["reduce"]),
            )
        except (TypeError, ValueError) as exc:
            raise ArchitectureError(f"malformed enas_micro architecture: {exc}") from None

    def canonical(self) -> Any:
        # A node adds its two branches: (x, y) and (y, x) are one network.
        def cell(edges: tuple[Edge, ...]) -> list[list[list[Any]]]:
            return [sorted([list(e) for e in edges[i : i + 2]]) for i in range(0, len(edges), 2)]

        return {"normal": cell(self.normal), "reduce": cell(self.reduce)}

    def __str__(self) -> str:
        return f"EnasMicroCells(arc={self.arc()!r})"


# The arc the authors trained (scripts/cifar10_micro_final.sh): 3.54% test error on CIFAR-10, 2.89%
# with Cutout (the paper's Table 2, which gives 4.6M parameters; the code builds 3,894,372 at its
# final settings: tests/test_enas_micro.py).
PUBLISHED: dict[str, EnasMicroCells] = {
    "ENAS": EnasMicroCells.parse(
        "0 2 0 0 0 4 0 1 0 4 1 1 1 0 0 1 0 2 1 1 1 0 1 0 0 3 0 2 1 1 3 1 1 0 0 4 0 3 1 1"
    ),
}


@dataclass(frozen=True)
class EnasMicroSpaceConfig:
    """ENAS's cell space and its shared child (defaults: ``scripts/cifar10_micro_search.sh``).

    Attributes:
        channels: ``child_out_filters``: the first layers' channels (20).
        layers: ``child_num_layers``: normal layers; a reduction layer follows a third and two
            thirds of them (6: eight layers in all).
        nodes: ``child_num_cells``: nodes per cell (5).
        auxiliary_weight: The shared child's auxiliary head, after the layer that follows the
            second reduction, weighs its loss by this (0.4 with ``--child_use_aux_heads``; 0: no head).
        dropout: Dropout before the classifier, ``1 - child_keep_prob`` (0.1; 0.2 in the final run).
    """

    channels: Annotated[int, Rule(ge=2, even=True)] = 20
    layers: Annotated[int, Rule(ge=1)] = 6
    nodes: Annotated[int, Rule(ge=1)] = 5
    auxiliary_weight: Annotated[float, Rule(ge=0)] = 0.4
    dropout: Annotated[float, Rule(ge=0, lt=1)] = 0.1

    def __post_init__(self) -> None:
        check_rules(self, "space")


def reduction_layers(layers: int) -> tuple[int, int]:
    """The indices of the two reduction layers among ``layers + 2`` (``pool_layers``)."""
    distance = layers // 3
    return distance, 2 * distance + 1


# The final network's size (scripts/cifar10_micro_final.sh): 36 filters, 15 normal layers.
EVAL_DEFAULTS = (36, 15)


@SPACES.register(
    "enas_micro", config=EnasMicroSpaceConfig,
    traits={
        "choices": True, "one_shot": True, "path_only": True, "cell_shape": True,
        # Depth 2 only when every node takes the cell's inputs (width: nodes); each step of depth
        # past 2 costs at least half a node of width; a node taking one state twice lets the
        # least width be 1 (node 2 on one input, the rest on nodes). tests/test_startup.py counts them.
        "cell_shapes": {
            "expr": "[[2, nodes, nodes]] + [[d, 1, nodes - (d - 2) / 2] for d in range(3, nodes + 2)]"
        },
    },
)
class EnasMicroSpace(OptionsSpace[EnasMicroCells]):
    """ENAS's cell space.

    Args:
        config: Sizes of the shared child and the cells.
    """

    architecture_type = EnasMicroCells

    def __init__(self, config: EnasMicroSpaceConfig | None = None) -> None:
        self.config = config or EnasMicroSpaceConfig()

    def decisions(self) -> tuple[Decision, ...]:
        """Per cell (normal, then reduce) and node: its first input, its second input (each any
        earlier state), its first op, its second op."""
        out: list[Decision] = []
        for cell in ("normal", "reduce"):
            for k in range(self.config.nodes):
                inputs = tuple(str(j) for j in range(k + 2))
                name = f"{cell}.node{k + 2}"
                out += [
                    Decision(f"{name}.input_a", inputs), Decision(f"{name}.input_b", inputs),
                    Decision(f"{name}.op_a", ENAS_OPS), Decision(f"{name}.op_b", ENAS_OPS),
                ]
        return tuple(out)

    def encode(self, arch: Architecture) -> tuple[int, ...]:
        """Option indices of :meth:`decisions`."""
        arch = self.check(arch)
        values: list[int] = []
        for edges in (arch.normal, arch.reduce):
            for k in range(0, len(edges), 2):
                (op_a, a), (op_b, b) = edges[k], edges[k + 1]
                values += [a, b, ENAS_OPS.index(op_a), ENAS_OPS.index(op_b)]
        return tuple(values)

    def decode(self, values: tuple[int, ...] | list[int]) -> EnasMicroCells:
        """The cells with these option indices (see :meth:`decisions`)."""
        names = decode_options(self.decisions(), values)
        cells: list[tuple[Edge, ...]] = []
        for start in (0, 4 * self.config.nodes):
            edges: list[Edge] = []
            for k in range(start, start + 4 * self.config.nodes, 4):
                a, b, op_a, op_b = names[k : k + 4]
                edges += [(op_a, int(a)), (op_b, int(b))]
            cells.append(tuple(edges))
        return EnasMicroCells(cells[0], cells[1])

    def contains(self, arch: Architecture) -> bool:
        """Whether ``arch`` has this space's number of nodes (its ops and inputs are checked when
        it is made)."""
        return isinstance(arch, EnasMicroCells) and arch.nodes == self.config.nodes

    def parse(self, text: str) -> EnasMicroCells:
        """Cells from a published name (``ENAS``), a JSON file or text, or a ``fixed_arc`` string."""
        return load_record(
            text, EnasMicroCells, published=PUBLISHED, aliases={}, what="enas_micro arc",
            json_form='{"normal": [[op, input], ...], "reduce": [...]}',
            form="a fixed_arc string ('index_1 op_1 index_2 op_2' for every node)",
            looks_compact=lambda s: bool(s) and s.split()[0].isdigit(),
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
        """The evaluation network of ``arch`` (:class:`EnasMicroNetwork`).

        Args:
            arch: An :class:`EnasMicroCells`.
            dataset: Input channels, classes and image size.
            channels: ``child_out_filters`` (default 36, the final run's).
            layers: ``child_num_layers``, the normal layers (default 15: 17 layers in all).
            auxiliary: Add the auxiliary head (training only).
            drop_path_prob: Drop-path probability of the last layer (ENAS's
                ``1 - drop_path_keep_prob``); layer ``i`` drops at ``(i + 1) / (layers + 2)`` of it.
        """
        arch = expect_arch(arch, EnasMicroCells)
        if dataset.task != "classification":
            raise ConfigError(
                f"the enas_micro network classifies images; {dataset.name} is a {dataset.task} dataset"
            )
        return EnasMicroNetwork(
            arch, channels=channels or EVAL_DEFAULTS[0], layers=layers or EVAL_DEFAULTS[1],
            num_classes=dataset.num_classes, in_channels=dataset.in_channels, image_size=dataset.image_size,
            auxiliary=auxiliary, drop_path_prob=drop_path_prob, dropout=self.config.dropout,
        )

    @property
    def op_names(self) -> tuple[str, ...]:
        """The five candidates, in the code's ``op_id`` order."""
        return ENAS_OPS

    def cell_shape(self, arch: Architecture) -> dict[str, float]:
        """The width (in units of a node's channels) and depth of the normal and the reduction
        cell as Shu et al. measure them (:func:`~raynas.spaces.darts_genotype.cell_shape`, the
        output being the unused states): ``normal_width``, ``normal_depth``, ``reduce_width``,
        ``reduce_depth``."""
        arch = expect_arch(arch, EnasMicroCells, "measures")
        normal = cell_shape(arch.normal, arch.normal_concat)
        reduce = cell_shape(arch.reduce, arch.reduce_concat)
        return {"normal_width": normal[0], "normal_depth": normal[1],
                "reduce_width": reduce[0], "reduce_depth": reduce[1]}

    def draw(self, arch: Architecture) -> Figure:
        """The normal and the reduction cell, their unused states concatenated into the output."""
        from raynas.spaces.drawing import draw_darts_cells

        arch = expect_arch(arch, EnasMicroCells, "draws")
        fig = draw_darts_cells(arch, ("normal cell", "reduction cell"))
        fig.suptitle(arch.key(), fontsize=10)
        return fig


# -- the evaluation network ------------------------------------------------------------------------


def calibration(c_in: int, channels: int, halve: bool) -> nn.Module:
    """``_maybe_calibrate_size``'s treatment of an input: ReLU and a factorised reduction where it is
    at twice the resolution, ReLU-1x1 conv-BN where only its channels differ, else nothing."""
    if halve:
        return FactorizedReduce(c_in, channels)
    return ReLUConvBN(c_in, channels, 1, 1, 0) if c_in != channels else nn.Identity()


class FixedLayer(nn.Module):
    """``_fixed_layer``: one cell of the evaluation network.

    Args:
        edges: The cell's (op, input) edges.
        c_prev_prev, c_prev: Channels of the two layers before.
        halve_prev_prev: Whether the layer before the last is at twice the last one's resolution.
        channels: The layer's ``out_filters``.
        stride: 2 in a reduction layer (on the ops that read the cell's inputs), else 1.
    """

    def __init__(
        self, edges: tuple[Edge, ...], *, c_prev_prev: int, c_prev: int, halve_prev_prev: bool,
        channels: int, stride: int,
    ) -> None:
        super().__init__()
        self.calibrate_x = calibration(c_prev_prev, channels, halve_prev_prev)
        self.calibrate_y = calibration(c_prev, channels, False)
        self.base = ReLUConvBN(channels, channels, 1, 1, 0)  # layer_base: on the second input, always
        self.indices = [index for _, index in edges]
        self.ops = nn.ModuleList()
        self.drops: list[bool] = []
        for op, index in edges:
            s = stride if index < 2 else 1
            # TensorFlow's SAME padding: at stride 2 the odd pixel after (at stride 1 torch's own).
            if op in ("sep_conv_3x3", "sep_conv_5x5"):
                module: nn.Module = SameSepConv(channels, 3 if op == "sep_conv_3x3" else 5, s)
            elif op == "avg_pool_3x3":
                module = SamePool("avg", 3, s)
            elif op == "max_pool_3x3":
                module = SamePool("max", 3, s)
            else:
                module = FactorizedReduction(channels, channels) if s == 2 else nn.Identity()
            self.ops.append(module)
            self.drops.append(op != "skip_connect")
        self.concat = unused_states(edges)
        # _fixed_combine: an unused cell input at the input resolution is reduced to the output's.
        self.combine = nn.ModuleDict({
            str(i): FactorizedReduction(channels, channels) for i in self.concat if i < 2 and stride == 2
        })
        self.out_channels = channels * len(self.concat)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        states = [self.calibrate_x(s0), self.base(self.calibrate_y(s1))]  # each (B, C, H, W)
        for k in range(0, len(self.ops), 2):
            node = 0
            for j in (k, k + 1):
                h = self.ops[j](states[self.indices[j]])
                if self.training and drop_prob > 0 and self.drops[j]:
                    h = drop_path(h, drop_prob)
                node = node + h
            states.append(node)
        outs = [self.combine[str(i)](states[i]) if str(i) in self.combine else states[i] for i in self.concat]
        return torch.cat(outs, dim=1)  # (B, C * unused, H', W')


class EnasMicroNetwork(nn.Module):
    """``_model`` with a fixed arc (see the module's docstring).

    Args:
        arch: The cells.
        channels: ``child_out_filters``.
        layers: ``child_num_layers`` (normal layers; two reduction layers are added).
        num_classes: Classes.
        in_channels: Input channels.
        image_size: Input size (where the auxiliary head sits, its pooling's input size).
        auxiliary: Add the auxiliary head.
        drop_path_prob: Drop-path probability of the last layer; layer ``i`` of ``L`` drops at
            ``(i + 1) / L`` of it (``_apply_drop_path``). Set again by training, epoch by epoch.
        dropout: Dropout before the classifier (``1 - child_keep_prob``).
    """

    def __init__(
        self, arch: EnasMicroCells, *, channels: int, layers: int, num_classes: int, in_channels: int = 3,
        image_size: int = 32, auxiliary: bool = False, drop_path_prob: float = 0.0, dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if channels % 2:
            raise ConfigError(f"the enas_micro network needs an even number of channels, got {channels}")
        self.drop_path_prob = drop_path_prob
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 3 * channels, 3, padding=1, bias=False), nn.BatchNorm2d(3 * channels)
        )
        reductions = reduction_layers(layers)
        self.total = layers + 2
        self.aux_index = reductions[1] + 1 if auxiliary and reductions[1] + 1 < self.total else -1
        self.cells = nn.ModuleList()
        c_pp, c_p, halve, out, size = 3 * channels, 3 * channels, False, channels, image_size
        self.auxiliary_head: nn.Module | None = None
        for i in range(self.total):
            stride = 2 if i in reductions else 1
            out *= stride
            size = (size + 1) // 2 if stride == 2 else size
            cell = FixedLayer(
                arch.reduce if stride == 2 else arch.normal, c_prev_prev=c_pp, c_prev=c_p,
                halve_prev_prev=halve, channels=out, stride=stride,
            )
            self.cells.append(cell)
            c_pp, c_p, halve = c_p, cell.out_channels, stride == 2
            if i == self.aux_index:
                self.auxiliary_head = AuxiliaryHead(c_p, size, num_classes)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(c_p, num_classes, bias=False)
        code_batch_norms(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, classes); in training with the auxiliary head, (logits, aux_logits)."""
        s0 = s1 = self.stem(x)  # (B, 3C, H, W)
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob * (i + 1) / self.total)
            if i == self.aux_index and self.auxiliary_head is not None and self.training:
                aux = self.auxiliary_head(s1)
        logits = self.classifier(self.dropout(torch.relu(s1).mean((2, 3))))
        return (logits, aux) if aux is not None else logits
