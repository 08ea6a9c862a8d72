"""Sampling strategies: controllers with the ask/tell interface (see :mod:`.base`)."""

from raynas.strategies.sampling.base import SamplingStrategy

__all__ = ["SamplingStrategy"]
