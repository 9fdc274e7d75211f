"""The kernel path's lifetime as seen by the server: start it if possible, else say why not."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fileserver.config import Config
from fileserver.resolve import Resolver
from fileserver.snapshot import MemoryCache, Snapshot

log = logging.getLogger("fileserver.kernel")


class KernelPath:
    """Userspace's handle on the kernel path; a disabled one answers every query with zeros."""

    def __init__(self, off_reason: str | None = None) -> None:
        self.off_reason = off_reason

    @property
    def enabled(self) -> bool:
        return self.off_reason is None

    def describe(self) -> str:
        return "on" if self.enabled else f"off ({self.off_reason})"

    def on_user_served(self, path: str, snap: Snapshot) -> None:
        pass

    def counters(self) -> dict[str, int]:
        return {}

    def pass_counts(self) -> dict[str, int]:
        return {}

    def cache_usage(self) -> tuple[int, int]:
        return 0, 0


@asynccontextmanager
async def start_kernel_path(config: Config, resolver: Resolver, memcache: MemoryCache) -> AsyncIterator[KernelPath]:
    if not config.kernel_cache:
        yield KernelPath("switched off by --no-kernel-cache")
        return
    yield KernelPath("not implemented yet")
