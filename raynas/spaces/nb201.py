"""The NAS-Bench-201 cell space (Dong and Yang, "NAS-Bench-201: Extending the Scope of Reproducible
Neural Architecture Search", ICLR 2020; code: D-X-Y/AutoDL-Projects).

A cell has four nodes; node 0 is the cell's input and node 3 its output. Every pair ``i < j`` is
joined by an edge carrying one of five operations (``none``, ``skip_connect``, ``nor_conv_1x1``,
``nor_conv_3x3``, ``avg_pool_3x3``), and ``node_j = sum_{i<j} op_ij(node_i)``: 6 edges, 5^6 =
15,625 cells. The benchmark writes a cell as ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``, the inputs
of nodes 1, 2 and 3 in turn. The network (``TinyNetwork``) is a 3x3 stem conv with 16 channels,
three stages of 5 cells at 16, 32 and 64 channels joined by residual blocks that halve the
resolution, then BatchNorm, ReLU, global pooling and a linear classifier.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from raynas.config import Check, Rule, check_rules
from raynas.errors import ArchitectureError
from raynas.ops.darts import OPS
from raynas.ops.mixed import MIXED_OP_CHECKS
from raynas.ops.nb201 import NorConv, ResNetBasicBlock, stage_cells
from raynas.spaces.base import expect_arch
from raynas.spaces.registry import SPACES
from raynas.types import Architecture, DatasetInfo, Decision, decode_options

if TYPE_CHECKING:  # matplotlib loads only where a picture is drawn
    from matplotlib.figure import Figure

# The candidates, in the benchmark's order (also the column order of the supernet's alpha).
NB201_OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
# The edges (from, to), in the order of the benchmark's string and of the supernet's alpha rows.
EDGES: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
NODES = 4

_FORM = "|op~0|+|op~0|op~1|+|op~0|op~1|op~2|"


@dataclass(frozen=True)
class Nb201Arch(Architecture):
    """One NAS-Bench-201 cell: the operation of each of the six edges.

    ``ops`` follows :data:`EDGES`, the benchmark's order: 0->1, 0->2, 1->2, 0->3, 1->3, 2->3.
    ``str()`` gives the benchmark's string and :meth:`parse` reads it; the JSON form is
    ``{"arch": "|...|"}``.

    :meth:`canonical` (and so :meth:`key`) is equal exactly for cells that compute the same
    function; see its docstring for the rule.
    """

    space = "nb201"

    ops: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.ops, tuple) or len(self.ops) != len(EDGES):
            raise ArchitectureError(
                f"an nb201 cell has {len(EDGES)} edge ops (0->1, 0->2, 1->2, 0->3, 1->3, 2->3), "
                f"got {self.ops!r}"
            )
        for (src, dst), op in zip(EDGES, self.ops, strict=True):
            if op not in NB201_OPS:
                raise ArchitectureError(
                    f"nb201 edge {src}->{dst}: unknown op {op!r}; choose one of: {', '.join(NB201_OPS)}"
                )

    @classmethod
    def parse(cls, text: str) -> Nb201Arch:
        """Read the benchmark's string ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``.

        Raises:
            ArchitectureError: Naming the part that is wrong and the expected form or ops.
        """
        text = text.strip()
        nodes = text.split("+")
        if len(nodes) != NODES - 1:
            raise ArchitectureError(
                f"an nb201 cell string has {NODES - 1} '+'-separated nodes of the form {_FORM}, "
                f"got {len(nodes)} in {text!r}"
            )
        ops: dict[tuple[int, int], str] = {}
        for dst, node in enumerate(nodes, start=1):
            expected = "|" + "|".join(f"op~{i}" for i in range(dst)) + "|"
            parts = node.split("|")
            if len(parts) != dst + 2 or parts[0] or parts[-1]:
                raise ArchitectureError(
                    f"nb201 node {dst} must be written {expected} (the form is {_FORM}), got {node!r}"
                )
            for src, part in enumerate(parts[1:-1]):
                op, sep, index = part.partition("~")
                if not sep or index != str(src):
                    raise ArchitectureError(
                        f"nb201 node {dst}: input {src} must be written 'op~{src}' "
                        f"(node {dst} is {expected}), got {part!r}"
                    )
                if op not in NB201_OPS:
                    raise ArchitectureError(
                        f"nb201 edge {src}->{dst}: unknown op {op!r} in {part!r}; "
                        f"choose one of: {', '.join(NB201_OPS)}"
                    )
                ops[src, dst] = op
        return cls(tuple(ops[e] for e in EDGES))

    def __str__(self) -> str:
        by_edge = dict(zip(EDGES, self.ops, strict=True))
        return "+".join(
            "|" + "".join(f"{by_edge[src, dst]}~{src}|" for src in range(dst))
            for dst in range(1, NODES)
        )

    def to_dict(self) -> dict[str, Any]:
        return {"arch": str(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Nb201Arch:
        if set(data) != {"arch"} or not isinstance(data["arch"], str):
            raise ArchitectureError(
                f"an nb201 architecture is {{\"arch\": \"{_FORM}\"}}, got keys {sorted(data)}"
            )
        return cls.parse(data["arch"])

    def edges(self) -> tuple[tuple[str, int, int], ...]:
        """(op, from, to) of every edge, in the benchmark's order."""
        return tuple((op, src, dst) for op, (src, dst) in zip(self.ops, EDGES, strict=True))

    def canonical(self) -> Any:
        """A form equal exactly for cells that compute the same function.

        The cell is read as the graph of its computing operations (the ``nor_conv_*`` and
        ``avg_pool_3x3`` edges), each fed by a sum of earlier operations and of the input:

        - ``none`` edges are absent, and an operation whose input node no path from the input
          reaches is absent too (its input is always zero; as in the benchmark's own rule a
          convolution of zeros counts as zero, although its BatchNorm shift is a constant);
        - ``skip_connect`` edges are contracted: a node's sum takes in the summands of the node
          the skip comes from, so chains of skips and the numbering of nodes 1 and 2 do not
          matter, and neither does the order of the summands of a node;
        - operations that do not feed the output (node 3) are dropped.

        What remains is a DAG of at most six operations, each labelled by its op and by the
        multiset of its inputs (``x`` or other operations); the output is a multiset too, so two
        parallel routes that carry the same value count twice. The canonical form is the
        smallest listing of that DAG over every numbering of its operations consistent with
        their unfolded expressions. Sharing is kept: one convolution feeding two operations is
        not the same as two convolutions of the same input. Cells that reach the output by no
        path (for example the all-``none`` cell) all get the form ``"out="``.

        The 15,625 cells have 5,425 keys. The paper's 6,466 "unique topologies" come from the
        benchmark's own string rule (``to_unique_str(consider_zero=True)``), which keeps zero
        terms in sums and unfolds shared operations into copies; ``tests/test_nb201.py``
        compares the two.

        Returns:
            A string such as ``"0:nor_conv_3x3(x);1:avg_pool_3x3(0,x);out=1"``.
        """
        return _canonical_form(self.ops)


