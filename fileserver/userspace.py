"""One process's userspace server: the static handler, aiohttp's server over it and their runner,
and when such a server is ready for traffic."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace

from aiohttp import web

from fileserver.app import HttpServer
from fileserver.config import Config
from fileserver.handlers import StaticHandler
from fileserver.kernel import KernelPath
from fileserver.resolve import Resolver
from fileserver.snapshot import MemoryCache, Snapshot
from fileserver.userstats import UserStats

log = logging.getLogger("fileserver")

LOST_CLOSES_CHECK_S = 1.0
ACCESS_LOG_FORMAT = '%a - - %t "%r" %s %b "%{Referer}i" "%{User-Agent}i"'


def ready_reason(config: Config, kernel: KernelPath) -> str | None:
    """Why this server is not ready for traffic (None: it is): with the kernel path asked for, it
    must be attached (a node serving from userspace alone is one a balancer should pass over)."""
    if config.kernel_cache and not kernel.enabled:
        return f"kernel path off: {kernel.off_reason}"
    return None


class Userspace:
    """One process's userspace server: the handler, aiohttp's server over it, and their runner."""

    def __init__(self, config: Config, stats: UserStats, max_connections: int | None = None) -> None:
        self.config = config
        memcache = MemoryCache(config.memory_cache_bytes, config.max_memory_file_size)
        self.handler = StaticHandler(Resolver(config.root), memcache, stats, autoindex=config.autoindex,
                                     cache_control=config.cache_control_policy,
                                     precompressed=config.precompressed, compress=config.compress)
        self._max_connections = max_connections
        self.http = HttpServer(
            self.handler,
            self._limited(config),
            access_log=log.getChild("access") if config.access_log else None,
            access_log_format=ACCESS_LOG_FORMAT,
        )
        self.runner = web.ServerRunner(self.http, shutdown_timeout=config.shutdown_timeout, handle_signals=False)

    def _limited(self, config: Config) -> Config:
        """A worker's share of --max-connections (the whole of it in a single process)."""
        if self._max_connections is None:
            return config
        return replace(config, max_connections=self._max_connections)

    def link_kernel(self, kernel: KernelPath, served: Callable[[str, Snapshot], None],
                    missing: Callable[[str], None]) -> None:
        self.handler.on_served, self.handler.on_missing = served, missing
        self.http.kernel = kernel
        self._kernel = kernel
        self._closes_lost = kernel.closes_lost()
        asyncio.get_running_loop().call_later(LOST_CLOSES_CHECK_S, self._find_lost_closes)

    def _find_lost_closes(self) -> None:
        """A close event the ring had no room for (errors{kind="close_lost"} moved) leaves its
        socket open until a timeout: find such connections by their kernel state instead, once a
        second, and close them as their events would have (a second late, nothing lost)."""
        try:
            lost = self._kernel.closes_lost()
            if lost != self._closes_lost:
                self._closes_lost = lost
                events = [ev for a in self.http.registry.addresses() if (ev := self._kernel.kernel_closing(a))]
                if events:
                    log.warning("the close-event ring was full: closing %d connection(s) the kernel ended, "
                                "found in conn_state", len(events))
                    self.http.close_for_kernel(events)
        except Exception:
            log.exception("looking for connections whose close event was lost failed")
        asyncio.get_running_loop().call_later(LOST_CLOSES_CHECK_S, self._find_lost_closes)

    async def reconfigure(self, new: Config) -> None:
        """Apply a reloaded configuration's userspace part (see _Reloader for the order)."""
        if new.root != self.config.root:
            self.handler.resolver = Resolver(new.root)
        self.http.reconfigure(self._limited(new))
        self.handler.autoindex = new.autoindex
        self.handler.cache_control, self.handler.precompressed = new.cache_control_policy, new.precompressed
        self.handler.compress = new.compress
        self.config = new

    async def linger(self) -> None:
        await _linger_after(self.runner)


async def _linger_after(runner: web.BaseRunner) -> None:
    await runner.cleanup()
    await asyncio.sleep(0.3)  # let the closing handshakes (FIN/ACK) pass through translation
