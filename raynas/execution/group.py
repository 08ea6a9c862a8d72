"""What makes a Ray actor one rank of a data-parallel ``torch.distributed`` group (the supernet
replicas of :class:`raynas.execution.pool.RayPool`, the workers of
:class:`raynas.execution.ray_actors.RayWorker`). Imports nothing heavy until an actor calls it."""

from __future__ import annotations

from typing import Any


class GroupMember:
    """Mixed into an actor class: rank 0's :meth:`rendezvous` opens the group's store, every
    rank's setup calls :meth:`join_group`."""

    _store: Any = None

    def rendezvous(self, world: int) -> str:
        """host:port where this actor, as rank 0, gathers the data-parallel group of ``world``."""
        import ray

        from raynas.train.distributed import open_store

        self._store, address = open_store(ray.util.get_node_ip_address(), world)
        return address

    def join_group(self, rank: int, world: int, address: str | None) -> None:
        """Join the group of ``world`` ranks gathered at ``address`` (nothing when ``world`` is 1)."""
        if world == 1:
            return
        from raynas.train.distributed import init_process_group

        assert address is not None
        init_process_group(rank=rank, world=world, address=address, store=self._store if rank == 0 else None)
