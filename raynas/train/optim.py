"""The optimisers a stand-alone network retrains with: SGD (DARTS's ``train.py``), or AdamW with
ConvNeXt's parameter groups (Liu et al., "A ConvNet for the 2020s", CVPR 2022;
facebookresearch/ConvNeXt ``optim_factory.py``)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

OptimizerName = Literal["sgd", "adamw"]
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """``model``'s trainable parameters in two groups: ``weight_decay`` on the others, none on
    1-D parameters (norms' scales and shifts, layer scales) and biases, as ConvNeXt's
    ``optim_factory.get_parameter_groups`` groups them (``len(param.shape) == 1 or
    name.endswith(".bias")``); an empty group is left out."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.dim() == 1 or name.endswith(".bias") else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def build_optimizer(
    model: nn.Module, *, name: OptimizerName, learning_rate: float, momentum: float, weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """The optimiser of a retraining.

    Args:
        model: The network.
        name: ``sgd``: SGD with ``momentum`` and L2 ``weight_decay`` on every parameter (DARTS's
            ``train.py``); ``adamw``: AdamW with decoupled ``weight_decay`` on the weights of
            :func:`decay_groups` only (ConvNeXt's ``create_optimizer`` with ``--opt adamw``).
        learning_rate: The initial rate.
        momentum: SGD's momentum (AdamW ignores it).
        weight_decay: The weight decay.
        betas: AdamW's betas (ConvNeXt passes none: torch's (0.9, 0.999)).
        eps: AdamW's epsilon (ConvNeXt's ``--opt_eps`` 1e-8, torch's default).
    """
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum,
                               weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(decay_groups(model, weight_decay), lr=learning_rate, betas=betas, eps=eps)
    raise ValueError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