@functools.cache  # at most 15,625 cells: keys of the whole space are computed once
def cell_shape(ops: Sequence[str]) -> tuple[float, int]:
    """The width (in units of a node's channels) and depth of an NAS-Bench-201 cell, by Shu et al.'s
    definitions ("Understanding Architectures Learnt by Cell-based Neural Architecture Search",
    ICLR 2020, Sec. 3.1; :func:`raynas.spaces.darts_genotype.cell_shape` for DARTS cells) read on a
    cell with one input and a summing output node.

    Only what reaches the output counts: the edges that are not ``none`` between nodes on a path
    from the input (node 0) to the output (node 3). Depth: the connections along the longest such
    path (0 when none: the cell outputs zeros). Width: the total width of the nodes 1-3 connected
    to the input, a node that also takes other nodes counting for the share of its connections
    that come from the input (the all-convolution cell: 1 + 1/2 + 1/3 and 3).
    """
    live = [edge for edge, op in zip(EDGES, ops, strict=True) if op != "none"]
    reached = {0}
    for src, dst in live:  # EDGES runs in the order of their targets
        if src in reached:
            reached.add(dst)
    reaching = {3}
    for src, dst in reversed(live):
        if dst in reaching:
            reaching.add(src)
    on_path = reached & reaching
    if 3 not in on_path:
        return 0.0, 0
    edges = [(src, dst) for src, dst in live if src in on_path and dst in on_path]
    depth = {0: 0}
    for src, dst in edges:
        depth[dst] = max(depth.get(dst, 0), depth[src] + 1)
    width = 0.0
    for node in (1, 2, 3):
        inputs = [src for src, dst in edges if dst == node]
        if inputs:
            width += inputs.count(0) / len(inputs)
    return width, depth[3]


