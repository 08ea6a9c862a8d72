"""The journal of a sampling search: every event (a candidate asked, a result told, the paths of a
supernet epoch, a phase begun) appended once, in order, as a line of JSON.

Appending costs O(1) whatever the search's length: the checkpoint (``checkpoint.pt``) keeps only
state (the controller's, the phase, counters) and the number of journal events it covers, and is
rewritten now and then (:data:`SNAPSHOT_SECONDS`), not after every result. A resumed search loads
the checkpoint and replays the events after it, so it is the search that was interrupted.

Durability is batched: events are written at once, and made durable (``fsync`` on disk, one object
per batch on ``s3://``) every :data:`SYNC_EVENTS` events or :data:`SYNC_SECONDS` seconds, whichever
comes first, and before every checkpoint. A crash can lose at most that last batch; a result lost
so is evaluated again when the search resumes (its candidate is asked again), a lost ask is asked
again. A line torn by a crash mid-write is dropped when the journal is read.

On local disk the journal is one file, ``journal.jsonl``; on ``s3://`` (where objects cannot be
appended to) each batch is an object of its own, ``journal/<first event>.jsonl``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from raynas import storage

SYNC_EVENTS = 256
SYNC_SECONDS = 2.0
SNAPSHOT_SECONDS = 30.0


class Journal:
    """An append-only list of events at ``location`` (a file path, or an ``s3://`` prefix).

    Args:
        location: ``<output>/<job>/journal.jsonl`` on disk, ``s3://.../<job>/journal`` on S3.
        sync_events: Make the journal durable after this many events at most.
        sync_seconds: ... or after this many seconds, whichever comes first.
    """

    def __init__(
        self, location: str, *, sync_events: int = SYNC_EVENTS, sync_seconds: float = SYNC_SECONDS
    ) -> None:
        self.location = location
        self.sync_events = sync_events
        self.sync_seconds = sync_seconds
        self.s3 = storage.is_s3(location)
        self._buffer: list[str] = []  # lines written but not yet durable (S3: not yet sent)
        self._synced_at = time.monotonic()
        self._fd: int | None = None
        self.events = self._read()
        self.length = len(self.events)

    # -- reading ------------------------------------------------------------------------------

    def _read(self) -> list[dict[str, Any]]:
        if self.s3:
            return [event for text in self._segments() for event in _parse(text)]
        path = Path(self.location)
        if not path.is_file():
            return []
        raw = path.read_bytes()
        complete = raw[: raw.rfind(b"\n") + 1]  # a line torn by a crash has no newline yet
        events = _parse(complete.decode())
        if len(complete) < len(raw):  # cut the torn tail, so the next append starts a clean line
            with open(path, "r+b") as f:
                f.truncate(len(complete))
        return events

    def _segments(self) -> list[str]:
        import pyarrow.fs as pafs

        fs, root = storage.filesystem(self.location)
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        names = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".jsonl"))
        texts = []
        for name in names:
            with fs.open_input_stream(name) as f:
                texts.append(f.read().decode())
        return texts

    # -- writing ------------------------------------------------------------------------------

    def append(self, event: dict[str, Any]) -> int:
        """Add ``event`` (plain JSON data); returns its index. Durable within the sync bound."""
        line = json.dumps(event, separators=(",", ":")) + "\n"
        index = self.length
        self.events.append(event)
        self.length += 1
        if self.s3:
            self._buffer.append(line)
        else:
            if self._fd is None:
                Path(self.location).parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.location, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(self._fd, line.encode())  # one write per line: appends never interleave
            except OSError as exc:  # (a full disk): the message names the journal
                raise OSError(exc.errno, exc.strerror, self.location) from None
            self._buffer.append(line)
        if len(self._buffer) >= self.sync_events or time.monotonic() - self._synced_at >= self.sync_seconds:
            self.sync()
        return index

    def sync(self) -> None:
        """Make every appended event durable now."""
        if self._buffer:
            if self.s3:
                first = self.length - len(self._buffer)
                with tempfile.TemporaryDirectory() as tmp:
                    local = Path(tmp) / f"{first:010d}.jsonl"
                    local.write_text("".join(self._buffer))
                    storage.put_file(local, storage.join(self.location, local.name))
            elif self._fd is not None:
                os.fsync(self._fd)
            self._buffer.clear()
        self._synced_at = time.monotonic()

    def close(self) -> None:
        """Sync and release the file."""
        self.sync()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _parse(text: str) -> list[dict[str, Any]]:
    events = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line of an S3 segment cannot happen (one PUT)
            break
    return events


def journal_location(output: str) -> str:
    """Where the journal of a job whose files live in ``output`` (``<output_dir>/<name>``) goes."""
    return storage.join(output, "journal") if storage.is_s3(output) else storage.join(output, "journal.jsonl")


__all__ = ["SNAPSHOT_SECONDS", "SYNC_EVENTS", "SYNC_SECONDS", "Journal", "journal_location"]
