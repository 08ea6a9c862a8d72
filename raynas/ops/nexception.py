"""The parts of Xception (Chollet, CVPR 2017) and NEXcepTion networks (Shavit et al., "From
Xception to NEXcepTion: New Design Decisions and Neural Architecture Search", ICPRAM 2023), with
the NEXcepTion paper's design decisions as arguments, so that one set of blocks builds Xception,
NEXcepTion-T, -S and -TP and every network of the NEXcepTion search space.

* :class:`SeparableConv2d`: a KxK depthwise convolution and a 1x1 pointwise one, no biases.
* :class:`SqueezeExcite`: the block end of NEXcepTion (timm's ``SEModule`` with a BatchNorm after
  the reduction, as the official code builds it): channels reduced to ``C/16`` rounded to a
  multiple of 8.
* :class:`BlurPool2d`: anti-aliased stride-2 downsampling (Zhang, ICML 2019) with the fixed
  binomial 3x3 filter and reflection padding, as timm's ``BlurPool2d(filt_size=3)``.
* :class:`XceptionBlock`: the entry- and exit-flow block: separable convolutions with norms after
  each and activations before every one (Xception) or only between them (NEXcepTion's "fewer
  activations"), a strided downsampling (max pooling, blur pooling or both), an optional
  squeeze-and-excitation end, and a 1x1 strided convolution with a norm on the shortcut.
* :class:`BottleneckBlock`: NEXcepTion's middle-flow block, an inverted bottleneck of separable
  convolutions (C -> 3C -> C, then C -> C) with one activation, as the official code's.
* :class:`XceptionMiddleBlock`: Xception's middle-flow block (activation, separable convolution,
  norm, three times, and the identity shortcut).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raynas.ops.convnext import LayerNorm2d
from raynas.ops.convnext_net import drop_path

ACTIVATIONS: tuple[str, ...] = ("relu", "gelu")
NORMS: tuple[str, ...] = ("bn", "ln")
POOLINGS: tuple[str, ...] = ("max", "blur", "maxblur")
ACTIVATION_PLACES: tuple[str, ...] = ("every", "fewer")
BLOCK_ENDS: tuple[str, ...] = ("none", "se")
MIDDLE_BLOCKS: tuple[str, ...] = ("xception", "bottleneck")
STEMS: tuple[str, ...] = ("xception", "patch2", "patch4")
BOTTLENECK_EXPANSION = 3  # NEXcepTion's middle block: 512 -> 1536 -> 512 (nexception_t.py)


def make_activation(name: str) -> nn.Module:
    """ReLU (Xception) or GELU (NEXcepTion)."""
    if name == "relu":
        return nn.ReLU()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown activation {name!r}; choose one of: {', '.join(ACTIVATIONS)}")


def make_norm(name: str, channels: int) -> nn.Module:
    """BatchNorm or LayerNorm over the channels of (B, C, H, W) maps."""
    if name == "bn":
        return nn.BatchNorm2d(channels)
    if name == "ln":
        return LayerNorm2d(channels)
    raise ValueError(f"unknown norm {name!r}; choose one of: {', '.join(NORMS)}")


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``)."""
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


class SeparableConv2d(nn.Sequential):
    """A KxK depthwise convolution (padding K // 2, so stride 1 keeps the size), then a 1x1 one."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_in, kernel_size, padding=kernel_size // 2, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
        )


class SqueezeExcite(nn.Module):
    """``x * sigmoid(fc2(act(bn(fc1(mean(x))))))`` with ``make_divisible(C / 16)`` hidden channels.

    The norm is BatchNorm as in the official networks, whichever norm the architecture chooses for
    its convolutions (the official networks have BatchNorm only); like any BatchNorm over a 1x1 map
    it needs more than one image per batch in training."""

    def __init__(self, channels: int, activation: str) -> None:
        super().__init__()
        hidden = make_divisible(channels / 16)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.bn = nn.BatchNorm2d(hidden)
        self.act = make_activation(activation)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        s = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        return x * torch.sigmoid(self.fc2(self.act(self.bn(self.fc1(s)))))


class BlurPool2d(nn.Module):
    """Stride-2 blurred downsampling: reflection padding 1 and the filter ``[1, 2, 1]^T [1, 2, 1] / 16``
    per channel (no parameters)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        taps = torch.tensor([0.25, 0.5, 0.25])
        self.register_buffer("filt", (taps[:, None] * taps[None, :]).expand(channels, 1, 3, 3).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, ~H/2, ~W/2)
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.filt, stride=2, groups=x.size(1))