def _canonical_form(ops: tuple[str, ...]) -> str:
    # sources: "x" (the cell input) or the index of a live op edge; one multiset per node
    node_terms: list[list[Any]] = [["x"]]
    inputs: dict[int, list[Any]] = {}
    for dst in range(1, NODES):
        terms: list[Any] = []
        for k, ((src, to), op) in enumerate(zip(EDGES, ops, strict=True)):
            if to != dst or op == "none" or not node_terms[src]:
                continue
            if op == "skip_connect":
                terms.extend(node_terms[src])
            else:
                inputs[k] = node_terms[src]
                terms.append(k)
        node_terms.append(terms)
    output = node_terms[NODES - 1]

    live: set[int] = set()
    stack = [t for t in output if t != "x"]
    while stack:
        k = stack.pop()
        if k not in live:
            live.add(k)
            stack.extend(t for t in inputs[k] if t != "x")

    signatures: dict[Any, str] = {"x": "x"}

    def signature(k: int) -> str:
        if k not in signatures:
            parts = sorted(signatures.get(t) or signature(t) for t in inputs[k])
            signatures[k] = f"{ops[k]}({'+'.join(parts)})"
        return signatures[k]

    groups: dict[str, list[int]] = {}
    for k in sorted(live, key=signature):
        groups.setdefault(signature(k), []).append(k)
    best = None
    for choice in itertools.product(*(itertools.permutations(g) for g in groups.values())):
        label: dict[Any, str] = {"x": "x"}
        for k in itertools.chain.from_iterable(choice):
            label[k] = str(len(label) - 1)
        entries = [
            f"{label[k]}:{ops[k]}({','.join(sorted(label[t] for t in inputs[k]))})"
            for k in itertools.chain.from_iterable(choice)
        ]
        text = ";".join([*entries, "out=" + ",".join(sorted(label[t] for t in output))])
        best = text if best is None or text < best else best
    assert best is not None  # product() of no groups yields one empty choice
    return best


@dataclass(frozen=True)
class Nb201SpaceConfig:
    """The NAS-Bench-201 space and its supernet (defaults: the benchmark's 16 channels, 5 cells
    per stage, as AutoDL's search scripts use for the supernet too).

    Attributes:
        channels: Channels of the first stage (doubled at each of the two reductions).
        cells_per_stage: Cells in each of the three stages (``N``).
        mixed_op: How a supernet edge combines its candidates (a name in ``raynas.ops.MIXED_OPS``).
        partial_k: With a mixed op over a share of the channels (``partial``, ``attention``), 1/k
            of the channels go through the candidates; must divide ``channels``.
        edge_normalization: Learn PC-DARTS's per-edge weights ``beta`` in the supernet.
        bn_affine: Learnable BatchNorm scale and shift in the supernet's candidates (RF-DARTS).
    """

    channels: Annotated[int, Rule(ge=1)] = 16
    cells_per_stage: Annotated[int, Rule(ge=1)] = 5
    mixed_op: str = "weighted"
    partial_k: int = 4
    edge_normalization: bool = False
    bn_affine: bool = False

    checks: ClassVar[tuple[Check, ...]] = MIXED_OP_CHECKS

    def __post_init__(self) -> None:
        check_rules(self, "space")

    @property
    def layers(self) -> int:
        """``cells_per_stage`` under the name the search driver passes to ``build(layers=...)``."""
        return self.cells_per_stage


