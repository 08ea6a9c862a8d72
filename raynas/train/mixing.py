"""ConvNeXt's batch regularisers: Mixup and CutMix with soft targets, and an exponential moving
average of the weights (facebookresearch/ConvNeXt ``main.py``, which takes them from timm:
``timm.data.mixup.Mixup`` in its ``batch`` mode and ``timm.utils.ModelEma``)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class MixUpCutMix:
    """Mixes each training batch with itself reversed, one draw per batch.

    With both on, a batch is CutMixed with probability ``switch_prob`` and Mixed-up otherwise;
    the mixing weight lam is drawn from Beta(alpha, alpha) of the one chosen. Mixup:
    ``lam * x + (1 - lam) * x.flip(0)``. CutMix: a box of ``sqrt(1 - lam)`` of each side, centred
    on a uniform pixel and clipped at the border, is pasted from ``x.flip(0)``, and lam becomes the
    share of the image left uncovered. The targets are ``lam * y + (1 - lam) * y.flip(0)`` of
    one-hot labels smoothed by ``label_smoothing`` (each class ``eps / classes``, the label
    ``1 - eps + eps / classes``), as timm's ``mixup_target``.

    Attributes:
        mixup: Mixup's alpha (ConvNeXt 0.8; 0: no Mixup).
        cutmix: CutMix's alpha (ConvNeXt 1.0; 0: no CutMix).
        switch_prob: The chance of CutMix when both are on (0.5).
        label_smoothing: Smoothing of the targets (ConvNeXt's ``--smoothing`` 0.1).
    """

    mixup: float = 0.0
    cutmix: float = 0.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.0

    @property
    def active(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def draw(self, height: int, width: int) -> tuple[float, tuple[int, int, int, int] | None]:
        """One batch's mixing weight and, for CutMix, its box ``(top, bottom, left, right)``
        (rows ``top:bottom``, columns ``left:right``) with lam corrected to the uncovered share."""
        use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or float(torch.rand(())) < self.switch_prob)
        alpha = self.cutmix if use_cutmix else self.mixup
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        if not use_cutmix:
            return lam, None
        ratio = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * ratio), int(width * ratio)
        cy, cx = int(torch.randint(height, ())), int(torch.randint(width, ()))
        top, bottom = min(max(cy - cut_h // 2, 0), height), min(max(cy + cut_h // 2, 0), height)
        left, right = min(max(cx - cut_w // 2, 0), width), min(max(cx + cut_w // 2, 0), width)
        lam = 1.0 - (bottom - top) * (right - left) / float(height * width)
        return lam, (top, bottom, left, right)

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, num_classes: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The mixed batch and its soft targets, (B, classes)."""
        lam, box = self.draw(x.shape[-2], x.shape[-1])
        return mix(x, lam, box), soft_targets(y, num_classes, lam, self.label_smoothing)


def mix(x: torch.Tensor, lam: float, box: tuple[int, int, int, int] | None) -> torch.Tensor:
    """``x`` mixed with ``x.flip(0)``: pasted into ``box`` (CutMix), or weighted by lam (Mixup)."""
    flipped = x.flip(0)
    if box is None:
        return lam * x + (1.0 - lam) * flipped
    top, bottom, left, right = box
    out = x.clone()
    out[..., top:bottom, left:right] = flipped[..., top:bottom, left:right]
    return out


def soft_targets(y: torch.Tensor, num_classes: int, lam: float, label_smoothing: float) -> torch.Tensor:
    """``lam`` of the smoothed one-hot labels of ``y`` and ``1 - lam`` of those of ``y.flip(0)``."""
    off = label_smoothing / num_classes
    one_hot = nn.functional.one_hot(y, num_classes).float() * (1.0 - label_smoothing) + off
    return lam * one_hot + (1.0 - lam) * one_hot.flip(0)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The batch mean of ``-sum(targets * log_softmax(logits))`` (timm's ``SoftTargetCrossEntropy``)."""
    return torch.sum(-targets * nn.functional.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def binary_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """The mean over samples and classes of the binary cross-entropy of each class's logit, the
    targets set to 1 above ``threshold`` and 0 elsewhere when it is positive (timm's
    ``BinaryCrossEntropy``, ``target_threshold``)."""
    if threshold > 0:
        targets = targets.gt(threshold).to(targets.dtype)
    return nn.functional.binary_cross_entropy_with_logits(logits.float(), targets.float())


def soft_loss(logits: torch.Tensor, targets: torch.Tensor, bce_threshold: float | None) -> torch.Tensor:
    """:func:`soft_cross_entropy` (``bce_threshold`` None) or :func:`binary_cross_entropy`."""
    if bce_threshold is None:
        return soft_cross_entropy(logits, targets)
    return binary_cross_entropy(logits, targets, bce_threshold)


class WeightAverage:
    """An exponential moving average of a network's weights and buffers, updated after every
    optimiser step: ``ema = decay * ema + (1 - decay) * value`` for each floating-point entry of
    the state dict; the others (a BatchNorm's batch count) are copied (timm's ``ModelEma``, as
    ConvNeXt's ``--model_ema`` with ``--model_ema_decay`` 0.9999).

    Args:
        model: The network averaged; its copy starts equal to it.
        decay: The decay (ConvNeXt 0.9999).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        current = model.state_dict()
        for key, average in self.model.state_dict().items():
            value = current[key].detach()
            if average.is_floating_point():
                average.mul_(self.decay).add_(value.to(average.dtype), alpha=1.0 - self.decay)
            else:
                average.copy_(value)


__all__ = [
    "MixUpCutMix", "WeightAverage", "binary_cross_entropy", "mix", "soft_cross_entropy", "soft_loss",
    "soft_targets",
]
