"""ADARTS (Xue and Qin, "Partial Connection Based on Channel Attention for Differentiable Neural
Architecture Search", 2022): PC-DARTS whose edges choose the channels that pass through the
candidates by channel attention instead of taking a fixed 1/k.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from raynas.strategies.gradient.base import GradientConfig
from raynas.strategies.gradient.pc_darts import PcDarts, PcDartsConfig
from raynas.strategies.registry import STRATEGIES


@dataclass(frozen=True)
class AdartsConfig(PcDartsConfig):
    """PC-DARTS settings; ``k`` is the inverse share of channels the attention picks."""


@STRATEGIES.register("adarts", config=AdartsConfig)
class Adarts(PcDarts):
    """First-order DARTS on an attention-selected partial-channel supernet."""

    @classmethod
    def space_overrides(cls, config: GradientConfig) -> dict[str, Any]:
        return {**super().space_overrides(config), "mixed_op": "attention"}
