"""Search strategies, all in the ``STRATEGIES`` registry. Strategies never import Ray.

Gradient strategies (``gradient/``) train a supernet's weights and architecture parameters
together; the execution layer decides whether that happens in-process or in a Ray actor.
"""

from raynas.registry import Registry

STRATEGIES: Registry[type] = Registry("strategy")

# Built-in strategies register themselves on import.
from raynas.strategies.gradient import (  # noqa: E402, F401
    adarts,
    darts,
    gdas,
    milenas,
    pc_darts,
    rf_darts,
)

__all__ = ["STRATEGIES"]