class StridedPointwise(nn.Module):
    """A 1x1 convolution of stride ``stride`` (the shortcut of a downsampling block), computed as
    the 1x1 convolution of the input's every ``stride``-th pixel: the same map, and it keeps clear
    of torch 2.14's CPU backward of strided 1x1 convolutions on channels-last tensors, which
    corrupts memory."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, c_in, H, W) -> (B, c_out, ~H/s, ~W/s)
        return self.conv(x[..., :: self.stride, :: self.stride])


def make_pool(name: str, channels: int) -> nn.Module:
    """Xception's 3x3 stride-2 max pooling, blur pooling, or both (NEXcepTion: max pooling at stride
    1, then blur pooling)."""
    if name == "max":
        return nn.MaxPool2d(3, stride=2, padding=1)
    if name == "blur":
        return BlurPool2d(channels)
    if name == "maxblur":
        return nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), BlurPool2d(channels))
    raise ValueError(f"unknown pooling {name!r}; choose one of: {', '.join(POOLINGS)}")


class XceptionBlock(nn.Module):
    """An entry- or exit-flow block: ``reps`` separable convolutions, each followed by a norm.

    Args:
        c_in: Input channels.
        c_out: Output channels.
        reps: Separable convolutions.
        stride: 2: downsample with ``pool`` at the end (and the shortcut's convolution); 1: none.
        grow_first: Widen at the first convolution (entry flow) or the last (exit flow).
        first_activation: With ``every``, an activation precedes the first convolution too
            (Xception's first block has none).
        kernel_size: Depthwise kernel size (3 in Xception, 5 in NEXcepTion).
        activation: ``relu`` or ``gelu``.
        norm: ``bn`` or ``ln``.
        places: ``every``: an activation before every convolution (Xception); ``fewer``: one,
            before the second (NEXcepTion).
        pool: ``max``, ``blur`` or ``maxblur``.
        block_end: ``none`` or ``se`` (squeeze and excitation before the sum).
    """

    def __init__(
        self,
        *,
        c_in: int,
        c_out: int,
        reps: int,
        stride: int,
        grow_first: bool,
        first_activation: bool,
        kernel_size: int,
        activation: str,
        norm: str,
        places: str,
        pool: str,
        block_end: str,
    ) -> None:
        super().__init__()
        if places not in ACTIVATION_PLACES:
            raise ValueError(
                f"unknown activation places {places!r}; choose one of: {', '.join(ACTIVATION_PLACES)}"
            )
        if block_end not in BLOCK_ENDS:
            raise ValueError(f"unknown block end {block_end!r}; choose one of: {', '.join(BLOCK_ENDS)}")
        layers: list[nn.Module] = []
        for i in range(reps):
            a = (c_in if i == 0 else c_out) if grow_first else c_in
            b = c_out if grow_first or i == reps - 1 else c_in
            if (places == "every" and (i > 0 or first_activation)) or (places == "fewer" and i == 1):
                layers.append(make_activation(activation))
            layers += [SeparableConv2d(a, b, kernel_size), make_norm(norm, b)]
        if stride == 2:
            layers.append(make_pool(pool, c_out))
        self.rep = nn.Sequential(*layers)
        self.end = SqueezeExcite(c_out, activation) if block_end == "se" else nn.Identity()
        self.skip = (
            nn.Sequential(StridedPointwise(c_in, c_out, stride), make_norm(norm, c_out))
            if c_in != c_out or stride != 1
            else nn.Identity()
        )

    # Stochastic depth of the block's branch (the official networks' ``drop_path``, the same rate
    # in every block: nexception_t.py); set on the built network (NexceptionSpace.build).
    drop_path_prob = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, c_in, H, W) -> (B, c_out, H/s, W/s)
        return drop_path(self.end(self.rep(x)), self.drop_path_prob, self.training) + self.skip(x)


class XceptionMiddleBlock(nn.Module):
    """Xception's middle-flow block: (activation, separable convolution, norm) x 3, plus the input."""

    def __init__(
        self, *, channels: int, kernel_size: int, activation: str, norm: str, block_end: str
    ) -> None:
        super().__init__()
        self.rep = nn.Sequential(
            *(
                layer
                for _ in range(3)
                for layer in (
                    make_activation(activation),
                    SeparableConv2d(channels, channels, kernel_size),
                    make_norm(norm, channels),
                )
            )
        )
        self.end = SqueezeExcite(channels, activation) if block_end == "se" else nn.Identity()

    drop_path_prob = 0.0  # as XceptionBlock's

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        return x + drop_path(self.end(self.rep(x)), self.drop_path_prob, self.training)


class BottleneckBlock(nn.Module):
    """NEXcepTion's middle-flow block: separable C -> 3C, norm, activation, separable 3C -> C, norm,
    separable C -> C, block end, plus the input."""

    def __init__(
        self, *, channels: int, kernel_size: int, activation: str, norm: str, block_end: str
    ) -> None:
        super().__init__()
        hidden = BOTTLENECK_EXPANSION * channels
        self.rep = nn.Sequential(
            SeparableConv2d(channels, hidden, kernel_size),
            make_norm(norm, hidden),
            make_activation(activation),
            SeparableConv2d(hidden, channels, kernel_size),
            make_norm(norm, channels),
            SeparableConv2d(channels, channels, kernel_size),
        )
        self.end = SqueezeExcite(channels, activation) if block_end == "se" else nn.Identity()

    drop_path_prob = 0.0  # as XceptionBlock's

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        return x + drop_path(self.end(self.rep(x)), self.drop_path_prob, self.training)


def make_stem(
    kind: str, *, in_channels: int, channels: int, stride: int, activation: str, norm: str
) -> nn.Sequential:
    """The stem.

    Args:
        kind: ``xception``: a 3x3 convolution to ``channels / 2`` (stride ``stride``, no padding),
            norm, activation, a 3x3 convolution to ``channels`` (no padding), norm, activation;
            ``patch2``: a 2x2 stride-2 convolution, activation, norm (NEXcepTion-T and -S);
            ``patch4``: a 4x4 stride-4 convolution and a norm (NEXcepTion-TP).
        in_channels: Image channels.
        channels: Output channels.
        stride: 1 for small images (the convolutions then keep the size: padding, 1x1 patches).
        activation: ``relu`` or ``gelu``.
        norm: ``bn`` or ``ln``.
    """
    if kind == "xception":
        pad = 0 if stride > 1 else 1
        return nn.Sequential(
            nn.Conv2d(in_channels, channels // 2, 3, stride=stride, padding=pad, bias=False),
            make_norm(norm, channels // 2),
            make_activation(activation),
            nn.Conv2d(channels // 2, channels, 3, padding=pad, bias=False),
            make_norm(norm, channels),
            make_activation(activation),
        )
    if kind == "patch2":
        size = 2 if stride > 1 else 1
        return nn.Sequential(
            nn.Conv2d(in_channels, channels, size, stride=size),
            make_activation(activation),
            make_norm(norm, channels),
        )
    if kind == "patch4":
        size = 4 if stride > 1 else 1
        return nn.Sequential(nn.Conv2d(in_channels, channels, size, stride=size), make_norm(norm, channels))
    raise ValueError(f"unknown stem {kind!r}; choose one of: {', '.join(STEMS)}")