class InferCell(nn.Module):
    """A cell of the trained network: one operation per edge, ``node_j = sum_i op_ij(node_i)``.

    Args:
        arch: The cell.
        channels: Channels in and out (every op keeps the resolution).
    """

    def __init__(self, arch: Nb201Arch, channels: int) -> None:
        super().__init__()
        self.arch = arch
        self.edges = nn.ModuleList(OPS.get(op)(channels, 1, True) for op in arch.ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        nodes = [x]
        for dst in range(1, NODES):
            nodes.append(sum(  # type: ignore[arg-type]
                self.edges[k](nodes[src]) for k, (src, to) in enumerate(EDGES) if to == dst
            ))
        return nodes[-1]


class TinyNetwork(nn.Module):
    """The benchmark's network of a cell (AutoDL's ``TinyNetwork``): it returns the logits only.

    Args:
        arch: The cell, repeated in every stage.
        channels: Channels of the first stage (16).
        cells_per_stage: Cells in each of the three stages (5).
        num_classes: Output classes.
        in_channels: Image channels.
    """

    def __init__(
        self, *, arch: Nb201Arch, channels: int, cells_per_stage: int, num_classes: int,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        )
        self.cells, c = stage_cells(channels, cells_per_stage, lambda c: InferCell(arch, c))
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in, H, W) -> (B, classes)
        feature = self.stem(x)  # (B, C, H, W)
        for cell in self.cells:
            feature = cell(feature)  # (B, 4C, H/4, W/4) after the last stage
        out = self.global_pooling(self.lastact(feature)).flatten(1)  # (B, 4C)
        return self.classifier(out)


# Called with a ReLU's output, (B, n*C, ...), and the candidates whose channels it holds, (n,).
ReluObserver = Callable[[torch.Tensor, torch.Tensor], None]


