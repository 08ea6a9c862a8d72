"""Search spaces: what can be chosen, one module per space, all in the ``SPACES`` registry.

A space implements :class:`raynas.types.SearchSpace`: it samples and checks architectures,
parses their published forms, builds the network of an architecture, and builds the
weight-sharing supernet that gradient strategies search over.
"""

from raynas.registry import Registry

SPACES: Registry[type] = Registry("space")

# Built-in spaces register themselves on import.
from raynas.spaces import auto_deeplab, darts_cnn, darts_rnn, fbnet, nb201  # noqa: E402, F401

__all__ = ["SPACES"]
