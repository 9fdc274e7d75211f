"""Consistent reads of small files, and a bounded in-memory cache of them.

A file is read with fstat before and after; if its identity changed in between (a writer was
active), the read is retried, so no response ever mixes old and new bytes.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from fileserver.http_semantics import Validators

READ_ATTEMPTS = 5


class FileChanging(OSError):
    """The file kept changing while it was read."""


@dataclass(frozen=True)
class Snapshot:
    path: Path
    validators: Validators
    body: bytes


def read_snapshot(path: Path, max_size: int) -> Snapshot | None:
    """Read a whole file consistently; None if it is larger than max_size (serve it by sendfile)."""
    for _ in range(READ_ATTEMPTS):
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            before = Validators.from_stat(os.fstat(fd))
            if before.size > max_size:
                return None
            chunks = []
            remaining = before.size + 1  # one more byte tells us the file grew
            while remaining > 0:
                chunk = os.read(fd, remaining)
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
            after = Validators.from_stat(os.fstat(fd))
        finally:
            os.close(fd)
        body = b"".join(chunks)
        if before == after and len(body) == before.size and _path_still_is(path, after):
            return Snapshot(path, after, body)
    raise FileChanging(f"{path} kept changing while being read")


def _path_still_is(path: Path, v: Validators) -> bool:
    """The name still points at the inode we read (not replaced by a rename meanwhile)."""
    try:
        return Validators.from_stat(os.stat(path)) == v
    except OSError:
        return False


class MemoryCache:
    """LRU cache of file snapshots, bounded in bytes, validated by a stat on every lookup."""

    def __init__(self, max_bytes: int, max_file_size: int) -> None:
        self.max_bytes = max_bytes
        self.max_file_size = max_file_size
        self._entries: OrderedDict[Path, Snapshot] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, path: Path) -> Snapshot | None:
        """The current snapshot of path; None if the file is too big to cache. Raises OSError."""
        current = Validators.from_stat(os.stat(path))
        with self._lock:
            snap = self._entries.get(path)
            if snap is not None and snap.validators == current:
                self._entries.move_to_end(path)
                return snap
        if current.size > self.max_file_size:
            return None
        snap = read_snapshot(path, self.max_file_size)
        if snap is not None:
            self._store(snap)
        return snap

    def _store(self, snap: Snapshot) -> None:
        with self._lock:
            old = self._entries.pop(snap.path, None)
            if old is not None:
                self._bytes -= len(old.body)
            if len(snap.body) > self.max_bytes:
                return
            self._entries[snap.path] = snap
            self._bytes += len(snap.body)
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= len(evicted.body)

    def invalidate(self, path: Path) -> None:
        with self._lock:
            old = self._entries.pop(path, None)
            if old is not None:
                self._bytes -= len(old.body)
