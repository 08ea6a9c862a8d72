"""raynas: neural architecture search on Ray.

The layout follows the architecture: ``spaces`` say what can be chosen, ``types`` hold what was
chosen (architecture records), ``supernet`` and ``ops`` build the weight-sharing networks,
``strategies`` decide how to search, ``train`` holds the one training loop, ``execution`` decides
where work runs (in-process or in Ray actors), and ``tracking`` records it in MLflow.
"""

__version__ = "0.1.0"
