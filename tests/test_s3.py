"""S3 against a real S3-compatible server on loopback (SeaweedFS, started by the tests): clear
errors at start, whole-object writes, the Parquet results store on s3://, and an outage in the
middle of a search that loses nothing."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import S3Server, free_port, start_seaweedfs, stop_process
from pyarrow.fs import FileSelector
from test_results_store import INFO, candidates

from raynas import storage
from raynas.errors import StorageError
from raynas.tracking.results import ResultsStore

pytestmark = pytest.mark.integration


def test_s3_clients_share_a_session_until_the_credentials_change_or_it_ages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Clients made one after another share one boto3 session (a session reads botocore's S3
    service model again: ~0.2 s of JSON per client); new credentials in the environment get a
    session, and clients, of their own, as does a session older than SESSION_SECONDS."""
    import botocore.loaders

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "first-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "first-secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    first = storage.s3_client()
    read: list[str] = []  # the JSON files botocore reads
    load_file = botocore.loaders.JSONFileLoader.load_file

    def counted(self: botocore.loaders.JSONFileLoader, file_path: str, *args: object) -> object:
        read.append(file_path)
        return load_file(self, file_path, *args)

    monkeypatch.setattr(botocore.loaders.JSONFileLoader, "load_file", counted)
    again = storage.s3_client(connect_timeout=5, read_timeout=10, attempts=2)
    assert again is not first and read == []  # the session's models, read once
    assert again.meta.config.connect_timeout == 5 and again.meta.config.retries["total_max_attempts"] == 2
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "second-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "second-secret")
    changed = storage.s3_client()
    assert any("/s3/" in path for path in read)  # a new session, which read the S3 model again
    for client, key in ((first, "first-key"), (again, "first-key"), (changed, "second-key")):
        assert client._request_signer._credentials.get_frozen_credentials().access_key == key
    # A session serves SESSION_SECONDS: then a new one reads credentials (a file rotated in place).
    read.clear()
    monkeypatch.setattr(storage, "SESSION_SECONDS", 0.0)
    storage.s3_client()
    assert any("/s3/" in path for path in read)


def test_unreachable_or_unusable_s3_is_one_clear_line(s3_env: S3Server, monkeypatch) -> None:
    s3_env.create_bucket("raynas-check")
    storage.check_reachable("s3://raynas-check/results")  # fine

    with pytest.raises(StorageError, match=r"bucket 'raynas-missing' .* does not exist"):
        storage.check_reachable("s3://raynas-missing/results")

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-0000")
    with pytest.raises(StorageError, match="access denied") as denied:
        storage.check_reachable("s3://raynas-check/results")
    assert "not-the-secret" not in str(denied.value)  # credentials never appear in messages

    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    with pytest.raises(StorageError, match=f"S3 endpoint {dead} is unreachable"):
        storage.check_reachable("s3://raynas-check/results")
    with pytest.raises(StorageError, match="not an S3 location"):
        storage.S3Location.parse("s3:/raynas-check")


def test_files_are_published_whole_and_read_back(s3_env: S3Server, tmp_path: Path) -> None:
    bucket = s3_env.create_bucket("raynas-files")
    local = tmp_path / "blob.bin"
    local.write_bytes(bytes(range(256)) * 40_000)  # 10 MB: a multipart upload
    uri = storage.join(bucket, "a", "blob.bin")
    assert uri == "s3://raynas-files/a/blob.bin"
    assert not storage.exists(uri)
    storage.put_file(local, uri)
    assert storage.exists(uri)
    storage.get_file(uri, tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == local.read_bytes()


def test_results_store_on_s3(s3_env: S3Server, tmp_path: Path) -> None:
    root = s3_env.create_bucket("raynas-results") + "/nas"
    store = ResultsStore(root, spool_dir=tmp_path / "spool")
    store.check()
    assert store.append(candidates(3), info=INFO) == 3
    assert store.append(candidates(4), info=INFO) == 1  # t0..t2 retried: written once
    assert sorted(store.read_table().column("trial_id").to_pylist()) == ["t0", "t1", "t2", "t3"]
    assert store.searches() == ["evo-abcdef12"]

    fs, path = storage.filesystem(root)  # pyarrow reads it directly too
    files = [i.path for i in fs.get_file_info(FileSelector(path, recursive=True)) if i.is_file]
    assert len(files) == 2 and all("/search=evo-abcdef12/part-" in f for f in files)
    assert sum(pq.read_table(f, filesystem=fs).num_rows for f in files) == 4


def test_an_s3_outage_mid_search_loses_nothing(
    s3_env: S3Server, tmp_path: Path, monkeypatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The server goes down between two appends and comes back (on another port): the rows
    evaluated meanwhile wait in the local spool and reach S3 with the next append."""
    proc, endpoint = start_seaweedfs(tmp_path / "server", access_key=s3_env.access_key,
                                     secret_key=s3_env.secret_key)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        bucket = S3Server(endpoint, s3_env.access_key, s3_env.secret_key).create_bucket("raynas-outage")
        store = ResultsStore(bucket + "/r", spool_dir=tmp_path / "spool", attempts=2, backoff_s=0.05)
        assert store.append(candidates(2), info=INFO) == 2
    finally:
        stop_process(proc)

    with caplog.at_level(logging.WARNING):
        assert store.append(candidates(4), info=INFO) == 2  # t2, t3: the search goes on
    assert "unreachable" in caplog.text and store.pending() == 2

    proc, endpoint = start_seaweedfs(tmp_path / "server", access_key=s3_env.access_key,
                                     secret_key=s3_env.secret_key)  # same data folder
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        assert store.append(candidates(5), info=INFO) == 1
        assert store.pending() == 0
        ids = sorted(store.read_table().column("trial_id").to_pylist())
        assert ids == ["t0", "t1", "t2", "t3", "t4"]  # nothing lost, nothing twice
    finally:
        stop_process(proc)


def test_checkpoints_on_s3(s3_env: S3Server) -> None:
    import torch

    from raynas.train.checkpoint import load_checkpoint, save_checkpoint

    uri = s3_env.create_bucket("raynas-checkpoints") + "/job/checkpoint.pt"
    state = {"weights": torch.arange(6.0).reshape(2, 3), "history": [{"epoch": 0}], "run_id": "abc"}
    save_checkpoint(state, uri)
    back = load_checkpoint(uri)
    assert torch.equal(back["weights"], state["weights"]) and back["history"] == state["history"]
    save_checkpoint({**state, "run_id": "def"}, uri)  # replaced whole
    assert load_checkpoint(uri)["run_id"] == "def"
