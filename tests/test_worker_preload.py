"""Ray worker processes import torch and raynas's actor modules before they take work (Ray's
``preload_python_modules``), so that an actor starts without paying for those imports: on a local
Ray that raynas starts, and on a node started with the image's ``RAY_preload_python_modules``
(cluster/docker/Dockerfile; the tests' Ray heads and clusters are started with it too)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from raynas.execution.ray_actors import PRELOADED_MODULES

ROOT = Path(__file__).parents[1]

# Run in a Ray task: which of the preloaded modules its worker process has imported. The task
# itself imports none of them (it is pickled by value and names only sys).
LOADED = "lambda names: sorted(n for n in names if n in __import__('sys').modules)"


def test_the_image_sets_what_a_local_ray_preloads() -> None:
    dockerfile = (ROOT / "cluster" / "docker" / "Dockerfile").read_text()
    found = re.search(r"RAY_preload_python_modules=(\S+)", dockerfile)
    assert found and found.group(1) == ",".join(PRELOADED_MODULES)


def test_workers_of_a_node_started_with_the_images_setting_have_the_modules_loaded(ray_head: str) -> None:
    import ray

    preload = os.environ["RAY_preload_python_modules"]  # noqa: SIM112  (Ray reads this spelling)
    assert preload == ",".join(PRELOADED_MODULES)  # as conftest set it
    ray.init(address=ray_head, log_to_driver=False, logging_level="ERROR")
    loaded = ray.remote(eval(LOADED))
    assert ray.get(loaded.remote(list(PRELOADED_MODULES))) == sorted(PRELOADED_MODULES)


def test_workers_of_a_local_ray_that_raynas_starts_have_the_modules_loaded() -> None:
    """In a process of its own, without the setting in its environment: raynas's ``init_ray``
    starts the local Ray with it."""
    code = (
        "import json, ray\n"
        "from raynas.config import ExecutionConfig\n"
        "from raynas.execution.ray_actors import PRELOADED_MODULES, init_ray\n"
        "init_ray(ExecutionConfig(backend='ray', object_store_mb=100))\n"
        f"loaded = ray.remote({LOADED})\n"
        "print(json.dumps(ray.get(loaded.remote(list(PRELOADED_MODULES)))))\n"
        "ray.shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_preload_python_modules", "RAY_ADDRESS")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == str(sorted(PRELOADED_MODULES)).replace("'", '"')
