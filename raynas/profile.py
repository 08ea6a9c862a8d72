"""Size and cost of a network: parameters (with and without the auxiliary head), the
multiply-accumulates of one forward pass over convolutions (XD-operations counted as the
convolutions they generalise) and linear layers, and FLOPs as NAS-Bench-201 counts them (those
multiply-accumulates plus one addition per output of a layer with a bias; AutoDL's
``flop_benchmark.py``)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelStats:
    """Parameters as the DARTS papers count them (no auxiliary head), with it, and MACs."""

    params: int
    params_with_aux: int
    macs: int
    flops: int

    def as_dict(self) -> dict[str, int]:
        return {
            "params": self.params, "params_with_aux": self.params_with_aux, "macs": self.macs,
            "flops": self.flops,
        }


# Networks whose inputs have at most this many pixels are counted on real CPU tensors: faster than
# on ``meta`` ones, whose shapes torch works out in Python (a DARTS CIFAR-10 network, one CPU
# thread: 0.06 s against 0.25 s, and 1.3 s for a process's first count on meta tensors). Larger
# inputs (ImageNet's 224x224, Cityscapes' crops) are counted from shapes alone, where computing
# the forward pass would cost more.
REAL_COUNT_PIXELS = 64 * 64


@contextlib.contextmanager
def counting_device(input_shape: tuple[int, ...]) -> Iterator[None]:
    """Build a network that is only to be counted (:func:`count_params`, :func:`count_macs`)
    inside this: on the CPU for inputs of at most :data:`REAL_COUNT_PIXELS` pixels, with the
    global RNG as it was afterwards (building a network initialises its weights), on the ``meta``
    device otherwise.

    Args:
        input_shape: One input, without the batch dimension: ``(C, H, W)``, or ``(T,)`` tokens.
    """
    if math.prod(input_shape[1:]) > REAL_COUNT_PIXELS:
        with torch.device("meta"):
            yield
    else:
        with torch.random.fork_rng(devices=[]), torch.device("cpu"):
            yield


def count_params(model: nn.Module, *, exclude_prefix: str = "auxiliary") -> int:
    """Parameters of ``model`` except those under modules named ``exclude_prefix*``."""
    return sum(
        p.numel() for name, p in model.named_parameters() if not name.startswith(exclude_prefix)
    )


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """Multiply-accumulates of one forward pass in eval mode (convolutions, operations counted as
    convolutions, and linear layers), and the bias additions of those layers. A network built on
    the ``meta`` device (``with torch.device("meta"): ...``) is counted from shapes alone, without
    computing anything.

    A module with ``counted_as_conv = True`` counts as the convolution its ``kernel_size``,
    ``in_channels``, ``groups`` and ``bias`` describe: ``kH * kW * C_in / groups`` per output, as
    ``nn.Conv2d``. An XD-operation (:class:`raynas.ops.xd.XDConv2d`; Roberts et al., "Rethinking
    Neural Operations for Diverse Tasks", NeurIPS 2021) is one: it counts as the convolution it
    was built as, so a converted backbone counts what the backbone counts, before and after K, L
    and M are trained; the cost of the transforms that compute it (the butterfly K, L and M, the
    per-frequency channel mixing) is not what is counted.

    Args:
        model: The network.
        input_shape: One input, without the batch dimension, e.g. ``(3, 32, 32)``.

    Returns:
        ``(macs, bias_additions)``.
    """
    total = 0
    biases = 0

    # The output's size gives the stride, padding and dilation.
    def conv_hook(module: nn.Module, _: tuple[torch.Tensor], out: torch.Tensor) -> None:
        nonlocal total, biases
        kernel = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        total += out.numel() * kernel
        biases += out.numel() if module.bias is not None else 0

    def linear_hook(module: nn.Linear, _: tuple[torch.Tensor], out: torch.Tensor) -> None:
        nonlocal total, biases
        total += out.numel() * module.in_features
        biases += out.numel() if module.bias is not None else 0

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d) or getattr(module, "counted_as_conv", False):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device  # a network built on the meta device counts quickly
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total, biases


def model_stats(model: nn.Module, input_shape: tuple[int, ...]) -> ModelStats:
    """Parameters, MACs and FLOPs of a network built with its auxiliary head (if it has one)."""
    macs, biases = count_macs(model, input_shape)
    return ModelStats(
        params=count_params(model),
        params_with_aux=count_params(model, exclude_prefix="\0"),
        macs=macs,
        flops=macs + biases,
    )
