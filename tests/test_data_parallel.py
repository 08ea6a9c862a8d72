"""One search over two data-parallel Ray actors (gloo on CPU): both derive the same genotype at
every epoch, and together they compute what one worker computes on the same global batches."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import ray
import torch
from conftest import tiny_job

from raynas.errors import ConfigError
from raynas.execution.ray_actors import RayWorker
from raynas.runs.jobs import parse_job
from raynas.runs.supernet_worker import SupernetWorker


def test_two_workers_need_ray() -> None:
    with pytest.raises(ConfigError, match=r"execution\.workers.*needs execution\.backend: ray"):
        parse_job(tiny_job(Path("/tmp"), execution={"backend": "local", "workers": 2}))


@pytest.mark.integration
def test_two_workers_match_one_worker_on_the_same_global_batch(tmp_path: Path, ray_head: str) -> None:
    # Second order: every gradient of the unrolled step is averaged too, not only the final ones.
    job = tiny_job(
        tmp_path,
        strategy={"order": 2},
        data={"batch_size": 16, "limit": 96},
        execution={"backend": "ray", "workers": 2, "cpus_per_worker": 1, "address": ray_head},
    )
    config = parse_job(job)
    parallel = RayWorker(functools.partial(SupernetWorker, config), config.execution)
    try:
        assert parallel.describe_location().startswith("2 data-parallel Ray actors")
        # One epoch: three second-order steps, each gradient and BatchNorm sum averaged (every
        # all-reduce costs milliseconds on CPU: the epoch takes ten times one worker's).
        reports = [parallel.run_epoch()]  # raises if the workers disagree
        # Both replicas hold the same architecture parameters.
        states = ray.get([actor.state_dict.remote() for actor in parallel.actors])
        for name in ("alpha_normal", "alpha_reduce"):
            torch.testing.assert_close(
                states[0]["strategy"]["model"][name], states[1]["strategy"]["model"][name],
                rtol=0, atol=0,
            )
    finally:
        parallel.close()
        ray.shutdown()

    single = SupernetWorker(parse_job({**job, "execution": {"backend": "local"}}))
    expected = [single.run_epoch()]
    for got, want in zip(reports, expected, strict=True):
        assert got.architecture == want.architecture
        for key in ("train_loss", "train_acc", "valid_loss", "valid_acc"):
            assert got.metrics[key] == pytest.approx(want.metrics[key], rel=1e-4, abs=1e-5)
    one = single.state_dict()["strategy"]["model"]
    two = states[0]["strategy"]["model"]
    for name, tensor in one.items():
        # Same weights, alphas and BatchNorm statistics, up to float32 summation order.
        torch.testing.assert_close(two[name], tensor, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.integration
def test_a_group_waits_until_ray_has_placed_every_rank_and_says_so(ray_head: str) -> None:
    """Ranks that Ray cannot place yet (the head's two CPUs held by other work) are waited for,
    with a line saying how many wait and what the cluster has free; the group forms once they run.
    (Before, rank 0 opened the group at once and waited torch's 30 minutes for a rank not placed.)"""
    import threading

    from raynas.execution.ray_actors import wait_placed

    class Blocker:  # holds the CPUs it asked for (defined here: Ray's workers cannot import tests)
        pass

    ray.init(address=ray_head)
    try:
        blocker = ray.remote(num_cpus=2)(Blocker).remote()
        ray.get(blocker.__ray_ready__.remote())
        ranks = [ray.remote(num_cpus=1)(Blocker).remote() for _ in range(2)]
        lines: list[str] = []
        waiter = threading.Thread(
            target=wait_placed, args=(ranks, {"CPU": 1, "GPU": 0}, lines.append, 0.5), daemon=True
        )
        waiter.start()
        waiter.join(3.0)
        assert waiter.is_alive()  # nothing is placed while the blocker holds both CPUs
        assert lines and lines[-1].endswith("for Ray to place 2 of 2 actor(s), each asking for 1 CPU; "
                                            "the cluster has 0 CPU free"), lines
        assert lines[0].startswith("waiting ")
        ray.kill(blocker)
        waiter.join(60.0)
        assert not waiter.is_alive()  # both ranks placed: the wait is over
        assert ray.get([rank.__ray_ready__.remote() for rank in ranks]) == [True, True]
    finally:
        ray.shutdown()


@pytest.mark.integration
def test_a_rank_whose_peer_dies_under_its_collective_is_a_lost_worker_and_the_group_is_rebuilt(
    tmp_path: Path, ray_head: str
) -> None:
    """Rank 1's process dies in the middle of an epoch, its connections to the group cut first
    (as a killed process's are, a second before Ray reports it dead): rank 0's all-reduce fails at
    once with gloo's "Connection closed by peer". That is a lost worker (WorkerLostError, which a
    search answers by rebuilding the group from its last epoch), not rank 0's own error to stop the
    search with a traceback, as it was; the rebuilt group trains."""
    from raynas.config import ExecutionConfig
    from raynas.errors import WorkerLostError

    died = tmp_path / "died"

    class Work:  # defined here: Ray's workers cannot import tests
        device = "cpu"

        def __init__(self, *, threads: int, rank: int, world_size: int) -> None:
            self.rank = rank

        def run_epoch(self) -> float:
            import os
            import time

            import torch.distributed as dist

            if self.rank == 1 and not died.exists():
                died.write_text("")
                dist.destroy_process_group()  # rank 0's all-reduce is cut off
                time.sleep(1.0)
                os._exit(1)
            total = torch.ones(1)
            dist.all_reduce(total)
            return float(total)

    worker = RayWorker(Work, ExecutionConfig(workers=2, cpus_per_worker=1, address=ray_head))
    try:
        with pytest.raises(WorkerLostError, match="Ray actor was lost"):
            worker.run_epoch()
        worker.restart()
        assert worker.run_epoch() == 2.0
    finally:
        worker.close()
        ray.shutdown()


@pytest.mark.integration
def test_a_ranks_own_error_ends_the_group_at_once_without_the_grace_a_peers_loss_gets(ray_head: str) -> None:
    """Rank 1 fails with an error of its own (a bad batch on its shard) while rank 0 waits for it
    in their all-reduce: the error is the group's at once, its peers killed, without the grace in
    which a collective cut off waits for Ray to report a peer lost (it waited PEER_LOSS_GRACE_S,
    30 s, then told the error)."""
    import time

    from raynas.config import ExecutionConfig
    from raynas.execution.ray_actors import PEER_LOSS_GRACE_S

    class Work:  # defined here: Ray's workers cannot import tests
        device = "cpu"

        def __init__(self, *, threads: int, rank: int, world_size: int) -> None:
            self.rank = rank

        def run_epoch(self) -> float:
            import torch.distributed as dist

            if self.rank == 1:
                raise ValueError("a batch of rank 1's shard has no labels")
            total = torch.ones(1)
            dist.all_reduce(total)  # waits for rank 1, which never comes
            return float(total)

    worker = RayWorker(Work, ExecutionConfig(workers=2, cpus_per_worker=1, address=ray_head))
    try:
        ranks = list(worker.actors)
        start = time.monotonic()
        with pytest.raises(ValueError, match="a batch of rank 1's shard has no labels"):
            worker.run_epoch()
        assert time.monotonic() - start < PEER_LOSS_GRACE_S
        for rank in ranks:  # rank 0 is not left in its all-reduce
            with pytest.raises(ray.exceptions.RayActorError):
                ray.get(rank.__ray_ready__.remote(), timeout=60)
    finally:
        worker.close()
        ray.shutdown()
