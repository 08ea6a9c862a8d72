"""Size and cost of a network: parameters (with and without the auxiliary head) and the
multiply-accumulates of one forward pass, counted over convolutions and linear layers."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelStats:
    """Parameters as the DARTS papers count them (no auxiliary head), with it, and MACs."""

    params: int
    params_with_aux: int
    macs: int

    def as_dict(self) -> dict[str, int]:
        return {"params": self.params, "params_with_aux": self.params_with_aux, "macs": self.macs}


def count_params(model: nn.Module, *, exclude_prefix: str = "auxiliary") -> int:
    """Parameters of ``model`` except those under modules named ``exclude_prefix*``."""
    return sum(
        p.numel() for name, p in model.named_parameters() if not name.startswith(exclude_prefix)
    )


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass in eval mode (convolutions and linear layers).

    Args:
        model: The network.
        input_shape: One input, without the batch dimension, e.g. ``(3, 32, 32)``.
    """
    total = 0

    def conv_hook(module: nn.Conv2d, _: tuple[torch.Tensor], out: torch.Tensor) -> None:
        nonlocal total
        kernel = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        total += out.numel() * kernel

    def linear_hook(module: nn.Linear, _: tuple[torch.Tensor], out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * module.in_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total


def model_stats(model: nn.Module, input_shape: tuple[int, ...]) -> ModelStats:
    """Parameters and MACs of a network built with its auxiliary head (if it has one)."""
    return ModelStats(
        params=count_params(model),
        params_with_aux=count_params(model, exclude_prefix="\0"),
        macs=count_macs(model, input_shape),
    )
