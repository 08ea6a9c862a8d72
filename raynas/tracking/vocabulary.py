"""One vocabulary for what raynas records: the same names in the Parquet results store, in
MLflow and on the console (``docs/results.md`` lists them).

Metric names are spelled out (``learning_rate``, never ``lr``); where a candidate ran (``node``)
is one of :data:`NODES` or the accelerator type of its node (``A100``, ``H100``, ...).
Everything that leaves raynas for MLflow or the results store passes through
:func:`canonical_metrics` and :func:`canonical_node`, so a name the training loop or an executor
spells otherwise is recorded under its one name.
"""

from __future__ import annotations

from collections.abc import Mapping

#: ``node`` values for work without an accelerator type: in the driver's process, in a Ray worker
#: on a CPU, in a Ray worker on a GPU of no known type.
NODES = ("local", "ray-cpu", "ray-gpu")

#: Other spellings of the recorded names, and the one name each is recorded under.
METRIC_ALIASES: dict[str, str] = {"lr": "learning_rate"}
_NODE_ALIASES = {"cpu": "ray-cpu", "gpu": "ray-gpu", "ray": "ray-cpu", "": "local"}


def canonical_metric(name: str) -> str:
    """The recorded name of a metric (``lr`` -> ``learning_rate``)."""
    return METRIC_ALIASES.get(name, name)


def canonical_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """``metrics`` under their recorded names (a value under its canonical name wins)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = canonical_metric(key)
        if name not in out or key == name:
            out[name] = value
    return out


def canonical_node(node: str) -> str:
    """The recorded ``node`` of an evaluation: ``local``, ``ray-cpu``, ``ray-gpu``, or the
    accelerator type of its Ray node as Ray names it (``cpu`` and ``gpu``, as executors say it
    of a node without a type, become ``ray-cpu`` and ``ray-gpu``)."""
    return _NODE_ALIASES.get(node, node)


__all__ = ["METRIC_ALIASES", "NODES", "canonical_metric", "canonical_metrics", "canonical_node"]
