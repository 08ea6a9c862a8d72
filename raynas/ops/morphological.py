"""Learnable grey-scale morphology as DARTS operations (Hu, Belkhir, Angulo, Yao and Franchi,
"Learning Deep Morphological Networks with Neural Architecture Search", Pattern Recognition 2022).

A morphological layer applies, channel by channel, a grey-scale operator with a learnable
structuring function ``b`` (one k x k table per channel, initialised flat: zeros), in the
definitions of mathematical morphology (Serra; those of ``scipy.ndimage``):

- dilation ``(f + b)(x) = max_y f(x - y) + b(y)``;
- erosion ``(f - b)(x) = min_y f(x + y) - b(y)``;
- opening: erosion, then dilation; closing: dilation, then erosion (both with the same ``b``);
- the morphological gradient (dilation minus erosion), the white top-hat (``f`` minus its
  opening) and the black top-hat (closing minus ``f``).

Pixels outside the image take no part (the max and min run over the window inside it). As a DARTS
operation (``(C, stride, affine) -> module``) each is the morphological layer, a 1x1 convolution
that mixes the channels and a BatchNorm, like the separable convolutions; stride 2 keeps every
other row and column of the result.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raynas.ops.darts import OPS

MORPHOLOGIES: tuple[str, ...] = (
    "dilation", "erosion", "opening", "closing", "gradient", "white_tophat", "black_tophat",
)


class _MaxPlus(torch.autograd.Function):
    """``out[p] = max_d x[p + d] + w[d]`` over the k x k offsets ``d`` (the outside of the image
    taking no part), channel by channel, keeping only the winning offset for the backward pass
    (one byte a pixel up to 15 x 15, where autograd through the unfolded windows would keep k*k
    values)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # x: (B, C, H, W); w: (C, k, k) -> (B, C, H, W)
        _, c, h, wd = x.shape
        k = w.shape[-1]
        r = k // 2
        padded = F.pad(x, (r, r, r, r), value=float("-inf"))
        shifts = [padded[:, :, i : i + h, j : j + wd] for i in range(k) for j in range(k)]
        windows = torch.stack(shifts, 2) + w.reshape(1, c, k * k, 1, 1)  # (B, C, k*k, H, W)
        best, index = windows.max(2)  # (B, C, H, W) each
        # one byte a pixel while the k*k offsets fit in it (k <= 15), two beyond
        ctx.save_for_backward(index.to(torch.uint8 if k * k <= 256 else torch.int16))
        ctx.k = k
        return best

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (index,) = ctx.saved_tensors
        k = ctx.k
        r = k // 2
        b, c, h, wd = grad.shape
        # (B, C, k*k, H, W): each pixel's gradient at its winning offset
        windows = grad.new_zeros(b, c, k * k, h, wd).scatter_(2, index.long().unsqueeze(2), grad.unsqueeze(2))
        grad_w = windows.sum((0, 3, 4)).view(c, k, k)
        grad_padded = grad.new_zeros(b, c, h + 2 * r, wd + 2 * r)
        for d in range(k * k):
            i, j = divmod(d, k)
            grad_padded[:, :, i : i + h, j : j + wd] += windows[:, :, d]
        return grad_padded[:, :, r : r + h, r : r + wd], grad_w


def dilate(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Grey-scale dilation of every channel of ``x`` (B, C, H, W) by its structuring function
    ``b`` (C, k, k): ``max_y x(p - y) + b(y)``."""
    return _MaxPlus.apply(x, b.flip(-1, -2))  # type: ignore[no-any-return]


def erode(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Grey-scale erosion of every channel of ``x`` (B, C, H, W) by ``b`` (C, k, k):
    ``min_y x(p + y) - b(y)``."""
    return -_MaxPlus.apply(-x, b)  # type: ignore[no-any-return]


def morphology(name: str, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The operator ``name`` (one of :data:`MORPHOLOGIES`) of ``x`` (B, C, H, W) by ``b`` (C, k, k)."""
    if name == "dilation":
        return dilate(x, b)
    if name == "erosion":
        return erode(x, b)
    if name == "opening":
        return dilate(erode(x, b), b)
    if name == "closing":
        return erode(dilate(x, b), b)
    if name == "gradient":
        return dilate(x, b) - erode(x, b)
    if name == "white_tophat":
        return x - dilate(erode(x, b), b)
    if name == "black_tophat":
        return erode(dilate(x, b), b) - x
    raise ValueError(f"unknown morphology {name!r}; choose one of: {', '.join(MORPHOLOGIES)}")


class Morphology(nn.Module):
    """A depthwise grey-scale morphological layer with a learnable structuring function.

    Args:
        name: One of :data:`MORPHOLOGIES`.
        channels: Channels in and out (one structuring function each).
        kernel_size: Odd side k of the structuring functions' support.
        stride: 1, or 2 to keep every other row and column.
    """

    def __init__(self, name: str, channels: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__()
        if name not in MORPHOLOGIES:
            raise ValueError(f"unknown morphology {name!r}; choose one of: {', '.join(MORPHOLOGIES)}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.name = name
        self.stride = stride
        self.structure = nn.Parameter(torch.zeros(channels, kernel_size, kernel_size))  # flat

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H/s, W/s)
        out = morphology(self.name, x, self.structure)
        return out if self.stride == 1 else out[:, :, :: self.stride, :: self.stride]

    def extra_repr(self) -> str:
        k = self.structure.shape[-1]
        return f"{self.name}, {self.structure.shape[0]}, kernel_size={k}, stride={self.stride}"


class MorphConv(nn.Sequential):
    """The DARTS operation: morphological layer -> 1x1 convolution -> BatchNorm."""

    def __init__(self, name: str, channels: int, kernel_size: int, stride: int, affine: bool = True) -> None:
        super().__init__(
            Morphology(name, channels, kernel_size, stride),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels, affine=affine),
        )


for _name in MORPHOLOGIES:
    for _k in (3, 5):
        OPS.register(f"{_name}_{_k}x{_k}")(
            lambda c, stride, affine, n=_name, k=_k: MorphConv(n, c, k, stride, affine)
        )

# The morphological operation set for DARTS cells: DARTS's none and skip connection, the
# separable 3x3 convolution, and the four basic operators and the gradient at 3x3 (eight, as DARTS).
MORPHOLOGICAL_PRIMITIVES: tuple[str, ...] = (
    "none",
    "skip_connect",
    "sep_conv_3x3",
    "dilation_3x3",
    "erosion_3x3",
    "opening_3x3",
    "closing_3x3",
    "gradient_3x3",
)
