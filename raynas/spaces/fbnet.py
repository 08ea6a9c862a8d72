"""The FBNet layer-wise space (Wu et al., "FBNet: Hardware-Aware Efficient ConvNet Design via
Differentiable Neural Architecture Search", CVPR 2019; the published models as
``fbnet_modeldef_cls_fbnet.py`` of facebookresearch/mobile-vision).

The macro layout is fixed: a 3x3 stem conv (16 channels, stride 2), then stages of searchable
layers (``TBS``) with 16, 24, 32, 64, 112, 184 and 352 channels, 1, 4, 4, 4, 4, 4 and 1 layers
deep, the first layer of a stage striding 1, 2, 2, 2, 1, 2 and 1; then a 1x1 conv (1504 channels),
global average pooling and a linear classifier. Each of the 22 searchable layers picks one of nine
candidate blocks (:data:`raynas.ops.fbnet.FBNET_BLOCKS`): 9^22, about 1e21 networks.

An architecture is the block of every layer; it is written as the block names joined by commas
(``k3_e1,k3_e6,...``), or named: ``fbnet_a``, ``fbnet_b``, ``fbnet_c`` (FBNet-B and -C have a
1984-channel last conv in mobile-vision's definitions, which their records carry). The space's
config sets a smaller layout for quick searches (stage widths, depths and strides).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import torch
from torch import nn

from raynas.config import Check, Rule, check_rules
from raynas.errors import ArchitectureError, ConfigError
from raynas.ops.fbnet import FBNET_BLOCKS, conv_bn, make_block
from raynas.spaces.base import expect_arch, split_names
from raynas.spaces.registry import SPACES
from raynas.types import Architecture, DatasetInfo, Decision, decode_options

if TYPE_CHECKING:  # matplotlib loads only where a picture is drawn
    from matplotlib.figure import Figure

# Every searchable layer's candidates, in its decision's order: skip, the simplest block, first.
LAYER_OPTIONS = ("skip", *(b for b in FBNET_BLOCKS if b != "skip"))

_FORM = "comma-separated block names, one per searchable layer, e.g. 'k3_e1,k3_e6,skip,...'"


@dataclass(frozen=True)
class FbnetArch(Architecture):
    """The block of every searchable layer, first layer first.

    Attributes:
        blocks: One name of :data:`raynas.ops.fbnet.FBNET_BLOCKS` per layer.
        head_channels: Width of the last 1x1 conv, when the architecture fixes it (FBNet-B/C:
            1984); ``None`` takes the space's (1504 in the paper's layout).
    """

    space = "fbnet"

    blocks: tuple[str, ...]
    head_channels: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.blocks, tuple) or not self.blocks:
            raise ArchitectureError(
                f"an fbnet architecture is a non-empty tuple of blocks, got {self.blocks!r}"
            )
        for i, block in enumerate(self.blocks):
            if block not in FBNET_BLOCKS:
                raise ArchitectureError(
                    f"fbnet layer {i}: unknown block {block!r}; choose one of: {', '.join(FBNET_BLOCKS)}"
                )
        if self.head_channels is not None and (
            isinstance(self.head_channels, bool) or not isinstance(self.head_channels, int)
            or self.head_channels < 1
        ):
            raise ArchitectureError(
                f"fbnet head_channels must be a positive integer, got {self.head_channels!r}"
            )

    @classmethod
    def parse(cls, text: str) -> FbnetArch:
        """Read the comma-separated form (spaces around names are allowed)."""
        return cls(split_names(text, "an fbnet", _FORM))

    def __str__(self) -> str:
        return ",".join(self.blocks)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"blocks": list(self.blocks)}
        if self.head_channels is not None:
            data["head_channels"] = self.head_channels
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FbnetArch:
        allowed = {"blocks", "head_channels"}
        if not isinstance(data, dict) or "blocks" not in data or set(data) - allowed:
            keys = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ArchitectureError(
                f"an fbnet architecture is {{\"blocks\": [names...], \"head_channels\": int (optional)}}, "
                f"got {keys}"
            )
        blocks = data["blocks"]
        if not isinstance(blocks, list) or not all(isinstance(b, str) for b in blocks):
            raise ArchitectureError(f"fbnet 'blocks' must be a list of block names, got {blocks!r}")
        return cls(tuple(blocks), data.get("head_channels"))


def _published(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# mobile-vision's fbnet_a/b/c, one entry per searchable layer (stages of 1, 4, 4, 4, 4, 4, 1);
# their ``ir_k{3,5}`` with expansion e is ``k{3,5}_e{e}`` here, ``ir_k5_g2`` is ``k5_e1_g2``.
PUBLISHED: dict[str, FbnetArch] = {
    "fbnet_a": FbnetArch(_published(
        "skip  k3_e3 k3_e1 skip skip  k5_e6 k3_e3 k5_e1 k3_e3  k5_e6 k5_e3 k5_e1_g2 k5_e6 "
        "k3_e6 k5_e1_g2 k5_e3 k3_e1_g2  k5_e6 k5_e6 k5_e3 k5_e6  k5_e6"
    ), 1504),
    "fbnet_b": FbnetArch(_published(
        "k3_e1  k3_e6 k5_e1 k3_e1 k3_e1  k5_e6 k5_e3 k3_e6 k5_e6  k5_e6 k5_e6 skip k5_e3 "
        "k5_e6 k3_e1 k5_e1 k5_e3  k5_e6 k5_e1 k5_e6 k5_e6  k3_e6"
    ), 1984),
    "fbnet_c": FbnetArch(_published(
        "k3_e1  k3_e6 skip k3_e1 k3_e1  k5_e6 k5_e3 k5_e6 k3_e6  k5_e6 k5_e3 k5_e6 k5_e6 "
        "k5_e6 k5_e6 k5_e6 k5_e3  k5_e6 k5_e6 k5_e6 k5_e6  k3_e6"
    ), 1984),
}


_CHANNEL_RULE = "must be an even number >= 2 (the g2 blocks split it in two)"


@dataclass(frozen=True)
class FbnetSpaceConfig:
    """The macro layout of the space and how the supernet mixes the candidates (defaults: the paper's).

    Attributes:
        stem_channels: Output channels of the 3x3 stem conv (16).
        stem_stride: Its stride (2 for 224x224 ImageNet; 1 suits small images).
        stage_channels: Output channels of each stage of searchable layers.
        stage_depths: Searchable layers in each stage.
        stage_strides: Stride of each stage's first layer (the others stride 1).
        head_channels: Channels of the last 1x1 conv (1504).
        mixed_op: ``weighted``: the supernet computes every candidate and sums them with their
            (Gumbel-)softmax weights, as FBNet; ``sampled``: only the sampled one (GDAS).
        bn_affine: Learnable BatchNorm scale and shift in the supernet's candidates.
    """

    stem_channels: Annotated[int, Rule(ge=2, even=True, says=_CHANNEL_RULE)] = 16
    stem_stride: Annotated[int, Rule(one_of=(1, 2), says="must be 1 or 2")] = 2
    stage_channels: Annotated[tuple[int, ...], Rule(ge=2, even=True, says=_CHANNEL_RULE)] = (
        16, 24, 32, 64, 112, 184, 352
    )
    stage_depths: Annotated[tuple[int, ...], Rule(ge=1)] = (1, 4, 4, 4, 4, 4, 1)
    stage_strides: Annotated[tuple[int, ...], Rule(one_of=(1, 2), says="must be 1 or 2")] = (
        1, 2, 2, 2, 1, 2, 1
    )
    head_channels: Annotated[int, Rule(ge=1)] = 1504
    mixed_op: Literal["weighted", "sampled"] = "weighted"
    bn_affine: bool = True

    checks: ClassVar[tuple[Check, ...]] = (
        Check("stage_channels", "space.stage_channels needs at least one stage"),
        Check(
            "len(stage_depths) == len(stage_channels) == len(stage_strides)",
            "space.stage_channels, stage_depths and stage_strides need one entry per stage; got "
            "{len(stage_channels)}, {len(stage_depths)} and {len(stage_strides)}",
        ),
    )

    def __post_init__(self) -> None:
        check_rules(self, "space")

    @property
    def num_layers(self) -> int:
        """Searchable layers (22 in the paper's layout)."""
        return sum(self.stage_depths)


@dataclass(frozen=True)
class LayerSpec:
    """The shapes of one searchable layer: channels in and out, stride, input resolution."""

    c_in: int
    c_out: int
    stride: int
    size: int


def _out_size(size: int, stride: int) -> int:
    return (size - 1) // stride + 1  # a conv with padding k // 2


def layer_specs(config: FbnetSpaceConfig, image_size: int) -> tuple[LayerSpec, ...]:
    """Shapes of every searchable layer for ``image_size`` x ``image_size`` inputs."""
    size = _out_size(image_size, config.stem_stride)
    c_in = config.stem_channels
    specs = []
    stages = zip(config.stage_channels, config.stage_depths, config.stage_strides, strict=True)
    for c_out, depth, stride in stages:
        for i in range(depth):
            s = stride if i == 0 else 1
            specs.append(LayerSpec(c_in, c_out, s, size))
            c_in, size = c_out, _out_size(size, s)
    return tuple(specs)


def block_key(block: str, spec: LayerSpec) -> str:
    """The latency-table key of ``block`` at ``spec``'s shapes, e.g. ``k3_e6:16x56->24/s2``."""
    return f"{block}:{spec.c_in}x{spec.size}->{spec.c_out}/s{spec.stride}"


class FBNet(nn.Module):
    """An FBNet network: stem, one block per searchable layer, 1x1 head conv, pooling, classifier.

    Args:
        arch: The block of every layer (as many as the layout has).
        config: The macro layout.
        num_classes: Output classes.
        in_channels: Image channels.
    """

    def __init__(
        self, *, arch: FbnetArch, config: FbnetSpaceConfig, num_classes: int, in_channels: int = 3
    ) -> None:
        super().__init__()
        specs = layer_specs(config, 1)  # channels and strides only
        if len(arch.blocks) != len(specs):
            raise ArchitectureError(_layer_count_message(config, len(arch.blocks)))
        head = arch.head_channels or config.head_channels
        self.stem = conv_bn(in_channels, config.stem_channels, 3, stride=config.stem_stride)
        self.layers = nn.Sequential(*(
            make_block(b, c_in=s.c_in, c_out=s.c_out, stride=s.stride)
            for b, s in zip(arch.blocks, specs, strict=True)
        ))
        self.head = conv_bn(specs[-1].c_out, head, 1)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in, H, W) -> (B, classes)
        feature = self.head(self.layers(self.stem(x)))  # (B, head, H/32, W/32) in the paper's layout
        return self.classifier(self.global_pooling(feature).flatten(1))


def _layer_count_message(config: FbnetSpaceConfig, got: int) -> str:
    depths = ", ".join(str(d) for d in config.stage_depths)
    return (
        f"an fbnet architecture of this space has {config.num_layers} layers (stages of {depths} "
        f"layers), got {got}"
    )


def load_arch(text: str) -> FbnetArch:
    """An architecture from a published name, the comma-separated form, JSON text or a JSON file."""
    stripped = text.strip()
    name = stripped.lower().replace("-", "_")
    if name in PUBLISHED:
        return PUBLISHED[name]
    arch = FbnetArch.read_json(stripped, form='{"blocks": [...]}')
    if arch is not None:
        return arch
    if "," not in stripped and stripped not in FBNET_BLOCKS:
        raise ArchitectureError(
            f"{stripped!r} is no published fbnet model ({', '.join(PUBLISHED)}), no file, and not {_FORM}"
        )
    return FbnetArch.parse(stripped)


@SPACES.register(
    "fbnet", config=FbnetSpaceConfig,
    traits={
        "choices": True, "one_shot": True, "layer_shapes": True, "latency_tables": True, "latency_keys": True,
        "layer_candidates": LAYER_OPTIONS, "fixed_size": True,
    },
)
class FbnetSpace:
    """The FBNet space: nine candidate blocks in each searchable layer of a fixed macro layout.

    Args:
        config: The macro layout (default: the paper's 22 layers) and the supernet's mixing.
    """

    architecture_type = FbnetArch

    def __init__(self, config: FbnetSpaceConfig | None = None) -> None:
        self.config = config or FbnetSpaceConfig()

    def sample(self, rng: random.Random) -> FbnetArch:
        """A uniformly random block for every layer."""
        return FbnetArch(tuple(rng.choice(FBNET_BLOCKS) for _ in range(self.config.num_layers)))

    def decisions(self) -> tuple[Decision, ...]:
        """One decision per searchable layer; option 0 is ``skip``, the simplest block."""
        return tuple(
            Decision(f"layer {i} ({s.c_in}->{s.c_out}, stride {s.stride})", LAYER_OPTIONS)
            for i, s in enumerate(layer_specs(self.config, 1))
        )

    def encode(self, arch: Architecture) -> tuple[int, ...]:
        """The option index of every layer's block (see :meth:`decisions`)."""
        arch = self.check(arch)
        return tuple(d.options.index(b) for d, b in zip(self.decisions(), arch.blocks, strict=True))

    def decode(self, values: tuple[int, ...] | list[int]) -> FbnetArch:
        """The architecture with the blocks that ``values`` pick, one per layer."""
        return FbnetArch(tuple(decode_options(self.decisions(), values)))

    def contains(self, arch: Architecture) -> bool:
        """Whether ``arch`` is an FBNet architecture with one block per layer of this layout."""
        return isinstance(arch, FbnetArch) and len(arch.blocks) == self.config.num_layers

    def check(self, arch: Architecture) -> FbnetArch:
        """``arch`` if it belongs to the space, else an :class:`ArchitectureError` saying why."""
        arch = expect_arch(arch, FbnetArch)
        if len(arch.blocks) != self.config.num_layers:
            raise ArchitectureError(_layer_count_message(self.config, len(arch.blocks)))
        return arch

    def parse(self, text: str) -> FbnetArch:
        """A published name (``fbnet_a``, ``fbnet_b``, ``fbnet_c``), the comma-separated form,
        JSON text or a JSON file; checked against this space's number of layers."""
        return self.check(load_arch(text))

    def build(
        self,
        arch: Architecture,
        dataset: DatasetInfo,
        *,
        channels: int | None = None,
        layers: int | None = None,
        auxiliary: bool = False,
    ) -> nn.Module:
        """The network of ``arch`` in this space's layout.

        Args:
            arch: An :class:`FbnetArch` with one block per layer.
            dataset: Input channels and classes (any image size: the network pools globally).
            channels: Not used: widths are the space's ``stage_channels``; must be None.
            layers: Not used: depths are the space's ``stage_depths``; must be None.
            auxiliary: Ignored: FBNet has no auxiliary head.
        """
        if channels is not None or layers is not None:
            raise ConfigError(
                "the fbnet space takes its widths and depths from its config (space.stage_channels, "
                "space.stage_depths), not from channels/layers"
            )
        return FBNet(
            arch=self.check(arch), config=self.config, num_classes=dataset.num_classes,
            in_channels=dataset.in_channels,
        )

    # Latency tables (raynas.latency): what to measure and which entries make up a network.

    def latency_items(self, dataset: DatasetInfo) -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
        """Every distinct thing to time, by table key: the module and its input shape (no batch).

        The candidate blocks at each layer's shapes (layers of the same shape share entries), and
        the fixed parts: ``stem`` and ``head`` (1x1 conv, pooling and classifier).
        """
        cfg = self.config
        specs = layer_specs(cfg, dataset.image_size)
        items: dict[str, tuple[nn.Module, tuple[int, ...]]] = {}
        for spec in specs:
            for block in FBNET_BLOCKS:
                key = block_key(block, spec)
                if key not in items:
                    module = make_block(block, c_in=spec.c_in, c_out=spec.c_out, stride=spec.stride)
                    items[key] = (module, (spec.c_in, spec.size, spec.size))
        stem_key, head_key = self.fixed_latency_keys(dataset)
        items[stem_key] = (
            conv_bn(dataset.in_channels, cfg.stem_channels, 3, stride=cfg.stem_stride),
            dataset.image_shape,
        )
        last = specs[-1]
        out = _out_size(last.size, last.stride)
        items[head_key] = (
            nn.Sequential(
                conv_bn(last.c_out, cfg.head_channels, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                nn.Linear(cfg.head_channels, dataset.num_classes),
            ),
            (last.c_out, out, out),
        )
        return items

    def layer_latency_keys(self, dataset: DatasetInfo) -> tuple[tuple[str, ...], ...]:
        """For every searchable layer, the table key of each candidate (in FBNET_BLOCKS order)."""
        return tuple(
            tuple(block_key(b, spec) for b in FBNET_BLOCKS)
            for spec in layer_specs(self.config, dataset.image_size)
        )

    def fixed_latency_keys(self, dataset: DatasetInfo) -> tuple[str, str]:
        """Table keys of the stem and of the head (1x1 conv, pooling, classifier)."""
        cfg = self.config
        last = layer_specs(cfg, dataset.image_size)[-1]
        size = _out_size(last.size, last.stride)
        return (
            f"stem:{dataset.in_channels}x{dataset.image_size}->{cfg.stem_channels}/s{cfg.stem_stride}",
            f"head:{last.c_out}x{size}->{cfg.head_channels}->{dataset.num_classes}",
        )

    def latency_keys(self, arch: Architecture, dataset: DatasetInfo) -> list[str]:
        """The table keys whose latencies add up to the network of ``arch`` (stem, layers, head).

        An architecture that fixes its own head width (FBNet-B/C) is priced with the space's head.
        """
        arch = self.check(arch)
        rows = self.layer_latency_keys(dataset)
        stem, head = self.fixed_latency_keys(dataset)
        return [stem, *(row[FBNET_BLOCKS.index(b)] for row, b in zip(rows, arch.blocks, strict=True)), head]

    @property
    def op_names(self) -> tuple[str, ...]:
        """The candidates, in the column order of the supernet's architecture weights."""
        return tuple(FBNET_BLOCKS)

    def draw(self, arch: Architecture) -> Figure:
        """One bar per searchable layer, coloured by kernel size and as tall as its expansion."""
        from matplotlib.figure import Figure

        from raynas.spaces.drawing import draw_fbnet_blocks

        arch = expect_arch(arch, FbnetArch, "draws")
        fig = Figure(figsize=(max(6.0, 0.4 * len(arch.blocks) + 2), 4.2), layout="constrained")
        draw_fbnet_blocks(fig.subplots(), arch.blocks, "FBNet blocks per layer")
        fig.suptitle(arch.key(), fontsize=10)
        return fig


