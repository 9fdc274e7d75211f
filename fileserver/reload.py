"""SIGHUP: a reloaded configuration applied, in a safe order, to the kernel path and to userspace."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import fields, replace

from fileserver.config import Config, ConfigError
from fileserver.kernel import KernelPath
from fileserver.resolve import Resolver

log = logging.getLogger("fileserver")

# What a SIGHUP reload can change; everything else needs a restart (sockets, table sizes, ...).
RELOADABLE = frozenset({
    "root", "interfaces", "hot_after", "max_kernel_file_size", "keepalive_timeout", "header_timeout", "max_connections",
    "max_url_length", "max_header_size", "max_headers", "autoindex", "cache_control", "cache_control_rules",
    "precompressed", "compress",
})


class Reloader:
    """SIGHUP: read the configuration again and apply what can change without dropping a
    connection, to the kernel path and to userspace (this process's, or every worker's). One
    reload at a time; a signal during one runs another after it."""

    def __init__(self, config: Config, read: Callable[[], Config],
                 userspace: Callable[[Config], Awaitable[None]], kernel: KernelPath, resolver: Resolver) -> None:
        self.config, self.read, self.userspace, self.kernel, self.resolver = config, read, userspace, kernel, resolver
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def trigger(self) -> None:
        task = asyncio.get_running_loop().create_task(self._reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload(self) -> None:
        loop = asyncio.get_running_loop()
        async with self._lock:
            log.info("SIGHUP: reloading the configuration")
            try:
                new = await loop.run_in_executor(None, self.read)
            except ConfigError as e:
                log.error("reload failed, still running the previous configuration: %s", e)
                return
            fixed = [f.name for f in fields(Config) if f.name not in RELOADABLE
                     and getattr(new, f.name) != getattr(self.config, f.name)]
            if fixed:
                log.warning("reload: %s changed but only take(s) effect at a restart", ", ".join(fixed))
                new = replace(new, **{name: getattr(self.config, name) for name in fixed})
            changed = [f.name for f in fields(Config) if getattr(new, f.name) != getattr(self.config, f.name)]
            if not changed:
                log.info("reload: nothing changed")
                return
            resolver = Resolver(new.root) if new.root != self.config.root else self.resolver
            try:
                # The kernel must never accept what userspace refuses: when a limit shrinks the
                # kernel changes first, otherwise userspace does (connections already open keep
                # the limits they were accepted with, as aiohttp builds their parser then).
                kernel_first = new.parser_limits.any_below(self.config.parser_limits)
                if kernel_first:
                    new = await loop.run_in_executor(None, self.kernel.reconfigure, new, resolver)
                await self.userspace(new)
                if not kernel_first:
                    applied = await loop.run_in_executor(None, self.kernel.reconfigure, new, resolver)
                    if applied != new:  # the kernel kept its limits (capabilities given up)
                        new = applied
                        await self.userspace(new)
            except Exception:
                log.exception("reload failed part way; restart to get a known state")
                return
            self.config, self.resolver = new, resolver
            log.info("reloaded: %s", ", ".join(changed))
