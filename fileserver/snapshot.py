"""Consistent reads of small files, and a bounded in-memory cache of them.

A file is read with fstat before and after; if its identity changed in between (a writer was
active), the read is retried, so no response ever mixes old and new bytes.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
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


Compress = Callable[[bytes], bytes]


class MemoryCache:
    """LRU cache of file snapshots, bounded in bytes, validated by a stat on every lookup; and of
    the compressed forms of some (`get_coded`), made once per version of the file."""

    def __init__(self, max_bytes: int, max_file_size: int) -> None:
        self.max_bytes = max_bytes
        self.max_file_size = max_file_size
        # By (path, coding): "" the file as it is; a coding, its compressed bytes, whose
        # validators are the file's with that coding and the compressed size.
        self._entries: OrderedDict[tuple[Path, str], tuple[Validators, Snapshot | None]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, path: Path) -> Snapshot | None:
        """The current snapshot of path; None if the file is too big to cache. Raises OSError."""
        current = Validators.from_stat(os.stat(path))
        hit = self._lookup((path, ""), current)
        if hit is not None:
            return hit[1]
        if current.size > self.max_file_size:
            return None
        snap = read_snapshot(path, self.max_file_size)
        if snap is not None:
            self._store((path, ""), snap.validators, snap)
        return snap

    def coded_ready(self, path: Path, coding: str) -> bool:
        """Whether get_coded(path, coding) would answer without compressing (its result for this
        version is cached, or the file is too big to compress here). Raises OSError."""
        current = Validators.from_stat(os.stat(path))
        if current.size > self.max_file_size:
            return True
        return self._lookup((path, ""), current) is not None and self._lookup((path, coding), current) is not None

    def get_coded(self, path: Path, coding: str, compress: Compress) -> Snapshot | None:
        """path's bytes compressed with compress, as coding; None if the file is too big to cache
        or compression does not make it smaller (the same answer for the same version, always).
        Raises OSError."""
        source = self.get(path)
        if source is None:
            return None
        hit = self._lookup((path, coding), source.validators)
        if hit is not None:
            return hit[1]
        body = compress(source.body)
        snap = None
        if len(body) < len(source.body):
            snap = Snapshot(path, replace(source.validators, size=len(body), coding=coding), body)
        self._store((path, coding), source.validators, snap)
        return snap

    def _lookup(self, key: tuple[Path, str], source: Validators) -> tuple[Validators, Snapshot | None] | None:
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0] == source:
                self._entries.move_to_end(key)
                return hit
        return None

    def _store(self, key: tuple[Path, str], source: Validators, snap: Snapshot | None) -> None:
        size = len(snap.body) if snap is not None else 0
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None and old[1] is not None:
                self._bytes -= len(old[1].body)
            if size > self.max_bytes:
                return
            self._entries[key] = (source, snap)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= len(evicted.body) if evicted is not None else 0

    def invalidate(self, path: Path) -> None:
        with self._lock:
            for key in [k for k in self._entries if k[0] == path]:
                _, old = self._entries.pop(key)
                if old is not None:
                    self._bytes -= len(old.body)
