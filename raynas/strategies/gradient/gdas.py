"""GDAS (Dong and Yang, "Searching for A Robust Neural Architecture in Four GPU Hours", CVPR 2019):
every training pass samples one operation per edge with the hard Gumbel-softmax and computes only
that one; the temperature falls linearly from ``tau_max`` to ``tau_min`` over the search.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from torch import nn

from raynas.config import Check, Rule, TrainConfig
from raynas.strategies.gradient.base import GradientConfig, GradientStrategy
from raynas.strategies.registry import STRATEGIES


@dataclass(frozen=True)
class GdasConfig(GradientConfig):
    """Temperature schedule (the paper: 10 -> 0.1)."""

    tau_max: float = 10.0
    tau_min: Annotated[float, Rule(gt=0)] = 0.1

    checks: ClassVar[tuple[Check, ...]] = (
        Check(
            "tau_min <= tau_max",  # NaN too
            "strategy.tau_max must be at least strategy.tau_min ({tau_min}), got {tau_max}",
        ),
    )


@STRATEGIES.register("gdas", config=GdasConfig)
class Gdas(GradientStrategy):
    """First-order DARTS updates on a supernet that samples one op per edge."""

    config: GdasConfig
    # exps/algos/GDAS.py (search_func_gdas) steps the weights on the training batch first, then
    # alpha on the validation batch, each on a sample of its own.
    weights_first = True

    def __init__(self, *, supernet: nn.Module, config: GdasConfig, train: TrainConfig) -> None:
        super().__init__(supernet=supernet, config=config, train=train)
        self._set_tau()

    @classmethod
    def space_overrides(cls, config: GradientConfig) -> dict[str, Any]:
        return {**super().space_overrides(config), "mixed_op": "sampled"}

    def tau(self) -> float:
        """The temperature of the current epoch."""
        c = self.config
        fraction = self.epoch / max(1, self.train.epochs - 1)
        return c.tau_max - (c.tau_max - c.tau_min) * min(1.0, fraction)

    def _set_tau(self) -> None:
        self.model.gumbel_tau = self.tau()

    def end_epoch(self) -> None:
        super().end_epoch()
        self._set_tau()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._set_tau()
