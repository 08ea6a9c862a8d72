"""The optimisers a stand-alone network retrains with: SGD (DARTS's ``train.py``), AdamW with
ConvNeXt's parameter groups (Liu et al., "A ConvNet for the 2020s", CVPR 2022;
facebookresearch/ConvNeXt ``optim_factory.py``), or LAMB with the same groups (You et al., "Large
Batch Optimization for Deep Learning", ICLR 2020), as NEXcepTion trains with timm's
``--opt fusedlamb``."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

OptimizerName = Literal["sgd", "adamw", "lamb"]
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw", "lamb")


class Lamb(torch.optim.Optimizer):
    """LAMB as apex's ``FusedLAMB`` and timm's ``Lamb`` compute it (their defaults).

    Each step first divides every gradient by ``max(1, global norm / max_grad_norm)`` (the norm
    over all parameters of all groups). Then per parameter: Adam's moments with bias correction,
    ``update = m_hat / (sqrt(v_hat) + eps) + weight_decay * p``; where the group decays its
    weights, the update is scaled by the trust ratio ``||p|| / ||update||`` (1 where either norm is
    0; groups without decay are not adapted, as both implementations do by default); and
    ``p -= lr * update``.

    Args:
        params: Parameters or groups.
        lr: The learning rate.
        betas: The moments' decays.
        eps: Added to the second moment's root (1e-6 in both).
        weight_decay: Decoupled weight decay, inside the trust ratio.
        max_grad_norm: The global gradient norm clipped to (1.0 in both; 0: none).
    """

    def __init__(
        self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
        weight_decay: float = 0.0, max_grad_norm: float = 1.0,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self.max_grad_norm = max_grad_norm

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        clip = 1.0
        if grads and self.max_grad_norm:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            clip = max(1.0, float(norm) / self.max_grad_norm)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad / clip
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros(())
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                step = float(state["step"])
                state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (state["exp_avg_sq"] / (1 - beta2**step)).sqrt_().add_(group["eps"])
                update = (state["exp_avg"] / (1 - beta1**step)).div_(denom)
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                    w_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    if w_norm > 0 and u_norm > 0:
                        update.mul_(w_norm / u_norm)
                p.add_(update, alpha=-group["lr"])
        return loss


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
    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, nesterov: bool = False,
) -> torch.optim.Optimizer:
    """The optimiser of a retraining.

    Args:
        model: The network.
        name: ``sgd``: SGD with ``momentum`` and L2 ``weight_decay`` on every parameter (DARTS's
            ``train.py``); ``adamw``: AdamW with decoupled ``weight_decay`` on the weights of
            :func:`decay_groups` only (ConvNeXt's ``create_optimizer`` with ``--opt adamw``);
            ``lamb``: :class:`Lamb` over the same groups (timm's ``create_optimizer_v2``, which
            also leaves norms and biases undecayed).
        learning_rate: The initial rate.
        momentum: SGD's momentum (AdamW ignores it).
        weight_decay: The weight decay.
        betas: AdamW's betas (ConvNeXt passes none: torch's (0.9, 0.999)).
        eps: AdamW's epsilon (ConvNeXt's ``--opt_eps`` 1e-8, torch's default).
        nesterov: SGD's Nesterov momentum.
    """
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum,
                               weight_decay=weight_decay, nesterov=nesterov)
    if name == "adamw":
        return torch.optim.AdamW(decay_groups(model, weight_decay), lr=learning_rate, betas=betas, eps=eps)
    if name == "lamb":
        return Lamb(decay_groups(model, weight_decay), lr=learning_rate, betas=betas, eps=eps)
    raise ValueError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
