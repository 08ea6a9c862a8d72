"""MiLeNAS (He, Wang and Li, "MiLeNAS: Efficient Neural Architecture Search via Mixed-Level
Reformulation", CVPR 2020): the architecture descends the training loss and the validation loss
together, Eq. 6 of the paper:

    alpha <- alpha - eta_alpha * (grad_alpha L_train(w, alpha) + lambda * grad_alpha L_val(w, alpha))
"""

from __future__ import annotations

from dataclasses import dataclass

from raynas.errors import ConfigError
from raynas.strategies import STRATEGIES
from raynas.strategies.gradient.base import Batch, GradientConfig, GradientStrategy


@dataclass(frozen=True)
class MilenasConfig(GradientConfig):
    """``mixed_level_lambda``: the weight of the validation loss (1 in the paper's search)."""

    mixed_level_lambda: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mixed_level_lambda < 0:
            raise ConfigError("strategy.mixed_level_lambda must be >= 0")


@STRATEGIES.register("milenas", config=MilenasConfig)
class Milenas(GradientStrategy):
    """Mixed-level optimisation: one architecture gradient from both data halves."""

    config: MilenasConfig

    def arch_backward(self, train_batch: Batch, valid_batch: Batch) -> None:
        # Two backward passes accumulating into alpha.grad: one graph alive at a time.
        loss_train, _ = self.loss(train_batch)
        loss_train.backward(inputs=self.arch_params)
        loss_valid, _ = self.loss(valid_batch)
        (self.config.mixed_level_lambda * loss_valid).backward(inputs=self.arch_params)
