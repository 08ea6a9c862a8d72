"""Tune's trial placement groups given up while being placed leave no resource reserved
(``raynas/execution/tune_resources.py``; Ray's leak: ray-project/ray#64693), on a Ray head of
the test's own."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from conftest import start_ray_head, stop_ray_cluster
from ray import tune
from ray.air.execution import PlacementGroupResourceManager, ResourceManager
from ray.air.execution.resources.request import ResourceRequest

from raynas.execution import tune_resources
from raynas.execution.tune_resources import (
    PlacementGroupsRemovedOncePlaced,
    placement_groups_removed_once_placed,
)

# Pauses between asking for a group and giving it up: a removal lands in every stage of its placing.
PAUSES = (0.0, 0.0005, 0.001, 0.002, 0.003, 0.005)


@pytest.fixture(scope="module")
def fresh_head() -> Iterator[None]:
    """A 2-CPU Ray head of this module's own (a leak would spoil it for the tests after)."""
    address, temp_dir = start_ray_head()
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        yield
    finally:
        ray.shutdown()
        stop_ray_cluster(temp_dir)


def cpus_left_after_giving_up(manager: ResourceManager, rounds: int, seed: int = 0) -> float:
    """Ask ``manager`` for a CPU and give the request up, ``rounds`` times; the CPUs the head has
    free once every removal had time to land."""
    rng = random.Random(seed)
    request = ResourceRequest([{"CPU": 1}])
    for _ in range(rounds):
        manager.request_resources(request)
        time.sleep(rng.choice(PAUSES))
        manager.update_state()
        manager.cancel_resource_request(request)
    manager.clear()
    deadline = time.monotonic() + 10
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    return ray.available_resources().get("CPU", 0)


@pytest.mark.own_ray
def test_groups_given_up_while_being_placed_leave_no_cpu_reserved(fresh_head: None) -> None:
    assert cpus_left_after_giving_up(PlacementGroupsRemovedOncePlaced(), rounds=150) == 2


@pytest.mark.own_ray
def test_the_end_of_a_search_removes_every_group_placed_or_not(
    fresh_head: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the end of a search, groups placed, acquired and still being placed all go."""
    monkeypatch.setattr(tune_resources, "RETIRE_SECONDS", 2.0)
    manager = PlacementGroupsRemovedOncePlaced()
    one, too_big = ResourceRequest([{"CPU": 1}]), ResourceRequest([{"CPU": 3}])  # never placed
    for request in (one, one, too_big):
        manager.request_resources(request)
    deadline = time.monotonic() + 30
    while not manager.has_resources_ready(one):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    acquired = manager.acquire_resources(one)
    assert acquired is not None
    started = time.monotonic()
    manager.clear()
    assert 2 <= time.monotonic() - started < 7  # the group that cannot be placed goes after its time
    deadline = time.monotonic() + 10
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2
    table = ray.util.placement_group_table()
    assert {g["state"] for g in table.values()} == {"REMOVED"}


@pytest.mark.own_ray
def test_at_the_end_of_a_search_each_group_goes_once_placed_and_none_waits_behind_another(
    fresh_head: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Groups still being placed at the end of a search, each asking for the whole head: each goes
    as soon as it is placed, which frees the head for the next, so none waits out its time (here
    five minutes) behind a placed one."""
    monkeypatch.setattr(tune_resources, "RETIRE_SECONDS", 300.0)
    manager = PlacementGroupsRemovedOncePlaced()
    whole = ResourceRequest([{"CPU": 2}])
    before = set(ray.util.placement_group_table())
    for _ in range(3):
        manager.request_resources(whole)
    cleared = threading.Event()
    clearing = threading.Thread(target=lambda: (manager.clear(), cleared.set()), daemon=True)
    clearing.start()
    assert cleared.wait(60), "a group waited behind another's resources"
    table = ray.util.placement_group_table()
    ours = [group for group_id, group in table.items() if group_id not in before]
    assert len(ours) == 3 and {group["state"] for group in ours} == {"REMOVED"}
    deadline = time.monotonic() + 10
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2


@pytest.mark.own_ray
def test_a_tune_search_in_the_block_places_its_trials_with_that_manager(
    fresh_head: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[ResourceManager] = []

    class Recorded(PlacementGroupsRemovedOncePlaced):
        def __init__(self, update_interval_s: float = 0.1) -> None:
            super().__init__(update_interval_s)
            made.append(self)

    monkeypatch.setattr(tune_resources, "PlacementGroupsRemovedOncePlaced", Recorded)
    from ray.tune.execution import tune_controller

    before = tune_controller.PlacementGroupResourceManager
    with placement_groups_removed_once_placed():
        results = tune.Tuner(
            lambda config: {"score": config["x"]},
            param_space={"x": tune.grid_search([1, 2])},
            run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
        ).fit()
    assert sorted(r.metrics["score"] for r in results) == [1, 2]
    assert made  # the search's controller made its manager of raynas's kind
    assert tune_controller.PlacementGroupResourceManager is before is PlacementGroupResourceManager