class StackedTinyNetwork(nn.Module):
    """Several candidates' ``TinyNetwork`` s run as one, in train mode (BatchNorm on the batch's
    statistics, running statistics left alone); the output is their logits, (B, N, classes).

    The activations are (B, N*C, H, W), candidate ``k`` in channels ``k*C:(k+1)*C``. The stem reads
    the shared input with the candidates' stem convolutions stacked; every later convolution is
    grouped (one group per candidate); BatchNorm is per channel, so each candidate keeps its own
    statistics. On an edge the candidates are gathered by the operation they chose, and each
    operation runs once on its candidates' channels. Weights are not copied: every pass
    concatenates the candidates' own parameters, so each network's parameters get the gradients
    its own forward pass would give them, and nothing flows between candidates. The training-free
    evaluator scores ``evaluator.stack`` candidates per pass with it.

    Args:
        networks: Built by the nb201 space with the same sizes (their cells may differ).
        on_relu: Observes every ReLU's output with its candidates (activation-pattern proxies).
    """

    def __init__(self, networks: Sequence[TinyNetwork], on_relu: ReluObserver | None = None) -> None:
        super().__init__()
        if not networks:
            raise ValueError("StackedTinyNetwork needs at least one network")
        shapes = {tuple((name, p.shape) for name, p in _shared(net)) for net in networks}
        if len(shapes) != 1:
            raise ValueError("StackedTinyNetwork needs networks of one size (channels, cells, classes)")
        self.networks = nn.ModuleList(networks)
        self.on_relu = on_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in, H, W) -> (B, N, classes)
        nets = list(self.networks)
        n = len(nets)
        everyone = torch.arange(n, device=x.device)
        stem = [net.stem for net in nets]
        h = F.conv2d(x, _cat(s[0].weight for s in stem), padding=1)  # (B, N*C, H, W)
        h = _batch_norm(h, [s[1] for s in stem])
        for index, first in enumerate(nets[0].cells):
            modules = [net.cells[index] for net in nets]
            if isinstance(first, InferCell):
                h = self._cell(h, modules)  # type: ignore[arg-type]
            else:
                h = self._residual(h, modules, everyone)  # type: ignore[arg-type]
        h = _batch_norm(h, [net.lastact[0] for net in nets])
        h = self._relu(h, everyone)
        pooled = h.mean((2, 3)).view(x.shape[0], n, -1)  # (B, N, 4C)
        weight = torch.stack([net.classifier.weight for net in nets])  # (N, classes, 4C)
        bias = torch.stack([net.classifier.bias for net in nets])  # (N, classes)
        return torch.einsum("bnc,nkc->bnk", pooled, weight) + bias  # (B, N, classes)

    def _relu(self, h: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        out = F.relu(h)
        if self.on_relu is not None:
            self.on_relu(out, candidates)
        return out

    def _nor_conv(self, h: torch.Tensor, convs: Sequence[NorConv], candidates: torch.Tensor) -> torch.Tensor:
        """ReLU -> grouped conv -> BatchNorm over the candidates in ``h``'s channels."""
        conv = convs[0][1]
        out = F.conv2d(
            self._relu(h, candidates), _cat(c[1].weight for c in convs),
            None if conv.bias is None else _cat(c[1].bias for c in convs),
            stride=conv.stride, padding=conv.padding, groups=len(convs),
        )
        return _batch_norm(out, [c[2] for c in convs])

    def _residual(
        self, h: torch.Tensor, blocks: Sequence[ResNetBasicBlock], everyone: torch.Tensor
    ) -> torch.Tensor:
        a = self._nor_conv(h, [b.conv_a for b in blocks], everyone)
        b = self._nor_conv(a, [b.conv_b for b in blocks], everyone)
        shortcut = F.avg_pool2d(h, kernel_size=2, stride=2)
        shortcut = F.conv2d(shortcut, _cat(b.downsample[1].weight for b in blocks), groups=len(blocks))
        return shortcut + b

    def _cell(self, h: torch.Tensor, cells: Sequence[InferCell]) -> torch.Tensor:
        batch, _, height, width = h.shape
        n = len(cells)
        nodes = [h.view(batch, n, -1, height, width)]  # (B, N, C, H, W)
        for dst in range(1, NODES):
            total = torch.zeros_like(nodes[0])
            for k, (src, to) in enumerate(EDGES):
                if to != dst:
                    continue
                by_op: dict[str, list[int]] = {}
                for i, cell in enumerate(cells):
                    by_op.setdefault(cell.arch.ops[k], []).append(i)
                for op, members in by_op.items():
                    if op == "none":
                        continue
                    idx = torch.tensor(members, device=h.device)
                    x = nodes[src].index_select(1, idx)  # (B, n, C, H, W)
                    flat = x.flatten(1, 2)  # (B, n*C, H, W)
                    if op == "skip_connect":
                        out = flat
                    elif op == "avg_pool_3x3":
                        out = F.avg_pool2d(flat, 3, stride=1, padding=1, count_include_pad=False)
                    else:  # nor_conv_1x1, nor_conv_3x3
                        out = self._nor_conv(flat, [cells[i].edges[k] for i in members], idx)
                    total = total.index_add(1, idx, out.view_as(x))
            nodes.append(total)
        return nodes[-1].flatten(1, 2)


def _shared(net: TinyNetwork) -> list[tuple[str, torch.Tensor]]:
    """The parameters every candidate of one size has (its stem, residual blocks, head)."""
    return [(name, p) for name, p in net.named_parameters() if ".edges." not in name]


def _cat(tensors: object) -> torch.Tensor:
    return torch.cat(list(tensors), dim=0)  # type: ignore[call-overload]


def _batch_norm(h: torch.Tensor, norms: Sequence[nn.BatchNorm2d]) -> torch.Tensor:
    """Per-channel BatchNorm of stacked candidates on the batch's statistics (scoring runs the
    networks in train mode, as the training-free papers do; running statistics are left alone)."""
    first = norms[0]
    weight = _cat(b.weight for b in norms) if first.affine else None
    bias = _cat(b.bias for b in norms) if first.affine else None
    return F.batch_norm(h, None, None, weight, bias, training=True, eps=first.eps)


def load_arch(text: str) -> Nb201Arch:
    """A cell from the benchmark's string, JSON text, or a JSON file (``{"arch": "|...|"}``)."""
    if text.strip().startswith("|"):
        return Nb201Arch.parse(text.strip())
    arch = Nb201Arch.read_json(text, form=f'{{"arch": "{_FORM}"}}')
    return arch if arch is not None else Nb201Arch.parse(text.strip())


@SPACES.register(
    "nb201", config=Nb201SpaceConfig,
    traits={
        "choices": True, "one_shot": True, "drop_paths": True, "cell_shape": True,
        # Per depth, the least and most width of the 15,625 cells (tests/test_startup.py counts them).
        "cell_shapes": {"expr": "[[0, 0, 0], [1, 1, 1], [2, 1, 7 / 3], [3, 1, 2]]"},
    },
)
class Nb201Space:
    """The NAS-Bench-201 space: all 15,625 cells, the benchmark's network, and a supernet.

    Args:
        config: Sizes of the supernet and how its edges mix the candidates.
    """

    architecture_type = Nb201Arch

    def __init__(self, config: Nb201SpaceConfig | None = None) -> None:
        self.config = config or Nb201SpaceConfig()

    def sample(self, rng: random.Random) -> Nb201Arch:
        """A uniformly random cell of the 15,625 (``none`` included, as the benchmark samples)."""
        return Nb201Arch(tuple(rng.choice(NB201_OPS) for _ in EDGES))

    def decisions(self) -> tuple[Decision, ...]:
        """One decision per edge, in the benchmark's edge order; option 0 is ``none``."""
        return tuple(Decision(f"edge {src}->{dst}", NB201_OPS) for src, dst in EDGES)

    def encode(self, arch: Architecture) -> tuple[int, ...]:
        """The index in :data:`NB201_OPS` of every edge's op."""
        arch = expect_arch(arch, Nb201Arch, "encodes")
        return tuple(NB201_OPS.index(op) for op in arch.ops)

    def decode(self, values: tuple[int, ...] | list[int]) -> Nb201Arch:
        """The cell whose edges carry ``NB201_OPS[v]`` for each value."""
        return Nb201Arch(tuple(decode_options(self.decisions(), values)))

    def cell_shape(self, arch: Architecture) -> dict[str, float]:
        """The width and depth of the cell (:func:`cell_shape`): ``cell_width``, ``cell_depth``."""
        width, depth = cell_shape(expect_arch(arch, Nb201Arch, "measures").ops)
        return {"cell_width": width, "cell_depth": depth}

    def contains(self, arch: Architecture) -> bool:
        """Whether ``arch`` is an NAS-Bench-201 cell (every such record is)."""
        return isinstance(arch, Nb201Arch)

    def parse(self, text: str) -> Nb201Arch:
        """A cell from the benchmark's string, JSON text or a JSON file."""
        return load_arch(text)

    def enumerate(self) -> Iterator[Nb201Arch]:
        """Every cell of the space, 15,625, the last edge changing fastest."""
        for ops in itertools.product(NB201_OPS, repeat=len(EDGES)):
            yield Nb201Arch(ops)

    def build(
        self,
        arch: Architecture,
        dataset: DatasetInfo,
        *,
        channels: int | None = None,
        layers: int | None = None,
        auxiliary: bool = False,
    ) -> nn.Module:
        """The benchmark's network of a cell.

        Args:
            arch: An :class:`Nb201Arch`.
            dataset: Input channels and classes (any image size: the network pools globally).
            channels: Channels of the first stage (default: the benchmark's 16).
            layers: Cells per stage (default: the benchmark's 5).
            auxiliary: Ignored: the benchmark's network has no auxiliary head.
        """
        arch = expect_arch(arch, Nb201Arch)
        return TinyNetwork(
            arch=arch,
            channels=channels or 16,
            cells_per_stage=layers or 5,
            num_classes=dataset.num_classes,
            in_channels=dataset.in_channels,
        )

    def stack(
        self, networks: Sequence[nn.Module], on_relu: ReluObserver | None = None
    ) -> StackedTinyNetwork:
        """``networks`` (built by :meth:`build` with one size) run as one: logits (B, N, classes).

        Args:
            networks: The candidates' networks.
            on_relu: Observes every ReLU's output, (B, n*C, ...), with its candidates, (n,).
        """
        return StackedTinyNetwork(networks, on_relu)  # type: ignore[arg-type]

    @property
    def op_names(self) -> tuple[str, ...]:
        """The candidates, in the column order of the supernet's architecture weights."""
        return tuple(NB201_OPS)

    @property
    def edge_names(self) -> tuple[str, ...]:
        """The edges, in the row order of the supernet's architecture weights: ``node j → node i``
        (node 0 is the cell's input, node 3 its output)."""
        return tuple(f"node {j} → node {i}" for j, i in EDGES)

    def draw(self, arch: Architecture) -> Figure:
        """The cell's four nodes and its labelled edges (the benchmark paper's Figure 1)."""
        from matplotlib.figure import Figure

        from raynas.spaces.drawing import draw_nb201_cell

        arch = expect_arch(arch, Nb201Arch, "draws")
        fig = Figure(figsize=(9.0, 3.6), layout="constrained")
        draw_nb201_cell(fig.subplots(), arch.edges(), "NAS-Bench-201 cell")
        fig.suptitle(arch.key(), fontsize=10)
        return fig


