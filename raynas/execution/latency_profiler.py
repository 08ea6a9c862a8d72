"""Latency tables for every node type of a heterogeneous Ray cluster, measured in parallel (the
per-device lookup tables of FBNet, Wu et al., CVPR 2019, for a cluster's devices).

A node's type is its accelerator type (Ray's ``accelerator_type:<name>`` resource), else the
names of its custom resources (``{"A100": 1}`` makes type ``A100``), else ``cpu``. One actor per
type is placed by that resource (plain CPU nodes by node affinity), measures every entry of the
space's table on its node's device (the first GPU where the type has GPUs, else the CPU) and
returns the table, keyed by the type; the tables are written to ``<dir>/<type>.json`` where a
directory is given, merged into what is there already.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raynas.errors import ConfigError
from raynas.latency import LatencyTable, TimingOptions, build_table, table_path
from raynas.types import DatasetInfo

_BUILT_IN = {"CPU", "GPU", "memory", "object_store_memory"}
_SHARE = 0.001  # of a type's own resource: the actor must land there, not use it up


@dataclass(frozen=True)
class NodeType:
    """One kind of node in the cluster.

    Attributes:
        name: The type (accelerator type, custom resource names, or ``cpu``).
        resources: What an actor asks for to be placed on such a node.
        node_ids: The alive nodes of this type.
        gpus: GPUs of one such node (0: measure on the CPU).
    """

    name: str
    resources: dict[str, float]
    node_ids: tuple[str, ...]
    gpus: float


def cluster_node_types(nodes: list[dict[str, Any]] | None = None) -> dict[str, NodeType]:
    """The node types of the connected cluster (or of ``nodes``, as ``ray.nodes()`` lists them).

    Nodes without CPUs or GPUs (a head kept free of work) are left out: no actor can run there.
    """
    found: dict[str, NodeType] = {}
    for node in nodes if nodes is not None else ray.nodes():
        res: dict[str, float] = node.get("Resources", {})
        if not node.get("Alive", True) or not (res.get("CPU", 0) or res.get("GPU", 0)):
            continue
        accelerators = sorted(k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:"))
        custom = sorted(
            k for k in res if k not in _BUILT_IN and not k.startswith(("node:", "accelerator_type:"))
        )
        if accelerators:
            name, resources = accelerators[0], {f"accelerator_type:{accelerators[0]}": _SHARE}
        elif custom:
            name, resources = "+".join(custom), {k: _SHARE for k in custom}
        else:
            name, resources = "cpu", {}
        known = found.get(name)
        ids = (*known.node_ids, node["NodeID"]) if known else (node["NodeID"],)
        found[name] = NodeType(name, resources, ids, float(res.get("GPU", 0)))
    return found


class _TableProfiler:
    """Measures a space's latency table on the device of the node it was placed on."""

    def measure(
        self, space_name: str, space_config: Any, dataset: DatasetInfo, device_name: str,
        options: TimingOptions,
    ) -> tuple[dict[str, Any], str]:
        import torch

        from raynas.spaces import SPACES

        space = SPACES.create(space_name, space_config)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        table = build_table(space, dataset, device_name=device_name, device=device, options=options)
        return table.to_dict(), ray.get_runtime_context().get_node_id()


@dataclass(frozen=True)
class ProfiledTable:
    """A node type's table and the node that measured it."""

    table: LatencyTable
    node_id: str
    path: Path | None = None


def profile_cluster(
    space_name: str, space_config: Any, dataset: DatasetInfo, *,
    options: TimingOptions | None = None, types: list[str] | None = None, out_dir: str | Path | None = None,
) -> dict[str, ProfiledTable]:
    """Measure one latency table per node type of the connected Ray cluster, all in parallel.

    Args:
        space_name: The space (in ``raynas.spaces.SPACES``) whose table to measure.
        space_config: Its config (the layout decides the shapes).
        dataset: Input shape and classes.
        options: How to time; each actor takes ``options.threads`` CPUs.
        types: Only these node types (default: every type found).
        out_dir: Write each table to ``<out_dir>/<type>.json`` (merged with an existing one).

    Returns:
        The table of every node type, with the id of the node that measured it.
    """
    if not ray.is_initialized():
        raise ConfigError("profile_cluster needs a connected Ray (ray.init(address=...)) first")
    options = options or TimingOptions()
    found = cluster_node_types()
    if types is not None:
        missing = sorted(set(types) - set(found))
        if missing:
            raise ConfigError(
                f"node type(s) {', '.join(missing)} not in the cluster; it has: {', '.join(sorted(found))}"
            )
        found = {name: found[name] for name in types}
    if not found:
        raise ConfigError("the Ray cluster has no node with CPUs or GPUs to measure on")
    actor_cls = ray.remote(_TableProfiler)
    actors, calls = {}, {}
    for name, node_type in found.items():
        placement: dict[str, Any] = {"resources": node_type.resources} if node_type.resources else {
            "scheduling_strategy": NodeAffinitySchedulingStrategy(node_type.node_ids[0], soft=False)
        }
        actors[name] = actor_cls.options(
            num_cpus=options.threads or 1, num_gpus=1 if node_type.gpus else 0, **placement
        ).remote()
        calls[name] = actors[name].measure.remote(space_name, space_config, dataset, name, options)
    results: dict[str, ProfiledTable] = {}
    try:
        for name, ref in calls.items():
            data, node_id = ray.get(ref)
            table = LatencyTable.from_dict(data)
            path = None
            if out_dir is not None:
                path = table_path(out_dir, name)
                previous = LatencyTable.load(path) if path.is_file() else None
                (previous.merged(table) if previous else table).save(path)
            results[name] = ProfiledTable(table, node_id, path)
    finally:
        for actor in actors.values():
            ray.kill(actor)
    return results
