"""Data parallelism with ``torch.distributed`` (gloo on CPU, NCCL on GPU): gradient averaging and
BatchNorm over the global batch, so that N workers, each given a slice of every global batch,
compute what one worker computes on the whole batch, and all hold the same supernet.

Outside a process group every function here is a no-op: single-worker code pays nothing.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn

_local = threading.local()


def world_size() -> int:
    """Number of data-parallel workers (1 outside a process group, or inside :func:`local_only`)."""
    if getattr(_local, "only", False):
        return 1
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Within it, this worker computes alone: no collective (a replica scoring a candidate with
    the weights the group trained, while the other replicas score others)."""
    previous = getattr(_local, "only", False)
    _local.only = True
    try:
        yield
    finally:
        _local.only = previous


# How long a worker waits for the others to join its group before it gives up with an error
# (torch's default, 30 minutes, is how long a group whose rank 0 failed used to hang).
RENDEZVOUS_TIMEOUT = timedelta(minutes=5)


def open_store(host: str, world: int) -> tuple[dist.TCPStore, str]:
    """Rank 0's rendezvous store, listening on a port the system assigns as it binds, and the
    ``host:port`` the other ranks join at. (A port found free and released before the store binds
    it can be taken by another process in between: then rank 0 fails and the others wait.)"""
    store = dist.TCPStore(host, 0, world, True, timeout=RENDEZVOUS_TIMEOUT, wait_for_workers=False)
    return store, f"{host}:{store.port}"


def init_process_group(
    *, rank: int, world: int, address: str, store: dist.TCPStore | None = None
) -> None:
    """Join the group of ``world`` workers whose rank 0 listens at ``address`` (host:port).

    Rank 0 passes the ``store`` :func:`open_store` gave it; the others connect to ``address``.
    """
    if store is None:
        host, port = address.rsplit(":", 1)
        store = dist.TCPStore(host, int(port), world, False, timeout=RENDEZVOUS_TIMEOUT)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, store=store, rank=rank, world_size=world)


def sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the workers, in place; returns it."""
    if world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def average_(tensors: Sequence[torch.Tensor]) -> None:
    """Average tensors over the workers, in place, with one all-reduce."""
    world = world_size()
    if world == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def average_gradients_(params: Sequence[torch.Tensor]) -> None:
    """Average ``p.grad`` over the workers. A parameter no worker computed a gradient for keeps
    none (so the optimiser leaves it alone, as one worker's would: a one-shot supernet's
    operations off the path); one only some workers computed counts as zeros on the others."""
    if world_size() == 1 or not params:
        return
    device = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    grads = []
    for p, any_grad in zip(params, has.tolist(), strict=True):
        if any_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
    average_(grads)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics are those of the global batch across all workers.

    The sums are combined with a differentiable all-reduce, so gradients flow through the global
    statistics as they do through a single worker's; running statistics are updated identically
    on every worker.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        if not self.training or world_size() == 1:
            return super().forward(x)
        c = x.shape[1]
        count = torch.full((1,), x.numel() / c, dtype=x.dtype, device=x.device)
        packed = torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), count])
        packed = dist_fn.all_reduce(packed)
        n = packed[-1]
        mean = packed[:c] / n
        var = packed[c : 2 * c] / n - mean * mean  # biased, as BatchNorm normalises
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1))
                self.num_batches_tracked.add_(1)
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` in ``module`` by a :class:`GlobalBatchNorm2d` (same state)."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        converted = GlobalBatchNorm2d(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats,
        )
        converted.load_state_dict(module.state_dict())
        return converted
    for name, child in module.named_children():
        setattr(module, name, convert_batchnorm(child))
    return module


def plain_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every :class:`GlobalBatchNorm2d` in ``module`` by a ``BatchNorm2d`` (same state): the
    network as one worker would have built it, to save or serve."""
    if isinstance(module, GlobalBatchNorm2d):
        plain = nn.BatchNorm2d(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        plain.load_state_dict(module.state_dict())
        return plain.to(module.running_mean.device if module.running_mean is not None else "cpu")
    for name, child in module.named_children():
        setattr(module, name, plain_batchnorm(child))
    return module
