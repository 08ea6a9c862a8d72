"""Tune's placement groups, removed only where Ray's core frees them.

Ray Tune reserves each trial's resources as a placement group, and removes the ones it no longer
needs (a trial stopped or paused while its group was being placed, every group at the end of a
search). A group removed while the GCS is placing it (its bundles prepared on a node, not yet
committed) leaves the prepared resources reserved on that node's raylet for good: the node has a
CPU (or GPU) fewer until it restarts, and work asking for all of a node waits forever
(ray-project/ray#64693, open in Ray 2.60; seen here as a supernet's replicas never placed on a
test cluster after a PBT search). :class:`PlacementGroupsRemovedOncePlaced` removes such a group
once it is placed, when its removal takes its committed bundles with it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import ray
from ray.air.execution import PlacementGroupResourceManager
from ray.air.execution.resources.request import ResourceRequest
from ray.util.placement_group import PlacementGroup, remove_placement_group

RETIRE_SECONDS = 10.0
"""How long a group Tune gave up while it was being placed may take to be placed before it is
removed anyway (a group waiting for resources the cluster lacks is not being placed)."""


class PlacementGroupsRemovedOncePlaced(PlacementGroupResourceManager):
    """Tune's placement-group resource manager, except that a group Tune gives up before it is
    placed is removed once it is placed (or after :data:`RETIRE_SECONDS` without), never while
    its bundles may be half reserved; at the end of a search (:meth:`clear`) the groups still
    being placed get up to :data:`RETIRE_SECONDS` before they go."""

    def __init__(self, update_interval_s: float = 0.1) -> None:
        super().__init__(update_interval_s=update_interval_s)
        # Groups given up while staged: their ready() future, and when to remove them regardless.
        self._retiring: dict[PlacementGroup, tuple[ray.ObjectRef, float]] = {}

    def cancel_resource_request(self, resource_request: ResourceRequest) -> None:
        staged = self._request_to_staged_pgs[resource_request]
        if not staged:  # a placed group: removing it frees its committed bundles
            super().cancel_resource_request(resource_request)
            return
        pg = staged.pop()
        future = self._pg_to_staging_future.pop(pg)
        self._staging_future_to_pg.pop(future)
        self._pg_to_request.pop(pg)
        self._retiring[pg] = (future, time.monotonic() + RETIRE_SECONDS)
        self._retire()

    def update_state(self) -> None:
        super().update_state()
        self._retire()

    def clear(self) -> None:
        if not ray.is_initialized():
            return
        for request, staged in self._request_to_staged_pgs.items():
            for _ in range(len(staged)):
                self.cancel_resource_request(request)
        retiring = self._retiring
        super().clear()  # the placed and acquired groups; it resets this manager's state
        self._retiring = retiring
        self._retire(wait=True)

    def _retire(self, wait: bool = False) -> None:
        """Remove the given-up groups that are placed, and those past their time; with ``wait``,
        all of them, each as soon as it is placed or past its time. Each placed group goes at
        once: it holds resources that the groups still waiting may need to be placed (at the end
        of a search on a full node, three groups waited out their time behind two placed ones)."""
        while self._retiring:
            futures = {future: pg for pg, (future, _) in self._retiring.items()}
            placed, _ = ray.wait(list(futures), num_returns=len(futures), timeout=0)
            now = time.monotonic()
            due = {futures[f] for f in placed} | {
                pg for pg, (_, deadline) in self._retiring.items() if deadline <= now
            }
            if not due:
                if not wait:
                    return
                soonest = min(deadline for _, deadline in self._retiring.values())
                ray.wait(list(futures), num_returns=1, timeout=max(0.0, soonest - now))
                continue
            for pg in due:
                future, _ = self._retiring.pop(pg)
                remove_placement_group(pg)
                with contextlib.suppress(Exception):
                    ray.cancel(future)  # a ready() task of a group never placed would wait forever
            if not wait:
                return


@contextlib.contextmanager
def placement_groups_removed_once_placed() -> Iterator[None]:
    """Tune's controllers made within the block manage their trials' placement groups with
    :class:`PlacementGroupsRemovedOncePlaced` (``TuneController`` makes its resource manager from
    this name, and ``Tuner`` offers no other way to choose it)."""
    from ray.tune.execution import tune_controller

    previous: Any = tune_controller.PlacementGroupResourceManager
    tune_controller.PlacementGroupResourceManager = PlacementGroupsRemovedOncePlaced  # type: ignore[misc]
    try:
        yield
    finally:
        tune_controller.PlacementGroupResourceManager = previous  # type: ignore[misc]
