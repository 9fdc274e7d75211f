"""Run the server: sockets, the aiohttp runner, the kernel datapath and metrics, and shutdown."""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
from contextlib import AsyncExitStack

from aiohttp import web

from fileserver.app import make_app
from fileserver.config import Config
from fileserver.handlers import StaticHandler, UserStats
from fileserver.portinfo import who_listens
from fileserver.resolve import Resolver
from fileserver.snapshot import MemoryCache

log = logging.getLogger("fileserver")

ACCESS_LOG_FORMAT = '%a - - %t "%r" %s %b "%{Referer}i" "%{User-Agent}i"'


class StartupError(RuntimeError):
    """The server cannot start; the message says why and what to do."""


async def _start_site(runner: web.AppRunner, host: str, port: int, what: str) -> None:
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            holder = who_listens(port)
            raise StartupError(
                f"{what} port {port} is already in use" + (f" by {holder}" if holder else "") + ": pick another port"
            ) from None
        if e.errno == errno.EACCES:
            raise StartupError(f"not allowed to listen on {what} port {port}: use a port above 1023 or run as root") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise StartupError(f"cannot bind to {host}: no such local address (check --bind)") from None
        raise


async def serve(config: Config, ready: asyncio.Event | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    stats = UserStats()
    memcache = MemoryCache(config.memory_cache_bytes, config.max_memory_file_size)
    resolver = Resolver(config.root)

    handler = StaticHandler(resolver, memcache, stats, autoindex=config.autoindex)
    runner = web.AppRunner(
        make_app(handler, config),
        access_log=log.getChild("access") if config.access_log else None,
        access_log_format=ACCESS_LOG_FORMAT,
        shutdown_timeout=config.shutdown_timeout,
        handle_signals=False,
    )
    await runner.setup()
    async with AsyncExitStack() as stack:
        try:
            # Listen first: a port in use must fail before any TC filter is touched.
            await _start_site(runner, config.bind, config.port, "HTTP")
            from fileserver.kernel import start_kernel_path  # imported late: pulls in bcc only when needed

            kernel = await stack.enter_async_context(start_kernel_path(config, resolver, memcache))
        except BaseException:
            await runner.cleanup()
            raise
        # Unwound before the kernel path stops: connections the kernel answered on still need
        # sequence translation while userspace closes them.
        stack.push_async_callback(_linger_after, runner)
        if kernel.enabled:
            handler.on_served = kernel.on_user_served

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
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("shutting down: finishing in-flight responses")
    log.info("stopped")


async def _linger_after(runner: web.AppRunner) -> None:
    await runner.cleanup()
    await asyncio.sleep(0.3)  # let the closing handshakes (FIN/ACK) pass through translation
