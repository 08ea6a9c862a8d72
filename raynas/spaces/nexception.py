"""The NEXcepTion macro space (Shavit et al., "From Xception to NEXcepTion: New Design Decisions and
Neural Architecture Search", ICPRAM 2023): Xception's layout with the design decisions the paper
searched on CIFAR-100.

A network of the ``xception`` layout is a stem, three entry-flow blocks that widen and downsample,
a middle flow of ``depth`` residual blocks at one width, an exit-flow block, two separable 3x3
convolutions to 1536 and 2048 channels, global average pooling and a linear classifier
(:mod:`raynas.ops.nexception` has the blocks). An architecture chooses:

- the stem: Xception's two 3x3 convolutions or a 2x2 patchify convolution;
- the middle flow's depth;
- the depthwise kernel size of the blocks' separable convolutions (3 in Xception, 5 in NEXcepTion);
- the activation (ReLU or GELU) and the norm (BatchNorm or LayerNorm);
- where the entry and exit blocks put activations: before every convolution or only between them;
- the downsampling: max pooling, blur pooling, or max pooling at stride 1 followed by blur pooling;
- the block end: none or squeeze and excitation;
- the middle block: Xception's three separable convolutions or NEXcepTion's inverted bottleneck.

The widths are the space config's (Xception's 64, 128, 256, 728, 1024, 1536, 2048 by default;
NEXcepTion-T's middle flow is 512 wide and its stem 96, NEXcepTion-S's middle flow 752).

The paper's search-space table could not be read here (only its abstract and introduction, and the
official code, github.com/hadarshavit/NEXcepTion, were available): the options above are the
choices the paper's text names and the official networks take, each with the Xception value.

Published architectures, by name: ``xception`` (timm's ``legacy_xception``: 22,855,952 parameters
for 1000 classes), ``nexception_t``, ``nexception_s`` and ``nexception_tp`` (the official code's
networks). NEXcepTion-TP has the ``stages`` layout instead: a 4x4 patchify stem and ConvNeXt-style
stages of NEXcepTion's bottleneck blocks with a norm and a strided 2x2 convolution between them,
and a BatchNorm after the pooling; it is a published network, not a member of the searched space.

An architecture is written as JSON, by name, or as ``<layout>/<stem>/<widths>/<depths>/k<kernel>/
<activation>/<norm>/<places>/<pool>/<end>/<middle>``, e.g. Xception is
``xception/xception/64-128-256-728-1024-1536-2048/8/k3/relu/bn/every/max/none/xception``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import torch
from torch import nn

from raynas.config import Check, Rule, check_rules, listed_once
from raynas.errors import ArchitectureError, ConfigError
from raynas.ops.nexception import (
    ACTIVATION_PLACES,
    ACTIVATIONS,
    BLOCK_ENDS,
    MIDDLE_BLOCKS,
    NORMS,
    POOLINGS,
    STEMS,
    BottleneckBlock,
    SeparableConv2d,
    XceptionBlock,
    XceptionMiddleBlock,
    make_activation,
    make_norm,
    make_stem,
)
from raynas.spaces.base import OptionsSpace, encode_options, expect_arch, load_record
from raynas.spaces.registry import SPACES
from raynas.types import Architecture, DatasetInfo, Decision, check_keys, decode_options

LAYOUTS: tuple[str, ...] = ("xception", "stages")
_FORM = (
    "<layout>/<stem>/<widths>/<depths>/k<kernel>/<activation>/<norm>/<places>/<pool>/<end>/<middle>, "
    "e.g. 'xception/xception/64-128-256-728-1024-1536-2048/8/k3/relu/bn/every/max/none/xception'"
)
_KEYS = (
    "layout",
    "stem",
    "widths",
    "depths",
    "kernel_size",
    "activation",
    "norm",
    "places",
    "pool",
    "block_end",
    "middle",
)
XCEPTION_WIDTHS = (64, 128, 256, 728, 1024, 1536, 2048)


def _positive_ints(value: Any) -> bool:
    return (
        isinstance(value, tuple)
        and bool(value)
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    )


@dataclass(frozen=True)
class NexceptionArch(Architecture):
    """One Xception-style network.

    Attributes:
        layout: ``xception`` (entry, middle and exit flows) or ``stages`` (NEXcepTion-TP).
        stem: ``xception``, ``patch2`` or ``patch4``.
        widths: ``xception``: the stem's, the three entry blocks', then the exit block's and the
            two last convolutions' channels (7); ``stages``: each stage's (the stem's is the first).
        depths: ``xception``: the middle flow's blocks (one number); ``stages``: blocks per stage.
        kernel_size: Odd depthwise kernel size of the blocks.
        activation: ``relu`` or ``gelu``.
        norm: ``bn`` or ``ln``.
        places: Activations in entry and exit blocks: ``every`` convolution or ``fewer``.
        pool: Downsampling: ``max``, ``blur`` or ``maxblur``.
        block_end: ``none`` or ``se``.
        middle: Middle block: ``xception`` or ``bottleneck``.
    """

    space = "nexception"

    layout: str
    stem: str
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    kernel_size: int = 3
    activation: str = "relu"
    norm: str = "bn"
    places: str = "every"
    pool: str = "max"
    block_end: str = "none"
    middle: str = "xception"

    def __post_init__(self) -> None:
        if not _positive_ints(self.widths) or not _positive_ints(self.depths):
            raise ArchitectureError(
                f"nexception widths and depths must be non-empty tuples of positive integers, got "
                f"{self.widths!r} and {self.depths!r}"
            )
        for what, value, allowed in (
            ("layout", self.layout, LAYOUTS),
            ("stem", self.stem, STEMS),
            ("activation", self.activation, ACTIVATIONS),
            ("norm", self.norm, NORMS),
            ("places", self.places, ACTIVATION_PLACES),
            ("pool", self.pool, POOLINGS),
            ("block_end", self.block_end, BLOCK_ENDS),
            ("middle", self.middle, MIDDLE_BLOCKS),
        ):
            if value not in allowed:
                raise ArchitectureError(
                    f"nexception {what}: unknown {value!r}; choose one of: {', '.join(allowed)}"
                )
        k = self.kernel_size
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise ArchitectureError(f"nexception kernel_size must be an odd positive integer, got {k!r}")
        if self.layout == "xception" and (len(self.widths) != 7 or len(self.depths) != 1):
            raise ArchitectureError(
                f"the xception layout has 7 widths (stem, 3 entry blocks, exit block, 2 convolutions) "
                f"and 1 depth (the middle flow), got {len(self.widths)} and {len(self.depths)}"
            )
        if self.layout == "stages" and len(self.widths) != len(self.depths):
            raise ArchitectureError(
                f"the stages layout needs one width per stage: {len(self.depths)} depths, "
                f"{len(self.widths)} widths"
            )

    def __str__(self) -> str:
        return "/".join(
            (
                self.layout,
                self.stem,
                "-".join(map(str, self.widths)),
                "-".join(map(str, self.depths)),
                f"k{self.kernel_size}",
                self.activation,
                self.norm,
                self.places,
                self.pool,
                self.block_end,
                self.middle,
            )
        )

    @classmethod
    def parse(cls, text: str) -> NexceptionArch:
        """Read the compact form (see the module docstring)."""
        parts = text.strip().split("/")
        try:
            if len(parts) != 11 or not parts[4].startswith("k"):
                raise ValueError
            widths = tuple(int(w) for w in parts[2].split("-"))
            depths = tuple(int(d) for d in parts[3].split("-"))
            kernel = int(parts[4][1:])
        except ValueError:
            raise ArchitectureError(f"{text!r} is not a nexception architecture; write {_FORM}") from None
        return cls(parts[0], parts[1], widths, depths, kernel, *parts[5:])

    def to_dict(self) -> dict[str, Any]:
        return {
            "layout": self.layout,
            "stem": self.stem,
            "widths": list(self.widths),
            "depths": list(self.depths),
            "kernel_size": self.kernel_size,
            "activation": self.activation,
            "norm": self.norm,
            "places": self.places,
            "pool": self.pool,
            "block_end": self.block_end,
            "middle": self.middle,
        }

    def canonical(self) -> Any:
        """The dict, less what the ``stages`` layout does not use (places, pool, middle)."""
        data = self.to_dict()
        if self.layout == "stages":
            for key in ("places", "pool", "middle"):
                data.pop(key)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NexceptionArch:
        if not isinstance(data, dict):
            raise ArchitectureError(f"a nexception architecture is a JSON object, got {type(data).__name__}")
        check_keys(data, _KEYS, "a nexception architecture")
        for key in ("widths", "depths"):
            if not isinstance(data[key], list):
                raise ArchitectureError(f"nexception {key!r} must be a list of integers, got {data[key]!r}")
        return cls(**{k: tuple(data[k]) if k in ("widths", "depths") else data[k] for k in _KEYS})


# Xception: timm's legacy_xception (Chollet's network). NEXcepTion-T and -S: the official
# nexception_t.py and nexception_s.py (github.com/hadarshavit/NEXcepTion): patchify 2x2 stem of 96
# channels, 5x5 kernels, GELU, BatchNorm, one activation per entry/exit block, max-then-blur
# pooling, squeeze-and-excitation ends, 8 bottleneck blocks 512 (T) or 752 (S) wide.
# NEXcepTion-TP: nexception_tp.py's defaults (stages of 3, 4, 9, 3 blocks, 96 to 768 wide).
_NEXCEPTION = {
    "kernel_size": 5,
    "activation": "gelu",
    "norm": "bn",
    "places": "fewer",
    "pool": "maxblur",
    "block_end": "se",
    "middle": "bottleneck",
}
PUBLISHED: dict[str, NexceptionArch] = {
    "xception": NexceptionArch("xception", "xception", XCEPTION_WIDTHS, (8,)),
    "nexception_t": NexceptionArch(
        "xception", "patch2", (96, 128, 256, 512, 1024, 1536, 2048), (8,), **_NEXCEPTION
    ),
    "nexception_s": NexceptionArch(
        "xception", "patch2", (96, 128, 256, 752, 1024, 1536, 2048), (8,), **_NEXCEPTION
    ),
    "nexception_tp": NexceptionArch("stages", "patch4", (96, 192, 384, 768), (3, 4, 9, 3), **_NEXCEPTION),
}
ALIASES = {
    "Xception": "xception",
    "legacy_xception": "xception",
    "NEXcepTion-T": "nexception_t",
    "NEXcepTion-S": "nexception_s",
    "NEXcepTion-TP": "nexception_tp",
}


class XceptionNet(nn.Module):
    """The network of an ``xception``-layout :class:`NexceptionArch`.

    Args:
        arch: The architecture.
        num_classes: Output classes.
        in_channels: Image channels.
        stem_stride: 2 (ImageNet, CIFAR) or 1 (small images: the stem keeps the size).
        reductions: How many of the four downsampling blocks downsample (4: all; fewer for small images).
    """

    def __init__(
        self,
        *,
        arch: NexceptionArch,
        num_classes: int,
        in_channels: int = 3,
        stem_stride: int = 2,
        reductions: int = 4,
    ) -> None:
        super().__init__()
        a = arch
        w = a.widths
        common = {"kernel_size": a.kernel_size, "activation": a.activation, "norm": a.norm}
        self.stem = make_stem(
            a.stem,
            in_channels=in_channels,
            channels=w[0],
            stride=stem_stride,
            activation=a.activation,
            norm=a.norm,
        )
        flow = {"places": a.places, "pool": a.pool, "block_end": a.block_end, **common}
        self.entry = nn.Sequential(
            *(
                XceptionBlock(
                    c_in=w[i],
                    c_out=w[i + 1],
                    reps=2,
                    stride=2 if i < reductions else 1,
                    grow_first=True,
                    first_activation=i > 0,
                    **flow,
                )
                for i in range(3)
            )
        )
        middle = XceptionMiddleBlock if a.middle == "xception" else BottleneckBlock
        self.middle = nn.Sequential(
            *(middle(channels=w[3], block_end=a.block_end, **common) for _ in range(a.depths[0]))
        )
        self.exit = nn.Sequential(
            XceptionBlock(
                c_in=w[3],
                c_out=w[4],
                reps=2,
                stride=2 if reductions > 3 else 1,
                grow_first=False,
                first_activation=True,
                **flow,
            ),
            SeparableConv2d(w[4], w[5], 3),
            make_norm(a.norm, w[5]),
            make_activation(a.activation),
            SeparableConv2d(w[5], w[6], 3),
            make_norm(a.norm, w[6]),
            make_activation(a.activation),
        )
        self.classifier = nn.Linear(w[6], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in, H, W) -> (B, classes)
        feature = self.exit(self.middle(self.entry(self.stem(x))))  # (B, widths[6], H/32, W/32)
        return self.classifier(feature.mean((2, 3)))


class StagesNet(nn.Module):
    """The network of a ``stages``-layout :class:`NexceptionArch` (NEXcepTion-TP): a patchify stem,
    stages of bottleneck blocks (a norm and a 2x2 stride-2 convolution between stages), average
    pooling, a norm and a linear classifier.

    ``drop_path_prob`` is the last block's stochastic depth; the blocks' rates rise linearly from 0
    at the first (nexception_tp.py: ``torch.linspace(0, drop_path_rate, sum(depths))``, split by
    stage, as timm's ConvNeXt), unlike the ``xception`` layout's one rate for all."""

    def __init__(
        self, *, arch: NexceptionArch, num_classes: int, in_channels: int = 3, stem_stride: int = 2,
        drop_path_prob: float = 0.0,
    ) -> None:
        super().__init__()
        a = arch
        self.stem = make_stem(
            a.stem,
            in_channels=in_channels,
            channels=a.widths[0],
            stride=stem_stride,
            activation=a.activation,
            norm=a.norm,
        )
        stages: list[nn.Module] = []
        for i, (depth, width) in enumerate(zip(a.depths, a.widths, strict=True)):
            layers: list[nn.Module] = []
            if i:
                layers += [make_norm(a.norm, a.widths[i - 1]), nn.Conv2d(a.widths[i - 1], width, 2, stride=2)]
            layers += [
                BottleneckBlock(
                    channels=width,
                    kernel_size=a.kernel_size,
                    activation=a.activation,
                    norm=a.norm,
                    block_end=a.block_end,
                )
                for _ in range(depth)
            ]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        blocks = [m for m in self.stages.modules() if isinstance(m, BottleneckBlock)]
        rates = torch.linspace(0, drop_path_prob, len(blocks), device="cpu").tolist()  # (a meta build too)
        for block, rate in zip(blocks, rates, strict=True):
            block.drop_path_prob = rate
        self.norm = make_norm(a.norm, a.widths[-1])
        self.classifier = nn.Linear(a.widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in, H, W) -> (B, classes)
        pooled = self.stages(self.stem(x)).mean((2, 3), keepdim=True)  # (B, widths[-1], 1, 1)
        return self.classifier(self.norm(pooled).flatten(1))


def load_arch(text: str) -> NexceptionArch:
    """A published name, JSON text or file, or the compact form."""
    return load_record(
        text, NexceptionArch, published=PUBLISHED, aliases=ALIASES, what="nexception model",
        json_form="{" + ", ".join(f'"{k}": ...' for k in _KEYS) + "}",
        form=_FORM, looks_compact=lambda s: "/" in s,
    )


@dataclass(frozen=True)
class NexceptionSpaceConfig:
    """The options of every choice and the fixed parts of the networks.

    Attributes:
        stem_choices: Stems (``xception``, ``patch2``).
        depth_choices: Middle-flow depths (8 in Xception and NEXcepTion).
        kernel_choices: Depthwise kernel sizes (odd).
        activation_choices: ``relu``, ``gelu``.
        norm_choices: ``bn``, ``ln``.
        places_choices: Activations in entry and exit blocks: ``every``, ``fewer``.
        pool_choices: ``max``, ``blur``, ``maxblur``.
        block_end_choices: ``none``, ``se``.
        middle_choices: ``xception``, ``bottleneck``.
        widths: The 7 fixed widths (stem, entry blocks, exit block, two last convolutions).
        stem_stride: 2, or 1 for small images.
        reductions: Downsampling blocks (4; fewer for small images).
    """

    stem_choices: tuple[str, ...] = ("xception", "patch2")
    depth_choices: tuple[int, ...] = (4, 6, 8, 10, 12)
    kernel_choices: tuple[int, ...] = (3, 5, 7)
    activation_choices: tuple[str, ...] = ACTIVATIONS
    norm_choices: tuple[str, ...] = NORMS
    places_choices: tuple[str, ...] = ACTIVATION_PLACES
    pool_choices: tuple[str, ...] = POOLINGS
    block_end_choices: tuple[str, ...] = BLOCK_ENDS
    middle_choices: tuple[str, ...] = MIDDLE_BLOCKS
    widths: tuple[int, ...] = XCEPTION_WIDTHS
    stem_stride: Annotated[int, Rule(one_of=(1, 2), says="must be 1 or 2")] = 2
    reductions: Annotated[int, Rule(ge=0, le=4, says="must be between 0 and 4")] = 4

    checks: ClassVar[tuple[Check, ...]] = (
        listed_once("stem_choices", ("xception", "patch2")),
        listed_once("activation_choices", ACTIVATIONS),
        listed_once("norm_choices", NORMS),
        listed_once("places_choices", ACTIVATION_PLACES),
        listed_once("pool_choices", POOLINGS),
        listed_once("block_end_choices", BLOCK_ENDS),
        listed_once("middle_choices", MIDDLE_BLOCKS),
        *(
            Check(
                f"{key} and min({key}) >= 1 and len(set({key})) == len({key})",
                f"space.{key} must list positive integers once each, got {{{key}!r}}",
            )
            for key in ("depth_choices", "kernel_choices")
        ),
        Check(
            "all(k % 2 for k in kernel_choices)", "space.kernel_choices must be odd, got {kernel_choices!r}"
        ),
        Check(
            "len(widths) == 7 and min(widths) >= 1",
            "space.widths must be 7 positive integers, got {widths!r}",
        ),
    )

    def __post_init__(self) -> None:
        check_rules(self, "space")


@SPACES.register(
    "nexception", config=NexceptionSpaceConfig,
    traits={"choices": True, "one_shot": True},
)
class NexceptionSpace(OptionsSpace[NexceptionArch]):
    """The NEXcepTion macro space over Xception's layout.

    Args:
        config: The options of every choice (default: around Xception, which it contains).
    """

    architecture_type = NexceptionArch
    reference_dataset = "cifar100"

    def __init__(self, config: NexceptionSpaceConfig | None = None) -> None:
        self.config = config or NexceptionSpaceConfig()

    def decisions(self) -> tuple[Decision, ...]:
        """Stem, middle depth, kernel size, activation, norm, activation places, pooling, block end
        and middle block."""
        c = self.config
        return (
            Decision("stem", c.stem_choices),
            Decision("middle depth", tuple(map(str, c.depth_choices))),
            Decision("kernel size", tuple(map(str, c.kernel_choices))),
            Decision("activation", c.activation_choices),
            Decision("norm", c.norm_choices),
            Decision("activation places", c.places_choices),
            Decision("pooling", c.pool_choices),
            Decision("block end", c.block_end_choices),
            Decision("middle block", c.middle_choices),
        )

    def encode(self, arch: Architecture) -> tuple[int, ...]:
        """The option index of every decision (see :meth:`decisions`)."""
        a = self.check(arch)
        values = (
            a.stem,
            str(a.depths[0]),
            str(a.kernel_size),
            a.activation,
            a.norm,
            a.places,
            a.pool,
            a.block_end,
            a.middle,
        )
        return encode_options(self.decisions(), values)

    def decode(self, values: tuple[int, ...] | list[int]) -> NexceptionArch:
        """The architecture these option indices pick."""
        stem, depth, kernel, *rest = decode_options(self.decisions(), values)
        return NexceptionArch("xception", stem, self.config.widths, (int(depth),), int(kernel), *rest)

    def contains(self, arch: Architecture) -> bool:
        """Whether ``arch`` has this space's layout and widths and every choice among its options."""
        c = self.config
        return (
            isinstance(arch, NexceptionArch)
            and arch.layout == "xception"
            and arch.widths == c.widths
            and arch.stem in c.stem_choices
            and arch.depths[0] in c.depth_choices
            and arch.kernel_size in c.kernel_choices
            and arch.activation in c.activation_choices
            and arch.norm in c.norm_choices
            and arch.places in c.places_choices
            and arch.pool in c.pool_choices
            and arch.block_end in c.block_end_choices
            and arch.middle in c.middle_choices
        )

    def parse(self, text: str) -> NexceptionArch:
        """A published name (``xception``, ``nexception_t``, ``NEXcepTion-TP``, ...), JSON text or
        file, or the compact form; any such network, whether or not the config's options contain it."""
        return load_arch(text)

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
        """The network of ``arch`` with this space's stem stride and reductions.

        Args:
            arch: A :class:`NexceptionArch` (any, not only this config's).
            dataset: Input channels and classes.
            channels: A smaller copy for quick trials: the stem's width, the others in proportion
                (None: the architecture's widths).
            layers: At most this many middle-flow blocks (blocks per stage) (None: all).
            auxiliary: Ignored: these networks have no auxiliary head.
            drop_path_prob: Stochastic depth of every entry-, middle- and exit-flow block's branch,
                the same rate in each (the official networks' ``drop_path``: nexception_t.py,
                nexception_s.py); for the ``stages`` layout (NEXcepTion-TP) the last block's, the
                others' rising linearly from 0 (:class:`StagesNet`).
        """
        a = resized(expect_arch(arch, NexceptionArch), channels=channels, layers=layers)
        c = self.config
        if a.layout == "stages":
            return StagesNet(
                arch=a,
                num_classes=dataset.num_classes,
                in_channels=dataset.in_channels,
                stem_stride=c.stem_stride,
                drop_path_prob=drop_path_prob,
            )
        net = XceptionNet(
            arch=a,
            num_classes=dataset.num_classes,
            in_channels=dataset.in_channels,
            stem_stride=c.stem_stride,
            reductions=c.reductions,
        )
        for block in net.modules():
            if isinstance(block, (XceptionBlock, XceptionMiddleBlock, BottleneckBlock)):
                block.drop_path_prob = drop_path_prob
        return net


def resized(
    arch: NexceptionArch, *, channels: int | None = None, layers: int | None = None
) -> NexceptionArch:
    """``arch`` with its first width ``channels`` (the others in proportion, even and at least 2)
    and at most ``layers`` blocks in each depth; unchanged where an argument is None."""
    if (channels is not None and channels < 1) or (layers is not None and layers < 1):
        raise ConfigError(f"nexception channels and layers must be positive, got {channels} and {layers}")
    widths = (
        arch.widths
        if channels is None
        else tuple(max(2, 2 * round(w * channels / arch.widths[0] / 2)) for w in arch.widths)
    )
    depths = arch.depths if layers is None else tuple(min(d, layers) for d in arch.depths)
    return dataclasses.replace(arch, widths=widths, depths=depths)
