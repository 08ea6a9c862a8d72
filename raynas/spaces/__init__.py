"""Search spaces: what can be chosen, one module per space, all in the ``SPACES`` registry.

A space implements :class:`raynas.types.SearchSpace`: it samples and checks architectures,
parses their published forms and builds the network of an architecture. Its weight-sharing
supernet lives one floor up, in ``raynas.supernet`` (registered under the space's name).
"""

# Built-in spaces register themselves on import.
from raynas.spaces import (  # noqa: F401
    auto_deeplab,
    autokeras,
    convnext,
    darts_cnn,
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
from raynas.spaces.registry import SPACES

__all__ = ["SPACES"]
