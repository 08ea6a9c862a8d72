"""Datasets and search output on ``s3://``, against a real S3-compatible server on loopback
(SeaweedFS, started by the tests): CIFAR-10 python batches and an ImageFolder tree read through
``s3://`` give exactly what the same files give locally; the local mirror downloads only what
changed and is shared safely by concurrent processes; a search whose ``tracking.output_dir`` is on
S3 is interrupted and resumes from its S3 checkpoint; unusable buckets fail with one clear line."""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import S3Server, tiny_job

from raynas import storage
from raynas.data import DATASETS
from raynas.data.mirror import local_folder, mirror
from raynas.errors import DataError, StorageError
from raynas.runs import run_search
from raynas.runs.jobs import parse_job
from raynas.tracking.results import ResultsStore
from raynas.train.checkpoint import load_checkpoint
from tests.fixtures import (
    PER_BATCH,
    cifar10_label,
    image_bytes,
    write_batch,
    write_cifar10,
    write_image_folder,
    write_nats_tss,
    write_nb201_table,
)

pytestmark = pytest.mark.integration


class Crash(Exception):
    pass


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own mirror cache (``RAYNAS_CACHE_DIR``)."""
    monkeypatch.setenv("RAYNAS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def upload(local: Path, uri: str) -> None:
    """Every file under ``local`` to ``uri`` with the same relative names."""
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        storage.put_file(path, storage.join(uri, path.relative_to(local).as_posix()))


def make(name: str, **config: object) -> object:
    return DATASETS.create(name, DATASETS.entry(name).config(**config))


def test_cifar10_batches_from_s3_equal_the_local_ones(s3_env: S3Server, cache: Path, tmp_path: Path) -> None:
    local = write_cifar10(tmp_path / "local", test=False)
    uri = s3_env.create_bucket("raynas-cifar") + "/datasets/cifar10"
    upload(local, uri)

    from_s3 = make("cifar10", path=uri, augment=False)
    assert Path(from_s3.config.path) == cache / "s3" / "raynas-cifar" / "datasets" / "cifar10"
    remote, here = from_s3.train_set(), make("cifar10", path=str(local), augment=False).train_set()
    assert len(remote) == len(here) == 5 * PER_BATCH
    assert torch.equal(remote.images, here.images) and torch.equal(remote.labels, here.labels)
    assert remote.labels.tolist() == [cifar10_label(i) for i in range(5 * PER_BATCH)]


def test_image_folder_from_s3_equals_the_local_one(s3_env: S3Server, cache: Path, tmp_path: Path) -> None:
    local = write_image_folder(tmp_path / "local", val=False)
    uri = s3_env.create_bucket("raynas-folder") + "/imagenet-mini"
    upload(local, uri)

    remote = make("imagenet", path=uri, image_size=8).train_set()
    here = make("imagenet", path=str(local), image_size=8).train_set()
    assert remote.classes == here.classes == ["class_0", "class_1", "class_2"]
    def samples(data: object) -> list[tuple[str, int]]:
        return [(Path(p).relative_to(data.root).as_posix(), y) for p, y in data.samples]

    assert samples(remote) == samples(here) and len(here) == 9
    for i in range(len(here)):
        torch.manual_seed(i)  # the same random crop and flip for both
        x_remote, y_remote = remote[i]
        torch.manual_seed(i)
        x_here, y_here = here[i]
        assert x_remote.shape == (3, 8, 8) and y_remote == y_here
        torch.testing.assert_close(x_remote, x_here, rtol=0, atol=0)


def test_the_mirror_downloads_only_what_changed(
    s3_env: S3Server, cache: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    local = write_cifar10(tmp_path / "local", test=False)
    uri = s3_env.create_bucket("raynas-mirror") + "/c10"
    upload(local, uri)
    batches = local / "cifar-10-batches-py"

    def mirrored() -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="raynas.data.mirror"):
            folder = mirror(uri)
        assert folder == local_folder(uri)
        return [r.getMessage().split(" (")[0] for r in caplog.records if "mirrored" in r.getMessage()]

    assert mirrored() == ["mirrored 5 of 5 objects"]
    copy = local_folder(uri) / "cifar-10-batches-py"
    assert all((copy / f.name).read_bytes() == f.read_bytes() for f in batches.iterdir())
    assert mirrored() == []  # nothing changed

    # Same size, other content: only the ETag tells.
    index = range(PER_BATCH, 2 * PER_BATCH)
    write_batch(batches / "data_batch_2", {
        b"batch_label": b"training batch 2 of 5", b"labels": [9 - cifar10_label(i) for i in index],
        b"data": np.stack([image_bytes(i + 1) for i in index]),
        b"filenames": [f"img_{i}.png".encode() for i in index],
    })
    assert (batches / "data_batch_2").stat().st_size == (copy / "data_batch_2").stat().st_size
    storage.put_file(batches / "data_batch_2", f"{uri}/cifar-10-batches-py/data_batch_2")
    assert mirrored() == ["mirrored 1 of 5 objects"]
    assert (copy / "data_batch_2").read_bytes() == (batches / "data_batch_2").read_bytes()

    # A local copy edited by hand is replaced; an object deleted on S3 goes; half downloads go.
    (copy / "data_batch_3").write_bytes(b"edited")
    (copy / ".data_batch_4.abc.part").write_bytes(b"half a download")
    storage.s3_client().delete_object(Bucket="raynas-mirror", Key="c10/cifar-10-batches-py/data_batch_5")
    assert mirrored() == ["mirrored 1 of 4 objects"]
    assert (copy / "data_batch_3").read_bytes() == (batches / "data_batch_3").read_bytes()
    assert sorted(p.name for p in copy.iterdir()) == [f"data_batch_{i}" for i in range(1, 5)]


def test_processes_mirroring_at_once_download_each_object_once(
    s3_env: S3Server, cache: Path, tmp_path: Path
) -> None:
    local = write_image_folder(tmp_path / "local", val=False)
    uri = s3_env.create_bucket("raynas-concurrent") + "/tree"
    upload(local, uri)
    script = (
        "import logging, sys; logging.basicConfig(level=logging.INFO, format='%(message)s'); "
        "from raynas.data.mirror import mirror; print(mirror(sys.argv[1]))"
    )
    env = {**os.environ, "RAYNAS_CACHE_DIR": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", script, uri], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert {out.strip() for out, _ in outputs} == {str(local_folder(uri))}
    downloads = [line for _, err in outputs for line in err.splitlines() if line.startswith("mirrored")]
    assert len(downloads) == 1 and downloads[0].startswith("mirrored 9 of 9 objects")
    copy = local_folder(uri)
    for path in (p for p in local.rglob("*") if p.is_file()):
        assert (copy / path.relative_to(local)).read_bytes() == path.read_bytes()
    assert not list(copy.rglob("*.part"))


def test_an_unusable_data_path_on_s3_is_one_clear_line(
    s3_env: S3Server, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(StorageError, match=r"s3://raynas-no-such-bucket/cifar .*does not exist"):
        make("cifar10", path="s3://raynas-no-such-bucket/cifar")
    bucket = s3_env.create_bucket("raynas-empty")
    with pytest.raises(DataError, match=rf"data.path '{bucket}/nothing' holds no objects"):
        make("cifar10", path=f"{bucket}/nothing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-0000")
    with pytest.raises(StorageError, match=rf"{bucket}/cifar .*check AWS_SECRET_ACCESS_KEY") as denied:
        make("cifar10", path=f"{bucket}/cifar")
    assert "not-the-secret" not in str(denied.value)  # credentials never appear in messages


def test_search_with_data_and_checkpoints_on_s3_resumes_from_s3(
    s3_env: S3Server, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a path mistaken for a local one would appear here as s3:/...
    bucket = s3_env.create_bucket("raynas-search")
    upload(write_cifar10(tmp_path / "local", test=False), f"{bucket}/data/cifar10")
    job = tiny_job(
        tmp_path, data={"name": "cifar10", "path": f"{bucket}/data/cifar10", "batch_size": 5},
        tracking={"output_dir": f"{bucket}/runs"},
    )
    config = parse_job(job)
    checkpoint = f"{bucket}/runs/tiny/checkpoint.pt"

    def crash_after_first_epoch(line: str) -> None:
        if line.startswith("epoch   1/"):
            raise Crash

    with pytest.raises(Crash):
        run_search(config, echo=crash_after_first_epoch)
    state = load_checkpoint(checkpoint)
    assert len(state["history"]) == 1 and not state["finished"]

    lines: list[str] = []
    result = run_search(config, echo=lines.append)
    assert lines[0] == f"Resuming 'tiny' after epoch 1 from {checkpoint}"
    assert [line.split()[1] for line in lines if line.startswith("epoch")] == ["2/2"]
    assert result.checkpoint == checkpoint and result.run_id == state["run_id"]
    final = load_checkpoint(checkpoint)
    assert final["finished"] and len(final["history"]) == 2
    rows = ResultsStore(f"{bucket}/runs/results").read_table()
    assert sorted(rows.column("trial_id").to_pylist()) == ["epoch-000", "epoch-001"]
    assert not (tmp_path / "s3:").exists()

    missing = parse_job({**job, "tracking": {**job["tracking"], "output_dir": "s3://raynas-gone/runs"}})
    with pytest.raises(StorageError, match=r"bucket 'raynas-gone' .* does not exist"):
        run_search(missing, echo=lambda _: None)


def test_sampling_search_resumes_its_supernet_from_s3(
    s3_env: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    bucket = s3_env.create_bucket("raynas-sampling")
    job = tiny_job(
        tmp_path, space={"name": "nb201", "channels": 4, "cells_per_stage": 1},
        data={"limit": 64, "batch_size": 32}, train={"epochs": 1},
        strategy={"name": "spos", "population_size": 2, "sample_size": 1, "evaluations": 3},
        evaluator={"name": "supernet", "bn_batches": 1}, tracking={"output_dir": f"{bucket}/runs"},
    )
    for key in ("layers", "nodes", "order", "arch_learning_rate"):
        job["space"].pop(key, None)
        job["strategy"].pop(key, None)
    config = parse_job(job)

    def crash_at_first_candidate(line: str) -> None:
        if line.startswith("candidate"):
            raise Crash

    with pytest.raises(Crash):
        run_search(config, echo=crash_at_first_candidate)
    assert storage.exists(f"{bucket}/runs/tiny/supernet.pt")

    lines: list[str] = []
    result = run_search(config, echo=lines.append)
    assert lines[0].startswith("Resuming 'tiny' in phase 'search' with 1 candidates evaluated")
    assert "from s3://" in lines[0]
    assert not any(line.startswith("supernet epoch") for line in lines)  # its weights came from S3
    assert sum(line.startswith("candidate") for line in lines) == 2
    assert load_checkpoint(result.checkpoint)["finished"]
    assert not (tmp_path / "s3:").exists()


def test_a_nas_bench_201_table_on_s3_scores_as_its_local_copy_and_is_downloaded_once(
    s3_env: S3Server, cache: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``evaluator.path: s3://bucket/key`` names the release itself: its one object is kept in the
    mirror cache (with the extract beside it) and read as the same file read locally; it is
    downloaded again only once it changes on S3; NATS-Bench's folder is mirrored as a prefix. A
    key with neither an object nor a folder is one line."""
    from raynas.evaluators.nb201_table import extract_path, read_table
    from raynas.spaces import SPACES

    cells = [str(SPACES.create("nb201").sample(random.Random(seed))) for seed in range(3)]
    local = write_nb201_table(tmp_path / "nb201.pth", cells)
    uri = s3_env.create_bucket("raynas-bench") + "/benchmarks/NAS-Bench-201-v1_1-096897.pth"
    storage.put_file(local, uri)

    def read() -> tuple[dict[str, object], list[str]]:
        read_table.cache_clear()  # (a process reads a table once: a new process each time here)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="raynas.data.mirror"):
            table = read_table(uri, "cifar10-valid", 200)
        return table, [r.getMessage().split(" (")[0] for r in caplog.records if "mirrored" in r.getMessage()]

    try:
        assert read() == (read_table(str(local), "cifar10-valid", 200), [f"mirrored {uri}"])
        copy = cache / "s3" / "raynas-bench" / "benchmarks" / "NAS-Bench-201-v1_1-096897.pth"
        assert copy.is_file() and extract_path(copy).is_file()
        assert read()[1] == []  # unchanged: read from the cache
        storage.put_file(write_nb201_table(local, cells[:2]), uri)
        table, logged = read()
        assert sorted(table) == sorted(cells[:2]) and logged == [f"mirrored {uri}"]
        # NATS-Bench's fast_mode folder: a prefix, mirrored as a dataset's folder is.
        nats = write_nats_tss(tmp_path / "NATS-tss-v1_0-3ffb9-simple", cells, folder=True)
        upload(nats, "s3://raynas-bench/NATS-tss-v1_0-3ffb9-simple")
        read_table.cache_clear()
        assert read_table("s3://raynas-bench/NATS-tss-v1_0-3ffb9-simple", "cifar100", 12) == read_table(
            str(nats), "cifar100", 12)
        missing = "s3://raynas-bench/benchmarks/NAS-Bench-201-v1_0-e61699.pth"
        with pytest.raises(DataError, match=rf"^evaluator.path {missing!r}: no such object or folder \("):
            read_table(missing, "cifar10-valid", 200)
    finally:
        read_table.cache_clear()
