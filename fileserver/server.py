"""Run the server: sockets, the aiohttp runner, the kernel datapath and metrics, and shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import fields, replace

from aiohttp import web

from fileserver.app import HttpServer
from fileserver.config import Config, ConfigError
from fileserver.handlers import StaticHandler, UserStats
from fileserver.kernel import KernelPath, start_kernel_path
from fileserver.listen import start_site
from fileserver.resolve import Resolver
from fileserver.snapshot import MemoryCache

log = logging.getLogger("fileserver")

ACCESS_LOG_FORMAT = '%a - - %t "%r" %s %b "%{Referer}i" "%{User-Agent}i"'


# What a SIGHUP reload can change; everything else needs a restart (sockets, table sizes, ...).
RELOADABLE = frozenset({
    "root", "interfaces", "hot_after", "max_kernel_file_size", "keepalive_timeout", "header_timeout", "max_connections",
    "max_url_length", "max_header_size", "max_headers", "autoindex", "cache_control", "cache_control_rules",
    "precompressed", "compress",
})


async def serve(config: Config, ready: asyncio.Event | None = None,
                reload: Callable[[], Config] | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    stats = UserStats()
    memcache = MemoryCache(config.memory_cache_bytes, config.max_memory_file_size)
    resolver = Resolver(config.root)

    handler = StaticHandler(resolver, memcache, stats, autoindex=config.autoindex,
                            cache_control=config.cache_control_policy, precompressed=config.precompressed,
                            compress=config.compress)
    http = HttpServer(
        handler,
        config,
        access_log=log.getChild("access") if config.access_log else None,
        access_log_format=ACCESS_LOG_FORMAT,
    )
    runner = web.ServerRunner(http, shutdown_timeout=config.shutdown_timeout, handle_signals=False)
    await runner.setup()
    async with AsyncExitStack() as stack:
        try:
            # Listen first: a port in use must fail before any TC filter is touched.
            for address in config.bind_addresses:
                await start_site(runner, address, config.port, "HTTP", config.backlog)
            kernel = await stack.enter_async_context(start_kernel_path(config, resolver, memcache))
        except BaseException:
            await runner.cleanup()
            raise
        # Unwound before the kernel path stops: connections the kernel answered on still need
        # sequence translation while userspace closes them.
        stack.push_async_callback(_linger_after, runner)
        if kernel.enabled:
            handler.on_served = kernel.on_user_served
            handler.on_missing = kernel.on_user_missing
            kernel.set_close_handler(http.close_for_kernel)
            http.kernel = kernel

        if config.metrics_port:
            from fileserver.metrics import Metrics, start_metrics

            metrics = Metrics(stats, kernel)
            handler.latency = metrics.user_latency
            await stack.enter_async_context(start_metrics(config, metrics))

        log.info(
            "serving %s on http://%s:%d/ (kernel path: %s; metrics: %s)",
            config.root,
            config.bind,
            config.port,
            kernel.describe(),
            f"http://{config.metrics_bind}:{config.metrics_port}/metrics" if config.metrics_port else "off",
        )
        if reload is not None:
            reloader = _Reloader(config, reload, handler, http, kernel)
            loop.add_signal_handler(signal.SIGHUP, reloader.trigger)
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("shutting down: finishing in-flight responses")
    log.info("stopped")


class _Reloader:
    """SIGHUP: read the configuration again and apply what can change without dropping a
    connection. One reload at a time; a signal during one runs another after it."""

    def __init__(self, config: Config, read: Callable[[], Config], handler: StaticHandler, http: HttpServer,
                 kernel: KernelPath) -> None:
        self.config, self.read, self.handler, self.http, self.kernel = config, read, handler, http, kernel
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
            resolver = Resolver(new.root) if new.root != self.config.root else self.handler.resolver
            try:
                # The kernel must never accept what userspace refuses: when a limit shrinks the
                # kernel changes first, otherwise userspace does (connections already open keep
                # the limits they were accepted with, as aiohttp builds their parser then).
                kernel_first = new.parser_limits.any_below(self.config.parser_limits)
                if kernel_first:
                    new = await loop.run_in_executor(None, self.kernel.reconfigure, new, resolver)
                self.http.reconfigure(new)
                self.handler.resolver, self.handler.autoindex = resolver, new.autoindex
                self.handler.cache_control, self.handler.precompressed = new.cache_control_policy, new.precompressed
                self.handler.compress = new.compress
                if not kernel_first:
                    new = await loop.run_in_executor(None, self.kernel.reconfigure, new, resolver)
                    self.http.reconfigure(new)  # the kernel may have kept its limits
            except Exception:
                log.exception("reload failed part way; restart to get a known state")
                return
            self.config = new
            log.info("reloaded: %s", ", ".join(changed))


async def _linger_after(runner: web.BaseRunner) -> None:
    await runner.cleanup()
    await asyncio.sleep(0.3)  # let the closing handshakes (FIN/ACK) pass through translation
