"""XD-operations (Roberts, Khodak, Dao, Li, Ré and Talwalkar, "Rethinking Neural Operations for
Diverse Tasks", NeurIPS 2021; official code mkhodak/relax).

An XD-operation generalises a convolution of a (B, C_in, H, W) input ``x`` with weights ``w`` to

    K diag(L w) M x

applied along each spatial dimension, with channels mixed at every frequency as a convolution mixes
them. ``K``, ``L`` and ``M`` are Kaleidoscope-style matrices: here each is a product of butterfly
factors (:class:`Butterfly`, after a fixed bit-reversal permutation) whose 2x2 complex twiddles
are the architecture parameters. Initialised with the twiddles of the fast Fourier transform
(``M``: the normalised DFT, ``L``: the DFT of the zero-padded, flipped kernel, ``K``: the
normalised inverse DFT), the operation is *exactly* the convolution it replaces: the input is
zero-padded by the convolution's padding, then to a power of two ``n``, so the circular
convolution of length ``n`` never wraps into the outputs kept; the outputs are cut to the
convolution's and subsampled by its stride (as relax/xd.py's ``Pad`` and ``Unpad`` do).

:func:`convert_to_xd` turns a backbone (a torchvision ResNet, a DARTS network) into a network of
XD-operations, each initialised as the convolution it replaces, the convolution's weights and bias
the XD-operation's own; :func:`xd_arch_parameters` lists the K, L and M twiddles a search trains
with the architecture optimiser (the paper and relax's ``trainer.py``: Adam, learning rate 1e-3).

``depth`` multiplies each K, L and M by ``depth - 1`` more butterfly factor products, initialised
to the identity; the fixed permutations (bit reversal; the kernel's flip and dilation in ``L``)
stay fixed. That is relax's ``--kmatrix-depth`` at 1 and 2 only: relax/xd.py's ``original()`` (its
trainer's default, not compact) adds one identity block to each of K, L and M at 2, none at 3,
where it makes L's kernel permutation a learnable butterfly instead, and blocks counted otherwise
beyond; raynas does not learn the permutations. relax's non-compact K, L and M also have no fixed
bit reversal (their frequencies stay in bit-reversed order, the same for all three, which the
elementwise product ignores): the same transforms at initialisation, other learnable families.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


def bit_reversal(n: int) -> torch.Tensor:
    """The permutation of ``range(n)`` (``n`` a power of two) that reverses each index's bits."""
    bits = n.bit_length() - 1
    return torch.tensor([int(format(i, f"0{bits}b")[::-1], 2) if bits else 0 for i in range(n)])


def _pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(n)))


