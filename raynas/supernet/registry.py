"""The ``SUPERNETS`` registry: a space's weight-sharing network, by the space's name.

A supernet module imports its space's records (genotypes, layer specs) and registers a factory
``(space, dataset) -> nn.Module`` under the space's name, so spaces never import their supernets
and the two kinds of module point one way only: ``spaces`` below ``supernet``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from raynas.registry import Registry
from raynas.types import DatasetInfo

SupernetFactory = Callable[[Any, DatasetInfo], nn.Module]

SUPERNETS: Registry[SupernetFactory] = Registry("supernet")
