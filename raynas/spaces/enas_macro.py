"""ENAS's macro space, whole networks (Pham et al., "Efficient Neural Architecture Search via
Parameter Sharing", ICML 2018, Sec. 2.3 "Designing Convolutional Networks"), as ``melodyguan/enas``
searches and trains it (``src/cifar10/general_child.py`` and ``general_controller.py`` with
``--controller_search_whole_channels``, ``scripts/cifar10_macro_*.sh``).

A network is ``layers`` layers on a stem. Its states are the stem's output (state 0) and each
layer's (layer ``i`` gives state ``i + 1``). Layer ``i`` reads state ``i`` through one of
``branches`` operations (:data:`~raynas.ops.enas.ENAS_MACRO_OPS`, in the code's ``count`` order)
and takes skip connections from any of the states before that, ``0 .. i - 1``: the code's skip bit
``j`` of layer ``i`` is its ``prev_layers[j]``, the stem's output first. The code's ``arc`` lists,
for every layer, its op id and then its ``i`` skip bits: :meth:`EnasMacroLayers.parse` reads it,
:meth:`EnasMacroLayers.arc` writes it.

The evaluation network (:class:`EnasMacroNetwork`) is ``_model`` with a ``fixed_arc``: a 3x3 stem
of ``C`` channels and BatchNorm; each layer's op (:class:`~raynas.ops.enas.MacroFixedOp`); where it
takes skips, ReLU, a 1x1 convolution and BatchNorm over the skipped states concatenated with the
op's output; after layers ``L // 3 - 1`` and ``2 (L // 3) - 1`` the channels double and every state
so far is reduced (a factorised reduction each); then global average pooling (no ReLU), dropout
and a linear layer without bias. The released code has no auxiliary head and no drop path for it
(``--child_use_aux_heads`` and ``--child_drop_path_keep_prob`` are not ``GeneralChild``'s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import torch
from torch import nn

from raynas.config import Rule, check_rules
from raynas.errors import ArchitectureError, ConfigError
from raynas.ops.enas import ENAS_MACRO_OPS, FactorizedReduction, MacroFixedOp, code_batch_norms
from raynas.spaces.base import OptionsSpace, expect_arch, load_record
from raynas.spaces.registry import SPACES
from raynas.types import Architecture, DatasetInfo, Decision, check_keys, decode_options


@dataclass(frozen=True)
class EnasMacroLayers(Architecture):
    """A network of ENAS's macro space: every layer's op, and the states it takes skips from.

    Attributes:
        ops: Layer ``i``'s operation.
        skips: Layer ``i``'s skip connections: states among ``0 .. i - 1`` (state 0 the stem's
            output, state ``j`` layer ``j - 1``'s), ascending.

    The JSON form is ``{"ops": ["conv_3x3", ...], "skips": [[], [], [0], ...]}``.
    """

    space = "enas_macro"

    ops: tuple[str, ...]
    skips: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if not self.ops or len(self.skips) != len(self.ops):
            raise ArchitectureError(
                f"an enas_macro network has one op and one tuple of skips a layer; got {len(self.ops)} "
                f"ops and {len(self.skips)} skip tuples"
            )
        for i, (op, skips) in enumerate(zip(self.ops, self.skips, strict=True)):
            if op not in ENAS_MACRO_OPS:
                raise ArchitectureError(
                    f"enas_macro layer {i}: unknown op {op!r}; allowed: {list(ENAS_MACRO_OPS)}"
                )
            if list(skips) != sorted(set(skips)) or any(not 0 <= j < i for j in skips):
                raise ArchitectureError(
                    f"enas_macro layer {i}: skips {list(skips)} must be distinct states among 0..{i - 1}, "
                    "ascending (layer i reads state i and may skip from those before it)"
                )

    @property
    def layers(self) -> int:
        """Layers of the network."""
        return len(self.ops)

    def arc(self) -> str:
        """The code's ``fixed_arc``: per layer, its op id and its skip bits."""
        return " ".join(
            " ".join([str(ENAS_MACRO_OPS.index(op)), *("1" if j in skips else "0" for j in range(i))])
            for i, (op, skips) in enumerate(zip(self.ops, self.skips, strict=True))
        )

    @classmethod
    def parse(cls, text: str) -> EnasMacroLayers:
        """The network of a ``fixed_arc`` string: layer ``i``'s op id and ``i`` skip bits, for
        ``L`` layers ``L (L + 1) / 2`` integers."""
        parts = text.split()
        values = [int(p) for p in parts] if parts and all(p.isdigit() for p in parts) else []
        layers = int(((8 * len(values) + 1) ** 0.5 - 1) / 2)
        if not values or layers * (layers + 1) // 2 != len(values):
            raise ArchitectureError(
                f"an enas_macro arc is, for every layer i, its op id and i skip bits (L (L + 1) / 2 "
                f"integers for L layers); got {text!r}"
            )
        ops, skips, at = [], [], 0
        for i in range(layers):
            op, bits = values[at], values[at + 1 : at + 1 + i]
            at += 1 + i
            if op >= len(ENAS_MACRO_OPS) or any(b > 1 for b in bits):
                raise ArchitectureError(
                    f"enas_macro arc {text!r}: layer {i} has op {op} (0..{len(ENAS_MACRO_OPS) - 1}) "
                    f"and skip bits {bits} (0 or 1)"
                )
            ops.append(ENAS_MACRO_OPS[op])
            skips.append(tuple(j for j, b in enumerate(bits) if b))
        return cls(tuple(ops), tuple(skips))

    def to_dict(self) -> dict[str, Any]:
        return {"ops": list(self.ops), "skips": [list(s) for s in self.skips]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnasMacroLayers:
        check_keys(data, ("ops", "skips"), "an enas_macro architecture")
        try:
            ops = tuple(str(op) for op in data["ops"])
            return cls(ops, tuple(tuple(int(j) for j in s) for s in data["skips"]))
        except (TypeError, ValueError) as exc:
            raise ArchitectureError(f"malformed enas_macro architecture: {exc}") from None

    def __str__(self) -> str:
        return f"EnasMacroLayers(arc={self.arc()!r})"


# The network the authors trained (scripts/cifar10_macro_final.sh): 24 layers, ops among the
# first four ids only (--child_num_branches=4). 4.23% test error on CIFAR-10 with 21.3M parameters
# is what is quoted for the paper's macro network (not checked against the paper here); the code
# builds 42,559,392 at the final script's settings (tests/test_enas_macro.py).
PUBLISHED: dict[str, EnasMacroLayers] = {
    "ENAS_macro": EnasMacroLayers.parse(" ".join((  # one line a layer, as the script writes it
        "0",
        "3 0",
        "0 1 0",
        "2 0 0 1",
        "2 0 0 0 0",
        "3 1 1 0 1 0",
        "2 0 0 0 0 0 1",
        "2 0 1 1 0 1 1 1",
        "1 0 1 1 1 0 1 0 1",
        "0 0 0 0 0 0 0 0 0 0",
        "2 0 0 0 0 0 1 0 0 0 0",
        "0 1 0 0 1 1 0 0 0 0 1 1",
        "2 0 1 0 0 0 0 0 1 0 1 1 0",
        "1 0 0 1 0 0 0 1 1 1 0 1 0 1",
        "0 1 1 0 1 0 1 0 0 0 0 0 1 0 0",
        "2 0 0 1 0 0 0 0 0 0 0 1 0 1 0 1",
        "2 0 1 0 0 0 1 0 0 1 1 1 1 0 0 1 0",
        "2 0 0 0 0 1 0 1 0 1 0 0 1 0 1 0 0 1",
        "3 0 1 1 0 1 0 0 0 0 0 1 0 1 0 1 0 0 0",
        "3 0 1 1 0 0 0 0 0 0 0 0 0 1 1 0 0 0 0 1",
        "0 1 0 0 1 0 1 1 0 0 0 1 0 0 0 0 0 1 1 0 0",
        "3 0 1 0 1 1 0 0 1 0 1 1 0 1 1 0 1 0 0 1 0 0",
        "0 1 0 1 0 1 0 0 0 0 0 0 0 0 1 0 1 0 0 1 0 0 0",
        "0 1 1 0 0 0 1 1 1 0 1 0 0 0 1 0 1 0 0 1 1 0 0 0",
    ))),
}


@dataclass(frozen=True)
class EnasMacroSpaceConfig:
    """ENAS's macro space and its shared child (defaults: ``scripts/cifar10_macro_search.sh``).

    Attributes:
        channels: ``child_out_filters``: the shared child's channels, every layer's (36).
        layers: ``child_num_layers`` (12).
        branches: ``child_num_branches``: the first this many of the six ops are offered (6).
        dropout: Dropout before the classifier, ``1 - child_keep_prob`` (0.1; 0.5 in the final run).
    """

    channels: Annotated[int, Rule(ge=2, even=True)] = 36
    layers: Annotated[int, Rule(ge=3)] = 12
    branches: Annotated[int, Rule(ge=1, le=len(ENAS_MACRO_OPS))] = 6
    dropout: Annotated[float, Rule(ge=0, lt=1)] = 0.1

    def __post_init__(self) -> None:
        check_rules(self, "space")


def pool_layers(layers: int) -> tuple[int, int]:
    """The layers after which the channels double and every state is reduced (``pool_layers``)."""
    distance = layers // 3
    return distance - 1, 2 * distance - 1


# The final network's channels (scripts/cifar10_macro_final.sh: --child_out_filters=96).
EVAL_CHANNELS = 96


@SPACES.register("enas_macro", config=EnasMacroSpaceConfig,
                 traits={"choices": True, "one_shot": True, "path_only": True})
class EnasMacroSpace(OptionsSpace[EnasMacroLayers]):
    """ENAS's macro space.

    Args:
        config: Sizes of the shared child and the ops offered.
    """

    architecture_type = EnasMacroLayers

    def __init__(self, config: EnasMacroSpaceConfig | None = None) -> None:
        self.config = config or EnasMacroSpaceConfig()

    @property
    def op_names(self) -> tuple[str, ...]:
        """The ops offered, in the code's ``count`` order."""
        return ENAS_MACRO_OPS[: self.config.branches]

    def decisions(self) -> tuple[Decision, ...]:
        """Per layer ``i``: its op (``layer<i>.op``), then whether it skips from each state
        ``j < i`` (``layer<i>.skip<j>``, ``"0"`` or ``"1"``), the controller's order."""
        out: list[Decision] = []
        for i in range(self.config.layers):
            out.append(Decision(f"layer{i}.op", self.op_names))
            out += [Decision(f"layer{i}.skip{j}", ("0", "1")) for j in range(i)]
        return tuple(out)

    def encode(self, arch: Architecture) -> tuple[int, ...]:
        """Option indices of :meth:`decisions`."""
        arch = self.check(arch)
        values: list[int] = []
        for i, (op, skips) in enumerate(zip(arch.ops, arch.skips, strict=True)):
            values += [self.op_names.index(op), *(int(j in skips) for j in range(i))]
        return tuple(values)

    def decode(self, values: tuple[int, ...] | list[int]) -> EnasMacroLayers:
        """The network with these option indices (see :meth:`decisions`)."""
        names = decode_options(self.decisions(), values)
        ops, skips, at = [], [], 0
        for i in range(self.config.layers):
            ops.append(names[at])
            skips.append(tuple(j for j in range(i) if names[at + 1 + j] == "1"))
            at += 1 + i
        return EnasMacroLayers(tuple(ops), tuple(skips))

    def contains(self, arch: Architecture) -> bool:
        """Whether ``arch`` has this space's layers and only its ops."""
        return (
            isinstance(arch, EnasMacroLayers) and arch.layers == self.config.layers
            and all(op in self.op_names for op in arch.ops)
        )

    def parse(self, text: str) -> EnasMacroLayers:
        """A network from a published name (``ENAS_macro``), a JSON file or text, or a ``fixed_arc``."""
        return load_record(
            text, EnasMacroLayers, published=PUBLISHED, aliases={}, what="enas_macro arc",
            json_form='{"ops": [op, ...], "skips": [[state, ...], ...]}',
            form="a fixed_arc string (every layer's op id and skip bits)",
            looks_compact=lambda s: bool(s) and s.split()[0].isdigit(),
        )

    def build(
        self,
        arch: Architecture,
        dataset: DatasetInfo,
        *,
        channels: int | None = None,
        layers: int | None = None,
    ) -> nn.Module:
        """The evaluation network of ``arch`` (:class:`EnasMacroNetwork`).

        Args:
            arch: An :class:`EnasMacroLayers`.
            dataset: Input channels, classes and image size.
            channels: ``child_out_filters`` (default 96, the final run's).
            layers: The arch's layers, if given (a macro arch fixes its depth).

        The released macro network has no auxiliary head and no drop path: ``build`` takes neither.
        """
        arch = expect_arch(arch, EnasMacroLayers)
        if dataset.task != "classification":
            raise ConfigError(
                f"the enas_macro network classifies images; {dataset.name} is a {dataset.task} dataset"
            )
        if layers not in (None, arch.layers):
            raise ConfigError(
                f"an enas_macro arc fixes its depth: this one has {arch.layers} layers, not {layers}"
            )
        return EnasMacroNetwork(
            arch, channels=channels or EVAL_CHANNELS, num_classes=dataset.num_classes,
            in_channels=dataset.in_channels, dropout=self.config.dropout,
        )


class EnasMacroNetwork(nn.Module):
    """``_model`` with a fixed arc, whole channels (see the module's docstring).

    Args:
        arch: The network's layers.
        channels: ``child_out_filters``.
        num_classes: Classes.
        in_channels: Input channels.
        dropout: Dropout before the classifier (``1 - child_keep_prob``).

    Attributes:
        unread: The parameters' name prefixes of the reductions of states no later layer reads:
            the code creates them (and counts them among its parameters), nothing runs them.
    """

    def __init__(
        self, arch: EnasMacroLayers, *, channels: int, num_classes: int, in_channels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if channels % 2:
            raise ConfigError(f"the enas_macro network needs an even number of channels, got {channels}")
        self.skips = arch.skips
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        )
        self.ops = nn.ModuleList()
        self.skip_convs = nn.ModuleList()
        self.pools = nn.ModuleDict()
        c = channels
        self.read: dict[str, set[int]] = {}  # pool layer -> the states read after it
        for i, op in enumerate(arch.ops):
            self.ops.append(MacroFixedOp(op, c, c))
            taken = len(arch.skips[i]) + 1
            self.skip_convs.append(nn.Identity() if i == 0 else nn.Sequential(
                nn.ReLU(), nn.Conv2d(taken * c, c, 1, bias=False), nn.BatchNorm2d(c)
            ))
            if i in pool_layers(arch.layers):
                self.pools[str(i)] = nn.ModuleList(FactorizedReduction(c, 2 * c) for _ in range(i + 2))
                self.read[str(i)] = {i + 1} | {j for later in arch.skips[i + 1 :] for j in later}
                c *= 2
        self.unread = tuple(
            f"pools.{p}.{j}." for p, read in self.read.items() for j in range(int(p) + 2) if j not in read
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(c, num_classes, bias=False)
        code_batch_norms(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes)."""
        states: list[Any] = [self.stem(x)]  # (B, C, H, W) each; the stem's output first
        for i, op in enumerate(self.ops):
            out = op(states[-1])
            if i > 0:
                out = self.skip_convs[i](torch.cat([states[j] for j in self.skips[i]] + [out], 1))
            states.append(out)
            if str(i) in self.pools:  # (B, 2C, H / 2, W / 2) each, where a later layer reads it
                read = self.read[str(i)]
                states = [reduce(s) if j in read else None
                          for j, (reduce, s) in enumerate(zip(self.pools[str(i)], states, strict=True))]
        return self.classifier(self.dropout(states[-1].mean((2, 3))))
