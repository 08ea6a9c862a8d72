"""A user-defined search space, registered with raynas in a few lines: a plain stack of
convolutional layers over small images (the digits), one operation chosen per layer.

It shows the three things a space keeps apart (see ``docs/custom_spaces.md``):

* the **architecture**: :class:`TinyCnnArch`, a frozen record of the chosen op of every layer,
  with a JSON round trip and a string form (``"sep_conv_3x3,skip_connect,max_pool_3x3"``);
* the **space**: :class:`TinyCnnSpace`, what can be chosen (``sample``, ``contains``, ``parse``,
  and the flat ``decisions`` / ``encode`` / ``decode`` view), configured by :class:`TinyCnnConfig`;
* the **networks**: ``build`` gives the stand-alone network of one architecture, and
  ``tiny_cnn_supernet`` (registered in ``raynas.supernet.SUPERNETS`` under the space's name) the
  weight-sharing network that gradient strategies (``darts``, ``milenas``) search over.

The candidate ops come from raynas's operation table (``raynas.ops.OPS``), and the supernet's
layers are raynas's weighted mixed op, so the example is short; a space may use any modules.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raynas.errors import ArchitectureError, ConfigError
from raynas.ops import OPS, WeightedMixedOp
from raynas.spaces import SPACES
from raynas.supernet import SUPERNETS
from raynas.types import Architecture, DatasetInfo, Decision, decode_options

# The candidates of every layer; ``skip_connect`` lets the search make the network shallower.
CHOICES: tuple[str, ...] = ("skip_connect", "sep_conv_3x3", "dil_conv_3x3", "max_pool_3x3", "pib_conv_3x3")


@dataclass(frozen=True)
class TinyCnnArch(Architecture):
    """The op of every layer, in order. JSON form: ``{"ops": ["sep_conv_3x3", ...]}``."""

    space = "tiny_cnn"  # the name the record is registered under for Architecture.from_json

    ops: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.ops:
            raise ArchitectureError("a tiny_cnn architecture needs at least one layer")
        for i, op in enumerate(self.ops):
            if op not in CHOICES:
                raise ArchitectureError(f"layer {i}: unknown op {op!r}; allowed: {', '.join(CHOICES)}")

    def to_dict(self) -> dict[str, Any]:
        return {"ops": list(self.ops)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TinyCnnArch:
        if set(data) != {"ops"} or not isinstance(data["ops"], list):
            raise ArchitectureError(f"a tiny_cnn architecture is {{\"ops\": [...]}}; got keys {sorted(data)}")
        return cls(tuple(str(op) for op in data["ops"]))

    def __str__(self) -> str:
        return ",".join(self.ops)


@dataclass(frozen=True)
class TinyCnnConfig:
    """The space's settings, read from the job file's ``space`` section.

    Attributes:
        layers: Searched layers (the architecture has one op per layer).
        channels: Channels of every layer (of the supernet, and the default of ``build``).
    """

    layers: int = 3
    channels: int = 16

    def __post_init__(self) -> None:
        if self.layers < 1:
            raise ConfigError(f"space.layers must be at least 1, got {self.layers}")
        if self.channels < 2 or self.channels % 2:
            raise ConfigError(f"space.channels must be an even number >= 2, got {self.channels}")


class TinyCnn(nn.Module):
    """Stem conv -> one module per layer -> global average pool -> linear.

    Args:
        layers: The layer modules, each (B, C, H, W) -> (B, C, H, W).
        channels: C.
        dataset: Input channels and classes.
    """

    def __init__(self, *, layers: list[nn.Module], channels: int, dataset: DatasetInfo) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(dataset.in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        )
        self.layers = nn.ModuleList(layers)
        self.classifier = nn.Linear(channels, dataset.num_classes)

    def features(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        h = self.stem(x)  # (B, C, H, W)
        for i, layer in enumerate(self.layers):
            h = layer(h) if weights is None else layer(h, weights[i])
        return h.mean(dim=(2, 3))  # (B, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in, H, W) -> (B, classes)
        return self.classifier(self.features(x))


class TinyCnnSupernet(TinyCnn):
    """Every layer a weighted mixture of all candidates, weighted by ``softmax(alpha[layer])``.

    What the gradient strategies need of a supernet: ``forward``, ``weights()`` and
    ``arch_parameters()`` (the two parameter groups), ``genotype()`` (the architecture the
    alphas stand for), and, for the per-epoch metrics, ``arch_state()``, ``arch_entropy()`` and
    ``skip_connects()``. ``set_path`` runs one architecture (single-path training or inherited
    weights).

    Args:
        layers: Searched layers.
        channels: Channels of every layer.
        dataset: Input channels and classes.
    """

    def __init__(self, *, layers: int, channels: int, dataset: DatasetInfo) -> None:
        mixed = [WeightedMixedOp(channels=channels, stride=1, primitives=CHOICES) for _ in range(layers)]
        super().__init__(layers=mixed, channels=channels, dataset=dataset)
        self.alpha = nn.Parameter(1e-3 * torch.randn(layers, len(CHOICES)))  # (layers, choices)
        self.path: torch.Tensor | None = None

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha]

    def weights(self) -> Iterator[nn.Parameter]:
        return (p for name, p in self.named_parameters() if name != "alpha")

    def set_path(self, arch: TinyCnnArch | None) -> None:
        """Run only ``arch``'s ops from now on; ``None`` goes back to the mixture."""
        self.path = None if arch is None else F.one_hot(
            torch.tensor([CHOICES.index(op) for op in arch.ops]), len(CHOICES)
        ).float().to(self.alpha.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.path if self.path is not None else F.softmax(self.alpha, dim=-1)
        return self.classifier(self.features(x, weights))

    def genotype(self) -> TinyCnnArch:
        return TinyCnnArch(tuple(CHOICES[i] for i in self.alpha.detach().argmax(-1).tolist()))

    def arch_state(self) -> dict[str, Any]:
        return {"alpha": self.alpha.detach().cpu().tolist()}

    def arch_entropy(self) -> float:
        with torch.no_grad():
            p = F.softmax(self.alpha, dim=-1)
            return float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean())

    def max_entropy(self) -> float:
        return math.log(len(CHOICES))

    def skip_connects(self) -> int:
        return sum(op == "skip_connect" for op in self.genotype().ops)


