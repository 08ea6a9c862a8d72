"""The parts of ConvNeXt networks (Liu et al., "A ConvNet for the 2020s", CVPR 2022), with the
paper's micro-design choices as arguments, so that one block builds both ConvNeXt and the steps
of the paper's road map from a ResNet to it.

* :class:`ConvNeXtStageBlock`: the residual block, ``x + gamma * pw2(act(pw1(norm(dw(x)))))``:
  a KxK depthwise convolution (7 in ConvNeXt, 3 to 11 in the paper's kernel study), a norm
  (LayerNorm or BatchNorm), a 1x1 expansion to ``expansion * C`` channels (the inverted
  bottleneck, 4 in ConvNeXt), one activation (GELU or ReLU), a 1x1 projection back, the layer
  scale ``gamma`` (initialised at 1e-6) and stochastic depth. Its weights number
  ``K^2 C + 2 E C^2`` plus ``(E + 5) C`` biases, norm and scale entries, as torchvision's
  ``CNBlock`` for E = 4. Section 2.6's earlier steps are options: an activation after every
  layer (after the depthwise convolution's norm, the expansion and the residual sum, where a
  ResNet block has its three ReLUs) instead of one (:data:`ACT_LAYERS`), a norm after every
  convolution instead of one (:data:`NORM_LAYERS`), and a block that downsamples and widens
  itself, ResNet's way (stride 2 in its spatial, here depthwise, convolution and a 1x1 stride-2
  convolution and norm on the shortcut).
* :func:`make_stem`: the patchify stem (a stride-s, s x s convolution, then a norm) or ResNet's
  (a 7x7 stride-2 convolution, norm, activation, 3x3 stride-2 max pooling).
* :class:`Downsample`: ConvNeXt's separate downsampling layer (a norm, then a 2x2 stride-2
  convolution that changes the width).

Norms and activations are named by :data:`NORMS` and :data:`ACTIVATIONS`; how a network
downsamples between stages by :data:`DOWNSAMPLINGS`.
"""

from __future__ import annotations

import torch
from torch import nn

from raynas.ops.convnext import LayerNorm2d

ACTIVATIONS: tuple[str, ...] = ("gelu", "relu")
NORMS: tuple[str, ...] = ("ln", "bn")
STEMS: tuple[str, ...] = ("patchify", "resnet")
STEM_STRIDES: tuple[int, ...] = (1, 2, 4)
# Section 2.6's "fewer activation functions" and "fewer normalization layers": ``one`` per block
# (ConvNeXt) or ``every``: after each layer, as in the ResNet block the road map starts from.
ACT_LAYERS: tuple[str, ...] = ("one", "every")
NORM_LAYERS: tuple[str, ...] = ("one", "every")
# Section 2.6's "separate downsampling layers" (ConvNeXt: a norm and a 2x2 stride-2 convolution
# between stages, with norms after the patchify stem and the pooling) or ResNet's ``strided``
# first block of each stage.
DOWNSAMPLINGS: tuple[str, ...] = ("separate", "strided")


def make_activation(name: str) -> nn.Module:
    """GELU (ConvNeXt) or ReLU (ResNet)."""
    if name == "gelu":
        return nn.GELU()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {name!r}; choose one of: {', '.join(ACTIVATIONS)}")


def make_norm(name: str, channels: int) -> nn.Module:
    """A norm over the channels of (B, C, H, W) tensors: LayerNorm (eps 1e-6, ConvNeXt) or BatchNorm."""
    if name == "ln":
        return LayerNorm2d(channels)
    if name == "bn":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"unknown norm {name!r}; choose one of: {', '.join(NORMS)}")


def make_vector_norm(name: str, channels: int) -> nn.Module:
    """The head's norm, over pooled (B, C) features."""
    if name == "ln":
        return nn.LayerNorm(channels, eps=1e-6)
    if name == "bn":
        return nn.BatchNorm1d(channels)
    raise ValueError(f"unknown norm {name!r}; choose one of: {', '.join(NORMS)}")


