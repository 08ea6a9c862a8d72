"""PC-DARTS (Xu et al., "PC-DARTS: Partial Channel Connections for Memory-Efficient Architecture
Search", ICLR 2020): DARTS (first order) on a supernet whose edges send 1/k of the channels
through the candidates (with a channel shuffle) and whose edges carry normalised weights
``beta``; the genotype ranks edges by op weight times edge weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from raynas.config import Rule
from raynas.strategies.gradient.base import GradientConfig, GradientStrategy
from raynas.strategies.registry import STRATEGIES


@dataclass(frozen=True)
class PcDartsConfig(GradientConfig):
    """PC-DARTS settings (defaults: the paper's CIFAR search; ``k: 2`` on ImageNet)."""

    arch_learning_rate: float = 6e-4
    arch_start_epoch: int = 15
    k: Annotated[int, Rule(ge=1)] = 4
    edge_normalization: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()


@STRATEGIES.register("pc_darts", config=PcDartsConfig)
class PcDarts(GradientStrategy):
    """First-order DARTS on a partial-channel, edge-normalised supernet."""

    @classmethod
    def space_overrides(cls, config: GradientConfig) -> dict[str, Any]:
        assert isinstance(config, PcDartsConfig)
        return {
            **super().space_overrides(config),
            "mixed_op": "partial",
            "partial_k": config.k,
            "edge_normalization": config.edge_normalization,
        }