@SPACES.register("tiny_cnn", config=TinyCnnConfig)
class TinyCnnSpace:
    """A stack of ``layers`` layers, each one of :data:`CHOICES`.

    Args:
        config: Number of layers and channels.
    """

    architecture_type = TinyCnnArch

    def __init__(self, config: TinyCnnConfig | None = None) -> None:
        self.config = config or TinyCnnConfig()

    def sample(self, rng: random.Random) -> TinyCnnArch:
        return TinyCnnArch(tuple(rng.choice(CHOICES) for _ in range(self.config.layers)))

    def contains(self, arch: Architecture) -> bool:
        return isinstance(arch, TinyCnnArch) and len(arch.ops) == self.config.layers

    def parse(self, text: str) -> TinyCnnArch:
        """An architecture from JSON text, a JSON file, or the string form ``op,op,op``."""
        arch = TinyCnnArch.read_json(text, form='{"ops": [...]}')  # None: neither JSON nor a file
        if arch is None:
            arch = TinyCnnArch(tuple(op.strip() for op in text.split(",")))
        if len(arch.ops) != self.config.layers:
            raise ArchitectureError(
                f"{str(arch)!r} has {len(arch.ops)} layers; this tiny_cnn space has {self.config.layers}"
            )
        return arch

    def decisions(self) -> tuple[Decision, ...]:
        return tuple(Decision(f"layer{i}.op", CHOICES) for i in range(self.config.layers))

    def encode(self, arch: Architecture) -> tuple[int, ...]:
        if not self.contains(arch):
            raise ArchitectureError(f"not an architecture of this tiny_cnn space: {arch}")
        return tuple(CHOICES.index(op) for op in arch.ops)  # type: ignore[attr-defined]

    def decode(self, values: tuple[int, ...] | list[int]) -> TinyCnnArch:
        return TinyCnnArch(tuple(decode_options(self.decisions(), values)))

    def build(
        self, arch: Architecture, dataset: DatasetInfo, *, channels: int | None = None,
        layers: int | None = None, auxiliary: bool = False,
    ) -> nn.Module:
        """The network of ``arch`` (its depth is the architecture's; ``layers`` is not used, and
        there is no auxiliary head)."""
        if not isinstance(arch, TinyCnnArch):
            raise ArchitectureError(f"the tiny_cnn space builds TinyCnnArch, got {type(arch).__name__}")
        c = channels or self.config.channels
        return TinyCnn(layers=[OPS.get(op)(c, 1, True) for op in arch.ops], channels=c, dataset=dataset)


@SUPERNETS.register("tiny_cnn")
def tiny_cnn_supernet(space: TinyCnnSpace, dataset: DatasetInfo) -> nn.Module:
    """The space's weight-sharing network, registered under the space's name."""
    return TinyCnnSupernet(layers=space.config.layers, channels=space.config.channels, dataset=dataset)
