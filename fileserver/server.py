"""Run the server: sockets, userspace, the kernel datapath and metrics, signals and shutdown (one
process; --workers N hands over to workers.py)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from contextlib import AsyncExitStack

from fileserver.config import Config
from fileserver.kernel import start_kernel_path
from fileserver.listen import start_site
from fileserver.reload import Reloader
from fileserver.userspace import Userspace, ready_reason
from fileserver.userstats import UserStats

log = logging.getLogger("fileserver")


async def serve(config: Config, ready: asyncio.Event | None = None,
                reload: Callable[[], Config] | None = None) -> None:
    """Serve until SIGTERM or SIGINT: in this process (--workers 1), or as the supervisor of
    --workers processes (workers.py)."""
    if config.workers > 1:
        from fileserver.workers import supervise

        await supervise(config, ready, reload)
        return
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    stats = UserStats()
    user = Userspace(config, stats)
    await user.runner.setup()
    async with AsyncExitStack() as stack:
        try:
            # Listen first: a port in use must fail before any TC filter is touched.
            for address in config.bind_addresses:
                await start_site(user.runner, address, config.port, "HTTP", config.backlog)
            kernel = await stack.enter_async_context(
                start_kernel_path(config, user.handler.resolver, user.handler.memcache))
        except BaseException:
            await user.runner.cleanup()
            raise
        # Unwound before the kernel path stops: connections the kernel answered on still need
        # sequence translation while userspace closes them.
        stack.push_async_callback(user.linger)
        if kernel.enabled:
            user.link_kernel(kernel, kernel.on_user_served, kernel.on_user_missing)
            kernel.set_close_handler(user.http.close_for_kernel)

        if config.metrics_port:
            from fileserver.metrics import Metrics, start_metrics

            metrics = Metrics(lambda: stats, kernel, lambda: ready_reason(config, kernel))
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
            reloader = Reloader(config, reload, user.reconfigure, kernel, user.handler.resolver)
            loop.add_signal_handler(signal.SIGHUP, reloader.trigger)
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("shutting down: finishing in-flight responses")
    log.info("stopped")


