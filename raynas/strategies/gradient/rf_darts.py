"""RF-DARTS and RF-PC-DARTS (Zhang, Li, Zhang, Wang and Sun, "Differentiable Architecture Search
with Random Features", CVPR 2023): DARTS and PC-DARTS whose supernet trains only its BatchNorm
scales and shifts, every convolution staying at its random initialisation. Random features
dilute the auxiliary role of skip connections, against DARTS's collapse.
"""

from __future__ import annotations

from dataclasses import dataclass

from raynas.strategies.gradient.darts import Darts, DartsConfig
from raynas.strategies.gradient.pc_darts import PcDarts, PcDartsConfig
from raynas.strategies.registry import STRATEGIES


@dataclass(frozen=True)
class RfDartsConfig(DartsConfig):
    """DARTS settings with ``random_features`` on."""

    random_features: bool = True


@dataclass(frozen=True)
class RfPcDartsConfig(PcDartsConfig):
    """PC-DARTS settings with ``random_features`` on."""

    random_features: bool = True


STRATEGIES.register("rf_darts", config=RfDartsConfig)(Darts)
STRATEGIES.register("rf_pc_darts", config=RfPcDartsConfig)(PcDarts)
