"""Weight-sharing supernets: every candidate of a space in one module, with architecture parameters.

Each supernet module registers a factory in :data:`SUPERNETS` under the name of the space it
searches; :func:`build_supernet` builds the one of a space. A user's space registers its own::

    @SUPERNETS.register("tiny_cnn")
    def tiny_cnn_supernet(space: TinyCnnSpace, dataset: DatasetInfo) -> nn.Module: ...
"""

from __future__ import annotations

from typing import Any

from torch import nn

from raynas.errors import ConfigError
from raynas.supernet import (  # noqa: F401  (register)
    auto_deeplab,
    convnext,
    darts,
    darts_rnn,
    enas_macro,
    enas_micro,
    enas_rnn,
    fbnet,
    nb201,
    nexception,
    ran,
    stacked_bnas,
    xd,
)
from raynas.supernet.darts import DartsSupernet, derive_cell
from raynas.supernet.registry import SUPERNETS
from raynas.types import DatasetInfo


def space_name(space: Any) -> str:
    """The registry name of a space object (its architecture record's ``space``)."""
    return str(space.architecture_type.space)


def build_supernet(space: Any, dataset: DatasetInfo) -> nn.Module:
    """The weight-sharing network over ``space`` for ``dataset``.

    Raises:
        ConfigError: No supernet is registered for the space; names the spaces that have one.
    """
    name = space_name(space)
    if name not in SUPERNETS:
        raise ConfigError(
            f"space {name!r} has no supernet (register one in raynas.supernet.SUPERNETS); "
            f"spaces with one: {', '.join(SUPERNETS.names())}"
        )
    return SUPERNETS.get(name)(space, dataset)


__all__ = ["SUPERNETS", "DartsSupernet", "build_supernet", "derive_cell", "space_name"]
