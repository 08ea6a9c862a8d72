"""Every job file in jobs/ is a valid config."""

from __future__ import annotations

from pathlib import Path

import pytest

from raynas.config import load_config

JOBS = sorted((Path(__file__).parents[1] / "jobs").glob("*.yaml"))


def test_there_are_jobs() -> None:
    assert any(p.name == "quickstart.yaml" for p in JOBS)


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_job_file_is_valid(path: Path) -> None:
    config = load_config(path)
    assert config.name and config.train.epochs >= 1
