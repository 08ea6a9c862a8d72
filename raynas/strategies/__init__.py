"""Search strategies, all in the ``STRATEGIES`` registry. Strategies never import Ray.

Gradient strategies (``gradient/``) train a supernet's weights and architecture parameters
together; sampling strategies (``sampling/``) ask for architectures and are told their
evaluations. The execution layer decides whether they run in-process, in Ray actors or under
Ray Tune.
"""

# Built-in strategies register themselves on import.
from raynas.strategies.gradient import (  # noqa: F401
    adarts,
    bnas,
    darts,
    fbnet,
    gdas,
    milenas,
    pc_darts,
    prunet,
    rf_darts,
    teg_prune,
)
from raynas.strategies.registry import STRATEGIES
from raynas.strategies.sampling import (  # noqa: F401
    autokeras,
    bo,
    enas,
    epnas,
    evolution,
    nao,
    novelty,
    progressive,
    random_search,
)
from raynas.strategies.sampling import ran as ran_sampling  # noqa: F401
from raynas.strategies.sampling import teg as teg_sampling  # noqa: F401

__all__ = ["STRATEGIES"]