class Butterfly(nn.Module):
    """A product of ``log2 n`` butterfly factors on the last dimension of complex tensors.

    Factor ``s`` mixes the entries ``i`` and ``i + 2^s`` of every block of ``2^(s+1)`` by a learned
    2x2 complex matrix per pair: ``[a b; c d]``. With ``init`` ``fft`` or ``ifft`` the input is
    first permuted by bit reversal and the twiddles are Cooley-Tukey's (``a = c = 1``,
    ``b = -d = exp(-+2 pi i j / 2^(s+1))``), so the product is the (inverse) DFT matrix times
    ``scale``; with ``identity`` there is no permutation and the product is ``scale`` times the identity.

    Args:
        n: Length, a power of two.
        init: ``fft``, ``ifft`` or ``identity``.
        scale: The product's factor (``n ** -0.5``: the normalised transforms), spread evenly over
            the factors.
        dtype: The twiddles' real dtype (float64 for a double-precision network).
    """

    def __init__(
        self, n: int, *, init: str = "fft", scale: float = 1.0, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        if n < 1 or n & (n - 1):
            raise ValueError(f"a butterfly's length must be a power of two, got {n}")
        if init not in ("fft", "ifft", "identity"):
            raise ValueError(f"unknown butterfly init {init!r}; choose one of: fft, ifft, identity")
        self.n = n
        levels = n.bit_length() - 1
        per_factor = scale ** (1.0 / levels) if levels else scale
        twiddles = torch.zeros(levels, 4, n // 2, dtype=torch.complex128)  # (factor, [a b c d], pair)
        for s in range(levels):
            half = 1 << s
            j = (torch.arange(n // 2) % half).to(torch.float64)  # the pair's index within its block
            if init == "identity":
                w = torch.zeros(n // 2, dtype=torch.complex128)
                twiddles[s] = torch.stack([torch.ones_like(w), w, w, torch.ones_like(w)])
            else:
                sign = -1.0 if init == "fft" else 1.0
                w = torch.exp(sign * 2j * math.pi * j / (2 * half))
                twiddles[s] = torch.stack([torch.ones_like(w), w, torch.ones_like(w), -w])
        real = torch.view_as_real(twiddles * per_factor)  # (levels, 4, n/2, 2)
        self.twiddles = nn.Parameter(real.to(dtype or torch.get_default_dtype()))
        self.register_buffer(
            "perm", bit_reversal(n) if init != "identity" else torch.arange(n), persistent=False
        )
        self.scale = scale if levels == 0 else 1.0  # n == 1: no factor carries the scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., n) complex -> (..., n) complex
        lead = x.shape[:-1]
        x = x[..., self.perm] * self.scale
        t = torch.view_as_complex(self.twiddles.contiguous()).to(x.dtype)  # (levels, 4, n/2)
        for s in range(t.size(0)):
            half = 1 << s
            blocks = x.reshape(*lead, self.n // (2 * half), 2, half)
            top, bottom = blocks[..., 0, :], blocks[..., 1, :]  # each (..., n / 2h, h)
            a, b, c, d = (t[s, i].reshape(self.n // (2 * half), half) for i in range(4))
            x = torch.stack([a * top + b * bottom, c * top + d * bottom], dim=-2).reshape(*lead, self.n)
        return x


class KMatrix(nn.Sequential):
    """A butterfly initialised as a (normalised) DFT or its inverse, then ``depth - 1`` identity ones."""

    def __init__(
        self, n: int, *, init: str, scale: float, depth: int, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__(
            Butterfly(n, init=init, scale=scale, dtype=dtype),
            *(Butterfly(n, init="identity", dtype=dtype) for _ in range(depth - 1)),
        )


def dense(matrix: nn.Module, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The (n, n) complex matrix a butterfly product applies (its columns: the images of the unit
    vectors); n is at most a few dozen here, so the dense products below are cheap."""
    eye = torch.eye(n, dtype=dtype, device=device)
    return matrix(eye).transpose(0, 1)  # matrix(e_j) is row j: the transpose of the matrix


class XDConv2d(nn.Module):
    """An XD-operation that starts as ``nn.Conv2d(c_in, c_out, kernel_size, stride, padding,
    dilation, groups, bias)`` on inputs of size ``in_size``.

    It keeps that convolution's ``kernel_size``, ``stride``, ``padding``, ``dilation``,
    ``in_channels``, ``out_channels`` and ``groups`` (its weight stays ``kernel_size``, whatever
    K, L and M become): :func:`raynas.profile.count_macs` counts it as that convolution
    (``counted_as_conv``).

    Args:
        c_in: Input channels.
        c_out: Output channels.
        kernel_size: (kH, kW).
        in_size: The inputs' (H, W) (the transforms' sizes follow from it).
        stride: (sH, sW).
        padding: (pH, pW) zeros on each side.
        dilation: (dH, dW).
        groups: 1, or ``c_in`` (= ``c_out``, depthwise).
        bias: Learn a bias.
        depth: Butterfly factor products in each of K, L and M.
        dtype: The parameters' dtype (float64 for a double-precision network).
    """

    counted_as_conv = True

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: tuple[int, int],
        *,
        in_size: tuple[int, int],
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] = (0, 0),
        dilation: tuple[int, int] = (1, 1),
        groups: int = 1,
        bias: bool = True,
        depth: int = 1,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if groups not in (1, c_in) or (groups > 1 and c_in != c_out):
            raise ValueError(
                f"an XD-operation takes groups 1 or depthwise (groups = c_in = c_out), got {groups}"
            )
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        # nn.Conv2d's names for the convolution it starts as (raynas.profile.count_macs reads them)
        self.in_channels, self.out_channels, self.groups = c_in, c_out, groups
        self.in_size = tuple(in_size)
        self.depthwise = groups > 1
        self.weight = nn.Parameter(torch.empty(c_out, c_in // groups, *kernel_size, dtype=dtype))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(c_out, dtype=dtype)) if bias else None
        spans = [d * (k - 1) + 1 for k, d in zip(kernel_size, dilation, strict=True)]
        padded = [n + 2 * p for n, p in zip(in_size, padding, strict=True)]
        if any(p < s for p, s in zip(padded, spans, strict=True)):
            raise ValueError(
                f"a {kernel_size} kernel (dilation {dilation}) does not fit inputs {in_size} "
                f"padded by {padding}"
            )
        self.sizes = [_pow2(p) for p in padded]  # the transforms' lengths
        self.outputs = [p - s + 1 for p, s in zip(padded, spans, strict=True)]  # before the stride
        self.K = nn.ModuleList(
            KMatrix(n, init="ifft", scale=n**-0.5, depth=depth, dtype=dtype) for n in self.sizes
        )
        self.L = nn.ModuleList(
            KMatrix(n, init="fft", scale=1.0, depth=depth, dtype=dtype) for n in self.sizes
        )
        self.M = nn.ModuleList(
            KMatrix(n, init="fft", scale=n**-0.5, depth=depth, dtype=dtype) for n in self.sizes
        )
        # L's fixed part: tap t of the kernel goes to index -t * dilation (mod n) of the zero-padded
        # kernel, the flip that turns the circular convolution into the convolution's cross-correlation.
        for i, (n, k, d) in enumerate(zip(self.sizes, kernel_size, dilation, strict=True)):
            self.register_buffer(f"taps_{i}", (-torch.arange(k) * d) % n, persistent=False)

    def arch_parameters(self) -> list[nn.Parameter]:
        """The twiddles of K, L and M (none for a length-1 transform, which has no factor)."""
        return [p for m in (self.K, self.L, self.M) for p in m.parameters() if p.numel()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H', W')
        if tuple(x.shape[-2:]) != self.in_size:
            raise ValueError(
                f"this XD-operation was built for inputs {self.in_size}, got {tuple(x.shape[-2:])}"
            )
        (nh, nw), (ph, pw) = self.sizes, self.padding
        cdtype = torch.complex128 if x.dtype == torch.float64 else torch.complex64
        x = F.pad(x, (pw, nw - x.size(-1) - pw, ph, nh - x.size(-2) - ph)).to(cdtype)  # (B, C_in, nh, nw)
        (kh, kw), (lh, lw), (mh, mw) = (
            (dense(m[0], nh, cdtype, x.device), dense(m[1], nw, cdtype, x.device))
            for m in (self.K, self.L, self.M)
        )
        # L w: only the columns of L at the kernel's taps meet non-zero entries of the padded kernel.
        diag = lh[:, self.taps_0] @ self.weight.to(cdtype) @ lw[:, self.taps_1].T  # (C_out, C_in/g, nh, nw)
        mx = mh @ x @ mw.transpose(0, 1)  # M x, (B, C_in, nh, nw)
        # Channels mixed at every frequency as the convolution mixes them: (B, C_out, nh, nw).
        mixed = mx * diag[:, 0] if self.depthwise else torch.einsum("bihw,oihw->bohw", mx, diag)
        y = (kh @ mixed @ kw.transpose(0, 1)).real  # K (.), (B, C_out, nh, nw)
        (oh, ow), (sh, sw) = self.outputs, self.stride
        y = y[..., :oh:sh, :ow:sw]
        return y if self.bias is None else y + self.bias[:, None, None]


def xd_from_conv(conv: nn.Conv2d, in_size: tuple[int, int], *, depth: int = 1) -> XDConv2d:
    """The XD-operation that computes ``conv`` on inputs of size ``in_size``, sharing nothing with
    it (its weight and bias copied)."""
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"an XD-operation replaces convolutions with numeric zero padding, not {conv}")
    xd = XDConv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        in_size=in_size,
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,  # type: ignore[arg-type]
        depth=depth,
        dtype=conv.weight.dtype,
    ).to(device=conv.weight.device)
    with torch.no_grad():
        xd.weight.copy_(conv.weight)
        if conv.bias is not None and xd.bias is not None:
            xd.bias.copy_(conv.bias)
    return xd


def convert_to_xd(model: nn.Module, example: torch.Tensor, *, depth: int = 1) -> nn.Module:
    """A copy of ``model`` whose 2-d convolutions (those with groups 1 or depthwise) are
    XD-operations computing exactly what they computed.

    Args:
        model: The backbone (left unchanged).
        example: An input of the size the network will see (its convolutions' input sizes are
            read from one forward pass in evaluation mode; convolutions it does not reach stay).
        depth: Butterfly factor products in each K, L and M.

    Raises:
        ValueError: A convolution is used at two input sizes.
    """
    model = copy.deepcopy(model)
    sizes: dict[str, tuple[int, int]] = {}
    names = {m: n for n, m in model.named_modules()}
    convertible = [
        m
        for m in model.modules()
        if type(m) is nn.Conv2d and (m.groups == 1 or m.groups == m.in_channels == m.out_channels)
    ]

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], _: torch.Tensor) -> None:
        size = tuple(inputs[0].shape[-2:])
        if sizes.setdefault(names[module], size) != size:  # type: ignore[arg-type]
            raise ValueError(f"convolution {names[module]} runs at sizes {sizes[names[module]]} and {size}")

    handles = [m.register_forward_hook(record) for m in convertible]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for name, size in sizes.items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        conv = getattr(parent, attr)
        xd = xd_from_conv(conv, size, depth=depth)
        xd.train(conv.training)
        if isinstance(parent, nn.Sequential | nn.ModuleList) and attr.isdigit():
            parent[int(attr)] = xd
        else:
            setattr(parent, attr, xd)
    return model


def xd_modules(model: nn.Module) -> Iterator[XDConv2d]:
    """The XD-operations of ``model``."""
    return (m for m in model.modules() if isinstance(m, XDConv2d))


def xd_arch_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The K, L and M twiddles of every XD-operation of ``model``."""
    return [p for m in xd_modules(model) for p in m.arch_parameters()]
