"""Prometheus metrics: collectors that read state at scrape time, served by aiohttp."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from fileserver.config import Config
from fileserver.handlers import UserStats

if TYPE_CHECKING:
    from fileserver.kernel import KernelPath


class FileserverCollector(Collector):
    def __init__(self, stats: UserStats, kernel: "KernelPath") -> None:
        self.stats = stats
        self.kernel = kernel

    def collect(self) -> Iterator[Metric]:
        counters = self.kernel.counters()
        requests = CounterMetricFamily("fileserver_requests", "HTTP requests answered, by path", labels=["path"])
        requests.add_metric(["kernel"], counters.get("hits", 0))
        requests.add_metric(["user"], self.stats.requests)
        yield requests
        passes = CounterMetricFamily(
            "fileserver_kernel_passes", "Requests the kernel passed to userspace, by reason", labels=["reason"]
        )
        for reason, value in self.kernel.pass_counts().items():
            passes.add_metric([reason], value)
        yield passes
        errors = CounterMetricFamily("fileserver_kernel_errors", "Kernel path errors, by kind", labels=["kind"])
        for kind, value in self.kernel.error_counts().items():
            errors.add_metric([kind], value)
        yield errors
        enabled = GaugeMetricFamily(
            "fileserver_kernel_enabled", "1 if the kernel path is attached, with the reason when off", labels=["reason"]
        )
        enabled.add_metric([self.kernel.off_reason or ""], 1 if self.kernel.enabled else 0)
        yield enabled
        entries, nbytes = self.kernel.cache_usage()
        yield GaugeMetricFamily("fileserver_kernel_cache_entries", "Files in the kernel cache", value=entries)
        yield GaugeMetricFamily("fileserver_kernel_cache_bytes", "Response bytes in the kernel cache", value=nbytes)


def make_registry(stats: UserStats, kernel: "KernelPath") -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FileserverCollector(stats, kernel))
    return registry


@asynccontextmanager
async def start_metrics(config: Config, stats: UserStats, kernel: "KernelPath") -> AsyncIterator[None]:
    from fileserver.server import _start_site

    registry = make_registry(stats, kernel)

    async def handle(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await _start_site(runner, config.metrics_bind, config.metrics_port, "metrics")
        yield
    finally:
        await runner.cleanup()
