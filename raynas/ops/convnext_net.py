"""The parts of ConvNeXt networks (Liu et al., "A ConvNet for the 2020s", CVPR 2022), with the
paper's micro-design choices as arguments, so that one block builds both ConvNeXt and the steps
of the paper's road map from a ResNet to it.

* :class:`ConvNeXtStageBlock`: the residual block, ``x + gamma * pw2(act(pw1(norm(dw(x)))))``:
  a KxK depthwise convolution (7 in ConvNeXt, 3 to 11 in the paper's kernel study), a norm
  (LayerNorm or BatchNorm), a 1x1 expansion to ``expansion * C`` channels (the inverted
  bottleneck, 4 in ConvNeXt), one activation (GELU or ReLU), a 1x1 projection back, the layer
  scale ``gamma`` (initialised at 1e-6) and stochastic depth. Its weights number
  ``K^2 C + 2 E C^2`` plus ``(E + 5) C`` biases, norm and scale entries, as torchvision's
  ``CNBlock`` for E = 4.
* :func:`make_stem`: the patchify stem (a stride-s, s x s convolution, then a norm) or ResNet's
  (a 7x7 stride-2 convolution, norm, activation, 3x3 stride-2 max pooling).
* :class:`Downsample`: ConvNeXt's separate downsampling layer (a norm, then a 2x2 stride-2
  convolution that changes the width).

Norms and activations are named by :data:`NORMS` and :data:`ACTIVATIONS`.
"""

from __future__ import annotations

import torch
from torch import nn

from raynas.ops.convnext import LayerNorm2d

ACTIVATIONS: tuple[str, ...] = ("gelu", "relu")
NORMS: tuple[str, ...] = ("ln", "bn")
STEMS: tuple[str, ...] = ("patchify", "resnet")
STEM_STRIDES: tuple[int, ...] = (1, 2, 4)


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
    """The residual ConvNeXt block at one width.

    Args:
        channels: Channels in and out.
        kernel_size: Odd size of the depthwise kernel (7 in ConvNeXt).
        expansion: Ratio of the hidden 1x1 channels to ``channels`` (4 in ConvNeXt).
        activation: ``gelu`` or ``relu``.
        norm: ``ln`` or ``bn``.
        layer_scale_init: Initial value of the per-channel scale ``gamma`` (1e-6); 0: no scale.
        drop_path_prob: Stochastic-depth probability of this block.
    """

    def __init__(
        self, *, channels: int, kernel_size: int, expansion: int, activation: str, norm: str,
        layer_scale_init: float = 1e-6, drop_path_prob: float = 0.0,
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        if expansion < 1:
            raise ValueError(f"expansion must be >= 1, got {expansion}")
        hidden = expansion * channels
        self.dwconv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        self.norm = make_norm(norm, channels)
        self.pwconv1 = nn.Linear(channels, hidden)  # 1x1 convolutions, channels-last
        self.act = make_activation(activation)
        self.pwconv2 = nn.Linear(hidden, channels)
        self.gamma = (
            nn.Parameter(torch.full((channels,), float(layer_scale_init)))
            if layer_scale_init > 0 else None
        )
        self.drop_path_prob = drop_path_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        h = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)  # (B, H, W, C)
        h = self.pwconv2(self.act(self.pwconv1(h)))  # (B, H, W, C)
        if self.gamma is not None:
            h = h * self.gamma
        return x + drop_path(h.permute(0, 3, 1, 2), self.drop_path_prob, self.training)


def make_stem(
    kind: str, *, in_channels: int, channels: int, stride: int, norm: str, activation: str
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
    """
    if stride not in STEM_STRIDES:
        raise ValueError(f"stem stride must be one of {STEM_STRIDES}, got {stride}")
    if kind == "patchify":
        return nn.Sequential(
            nn.Conv2d(in_channels, channels, stride, stride=stride), make_norm(norm, channels)
        )
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
