"""Restructurable Activation Networks (Bhardwaj et al., "Restructurable Activation Networks", 2022;
official code: ARM-software/ML-restructurable-activation-networks). Two spaces:

``ran_e`` (RAN-explicit), the hardware-aware space. The macro layout is the official
``RAN_e/model/ran_e_model.py``'s: a plain 3x3 stride-2 stem convolution (16 channels, no BN, no
activation), sixteen searchable layers in ten stages (32, 48, 64, 80, 80, 96, 128, 160, 176 and
224 channels; 1, 1, 1, 1, 2, 2, 2, 1, 3 and 2 layers; the first layer of a stage striding 1, 2,
2, 1, 2, 1, 1, 2, 1, 1), then a 1x1 convolution to 1344 channels and a 7x7 depthwise
convolution (each with BN and hard-swish), global pooling, dropout 0.2 and the classifier.
Each layer holds an inverted bottleneck ``ibn_k{3,5,7}_e{2,4,6}`` or the hardware-aware
``collapsed`` block (:mod:`raynas.ops.ran`); layer 9 (the second 128 -> 128 layer) runs
through half its width in two steps, as the code's ``downsample_ibn``. The published networks
are RAN-e-C and RAN-e-GT (``ran_e_c``, ``ran_e_gt``: the code's ``ran_e_C-b0`` and
``ran_e_GT-b0``; its -b1 ... -l2 scalings fail the code's own assertion that every stage lists
one collapse flag per repeat, so they build no network there and are not published here).
Block replacement driven by a device's latency table searches this space
(``raynas.strategies.sampling.ran``), and the space measures its tables with ``raynas latency``.

``ran_i`` (RAN-implicit), training-free model scaling. A network is ConvNeXt scaled in depth
and width (``RAN_i/models/ran_i.py``: depths ``round(d * dm)`` and widths ``round(w * wm)`` of
ConvNeXt-T's 3-3-9-3 / 96-192-384-768, Python's rounding); the paper links a network's
expressivity to its number of non-linear units, which the code counts as NN-Mass, ``2 * width``
per block. :meth:`RanISpace.scale` ranks, without training, the multipliers whose networks
reach a reference network's NN-Mass, fewest multiply-adds first: deeper and narrower networks
keep the non-linear units of a wider one at a fraction of its multiply-adds. RAN-i-T, -S and -B
(``ran_i_tiny``, ``ran_i_small``, ``ran_i_base``) are the code's ``wm, dm`` = (0.666, 1.65),
(0.789, 1.65) and (0.9105, 2.30). The official code holds the networks and the NN-Mass count,
not the procedure that chose their multipliers, and the paper's full text was not available
here: the ranking is the abstract's criterion (non-linear units for multiply-adds) over a grid
that holds the published multipliers, and it reproduces RAN-i-T from ConvNeXt-T and RAN-i-B
from ConvNeXt-S. The published figures are the official code's networks, counted as its layers
define them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import torch
from torch import nn

from raynas.config import Check, Rule, check_rules
from raynas.errors import ArchitectureError, ConfigError
from raynas.ops.ran import COLLAPSED, conv_bn, ibn_name, make_block, parse_ibn
from raynas.spaces.base import OptionsSpace, expect_arch, load_record, split_names
from raynas.spaces.convnext import ConvNeXt, ConvNextArch, resized
from raynas.spaces.registry import SPACES
from raynas.types import Architecture, DatasetInfo, Decision, check_keys, decode_options

E_FORM = "comma-separated block names, one per layer, e.g. 'collapsed,ibn_k3_e6,...'"
I_FORM = "depths/widths, e.g. '5-5-15-5/64-128-256-511'"


def _block_ok(name: Any) -> bool:
    if name == COLLAPSED:
        return True
    spec = parse_ibn(name) if isinstance(name, str) else None
    return spec is not None and spec.kernel % 2 == 1 and spec.expansion >= 1


# --- RAN-e ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RanEArch(Architecture):
    """The block of every searchable layer, first layer first.

    Attributes:
        blocks: ``collapsed`` or ``ibn_k{K}_e{E}`` per layer.
    """

    space = "ran_e"

    blocks: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.blocks, tuple) or not self.blocks:
            raise ArchitectureError(
                f"a ran_e architecture is a non-empty tuple of blocks, got {self.blocks!r}"
            )
        for i, block in enumerate(self.blocks):
            if not _block_ok(block):
                raise ArchitectureError(
                    f"ran_e layer {i}: unknown block {block!r}; choose {COLLAPSED} or "
                    "ibn_k<odd kernel>_e<expansion>"
                )

    @classmethod
    def parse(cls, text: str) -> RanEArch:
        """Read the comma-separated form."""
        return cls(split_names(text, "a ran_e", E_FORM))

    def __str__(self) -> str:
        return ",".join(self.blocks)

    def to_dict(self) -> dict[str, Any]:
        return {"blocks": list(self.blocks)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RanEArch:
        if not isinstance(data, dict):
            raise ArchitectureError(f"a ran_e architecture is a JSON object, got {type(data).__name__}")
        check_keys(data, ("blocks",), "a ran_e architecture")
        if not isinstance(data["blocks"], list) or not all(isinstance(b, str) for b in data["blocks"]):
            raise ArchitectureError(f"ran_e 'blocks' must be a list of block names, got {data['blocks']!r}")
        return cls(tuple(data["blocks"]))


def _stages(*rows: tuple[str, ...]) -> RanEArch:
    return RanEArch(tuple(b for row in rows for b in row))


_C = COLLAPSED
# ran_e_model.py's ModelConfig_C and ModelConfig_GT, one row per stage: a stage's blocks are
# ``collapsed`` where its collapse flag is 1, else an inverted bottleneck of the stage's
# expansion and the layer's kernel size.
PUBLISHED_E: dict[str, RanEArch] = {
    "ran_e_c": _stages(
        (_C,), (_C,), ("ibn_k3_e6",), (_C,), ("ibn_k5_e6", _C), ("ibn_k5_e4", _C),
        ("ibn_k3_e6", "ibn_k3_e6"), (_C,), ("ibn_k7_e4", "ibn_k3_e4", _C), ("ibn_k5_e6", "ibn_k5_e6"),
    ),
    "ran_e_gt": _stages(
        (_C,), (_C,), (_C,), (_C,), ("ibn_k5_e6", "ibn_k5_e6"), ("ibn_k3_e4", "ibn_k3_e4"), (_C, _C),
        ("ibn_k7_e6",), ("ibn_k3_e4", "ibn_k3_e4", "ibn_k3_e4"), ("ibn_k5_e6", "ibn_k5_e6"),
    ),
}
ALIASES_E = {
    "RAN-e-C": "ran_e_c", "RAN-e-GT": "ran_e_gt", "ran_e_C-b0": "ran_e_c", "ran_e_GT-b0": "ran_e_gt",
}


@dataclass(frozen=True)
class RanESpaceConfig:
    """The macro layout, the candidates of every layer and how collapsed blocks train (defaults:
    the official code's RAN-e at width and depth 1.0).

    Attributes:
        stem_channels: Output channels of the plain 3x3 stem convolution (16).
        stem_stride: Its stride (2 on ImageNet; 1 suits small images).
        stage_channels: Output channels of each stage.
        stage_depths: Searchable layers of each stage.
        stage_strides: Stride of each stage's first layer.
        halved_layers: Layers that run through half their width in two steps (layer 9, the
            second 128 -> 128 layer, in the code); each must keep its width at stride 1.
        head_channels: Channels of the 1x1 head convolution (1344).
        head_kernel: Kernel of the head's depthwise convolution (7).
        kernels: Kernel sizes of the inverted-bottleneck candidates.
        expansions: Expansion ratios of the inverted-bottleneck candidates.
        dropout: Dropout before the classifier (0.2 for -b0).
        linear_expansion: Train collapsed blocks as collapsible linear blocks of this expansion
            (0: a single 3x3 convolution, as the official code).
        bn_momentum: torch's BatchNorm momentum (0.01: the code's Keras momentum 0.99, made for
            ImageNet's many steps; runs of a few hundred steps want torch's 0.1).
    """

    stem_channels: Annotated[int, Rule(ge=2, even=True)] = 16
    stem_stride: Annotated[int, Rule(one_of=(1, 2))] = 2
    stage_channels: Annotated[tuple[int, ...], Rule(ge=2, even=True)] = (
        32, 48, 64, 80, 80, 96, 128, 160, 176, 224,
    )
    stage_depths: Annotated[tuple[int, ...], Rule(ge=1)] = (1, 1, 1, 1, 2, 2, 2, 1, 3, 2)
    stage_strides: Annotated[tuple[int, ...], Rule(one_of=(1, 2))] = (1, 2, 2, 1, 2, 1, 1, 2, 1, 1)
    halved_layers: Annotated[tuple[int, ...], Rule(ge=0)] = (9,)
    head_channels: Annotated[int, Rule(ge=2, even=True)] = 1344
    head_kernel: Annotated[int, Rule(ge=1, odd=True)] = 7
    kernels: Annotated[tuple[int, ...], Rule(ge=1, odd=True)] = (3, 5, 7)
    expansions: Annotated[tuple[int, ...], Rule(ge=1)] = (2, 4, 6)
    dropout: Annotated[float, Rule(ge=0, lt=1)] = 0.2
    linear_expansion: Annotated[int, Rule(ge=0)] = 0
    bn_momentum: Annotated[float, Rule(gt=0, le=1)] = 0.01

    checks: ClassVar[tuple[Check, ...]] = (
        Check(
            "stage_channels and len(stage_depths) == len(stage_channels) == len(stage_strides)",
            "space.stage_channels, stage_depths and stage_strides need one entry per stage (at least "
            "one); got {len(stage_channels)}, {len(stage_depths)} and {len(stage_strides)}",
        ),
        Check("kernels and expansions", "space.kernels and space.expansions need at least one entry each"),
        Check(  # the shapes layer_specs() gives: a stage's first layer (at sum(stage_depths[:s]))
            # takes the previous stage's width (or the stem's) at the stage's stride, the others 1
            "0 <= item < sum(stage_depths) and all("
            "item != sum(stage_depths[:s]) or (stage_strides[s] == 1"
            " and (stage_channels[s - 1] if s else stem_channels) == stage_channels[s])"
            " for s in range(len(stage_depths)))",
            "space.halved_layers: layer {item} must exist (0..{sum(stage_depths) - 1}) and keep its "
            "width at stride 1",
            each="halved_layers",
        ),
    )

    def __post_init__(self) -> None:
        check_rules(self, "space")

    @property
    def num_layers(self) -> int:
        """Searchable layers (16 in the code's layout)."""
        return sum(self.stage_depths)

    @property
    def candidates(self) -> tuple[str, ...]:
        """Every layer's options: ``collapsed`` first (the hardware-aware block), then the IBNs."""
        return (COLLAPSED, *(ibn_name(k, e) for k in self.kernels for e in self.expansions))


@dataclass(frozen=True)
class LayerSpec:
    """The shapes of one searchable layer: channels in and out, stride, input size, halved."""

    c_in: int
    c_out: int
    stride: int
    size: int
    stage: int
    halved: bool = False


def _out_size(size: int, stride: int) -> int:
    return (size - 1) // stride + 1  # a "same"-padded convolution


def layer_specs(config: RanESpaceConfig, image_size: int) -> tuple[LayerSpec, ...]:
    """Shapes of every searchable layer for ``image_size`` x ``image_size`` inputs."""
    size = _out_size(image_size, config.stem_stride)
    c_in, specs = config.stem_channels, []
    stages = zip(config.stage_channels, config.stage_depths, config.stage_strides, strict=True)
    for stage, (c_out, depth, stride) in enumerate(stages):
        for i in range(depth):
            s = stride if i == 0 else 1
            specs.append(LayerSpec(c_in, c_out, s, size, stage, len(specs) in config.halved_layers))
            c_in, size = c_out, _out_size(size, s)
    return tuple(specs)


def block_key(block: str, spec: LayerSpec) -> str:
    """The latency-table key of ``block`` at ``spec``'s shapes, e.g. ``ran_e/collapsed:16x112->32/s1``."""
    halved = "/halved" if spec.halved else ""
    return f"ran_e/{block}:{spec.c_in}x{spec.size}->{spec.c_out}/s{spec.stride}{halved}"


class RanENet(nn.Module):
    """A RAN-e network: stem, one block per layer, head convolutions, pooling, classifier.

    Args:
        arch: The block of every layer in ``specs``.
        specs: The layers' shapes (channels, strides, halved).
        config: The stem, head and dropout.
        num_classes: Output classes.
        in_channels: Image channels.
        stem_channels: The stem's width (the config's unless resized).
        head_channels: The head's width (the config's unless resized).
    """

    def __init__(
        self, *, arch: RanEArch, specs: tuple[LayerSpec, ...], config: RanESpaceConfig, num_classes: int,
        in_channels: int, stem_channels: int, head_channels: int,
    ) -> None:
        super().__init__()
        c = config
        # ran_e_model.py's stem: conv2d_block(..., activation=None, use_batch_norm=False).
        self.stem = nn.Conv2d(in_channels, stem_channels, 3, stride=c.stem_stride, padding=1, bias=False)
        self.layers = nn.Sequential(*(
            make_block(b, c_in=s.c_in, c_out=s.c_out, stride=s.stride, halved=s.halved,
                       linear_expansion=c.linear_expansion, bn_momentum=c.bn_momentum)
            for b, s in zip(arch.blocks, specs, strict=True)
        ))
        m = c.bn_momentum
        self.head = nn.Sequential(
            conv_bn(specs[-1].c_out, head_channels, 1, momentum=m),  # "top1x1"
            conv_bn(head_channels, head_channels, c.head_kernel, groups=head_channels, momentum=m),  # "topDS"
        )
        self.dropout = nn.Dropout(c.dropout)
        self.classifier = nn.Linear(head_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in, H, W) -> (B, classes)
        feature = self.head(self.layers(self.stem(x)))  # (B, head, H/32, W/32) on ImageNet
        return self.classifier(self.dropout(feature.mean((2, 3))))

    def collapse(self) -> None:
        """Fold every over-parameterised collapsed block into its deployed form (same outputs)."""
        for layer in self.layers:
            if hasattr(layer, "collapse"):
                layer.collapse()


def load_e(text: str) -> RanEArch:
    """A published name, JSON text or file, or the comma-separated form."""
    return load_record(
        text, RanEArch, published=PUBLISHED_E, aliases=ALIASES_E, what="ran_e network",
        json_form='{"blocks": [...]}', form=E_FORM, looks_compact=lambda s: "," in s or _block_ok(s),
    )


def _even(value: float) -> int:
    return max(2, 2 * round(value / 2))


@SPACES.register(
    "ran_e", config=RanESpaceConfig,
    traits={
        "choices": True, "one_shot": True, "latency_tables": True, "latency_keys": True,
        # RanESpaceConfig.candidates, from the settings (the names ibn_name gives)
        "layer_candidates": {
            "expr": f"({COLLAPSED!r},) + tuple(f'ibn_k{{k}}_e{{e}}' for k in kernels for e in expansions)"
        },
    },
)
class RanESpace:
    """RAN-explicit: an inverted bottleneck or the collapsed block in every layer of a fixed layout.

    Args:
        config: The layout and candidates (default: the official code's).
    """

    architecture_type = RanEArch
    reference_dataset = "imagenet"

    def __init__(self, config: RanESpaceConfig | None = None) -> None:
        self.config = config or RanESpaceConfig()

    def decisions(self) -> tuple[Decision, ...]:
        """One decision per layer; option 0 is ``collapsed``."""
        options = self.config.candidates
        return tuple(
            Decision(f"layer {i} ({s.c_in}->{s.c_out}, stride {s.stride}{halved})", options)
            for i, s in enumerate(layer_specs(self.config, 1))
            for halved in [", halved" if s.halved else ""]
        )

    def encode(self, arch: Architecture) -> tuple[int, ...]:
        """The option index of every layer's block."""
        options = self.config.candidates
        return tuple(options.index(b) for b in self.check(arch).blocks)

    def decode(self, values: tuple[int, ...] | list[int]) -> RanEArch:
        """The architecture whose blocks ``values`` pick."""
        return RanEArch(tuple(decode_options(self.decisions(), values)))

    def sample(self, rng: random.Random) -> RanEArch:
        """A uniformly random candidate in every layer."""
        return RanEArch(tuple(rng.choice(self.config.candidates) for _ in range(self.config.num_layers)))

    def contains(self, arch: Architecture) -> bool:
        """Whether ``arch`` has one of this config's candidates in each of its layers."""
        return (
            isinstance(arch, RanEArch) and len(arch.blocks) == self.config.num_layers
            and all(b in self.config.candidates for b in arch.blocks)
        )

    def check(self, arch: Architecture) -> RanEArch:
        """``arch`` if it belongs to the space, else an :class:`ArchitectureError` saying why."""
        arch = expect_arch(arch, RanEArch)
        if len(arch.blocks) != self.config.num_layers:
            raise ArchitectureError(
                f"a ran_e architecture of this space has {self.config.num_layers} layers (stages of "
                f"{', '.join(map(str, self.config.stage_depths))}), got {len(arch.blocks)}"
            )
        for i, b in enumerate(arch.blocks):
            if b not in self.config.candidates:
                raise ArchitectureError(
                    f"ran_e layer {i}: {b!r} is not a candidate of this space "
                    f"({', '.join(self.config.candidates)})"
                )
        return arch

    def parse(self, text: str) -> RanEArch:
        """A published name (``ran_e_c``, ``ran_e_gt``, ``RAN-e-C``...), JSON text or file, or the
        comma-separated form; checked against this space's layout and candidates."""
        return self.check(load_e(text))

    def build(
        self, arch: Architecture, dataset: DatasetInfo, *, channels: int | None = None,
        layers: int | None = None, auxiliary: bool = False,
    ) -> nn.Module:
        """The network of ``arch`` in this space's layout.

        Args:
            arch: A :class:`RanEArch` of this space.
            dataset: Input channels and classes (any image size: the network pools globally).
            channels: A smaller copy for quick trials: the stem's width, every other width in
                proportion (even, at least 2) (None: the layout's).
            layers: At most this many layers per stage, the first ones (None: all).
            auxiliary: Ignored: RAN-e has no auxiliary head.
        """
        arch = self.check(arch)
        if (channels is not None and channels < 1) or (layers is not None and layers < 1):
            raise ConfigError(f"ran_e channels and layers must be positive, got {channels} and {layers}")
        c = self.config
        scale = 1.0 if channels is None else channels / c.stem_channels
        specs, blocks, kept_in = [], [], _even(c.stem_channels * scale)
        per_stage: dict[int, int] = {}
        for block, s in zip(arch.blocks, layer_specs(c, 1), strict=True):
            per_stage[s.stage] = per_stage.get(s.stage, 0) + 1
            if layers is not None and per_stage[s.stage] > layers:
                continue
            c_out = _even(s.c_out * scale)
            halved = s.halved and kept_in == c_out
            specs.append(LayerSpec(kept_in, c_out, s.stride, s.size, s.stage, halved))
            blocks.append(block)
            kept_in = c_out
        # A stage cut short keeps its first layer, which carries the stage's stride.
        return RanENet(
            arch=RanEArch(tuple(blocks)), specs=tuple(specs), config=c, num_classes=dataset.num_classes,
            in_channels=dataset.in_channels, stem_channels=_even(c.stem_channels * scale),
            head_channels=_even(c.head_channels * scale),
        )

    # Latency tables (raynas.latency): what to measure and which entries make up a network.

    def latency_items(self, dataset: DatasetInfo) -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
        """Every distinct thing to time, by table key: each candidate at each layer's shapes (as
        deployed: collapsed blocks as single convolutions), the stem and the head."""
        c = self.config
        specs = layer_specs(c, dataset.image_size)
        items: dict[str, tuple[nn.Module, tuple[int, ...]]] = {}
        for s in specs:
            for block in c.candidates:
                key = block_key(block, s)
                if key not in items:
                    module = make_block(block, c_in=s.c_in, c_out=s.c_out, stride=s.stride, halved=s.halved)
                    items[key] = (module, (s.c_in, s.size, s.size))
        stem_key, head_key = self.fixed_latency_keys(dataset)
        items[stem_key] = (
            nn.Conv2d(dataset.in_channels, c.stem_channels, 3, stride=c.stem_stride, padding=1, bias=False),
            dataset.image_shape,
        )
        last = specs[-1]
        size = _out_size(last.size, last.stride)
        items[head_key] = (
            nn.Sequential(
                conv_bn(last.c_out, c.head_channels, 1),
                conv_bn(c.head_channels, c.head_channels, c.head_kernel, groups=c.head_channels),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c.head_channels, dataset.num_classes),
            ),
            (last.c_out, size, size),
        )
        return items

    def fixed_latency_keys(self, dataset: DatasetInfo) -> tuple[str, str]:
        """Table keys of the stem and of the head (convolutions, pooling, classifier)."""
        c = self.config
        last = layer_specs(c, dataset.image_size)[-1]
        size = _out_size(last.size, last.stride)
        return (
            f"ran_e/stem:{dataset.in_channels}x{dataset.image_size}->{c.stem_channels}/s{c.stem_stride}",
            f"ran_e/head:{last.c_out}x{size}->{c.head_channels}/k{c.head_kernel}->{dataset.num_classes}",
        )

    def layer_latency_keys(self, dataset: DatasetInfo) -> tuple[tuple[str, ...], ...]:
        """For every layer, the table key of each candidate (in :attr:`RanESpaceConfig.candidates` order)."""
        return tuple(
            tuple(block_key(b, s) for b in self.config.candidates)
            for s in layer_specs(self.config, dataset.image_size)
        )

    def latency_keys(self, arch: Architecture, dataset: DatasetInfo) -> list[str]:
        """The table keys whose latencies add up to ``arch``'s network (stem, layers, head)."""
        arch = self.check(arch)
        stem, head = self.fixed_latency_keys(dataset)
        specs = layer_specs(self.config, dataset.image_size)
        return [stem, *(block_key(b, s) for b, s in zip(arch.blocks, specs, strict=True)), head]

    @property
    def op_names(self) -> tuple[str, ...]:
        """The candidates, in the column order of the supernet's architecture weights."""
        return self.config.candidates


