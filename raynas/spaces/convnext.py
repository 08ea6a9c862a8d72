"""The ConvNeXt macro space (Liu et al., "A ConvNet for the 2020s", CVPR 2022).

A network is a stem, stages of residual ConvNeXt blocks (:class:`raynas.ops.convnext_net.ConvNeXtStageBlock`)
with a separate downsampling layer between stages, global average pooling, a norm and a linear
classifier. An architecture chooses what the paper's road map from ResNet-50 to ConvNeXt varies:

- per stage, its depth (the stage compute ratio: ResNet-50's 3:4:6:3, ConvNeXt's 3:3:9:3 and
  3:3:27:3) and its width;
- the depthwise kernel size (3 to 11; 7 in ConvNeXt);
- the inverted bottleneck's expansion ratio (4 in ConvNeXt; 1: no bottleneck);
- the activation (GELU or ReLU) and the norm (LayerNorm or BatchNorm);
- the stem: patchify (a 4x4 stride-4 convolution) or ResNet's (7x7 stride-2 convolution and
  max pooling);
- Section 2.6's micro design: one activation per block (between the two 1x1 layers) or one after
  every layer, as in a ResNet block; one norm per block (before the 1x1 expansion) or one after
  every convolution; separate downsampling layers (a norm and a 2x2 stride-2 convolution between
  stages, with norms after the patchify stem and the pooling) or ResNet's strided first block of
  each stage.

ConvNeXt-T, -S and -B are published architectures (``convnext_tiny``, ``convnext_small``,
``convnext_base``); their networks have exactly the parameters of torchvision's models of those
names (28,589,128, 50,223,688 and 88,591,464 on ImageNet). The space's config lists the options of
every choice (default: options around the published networks, which it contains); its supernet
(``raynas.supernet.convnext``) shares weights between all of them.

An architecture is written as JSON, by name, or as ``depths/widths/k<kernel>/e<expansion>/
<activation>/<norm>/<stem>/<one|every>-act/<one|every>-norm/<separate|strided>``, e.g. ConvNeXt-T
is ``3-3-9-3/96-192-384-768/k7/e4/gelu/ln/patchify/one-act/one-norm/separate``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import torch
from torch import nn

from raynas.config import Check, Rule, check_rules, listed_once
from raynas.errors import ArchitectureError, ConfigError
from raynas.ops.convnext_net import (
    ACT_LAYERS,
    ACTIVATIONS,
    DOWNSAMPLINGS,
    NORM_LAYERS,
    NORMS,
    STEM_STRIDES,
    STEMS,
    ConvNeXtStageBlock,
    Downsample,
    make_stem,
    make_vector_norm,
)
from raynas.spaces.base import OptionsSpace, encode_options, expect_arch, load_record
from raynas.spaces.registry import SPACES
from raynas.types import Architecture, DatasetInfo, Decision, check_keys, decode_options

_FORM = "depths/widths/k<kernel>/e<expansion>/<activation>/<norm>/<stem>/<one|every>-act/" \
        "<one|every>-norm/<separate|strided>, e.g. " \
        "'3-3-9-3/96-192-384-768/k7/e4/gelu/ln/patchify/one-act/one-norm/separate'"
_KEYS = (
    "depths", "widths", "kernel_size", "expansion", "activation", "norm", "stem", "act_layers",
    "norm_layers", "downsample",
)
# Section 2.6's choices as ConvNeXt makes them.
_MICRO_DEFAULTS = {"act_layers": "one", "norm_layers": "one", "downsample": "separate"}


def _positive_ints(value: Any) -> bool:
    return isinstance(value, tuple) and bool(value) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value
    )


@dataclass(frozen=True)
class ConvNextArch(Architecture):
    """One ConvNeXt-style network.

    Attributes:
        depths: Blocks in each stage.
        widths: Channels of each stage (as many as ``depths``).
        kernel_size: Odd size of every depthwise kernel.
        expansion: Hidden channels of the 1x1 convolutions as a multiple of the stage's width.
        activation: ``gelu`` or ``relu``.
        norm: ``ln`` (LayerNorm) or ``bn`` (BatchNorm), everywhere in the network.
        stem: ``patchify`` or ``resnet``.
        act_layers: ``one`` activation per block (ConvNeXt) or ``every`` layer's (ResNet).
        norm_layers: ``one`` norm per block (ConvNeXt) or ``every`` convolution's (ResNet).
        downsample: ``separate`` downsampling layers (ConvNeXt) or ``strided`` first blocks (ResNet).
    """

    space = "convnext"

    depths: tuple[int, ...]
    widths: tuple[int, ...]
    kernel_size: int = 7
    expansion: int = 4
    activation: str = "gelu"
    norm: str = "ln"
    stem: str = "patchify"
    act_layers: str = "one"
    norm_layers: str = "one"
    downsample: str = "separate"

    def __post_init__(self) -> None:
        if not _positive_ints(self.depths) or not _positive_ints(self.widths):
            raise ArchitectureError(
                f"convnext depths and widths must be non-empty tuples of positive integers, got "
                f"{self.depths!r} and {self.widths!r}"
            )
        if len(self.depths) != len(self.widths):
            raise ArchitectureError(
                f"convnext needs one width per stage: {len(self.depths)} depths, {len(self.widths)} widths"
            )
        k = self.kernel_size
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise ArchitectureError(f"convnext kernel_size must be an odd positive integer, got {k!r}")
        e = self.expansion
        if isinstance(e, bool) or not isinstance(e, int) or e < 1:
            raise ArchitectureError(f"convnext expansion must be a positive integer, got {e!r}")
        for what, value, allowed in (
            ("activation", self.activation, ACTIVATIONS), ("norm", self.norm, NORMS),
            ("stem", self.stem, STEMS), ("act_layers", self.act_layers, ACT_LAYERS),
            ("norm_layers", self.norm_layers, NORM_LAYERS), ("downsample", self.downsample, DOWNSAMPLINGS),
        ):
            if value not in allowed:
                raise ArchitectureError(
                    f"convnext {what}: unknown {value!r}; choose one of: {', '.join(allowed)}"
                )

    def __str__(self) -> str:
        return "/".join((
            "-".join(map(str, self.depths)), "-".join(map(str, self.widths)), f"k{self.kernel_size}",
            f"e{self.expansion}", self.activation, self.norm, self.stem, f"{self.act_layers}-act",
            f"{self.norm_layers}-norm", self.downsample,
        ))

    @classmethod
    def parse(cls, text: str) -> ConvNextArch:
        """Read the compact form (see the module's docstring)."""
        parts = text.strip().split("/")
        try:
            if len(parts) == 7:  # the form before the micro-design choices: ConvNeXt's
                parts += [f"{_MICRO_DEFAULTS['act_layers']}-act", f"{_MICRO_DEFAULTS['norm_layers']}-norm",
                          _MICRO_DEFAULTS["downsample"]]
            if (
                len(parts) != 10 or not parts[2].startswith("k") or not parts[3].startswith("e")
                or not parts[7].endswith("-act") or not parts[8].endswith("-norm")
            ):
                raise ValueError
            depths = tuple(int(d) for d in parts[0].split("-"))
            widths = tuple(int(w) for w in parts[1].split("-"))
            kernel, expansion = int(parts[2][1:]), int(parts[3][1:])
        except ValueError:
            raise ArchitectureError(f"{text!r} is not a convnext architecture; write {_FORM}") from None
        return cls(
            depths, widths, kernel, expansion, parts[4], parts[5], parts[6], parts[7].removesuffix("-act"),
            parts[8].removesuffix("-norm"), parts[9],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "depths": list(self.depths), "widths": list(self.widths), "kernel_size": self.kernel_size,
            "expansion": self.expansion, "activation": self.activation, "norm": self.norm,
            "stem": self.stem, "act_layers": self.act_layers, "norm_layers": self.norm_layers,
            "downsample": self.downsample,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConvNextArch:
        if not isinstance(data, dict):
            raise ArchitectureError(f"a convnext architecture is a JSON object, got {type(data).__name__}")
        # Records written before the micro-design choices existed lack them: ConvNeXt's, as then.
        data = {**_MICRO_DEFAULTS, **data}
        check_keys(data, _KEYS, "a convnext architecture")
        for key in ("depths", "widths"):
            if not isinstance(data[key], list):
                raise ArchitectureError(f"convnext {key!r} must be a list of integers, got {data[key]!r}")
        return cls(tuple(data["depths"]), tuple(data["widths"]), *(data[k] for k in _KEYS[2:]))


# The paper's Table 9 / torchvision's convnext_tiny, _small, _base: stage depths and widths; 7x7
# kernels, inverted bottleneck 4, GELU, LayerNorm, patchify stem, one activation and one norm per
# block, separate downsampling layers (the defaults).
PUBLISHED: dict[str, ConvNextArch] = {
    "convnext_tiny": ConvNextArch((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnext_small": ConvNextArch((3, 3, 27, 3), (96, 192, 384, 768)),
    "convnext_base": ConvNextArch((3, 3, 27, 3), (128, 256, 512, 1024)),
}
ALIASES = {
    "ConvNeXt-T": "convnext_tiny", "ConvNeXt-S": "convnext_small", "ConvNeXt-B": "convnext_base",
    "convnext_t": "convnext_tiny", "convnext_s": "convnext_small", "convnext_b": "convnext_base",
}


@dataclass(frozen=True)
class ConvNextSpaceConfig:
    """The options of every choice and the fixed parts of the networks.

    The defaults span ResNet-50's and Swin's stage ratios and the paper's kernel sizes around
    ConvNeXt-T/S/B (which the space contains).

    Attributes:
        depth_choices: Per stage, the depths it may have (one list per stage).
        width_choices: Per stage, the widths it may have.
        kernel_choices: Depthwise kernel sizes (odd).
        expansion_choices: Inverted-bottleneck expansion ratios.
        activation_choices: Activations (``gelu``, ``relu``).
        norm_choices: Norms (``ln``, ``bn``).
        stem_choices: Stems (``patchify``, ``resnet``).
        act_layer_choices: Activations per block (``one``, ``every``).
        norm_layer_choices: Norms per block (``one``, ``every``).
        downsample_choices: Downsampling between stages (``separate``, ``strided``).
        stem_stride: The stem's total stride: 4 on ImageNet, 1 or 2 for small images (the digits).
        layer_scale_init: Initial layer scale (1e-6 in ConvNeXt; 0: none).
    """

    depth_choices: tuple[tuple[int, ...], ...] = ((2, 3), (2, 3, 4), (6, 9, 18, 27), (2, 3))
    width_choices: tuple[tuple[int, ...], ...] = (
        (64, 96, 128), (128, 192, 256), (256, 384, 512), (512, 768, 1024)
    )
    kernel_choices: tuple[int, ...] = (3, 5, 7, 9, 11)
    expansion_choices: tuple[int, ...] = (1, 2, 4)
    activation_choices: tuple[str, ...] = ("gelu", "relu")
    norm_choices: tuple[str, ...] = ("ln", "bn")
    stem_choices: tuple[str, ...] = ("patchify", "resnet")
    act_layer_choices: tuple[str, ...] = ACT_LAYERS
    norm_layer_choices: tuple[str, ...] = NORM_LAYERS
    downsample_choices: tuple[str, ...] = DOWNSAMPLINGS
    stem_stride: Annotated[int, Rule(one_of=STEM_STRIDES)] = 4
    layer_scale_init: Annotated[float, Rule(ge=0)] = 1e-6

    checks: ClassVar[tuple[Check, ...]] = (
        *(
            Check(
                f"{key} and all(v and min(v) >= 1 for v in {key})",
                f"space.{key} needs one non-empty list of positive integers per stage, got {{{key}!r}}",
            )
            for key in ("depth_choices", "width_choices")
        ),
        Check(
            "len(depth_choices) == len(width_choices)",
            "space.depth_choices and space.width_choices need one entry per stage; got "
            "{len(depth_choices)} and {len(width_choices)}",
        ),
        Check(
            "kernel_choices and min(kernel_choices) >= 1 and all(k % 2 for k in kernel_choices)",
            "space.kernel_choices must be odd positive integers, got {kernel_choices!r}",
        ),
        Check(
            "expansion_choices and min(expansion_choices) >= 1",
            "space.expansion_choices must be positive integers, got {expansion_choices!r}",
        ),
        listed_once("activation_choices", ACTIVATIONS),
        listed_once("norm_choices", NORMS),
        listed_once("stem_choices", STEMS),
        listed_once("act_layer_choices", ACT_LAYERS),
        listed_once("norm_layer_choices", NORM_LAYERS),
        listed_once("downsample_choices", DOWNSAMPLINGS),
        *(
            Check(f"len(set({key})) == len({key})", f"space.{key} lists an option twice: {{list({key})}}")
            for key in ("kernel_choices", "expansion_choices")
        ),
        *(
            Check(
                "len(set(item)) == len(item)", f"space.{key}[{{i}}] lists an option twice: {{list(item)}}",
                each=key,
            )
            for key in ("depth_choices", "width_choices")
        ),
    )

    def __post_init__(self) -> None:
        check_rules(self, "space")
        for key in ("depth_choices", "width_choices"):  # tuples, where code passed lists
            object.__setattr__(self, key, tuple(tuple(v) for v in getattr(self, key)))

    @property
    def stages(self) -> int:
        """Number of stages."""
        return len(self.depth_choices)


class ConvNeXt(nn.Module):
    """The network of a :class:`ConvNextArch`: stem, stages, pooling, norm, classifier (with
    ``strided`` downsampling: no norms after the patchify stem and the pooling, and the first
    block of every stage but the first downsamples).

    Weights are initialised as in the official code (truncated normal, std 0.02; zero biases).

    Args:
        arch: The architecture.
        num_classes: Output classes.
        in_channels: Image channels.
        stem_stride: The stem's total stride (4 on ImageNet).
        layer_scale_init: Initial layer scale (0: none).
        drop_path_prob: Stochastic depth of the last block, rising linearly from 0 at the first.
    """

    def __init__(
        self, *, arch: ConvNextArch, num_classes: int, in_channels: int = 3, stem_stride: int = 4,
        layer_scale_init: float = 1e-6, drop_path_prob: float = 0.0,
    ) -> None:
        super().__init__()
        a = arch
        separate = a.downsample == "separate"
        self.stem = make_stem(
            a.stem, in_channels=in_channels, channels=a.widths[0], stride=stem_stride, norm=a.norm,
            activation=a.activation, patchify_norm=separate,
        )
        total = sum(a.depths)
        rates = [drop_path_prob * i / max(total - 1, 1) for i in range(total)]
        stages: list[nn.Module] = []
        for i, (depth, width) in enumerate(zip(a.depths, a.widths, strict=True)):
            strided = i > 0 and not separate  # the stage's first block downsamples and widens
            layers: list[nn.Module] = [Downsample(a.widths[i - 1], width, a.norm)] if i and separate else []
            start = sum(a.depths[:i])
            layers += [
                ConvNeXtStageBlock(
                    channels=width, kernel_size=a.kernel_size, expansion=a.expansion,
                    activation=a.activation, norm=a.norm, act_layers=a.act_layers,
                    norm_layers=a.norm_layers, in_channels=a.widths[i - 1] if strided and not j else None,
                    stride=2 if strided and not j else 1, layer_scale_init=layer_scale_init,
                    drop_path_prob=rates[start + j],
                )
                for j in range(depth)
            ]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.norm = make_vector_norm(a.norm, a.widths[-1]) if separate else nn.Identity()
        self.classifier = nn.Linear(a.widths[-1], num_classes)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in, H, W) -> (B, classes)
        feature = self.stages(self.stem(x))  # (B, widths[-1], H / (stride * 2^(stages-1)), ...)
        return self.classifier(self.norm(feature.mean((2, 3))))


def init_weights(module: nn.Module) -> None:
    """The official initialisation: truncated normal weights (std 0.02), zero biases."""
    if isinstance(module, nn.Conv2d | nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def load_arch(text: str) -> ConvNextArch:
    """A published name, JSON text or file, or the compact form."""
    return load_record(
        text, ConvNextArch, published=PUBLISHED, aliases=ALIASES, what="convnext model",
        json_form="{" + ", ".join(f'"{k}": ...' for k in _KEYS) + "}",
        form=_FORM, looks_compact=lambda s: "/" in s,
    )


@SPACES.register(
    "convnext", config=ConvNextSpaceConfig,
    traits={"choices": True, "one_shot": True},
)
class ConvNextSpace(OptionsSpace[ConvNextArch]):
    """The ConvNeXt macro space: stage depths and widths, kernel size, expansion, activation,
    norm, stem, activations and norms per block, and downsampling.

    Args:
        config: The options of every choice (default: around ConvNeXt-T/S/B on ImageNet).
    """

    architecture_type = ConvNextArch
    reference_dataset = "imagenet"

    def __init__(self, config: ConvNextSpaceConfig | None = None) -> None:
        self.config = config or ConvNextSpaceConfig()

    def decisions(self) -> tuple[Decision, ...]:
        """Per stage its depth and width, then kernel size, expansion, activation, norm, stem,
        activation layers, norm layers and downsampling."""
        c = self.config
        per_stage = [
            d for i in range(c.stages) for d in (
                Decision(f"stage {i + 1} depth", tuple(map(str, c.depth_choices[i]))),
                Decision(f"stage {i + 1} width", tuple(map(str, c.width_choices[i]))),
            )
        ]
        return (
            *per_stage,
            Decision("kernel size", tuple(map(str, c.kernel_choices))),
            Decision("expansion", tuple(map(str, c.expansion_choices))),
            Decision("activation", c.activation_choices),
            Decision("norm", c.norm_choices),
            Decision("stem", c.stem_choices),
            Decision("activation layers", c.act_layer_choices),
            Decision("norm layers", c.norm_layer_choices),
            Decision("downsampling", c.downsample_choices),
        )

    def encode(self, arch: Architecture) -> tuple[int, ...]:
        """The option index of every decision (see :meth:`decisions`)."""
        a = self.check(arch)
        values = [str(v) for pair in zip(a.depths, a.widths, strict=True) for v in pair]
        values += [
            str(a.kernel_size), str(a.expansion), a.activation, a.norm, a.stem, a.act_layers, a.norm_layers,
            a.downsample,
        ]
        return encode_options(self.decisions(), values)

    def decode(self, values: tuple[int, ...] | list[int]) -> ConvNextArch:
        """The architecture these option indices pick."""
        names = decode_options(self.decisions(), values)
        n = self.config.stages
        kernel, expansion, *rest = names[2 * n :]
        return ConvNextArch(
            tuple(int(v) for v in names[0 : 2 * n : 2]), tuple(int(v) for v in names[1 : 2 * n : 2]),
            int(kernel), int(expansion), *rest,
        )

    def contains(self, arch: Architecture) -> bool:
        """Whether every choice of ``arch`` is among this space's options."""
        c = self.config
        return (
            isinstance(arch, ConvNextArch) and len(arch.depths) == c.stages
            and all(d in opts for d, opts in zip(arch.depths, c.depth_choices, strict=True))
            and all(w in opts for w, opts in zip(arch.widths, c.width_choices, strict=True))
            and arch.kernel_size in c.kernel_choices and arch.expansion in c.expansion_choices
            and arch.activation in c.activation_choices and arch.norm in c.norm_choices
            and arch.stem in c.stem_choices and arch.act_layers in c.act_layer_choices
            and arch.norm_layers in c.norm_layer_choices and arch.downsample in c.downsample_choices
        )

    def parse(self, text: str) -> ConvNextArch:
        """A published name (``convnext_tiny``, ``ConvNeXt-T``, ...), JSON text or file, or the
        compact form; any ConvNeXt network, whether or not the config's options contain it."""
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
        """The network of ``arch`` with this space's stem stride and layer scale.

        Args:
            arch: A :class:`ConvNextArch` (any, not only this config's).
            dataset: Input channels and classes (any image size at least the total stride).
            channels: A smaller (or larger) copy for quick trials: the first stage's width, the
                others scaled in proportion (None: the architecture's widths).
            layers: At most this many blocks per stage (None: the architecture's depths).
            auxiliary: Ignored: ConvNeXt has no auxiliary head.
            drop_path_prob: Stochastic depth of the last block (rising linearly from 0).
        """
        arch = expect_arch(arch, ConvNextArch)
        return ConvNeXt(
            arch=resized(arch, channels=channels, layers=layers), num_classes=dataset.num_classes,
            in_channels=dataset.in_channels, stem_stride=self.config.stem_stride,
            layer_scale_init=self.config.layer_scale_init, drop_path_prob=drop_path_prob,
        )


def resized(arch: ConvNextArch, *, channels: int | None = None, layers: int | None = None) -> ConvNextArch:
    """``arch`` with its first width ``channels`` (the others in proportion, at least 1) and at
    most ``layers`` blocks per stage; unchanged where an argument is None."""
    if (channels is not None and channels < 1) or (layers is not None and layers < 1):
        raise ConfigError(f"convnext channels and layers must be positive, got {channels} and {layers}")
    widths = arch.widths if channels is None else tuple(
        max(1, round(w * channels / arch.widths[0])) for w in arch.widths
    )
    depths = arch.depths if layers is None else tuple(min(d, layers) for d in arch.depths)
    return dataclasses.replace(arch, widths=widths, depths=depths)
