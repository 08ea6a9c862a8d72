"""The Auto-DeepLab hierarchical space (Liu et al., "Auto-DeepLab: Hierarchical Neural Architecture
Search for Semantic Image Segmentation", CVPR 2019, arXiv:1901.02985).

Two levels are searched together:

- the **cell** (Sec. 3.1): ``B = 5`` blocks, each adding two operations, each applied to one of
  ``H^{l-2}``, ``H^{l-1}`` or an earlier block; the cell's output concatenates the blocks. Inputs
  are numbered as in DARTS: 0 = ``H^{l-2}``, 1 = ``H^{l-1}``, ``2 + i`` = block ``i``;
- the **network path** (Sec. 3.2): after a stem that reduces the resolution 4 times, ``L = 12``
  layers, each at downsample rate 4, 8, 16 or 32 (indices 0..3); from one layer to the next the
  rate halves, stays or doubles, and the first layer is at /4 or /8.

The search supernet weighs every path of the trellis with ``beta`` and decodes the most probable
one with the Viterbi algorithm (Sec. 4.3, :func:`viterbi_path`); the evaluation network follows
one path with a DeepLabv3+ ASPP and decoder (Sec. 5.2, :class:`AutoDeepLabNet`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import torch
from torch import nn

from raynas.config import Check, Rule, check_rules
from raynas.errors import ArchitectureError, ConfigError
from raynas.ops.auto_deeplab import (
    ADL_OPS,
    ADL_PRIMITIVES,
    ASPP,
    OFFICIAL_OP_NAMES,
    Cell,
    Decoder,
    Stem,
    half_size,
    resize,
)
from raynas.spaces.base import expect_arch
from raynas.spaces.darts_genotype import (
    cell_decisions,
    cell_shape,
    cell_shapes_trait,
    decode_cell,
    encode_cell,
)
from raynas.spaces.registry import SPACES
from raynas.types import Architecture, DatasetInfo, Decision, check_keys, decode_options, published_record

if TYPE_CHECKING:  # matplotlib loads only where a picture is drawn
    from matplotlib.figure import Figure

Edge = tuple[str, int]
RATES = (4, 8, 16, 32)  # downsample rate of each rate index (papers.json network_level)

# The published architecture (tensorflow/models research/deeplab/core/nas_network.py, hnasnet):
# the operations and hidden-state indices of NASBaseCell, whose index convention puts
# H^{l-1} at 0 and H^{l-2} at 1 (the reverse of ours), and the backbone path.
OFFICIAL_HNASNET = {
    "operations": (
        "atrous_5x5", "separable_3x3_2", "separable_3x3_2", "atrous_3x3", "separable_3x3_2",
        "separable_3x3_2", "separable_5x5_2", "separable_5x5_2", "separable_5x5_2", "atrous_5x5",
    ),
    "hiddenstate_indices": (1, 0, 1, 0, 3, 1, 4, 2, 3, 5),
    "backbone": (0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1),
}


def _official_architecture() -> AutoDeepLabArchitecture:
    ops = OFFICIAL_HNASNET["operations"]
    indices = OFFICIAL_HNASNET["hiddenstate_indices"]
    swap = {0: 1, 1: 0}  # TF: 0 = H^{l-1}, 1 = H^{l-2}; ours: 0 = H^{l-2}, 1 = H^{l-1}
    cell = tuple((OFFICIAL_OP_NAMES[op], swap.get(i, i)) for op, i in zip(ops, indices, strict=True))
    return AutoDeepLabArchitecture(cell=cell, path=tuple(OFFICIAL_HNASNET["backbone"]))


def check_path(path: Sequence[int]) -> None:
    """Raise :class:`ArchitectureError` unless ``path`` is a path of the trellis (Sec. 3.2)."""
    if not path:
        raise ArchitectureError("a network path needs at least one layer")
    for layer, r in enumerate(path):
        if not isinstance(r, int) or not 0 <= r < len(RATES):
            raise ArchitectureError(
                f"path[{layer}] = {r!r}: a layer's rate index must be 0..3 (/4, /8, /16, /32)"
            )
    if path[0] > 1:
        raise ArchitectureError(
            f"path[0] = {path[0]}: the first layer after the stem is at /4 or /8 (0 or 1)"
        )
    for layer in range(1, len(path)):
        if abs(path[layer] - path[layer - 1]) > 1:
            raise ArchitectureError(
                f"path[{layer - 1}:{layer + 1}] = {list(path[layer - 1 : layer + 1])}: "
                "the rate may only halve, stay or double from one layer to the next"
            )


@dataclass(frozen=True)
class AutoDeepLabArchitecture(Architecture):
    """One Auto-DeepLab architecture: a cell (two ``(op, input)`` edges per block, the DARTS
    convention: input 0 = ``H^{l-2}``, 1 = ``H^{l-1}``, ``2 + i`` = block i) shared by every layer,
    and the network path (a rate index 0..3 = /4, /8, /16, /32 per layer).

    The JSON form is ``{"cell": [["sep_conv_3x3", 1], ...], "path": [0, 0, 1, ...]}``.
    """

    space = "auto_deeplab"

    cell: tuple[Edge, ...]
    path: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.cell or len(self.cell) % 2:
            raise ArchitectureError(
                f"the cell must list two (op, input) edges per block, got {len(self.cell)}"
            )
        for i, edge in enumerate(self.cell):
            if not (isinstance(edge, tuple) and len(edge) == 2):
                raise ArchitectureError(f"cell[{i}] = {edge!r} is not an (op, input) pair")
            op, index = edge
            block = i // 2
            if op not in ADL_OPS:
                raise ArchitectureError(
                    f"cell[{i}]: unknown op {op!r}; choose one of: {', '.join(ADL_PRIMITIVES)}"
                )
            if not isinstance(index, int) or not 0 <= index < block + 2:
                raise ArchitectureError(
                    f"cell[{i}]: block {block} cannot take input {index!r}; allowed inputs are "
                    f"0..{block + 1} (0 = H^(l-2), 1 = H^(l-1), 2.. = earlier blocks)"
                )
        check_path(self.path)

    @property
    def blocks(self) -> int:
        """Blocks per cell (B)."""
        return len(self.cell) // 2

    @property
    def layers(self) -> int:
        """Layers of the network path (L)."""
        return len(self.path)

    def to_dict(self) -> dict[str, Any]:
        return {"cell": [list(e) for e in self.cell], "path": list(self.path)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AutoDeepLabArchitecture:
        check_keys(data, ("cell", "path"), "an Auto-DeepLab architecture")
        try:
            cell = tuple((str(op), _int(i)) for op, i in data["cell"])
            path = tuple(_int(r) for r in data["path"])
        except (TypeError, ValueError) as exc:
            raise ArchitectureError(f"malformed Auto-DeepLab architecture: {exc}") from None
        return cls(cell=cell, path=path)

    def canonical(self) -> Any:
        # The two edges of a block are summed: their order does not change the network.
        blocks = [sorted([list(e) for e in self.cell[i : i + 2]]) for i in range(0, len(self.cell), 2)]
        return {"cell": blocks, "path": list(self.path)}

    def __str__(self) -> str:
        return f"AutoDeepLab(cell={list(self.cell)}, path={list(self.path)})"


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError(f"{value!r} is not an integer")
    return int(value)


PUBLISHED: dict[str, AutoDeepLabArchitecture] = {"hnasnet": _official_architecture()}
_ALIASES = {"Auto-DeepLab": "hnasnet", "auto_deeplab": "hnasnet", "official": "hnasnet"}


def published_architecture(name: str) -> AutoDeepLabArchitecture:
    """A published architecture by name: ``hnasnet`` (the paper's Fig. 3, as in the official code)."""
    return published_record(name, PUBLISHED, _ALIASES, "Auto-DeepLab architecture")


# --- the network level: the trellis, its transition weights and the Viterbi decoding ----------

MOVES = (-1, 0, 1)  # rate index change along a transition: x2 up, same, x2 down


def source_rates(layer: int) -> int:
    """How many rates the nodes feeding ``layer`` have: the stem (1) for layer 0, else layer-1's."""
    return 1 if layer == 0 else min(layer, len(RATES) - 1) + 1


def layer_rates(layer: int) -> int:
    """How many rates layer ``layer`` (0-based) can reach: /4 and /8 at layer 0, one more per layer."""
    return min(layer + 1, len(RATES) - 1) + 1


def transition_mask(layers: int) -> torch.Tensor:
    """Which transitions of the trellis exist: (layers, 4, 3) booleans, ``[l, r, k]`` for the move
    ``MOVES[k]`` from rate ``r`` of layer ``l - 1`` (the stem, rate 0, for ``l = 0``)."""
    mask = torch.zeros(layers, len(RATES), len(MOVES), dtype=torch.bool)
    for layer in range(layers):
        for r in range(source_rates(layer)):
            for k, move in enumerate(MOVES):
                mask[layer, r, k] = 0 <= r + move < len(RATES)
    return mask


def transition_probs(beta: torch.Tensor) -> torch.Tensor:
    """Normalise the transition logits (layers, 4, 3) over each node's outgoing moves (Eq. 7);
    moves that do not exist get probability 0 (as do the rows of nodes that do not exist)."""
    mask = transition_mask(beta.shape[0]).to(beta.device)
    probs = beta.masked_fill(~mask, float("-inf")).softmax(-1)
    return probs.nan_to_num(0.0)  # rows of absent nodes are all -inf


def viterbi_path(probs: torch.Tensor) -> tuple[int, ...]:
    """The path of largest product of transition probabilities (Sec. 4.3), by dynamic programming.

    Args:
        probs: (layers, 4, 3) outgoing transition probabilities (see :func:`transition_probs`).

    Returns:
        The rate index of every layer.
    """
    logp = probs.detach().double().cpu().clamp_min(0).log()  # log 0 = -inf: a move that cannot be taken
    layers = logp.shape[0]
    score = torch.full((len(RATES),), float("-inf"), dtype=torch.float64)
    score[0] = 0.0  # the stem, at /4
    back: list[list[int]] = []
    for layer in range(layers):
        new = torch.full((len(RATES),), float("-inf"), dtype=torch.float64)
        arg = [-1] * len(RATES)
        for r in range(len(RATES)):
            for k, move in enumerate(MOVES):
                target = r + move
                if not 0 <= target < len(RATES):
                    continue
                value = score[r] + logp[layer, r, k]
                if value > new[target]:
                    new[target], arg[target] = value, r
        back.append(arg)
        score = new
    best = int(torch.argmax(score))
    path = [best]
    for layer in range(layers - 1, 0, -1):
        path.append(back[layer][path[-1]])
    return tuple(reversed(path))


def all_paths(layers: int) -> list[tuple[int, ...]]:
    """Every path of the trellis (2.9e4 for L = 12, paper Sec. 5.1)."""
    paths: list[tuple[int, ...]] = [(0,), (1,)]
    for _ in range(layers - 1):
        paths = [(*p, p[-1] + m) for p in paths for m in MOVES if 0 <= p[-1] + m < len(RATES)]
    return paths


def path_probability(probs: torch.Tensor, path: Sequence[int]) -> float:
    """The product of the transition probabilities along ``path`` (from the stem at /4)."""
    total, prev = 1.0, 0
    for layer, r in enumerate(path):
        total *= float(probs[layer, prev, MOVES.index(r - prev)])
        prev = r
    return total


def cell_count(blocks: int, num_ops: int = len(ADL_PRIMITIVES)) -> int:
    """Cells as the paper counts them (Sec. 5.1, 5.6e14 for B = 5): each block picks an ordered
    pair of inputs, with repetition, and an operation for each."""
    return math.prod((i + 2) ** 2 * num_ops**2 for i in range(blocks))


# --- the space -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AutoDeepLabSpaceConfig:
    """The Auto-DeepLab space and its search supernet (defaults: the paper's Sec. 5.1).

    Attributes:
        channels: The filter multiplier F of the supernet (8 in the search): a node at rate s
            has ``blocks * F * s / 4`` channels.
        layers: Layers L of the network level (12).
        blocks: Blocks B per cell (5).
        primitives: Candidate operations on every edge (default: the paper's eight).
    """

    channels: Annotated[int, Rule(ge=1, says="(F) must be at least 1")] = 8
    layers: Annotated[int, Rule(ge=1, says="(L) must be at least 1")] = 12
    blocks: Annotated[int, Rule(ge=1, says="(B) must be at least 1")] = 5
    primitives: tuple[str, ...] = ADL_PRIMITIVES

    checks: ClassVar[tuple[Check, ...]] = (
        Check(
            "item in ops", "space.primitives: unknown op {item!r}; choose from: {join(ops)}",
            each="primitives", tables={"ops": ADL_PRIMITIVES},  # the keys of ADL_OPS
        ),
        Check("set(primitives) - {'none'}", "space.primitives needs at least one op besides 'none'"),
    )

    def __post_init__(self) -> None:
        check_rules(self, "space")


# Filter multipliers of the paper's evaluation networks (Table 2).


VARIANTS = {"S": 20, "M": 32, "L": 48}


@SPACES.register(
    "auto_deeplab", config=AutoDeepLabSpaceConfig,
    traits={"choices": True, "cell_shape": True, "cell_shapes": cell_shapes_trait("blocks"), "dense": True},
)
class AutoDeepLabSpace:
    """The Auto-DeepLab cell and network-path space.

    Args:
        config: Sizes of the supernet and the candidate operations.
    """

    architecture_type = AutoDeepLabArchitecture
    reference_dataset = "cityscapes"  # the paper's networks (Table 2) are sized on Cityscapes

    def __init__(self, config: AutoDeepLabSpaceConfig | None = None) -> None:
        self.config = config or AutoDeepLabSpaceConfig()

    def sample(self, rng: random.Random) -> AutoDeepLabArchitecture:
        """A uniformly random cell (two distinct inputs per block, ops other than ``none``) and a
        uniformly random path."""
        ops = [p for p in self.config.primitives if p != "none"]
        cell: list[Edge] = []
        for block in range(self.config.blocks):
            for index in sorted(rng.sample(range(block + 2), 2)):
                cell.append((rng.choice(ops), index))
        path = [rng.choice((0, 1))]
        for _ in range(self.config.layers - 1):
            path.append(rng.choice([path[-1] + m for m in MOVES if 0 <= path[-1] + m < len(RATES)]))
        return AutoDeepLabArchitecture(cell=tuple(cell), path=tuple(path))

    def decisions(self) -> tuple[Decision, ...]:
        """Per block: its two inputs (``"0+1"``, ...) and the op on each; then per layer the move
        (``up``, ``same``, ``down``; layer 0: ``same`` = /4, ``down`` = /8). A move off the trellis
        decodes to the nearest rate that exists."""
        ops = tuple(p for p in self.config.primitives if p != "none")
        blocks = [f"block{block}" for block in range(self.config.blocks)]
        out = cell_decisions("cell", blocks, ops)
        out += [Decision(f"path.layer{layer}", ("up", "same", "down")) for layer in range(self.config.layers)]
        return tuple(out)

    def encode(self, arch: Architecture) -> tuple[int, ...]:
        """Option indices of :meth:`decisions`; a block's two edges are ordered by input."""
        if not self.contains(arch):
            raise ArchitectureError(f"not an architecture of this auto_deeplab space: {arch}")
        assert isinstance(arch, AutoDeepLabArchitecture)
        blocks = [f"block {block}" for block in range(self.config.blocks)]
        values = encode_cell(arch.cell, self.decisions(), blocks)
        prev = 0
        for r in arch.path:
            values.append(r - prev + 1)
            prev = r
        return tuple(values)

    def decode(self, values: tuple[int, ...] | list[int]) -> AutoDeepLabArchitecture:
        """The architecture with these option indices (see :meth:`decisions`)."""
        names = decode_options(self.decisions(), values)
        cell = decode_cell(names[: 3 * self.config.blocks])
        path, prev = [], 0
        for layer, value in enumerate(values[3 * self.config.blocks :]):
            top = 1 if layer == 0 else len(RATES) - 1
            prev = min(max(prev + int(value) - 1, 0), top)
            path.append(prev)
        return AutoDeepLabArchitecture(cell=cell, path=tuple(path))

    def contains(self, arch: Architecture) -> bool:
        """Whether ``arch`` is an architecture of this space (blocks, layers and operations)."""
        return (
            isinstance(arch, AutoDeepLabArchitecture)
            and arch.blocks == self.config.blocks
            and arch.layers == self.config.layers
            and all(op in self.config.primitives for op, _ in arch.cell)
        )

    def parse(self, text: str) -> AutoDeepLabArchitecture:
        """An architecture from a published name (``hnasnet``), a JSON file, or JSON text."""
        arch = AutoDeepLabArchitecture.read_json(text, form='{"cell": [[op, input], ...], "path": [...]}')
        return arch if arch is not None else published_architecture(text.strip())

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
        """The evaluation network of ``arch`` (paper Sec. 5.2): stem, the cells along the path,
        ASPP and the DeepLabv3+ decoder; it returns logits at the input's size.

        Args:
            arch: An :class:`AutoDeepLabArchitecture`.
            dataset: Input channels and classes.
            channels: The filter multiplier F (default 20, Auto-DeepLab-S; M is 32, L is 48).
            layers: Must equal the path's length when given (the path fixes the depth).
            auxiliary: Auto-DeepLab has no auxiliary head; accepted for the space protocol and
                ignored.
            drop_path_prob: ScheduledDropPath's probability at the last cell (see
                :class:`AutoDeepLabNet`); the training loop raises it from 0 over the epochs.
        """
        del auxiliary  # no auxiliary head in Auto-DeepLab
        arch = expect_arch(arch, AutoDeepLabArchitecture)
        if layers is not None and layers != arch.layers:
            raise ArchitectureError(
                f"the architecture's path has {arch.layers} layers; layers={layers} cannot change it"
            )
        return AutoDeepLabNet(
            arch=arch, filter_multiplier=channels or VARIANTS["S"], num_classes=dataset.num_classes,
            in_channels=dataset.in_channels, drop_path_prob=drop_path_prob,
        )

    @property
    def op_names(self) -> tuple[str, ...]:
        """The candidates, in the column order of the supernet's architecture weights."""
        return tuple(self.config.primitives)

    def cell_shape(self, arch: Architecture) -> dict[str, float]:
        """The width and depth (:func:`~raynas.spaces.darts_genotype.cell_shape`) of the cell,
        whose output concatenates every block (the paper's Eq. 1; ``nas_network.py``'s ``hnasnet``
        with ``nas_cell.py``'s ``_combine_unused_states``):
        ``cell_width``, ``cell_depth``."""
        arch = expect_arch(arch, AutoDeepLabArchitecture, "measures")
        width, depth = cell_shape(arch.cell, range(2, 2 + arch.blocks))
        return {"cell_width": width, "cell_depth": depth}

    def draw(self, arch: Architecture) -> Figure:
        """The cell and the network-level path over the downsampling rates (the paper's Figures 1
        and 3)."""
        from matplotlib.figure import Figure

        from raynas.spaces.drawing import draw_darts_cell, draw_network_path

        arch = expect_arch(arch, AutoDeepLabArchitecture, "draws")
        blocks = len(arch.cell) // 2
        fig = Figure(figsize=(2.2 * blocks + 3.0, 2 * 3.4), layout="constrained")
        top, bottom = fig.subplots(2, 1)
        draw_darts_cell(top, arch.cell, range(2, 2 + blocks), "cell", names=("H^{l-2}", "H^{l-1}", "H^{l}"))
        draw_network_path(bottom, arch.path, "network-level path")
        fig.suptitle(arch.key(), fontsize=10)
        return fig


# --- the evaluation network ------------------------------------------------------------------


def aspp_rates(rate: int) -> tuple[int, int, int]:
    """DeepLabv3's ASPP rates (6, 12, 18) at output stride 16, scaled to the encoder's rate."""
    return tuple(max(1, r * 16 // rate) for r in (6, 12, 18))  # type: ignore[return-value]


class AutoDeepLabNet(nn.Module):
    """Auto-DeepLab for segmentation (paper Sec. 5.2, tensorflow/models nas_network.py + model.py).

    The stem (64, 64, 128 filters) brings the input to /4; cell ``l`` runs at the path's rate
    ``s_l`` with ``F * s_l / 4`` filters per operation (output ``B * F * s_l / 4``), taking
    ``H^{l-1}`` (resized as the path moves) and ``H^{l-2}`` (the stem's /2 and /4 tensors for the
    first two cells). After a ReLU, a DeepLabv3 ASPP (1x1, three separable 3x3 at rates
    (6, 12, 18) * 16 / s, image pooling; 256 filters) and the DeepLabv3+ decoder on the last /4
    feature (the stem's if the path never stays at /4; official: ``Cell_2``).

    ScheduledDropPath (Table 3) as nas_cell.py's ``_apply_drop_path`` does it: in training, the
    output of every operation but ``skip_connect`` is zeroed per sample with probability
    ``drop_path_prob * (l + 1) / L`` in cell ``l`` of ``L``, the kept ones scaled by ``1 / keep``.
    ``drop_path_prob`` is the attribute the training loop raises linearly from 0 over the epochs
    (``raynas.train.loop.fit``, DARTS's ramp); the official code raises it every iteration
    (``current_step / total_training_steps``).

    Args:
        arch: The cell and the path.
        filter_multiplier: F.
        num_classes: Output classes.
        in_channels: Image channels.
        drop_path_prob: The drop-path probability of the last cell (0: none).
    """

    def __init__(
        self, *, arch: AutoDeepLabArchitecture, filter_multiplier: int, num_classes: int,
        in_channels: int = 3, drop_path_prob: float = 0.0,
    ) -> None:
        super().__init__()
        if filter_multiplier < 1:
            raise ConfigError(f"the filter multiplier F must be at least 1, got {filter_multiplier}")
        if not 0 <= drop_path_prob < 1:
            raise ConfigError(f"drop_path_prob must be in [0, 1), got {drop_path_prob}")
        self.arch = arch
        self.drop_path_prob = drop_path_prob
        self.stem = Stem(in_channels)
        blocks = arch.blocks
        c_pp, c_p = self.stem.channels
        prev_rate = 0
        self.cells = nn.ModuleList()
        for rate in arch.path:
            channels = filter_multiplier * 2**rate
            edges = [
                [(j, ADL_OPS[op](channels, 2 if rate > prev_rate and j < 2 else 1, True))
                 for op, j in arch.cell[2 * b : 2 * b + 2]]
                for b in range(blocks)
            ]
            self.cells.append(
                Cell(channels=channels, c_prev=c_p, c_prev_prev=c_pp, move=rate - prev_rate,
                     edges=edges, affine=True, droppable=[op != "skip_connect" for op, _ in arch.cell])
            )
            c_pp, c_p, prev_rate = c_p, blocks * channels, rate
        last = arch.path[-1]
        self.aspp = ASPP(c_p, 256, aspp_rates(RATES[last]), separable=False)
        # The low-level feature: the last cell at /4 (official path: cell 2), else the stem.
        at_four = [i for i, r in enumerate(arch.path) if r == 0]
        self.low_level = at_four[-1] if at_four else -1
        c_low = blocks * filter_multiplier if at_four else self.stem.channels[1]
        self.decoder = Decoder(c_low, 256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in, H, W) -> (B, classes, H, W)
        h_pp, h_p = self.stem(x)  # (B, 64, H/2, W/2), (B, 128, H/4, W/4)
        sizes = [tuple(h_p.shape[2:])]
        for _ in RATES[1:]:
            sizes.append((half_size(sizes[-1][0]), half_size(sizes[-1][1])))
        low = h_p
        layers = len(self.cells)
        for i, (cell, rate) in enumerate(zip(self.cells, self.arch.path, strict=True)):
            drop = self.drop_path_prob * (i + 1) / layers if self.training else 0.0
            h_pp, h_p = h_p, cell(h_p, h_pp, sizes[rate], drop_prob=drop)
            if i == self.low_level:
                low = h_p
        encoded = self.aspp(torch.relu(h_p))  # (B, 256, H/s, W/s)
        logits = self.decoder(encoded, low)  # (B, classes, H/4, W/4)
        return resize(logits, tuple(x.shape[2:]))  # type: ignore[arg-type]