# --- RAN-i ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RanIArch(Architecture):
    """A ConvNeXt scaled in depth and width: the blocks and the width of every stage.

    Attributes:
        depths: Blocks per stage.
        widths: Channels per stage.
    """

    space = "ran_i"

    depths: tuple[int, ...]
    widths: tuple[int, ...]

    def __post_init__(self) -> None:
        for what, value in (("depths", self.depths), ("widths", self.widths)):
            if not isinstance(value, tuple) or not value or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value
            ):
                raise ArchitectureError(
                    f"ran_i {what} must be a non-empty tuple of positive integers, got {value!r}"
                )
        if len(self.depths) != len(self.widths):
            raise ArchitectureError(
                f"ran_i needs one width per stage: {len(self.depths)} depths, {len(self.widths)} widths"
            )

    @classmethod
    def parse(cls, text: str) -> RanIArch:
        """Read ``depths/widths``."""
        parts = text.strip().split("/")
        try:
            if len(parts) != 2:
                raise ValueError
            return cls(tuple(int(d) for d in parts[0].split("-")), tuple(int(w) for w in parts[1].split("-")))
        except ValueError:
            raise ArchitectureError(f"{text!r} is not a ran_i network; write {I_FORM}") from None

    def __str__(self) -> str:
        return f"{'-'.join(map(str, self.depths))}/{'-'.join(map(str, self.widths))}"

    def to_dict(self) -> dict[str, Any]:
        return {"depths": list(self.depths), "widths": list(self.widths)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RanIArch:
        if not isinstance(data, dict):
            raise ArchitectureError(f"a ran_i network is a JSON object, got {type(data).__name__}")
        check_keys(data, ("depths", "widths"), "a ran_i network")
        if not isinstance(data["depths"], list) or not isinstance(data["widths"], list):
            raise ArchitectureError("ran_i 'depths' and 'widths' must be lists of integers")
        return cls(tuple(data["depths"]), tuple(data["widths"]))

    @property
    def nn_mass(self) -> float:
        """The official code's NN-Mass (``ran_i.py``: ``2 * width`` for every block)."""
        return float(sum(2 * d * w for d, w in zip(self.depths, self.widths, strict=True)))


CONVNEXT_T = ((3, 3, 9, 3), (96, 192, 384, 768))


def scaled(depths: tuple[int, ...], widths: tuple[int, ...], wm: float, dm: float) -> RanIArch:
    """``ran_i.py``'s scaling: ``round(d * dm)`` blocks and ``round(w * wm)`` channels (Python's
    round, halves to even)."""
    return RanIArch(tuple(round(d * dm) for d in depths), tuple(round(w * wm) for w in widths))


# ran_i.py's ran_i_tiny, ran_i_small, ran_i_base: (wm, dm) on ConvNeXt-T.
PUBLISHED_MULTIPLIERS = {
    "ran_i_tiny": (0.666, 1.65), "ran_i_small": (0.789, 1.65), "ran_i_base": (0.9105, 2.30),
}
PUBLISHED_I: dict[str, RanIArch] = {n: scaled(*CONVNEXT_T, *m) for n, m in PUBLISHED_MULTIPLIERS.items()}
ALIASES_I = {
    "RAN-i-T": "ran_i_tiny", "RAN-i-S": "ran_i_small", "RAN-i-B": "ran_i_base",
    "ran_i_t": "ran_i_tiny", "ran_i_s": "ran_i_small", "ran_i_b": "ran_i_base",
}


@dataclass(frozen=True)
class RanISpaceConfig:
    """The network scaled and the multipliers offered (defaults: ConvNeXt-T, with the published
    networks' multipliers among the options).

    Attributes:
        base_depths: The unscaled network's blocks per stage (ConvNeXt-T: 3, 3, 9, 3).
        base_widths: Its widths (96, 192, 384, 768).
        width_multipliers: The width multipliers ``wm`` to choose from.
        depth_multipliers: The depth multipliers ``dm`` to choose from.
        stem_stride: The patchify stem's stride (4 on ImageNet; 1 or 2 suit small images).
        layer_scale_init: ConvNeXt's initial layer scale (1e-6).
    """

    base_depths: Annotated[tuple[int, ...], Rule(ge=1)] = CONVNEXT_T[0]
    base_widths: Annotated[tuple[int, ...], Rule(ge=1)] = CONVNEXT_T[1]
    width_multipliers: Annotated[tuple[float, ...], Rule(gt=0)] = (0.666, 0.789, 0.9105, 1.0)
    depth_multipliers: Annotated[tuple[float, ...], Rule(gt=0)] = (1.0, 1.65, 2.3)
    stem_stride: Annotated[int, Rule(one_of=(1, 2, 4))] = 4
    layer_scale_init: Annotated[float, Rule(ge=0)] = 1e-6

    checks: ClassVar[tuple[Check, ...]] = (
        Check(
            "base_depths and len(base_depths) == len(base_widths)",
            "space.base_depths and space.base_widths need one entry per stage",
        ),
        Check(
            "width_multipliers and depth_multipliers",
            "space.width_multipliers and space.depth_multipliers need at least one entry",
        ),
        Check(  # scaled(): round(d * dm) blocks and round(w * wm) channels, each at least 1
            "round(min(base_depths) * item[1]) >= 1 and round(min(base_widths) * item[0]) >= 1",
            "space: multipliers wm={item[0]}, dm={item[1]} round a stage of the base network to 0",
            each="((wm, dm) for wm in width_multipliers for dm in depth_multipliers)",
        ),
    )

    def __post_init__(self) -> None:
        check_rules(self, "space")


def load_i(text: str) -> RanIArch:
    """A published name, JSON text or file, or ``depths/widths``."""
    return load_record(
        text, RanIArch, published=PUBLISHED_I, aliases=ALIASES_I, what="ran_i network",
        json_form='{"depths": [...], "widths": [...]}', form=I_FORM, looks_compact=lambda s: "/" in s,
    )


@SPACES.register(
    "ran_i", config=RanISpaceConfig,
    traits={"choices": True, "scale": True},
)
class RanISpace(OptionsSpace[RanIArch]):
    """RAN-implicit: a base ConvNeXt scaled by a width and a depth multiplier.

    Args:
        config: The base network and the multipliers (default: ConvNeXt-T).
    """

    architecture_type = RanIArch
    reference_dataset = "imagenet"

    def __init__(self, config: RanISpaceConfig | None = None) -> None:
        self.config = config or RanISpaceConfig()

    def scaled(self, wm: float, dm: float) -> RanIArch:
        """The base network scaled by ``wm`` and ``dm``."""
        return scaled(self.config.base_depths, self.config.base_widths, wm, dm)

    def decisions(self) -> tuple[Decision, ...]:
        """The width multiplier, then the depth multiplier."""
        c = self.config
        return (
            Decision("width multiplier", tuple(map(str, c.width_multipliers))),
            Decision("depth multiplier", tuple(map(str, c.depth_multipliers))),
        )

    def decode(self, values: tuple[int, ...] | list[int]) -> RanIArch:
        """The network these multiplier indices make."""
        wm, dm = decode_options(self.decisions(), values)
        return self.scaled(float(wm), float(dm))

    def encode(self, arch: Architecture) -> tuple[int, ...]:
        """The multipliers' indices (the first pair that makes ``arch``)."""
        arch = self.check(arch)
        c = self.config
        for i, wm in enumerate(c.width_multipliers):
            for j, dm in enumerate(c.depth_multipliers):
                if self.scaled(wm, dm) == arch:
                    return (i, j)
        raise AssertionError("unreachable: check() accepted it")

    def contains(self, arch: Architecture) -> bool:
        """Whether some pair of this config's multipliers makes ``arch``."""
        c = self.config
        return isinstance(arch, RanIArch) and any(
            self.scaled(wm, dm) == arch for wm in c.width_multipliers for dm in c.depth_multipliers
        )

    def check(self, arch: Architecture) -> RanIArch:
        """``arch`` if it belongs to the space, else an :class:`ArchitectureError` saying why."""
        arch = expect_arch(arch, RanIArch)
        if not self.contains(arch):
            raise ArchitectureError(
                f"ran_i network {arch} is not the base {'-'.join(map(str, self.config.base_depths))}/"
                f"{'-'.join(map(str, self.config.base_widths))} scaled by this space's multipliers"
            )
        return arch

    def parse(self, text: str) -> RanIArch:
        """A published name (``ran_i_tiny``, ``RAN-i-S``...), JSON text or file, or
        ``depths/widths``; any such network, whether or not this config's multipliers make it."""
        return load_i(text)

    def build(
        self, arch: Architecture, dataset: DatasetInfo, *, channels: int | None = None,
        layers: int | None = None, auxiliary: bool = False, drop_path_prob: float = 0.0,
    ) -> nn.Module:
        """The ConvNeXt network of ``arch`` (7x7 kernels, expansion 4, GELU, LayerNorm, patchify).

        Args:
            arch: A :class:`RanIArch` (any, not only this config's).
            dataset: Input channels and classes.
            channels: A smaller copy: the first stage's width, the others in proportion.
            layers: At most this many blocks per stage.
            auxiliary: Ignored: no auxiliary head.
            drop_path_prob: Stochastic depth of the last block (RAN-i-T/S/B train with 0.1/0.2/0.4).
        """
        arch = expect_arch(arch, RanIArch)
        convnext = resized(ConvNextArch(arch.depths, arch.widths), channels=channels, layers=layers)
        return ConvNeXt(
            arch=convnext, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
            stem_stride=self.config.stem_stride, layer_scale_init=self.config.layer_scale_init,
            drop_path_prob=drop_path_prob,
        )

    def macs(self, arch: RanIArch, dataset: DatasetInfo) -> int:
        """Multiply-adds of ``arch``'s network on one of ``dataset``'s images (its convolutions
        and linear layers, as :func:`raynas.profile.count_macs` counts them), from its shapes."""
        size = dataset.image_size // self.config.stem_stride  # the patchify stem: no padding
        stride = self.config.stem_stride
        total = size * size * arch.widths[0] * dataset.in_channels * stride * stride
        previous = None
        for depth, width in zip(arch.depths, arch.widths, strict=True):
            if previous is not None:  # the 2x2 stride-2 downsampling convolution
                size //= 2
                total += size * size * width * previous * 4
            # A block: 7x7 depthwise, then 1x1 to 4w and back.
            total += depth * size * size * (49 * width + 8 * width * width)
            previous = width
        return total + arch.widths[-1] * dataset.num_classes

    def scale(
        self, dataset: DatasetInfo, *, reference: RanIArch | None = None, mass_ratio: float = 1.0
    ) -> list[RanIArch]:
        """RAN-i's training-free scaling: the networks of this config's multipliers with at least
        ``mass_ratio`` times the NN-Mass (non-linear units) of ``reference``, fewest multiply-adds
        first (equal ones: more NN-Mass first).

        With the default multipliers, the first network for ConvNeXt-T (the base) is RAN-i-T, and
        for ConvNeXt-S (3-3-27-3 / 96-192-384-768) it is RAN-i-B.

        Args:
            dataset: The input whose multiply-adds are compared.
            reference: The network whose NN-Mass to reach (default: the unscaled base).
            mass_ratio: The share of the reference's NN-Mass to reach.
        """
        c = self.config
        reference = reference or RanIArch(c.base_depths, c.base_widths)
        target = mass_ratio * reference.nn_mass
        archs = {self.scaled(wm, dm) for wm in c.width_multipliers for dm in c.depth_multipliers}
        fits = [a for a in archs if a.nn_mass >= target]
        return sorted(fits, key=lambda a: (self.macs(a, dataset), -a.nn_mass, str(a)))
