"""Stacked BNAS's search (Ding et al., "Stacked BNAS", 2021): BNAS-v2's differentiable search of the
cells, on partial channels with edge normalisation (BNAS-v2-PC: PC-DARTS's mixed op, ``k = 4``),
joined by Knowledge Embedding Search (KES), which learns the knowledge embeddings of the Stacked
BCNN (``raynas.supernet.stacked_bnas``'s ``gamma``) by gradient alongside the cells' ``alpha``.

The steps are first-order DARTS's (the architecture on validation batches, the weights on training
batches); ``kes: false`` keeps BNAS's hand-designed embeddings and searches the cells alone (the
paper's comparison of KES with the hand-designed knowledge).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from raynas.strategies.gradient.base import GradientConfig
from raynas.strategies.gradient.pc_darts import PcDarts, PcDartsConfig
from raynas.strategies.registry import STRATEGIES


@dataclass(frozen=True)
class StackedBnasConfig(PcDartsConfig):
    """Stacked BNAS settings (architecture learning rate, warm-up and ``k``: PC-DARTS's CIFAR search,
    which BNAS-v2's search code follows).

    Attributes:
        kes: Search the knowledge embeddings (KES); false: BNAS's hand-designed ones.
    """

    kes: bool = True


@STRATEGIES.register("stacked_bnas", config=StackedBnasConfig)
class StackedBnas(PcDarts):
    """First-order search of the cells (partial channels, edge normalisation) and, with KES, of
    the knowledge embeddings of a ``stacked_bnas`` space."""

    @classmethod
    def space_overrides(cls, config: GradientConfig) -> dict[str, Any]:
        assert isinstance(config, StackedBnasConfig)
        return {**super().space_overrides(config), "knowledge_search": config.kes}
