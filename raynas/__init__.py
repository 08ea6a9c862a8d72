"""raynas: neural architecture search on Ray.

The layout follows the architecture: ``spaces`` say what can be chosen, ``types`` hold what was
chosen (architecture records) and what an evaluation found (``EvalResult``), ``supernet`` and
``ops`` build the weight-sharing networks, ``strategies`` decide how to search (gradient methods,
and ask/tell controllers), ``evaluators`` score candidates, ``train`` holds the one training loop,
``execution`` decides where work runs (in-process, Ray actors, Ray Tune trials), and ``tracking``
records it (MLflow, Parquet, S3).
"""

__version__ = "0.1.0"