def drop_path(x: torch.Tensor, prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero the residual branch of whole samples with probability ``prob``."""
    if not training or prob == 0.0:
        return x
    keep = 1.0 - prob
    mask = torch.empty(x.size(0), *(1,) * (x.dim() - 1), device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x * mask / keep


class ConvNeXtStageBlock(nn.Module):
    """The residual ConvNeXt block at one width, or (``stride`` 2) ResNet's block that starts a stage.

    Args:
        channels: Channels out (and in, unless ``in_channels`` says otherwise).
        kernel_size: Odd size of the depthwise kernel (7 in ConvNeXt).
        expansion: Ratio of the hidden 1x1 channels to ``channels`` (4 in ConvNeXt).
        activation: ``gelu`` or ``relu``.
        norm: ``ln`` or ``bn``.
        act_layers: ``one`` activation, between the 1x1 layers (ConvNeXt), or ``every``: also
            after the depthwise convolution's norm and after the residual sum (ResNet's places).
        norm_layers: ``one`` norm, after the depthwise convolution (ConvNeXt), or ``every``: also
            after each 1x1 layer (ResNet's BatchNorm after every convolution).
        in_channels: Channels in (None: ``channels``; only a strided block may differ): the
            depthwise convolution runs at these.
        stride: 1, or 2 for ResNet's strided first block of a stage, whose shortcut is a 1x1
            stride-2 convolution and a norm (ResNet's projection shortcut).
        layer_scale_init: Initial value of the per-channel scale ``gamma`` (1e-6); 0: no scale.
        drop_path_prob: Stochastic-depth probability of this block.
    """

    def __init__(
        self, *, channels: int, kernel_size: int, expansion: int, activation: str, norm: str,
        act_layers: str = "one", norm_layers: str = "one", in_channels: int | None = None,
        stride: int = 1, layer_scale_init: float = 1e-6, drop_path_prob: float = 0.0,
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        if expansion < 1:
            raise ValueError(f"expansion must be >= 1, got {expansion}")
        for what, value, allowed in (("act_layers", act_layers, ACT_LAYERS),
                                     ("norm_layers", norm_layers, NORM_LAYERS)):
            if value not in allowed:
                raise ValueError(f"unknown {what} {value!r}; choose one of: {', '.join(allowed)}")
        c_in = channels if in_channels is None else in_channels
        if stride not in (1, 2) or (stride == 1 and c_in != channels):
            raise ValueError(
                f"a block has stride 1 (keeping its width) or 2; got {c_in} -> {channels} channels at "
                f"stride {stride}"
            )
        hidden = expansion * channels
        every_norm = norm_layers == "every"
        self.dwconv = nn.Conv2d(c_in, c_in, kernel_size, stride=stride, padding=kernel_size // 2, groups=c_in)
        self.norm = make_norm(norm, c_in)
        self.pwconv1 = nn.Linear(c_in, hidden)  # 1x1 convolutions, channels-last
        self.hidden_norm = make_norm(norm, hidden) if every_norm else None
        self.act = make_activation(activation)
        self.pwconv2 = nn.Linear(hidden, channels)
        self.out_norm = make_norm(norm, channels) if every_norm else None
        self.gamma = (
            nn.Parameter(torch.full((channels,), float(layer_scale_init)))
            if layer_scale_init > 0 else None
        )
        self.shortcut = (
            nn.Sequential(Subsample(), nn.Conv2d(c_in, channels, 1, bias=False), make_norm(norm, channels))
            if stride == 2 else nn.Identity()
        )
        self.every_act = act_layers == "every"
        self.drop_path_prob = drop_path_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C, H/s, W/s)
        h = self.norm(self.dwconv(x))  # (B, C_in, H/s, W/s)
        if self.every_act:
            h = self.act(h)
        h = self.pwconv1(h.permute(0, 2, 3, 1))  # (B, H/s, W/s, E*C)
        if self.hidden_norm is not None:
            h = channels_last(self.hidden_norm, h)
        h = self.pwconv2(self.act(h))  # (B, H/s, W/s, C)
        if self.out_norm is not None:
            h = channels_last(self.out_norm, h)
        if self.gamma is not None:
            h = h * self.gamma
        out = self.shortcut(x) + drop_path(h.permute(0, 3, 1, 2), self.drop_path_prob, self.training)
        return self.act(out) if self.every_act else out


class Subsample(nn.Module):
    """Every other row and column, the pixels a 1x1 stride-2 convolution reads: the projection
    shortcut subsamples, then convolves 1x1, the same function with the same weights, because
    torch 2.14's CPU (oneDNN) backward of a 1x1 stride-2 convolution on channels-last tensors
    corrupts the heap at small widths (4 to 8 channels, say)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2))
        return x[:, :, ::2, ::2]


def channels_last(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A norm over the channels of (B, C, H, W) maps applied to (B, H, W, C) ones."""
    return norm(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def make_stem(
    kind: str, *, in_channels: int, channels: int, stride: int, norm: str, activation: str,
    patchify_norm: bool = True,
) -> nn.Sequential:
    """The stem that takes images to ``channels`` at 1/``stride`` of their resolution.

    Args:
        kind: ``patchify``: a ``stride`` x ``stride`` convolution of stride ``stride`` and a
            norm (ConvNeXt); ``resnet``: a 7x7 stride-2 convolution, norm, activation and 3x3
            stride-2 max pooling (at ``stride`` 2 without the pooling, at 1 a 3x3 convolution).
        in_channels: Image channels.
        channels: Output channels.
        stride: Total stride: 1, 2 or 4 (ConvNeXt on ImageNet: 4).
        norm: ``ln`` or ``bn``.
        activation: The ResNet stem's activation.
        patchify_norm: Whether the patchify stem ends with its norm (ConvNeXt's; the paper adds
            it with the separate downsampling layers).
    """
    if stride not in STEM_STRIDES:
        raise ValueError(f"stem stride must be one of {STEM_STRIDES}, got {stride}")
    if kind == "patchify":
        conv = nn.Conv2d(in_channels, channels, stride, stride=stride)
        return nn.Sequential(conv, make_norm(norm, channels)) if patchify_norm else nn.Sequential(conv)
    if kind == "resnet":
        kernel, conv_stride = (3, 1) if stride == 1 else (7, 2)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, kernel, stride=conv_stride, padding=kernel // 2, bias=False),
            make_norm(norm, channels), make_activation(activation),
        ]
        if stride == 4:
            layers.append(nn.MaxPool2d(3, stride=2, padding=1))
        return nn.Sequential(*layers)
    raise ValueError(f"unknown stem {kind!r}; choose one of: {', '.join(STEMS)}")


class Downsample(nn.Sequential):
    """ConvNeXt's downsampling layer between stages: a norm, then a 2x2 stride-2 convolution."""

    def __init__(self, c_in: int, c_out: int, norm: str) -> None:
        super().__init__(make_norm(norm, c_in), nn.Conv2d(c_in, c_out, 2, stride=2))
