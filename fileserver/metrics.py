"""Prometheus metrics: collectors that read state at scrape time, served by aiohttp.

Counters of the kernel path live in a per-CPU BPF map and are summed only when scraped; nothing
polls them in between (prometheus/client_python's custom Collector pattern).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from fileserver import __version__
from fileserver.config import Config
from fileserver.userstats import UserStats
from fileserver.listen import start_site

if TYPE_CHECKING:
    from fileserver.kernel import KernelPath

# What userspace answered, summed over the workers at each call (userstats.SharedStats.total).
StatsSource = Callable[[], UserStats]


class FileserverCollector(Collector):
    def __init__(self, stats: StatsSource, kernel: "KernelPath") -> None:
        self.stats = stats
        self.kernel = kernel

    def collect(self) -> Iterator[Metric]:
        k = self.kernel.counters()
        user = self.stats()
        requests = CounterMetricFamily("fileserver_requests", "HTTP requests answered, by path", labels=["path"])
        requests.add_metric(["kernel"], k.hits)
        requests.add_metric(["user"], user.requests)
        yield requests
        resp_bytes = CounterMetricFamily(
            "fileserver_response_bytes", "Response bytes sent (headers and body), by path", labels=["path"]
        )
        resp_bytes.add_metric(["kernel"], k.hit_bytes)
        resp_bytes.add_metric(["user"], user.response_bytes)
        yield resp_bytes
        yield CounterMetricFamily(
            "fileserver_header_timeouts",
            "Connections closed because a request head did not arrive within --header-timeout",
            value=user.header_timeouts,
        )
        yield CounterMetricFamily(
            "fileserver_connections_refused",
            "Connections over --max-connections, answered 503 and closed",
            value=user.refused,
        )
        latency = HistogramMetricFamily(
            "fileserver_user_request_duration_seconds", "Time the userspace handler took to produce a response")
        latency.add_metric([], user.latency_cumulative(), sum_value=user.latency_sum)
        yield latency

        passes = CounterMetricFamily(
            "fileserver_kernel_passes", "Requests the kernel passed to userspace, by reason", labels=["reason"]
        )
        for reason, value in k.passes.items():
            passes.add_metric([reason], value)
        yield passes
        errors = CounterMetricFamily("fileserver_kernel_errors", "Kernel path errors, by kind", labels=["kind"])
        for kind, value in k.errors.items():
            errors.add_metric([kind], value)
        yield errors
        yield CounterMetricFamily(
            "fileserver_kernel_retransmits",
            "Lost kernel answers answered again after the client retransmitted the request",
            value=k.retransmits,
        )
        yield CounterMetricFamily(
            "fileserver_kernel_returns",
            "Connections handed back to the kernel once userspace had answered all it read and the client had it all",
            value=k.returns,
        )
        segs = CounterMetricFamily(
            "fileserver_kernel_segments",
            "Segments of kernel answers longer than one segment, by kind: first sending after the first "
            "segment, sent again (loss recovery), pure ACKs of their requests, tail probes (the last byte "
            "sent once more); and client segments held "
            "back while a kernel answer was not wholly acknowledged",
            labels=["kind"],
        )
        segs.add_metric(["more"], k.segments)
        segs.add_metric(["resent"], k.resent)
        segs.add_metric(["ack"], k.acks)
        segs.add_metric(["probe"], k.probes)
        segs.add_metric(["held"], k.held)
        yield segs
        sack = CounterMetricFamily(
            "fileserver_kernel_sack_options", "SACK options on translated segments: blocks translated into the "
            "receiver's sequence space, or blanked (no block named its bytes)", labels=["action"]
        )
        sack.add_metric(["translated"], k.sack_translated)
        sack.add_metric(["blanked"], k.sack_blanked)
        yield sack
        yield CounterMetricFamily(
            "fileserver_kernel_path_mtu_reductions",
            "ICMP errors (fragmentation needed, packet too big) that lowered a connection's path MTU for kernel answers",
            value=k.path_mtu,
        )
        yield CounterMetricFamily(
            "fileserver_kernel_connections_freed",
            "Connection states freed in the kernel at the connection's close (both FINs acknowledged)",
            value=k.freed,
        )
        yield CounterMetricFamily(
            "fileserver_kernel_socketless_connections",
            "Connections answered and closed in the kernel without any server socket (--socketless-close)",
            value=k.socketless,
        )
        yield CounterMetricFamily(
            "fileserver_kernel_races",
            "Client segments dropped because another CPU changed their connection's state while they were handled "
            "(the client sends them again)",
            value=k.races,
        )
        xlate = CounterMetricFamily(
            "fileserver_kernel_translated_segments", "Segments whose sequence numbers were translated", labels=["direction"]
        )
        xlate.add_metric(["in"], k.xlate_in)
        xlate.add_metric(["out"], k.xlate_out)
        yield xlate
        csum = CounterMetricFamily(
            "fileserver_kernel_checksums", "Kernel answers by checksum mode", labels=["mode"]
        )
        csum.add_metric(["offload"], k.csum_partial)
        csum.add_metric(["full"], k.csum_full)
        yield csum

        enabled = GaugeMetricFamily(
            "fileserver_kernel_enabled", "1 if the kernel path is attached, with the reason when off", labels=["reason"]
        )
        enabled.add_metric([self.kernel.off_reason or ""], 1 if self.kernel.enabled else 0)
        yield enabled
        cache = self.kernel.cache_stats()
        yield GaugeMetricFamily("fileserver_kernel_cache_entries", "Files in the kernel cache", value=cache.get("entries", 0))
        yield GaugeMetricFamily("fileserver_kernel_cache_bytes", "Response bytes in the kernel cache", value=cache.get("bytes", 0))
        yield CounterMetricFamily(
            "fileserver_kernel_cache_evictions", "Entries evicted to make room", value=cache.get("evictions", 0)
        )
        updates = CounterMetricFamily(
            "fileserver_kernel_cache_updates", "Kernel cache changes, by cause", labels=["cause"]
        )
        for cause in ("hot", "modified", "deleted", "missing"):
            updates.add_metric([cause], cache.get(f"updates_{cause}", 0))
        yield updates
        conns, capacity = self.kernel.conn_usage()
        yield GaugeMetricFamily("fileserver_conn_state_entries", "Connections tracked by the kernel path", value=conns)
        yield GaugeMetricFamily("fileserver_conn_state_capacity", "Size of the conn_state map", value=capacity)
        packets = CounterMetricFamily(
            "fileserver_interface_packets", "Segments of our port handled by the TC programs", labels=["interface", "direction"]
        )
        nbytes = CounterMetricFamily(
            "fileserver_interface_bytes", "Bytes of our port's segments handled by the TC programs", labels=["interface", "direction"]
        )
        for ifname, c in self.kernel.interface_stats().items():
            for direction in ("in", "out"):
                packets.add_metric([ifname, direction], c.get(f"{direction}_packets", 0))
                nbytes.add_metric([ifname, direction], c.get(f"{direction}_bytes", 0))
        yield packets
        yield nbytes
        info = InfoMetricFamily("fileserver_build", "Build information")
        info.add_metric([], {"version": __version__})
        yield info


# Why the server is not ready for traffic (None: it is): /ready's answer.
ReadySource = Callable[[], str | None]


class Metrics:
    """The registry and the endpoints' sources; one per server (no global default registry)."""

    def __init__(self, stats: StatsSource, kernel: "KernelPath", ready: ReadySource) -> None:
        self.stats = stats
        self.kernel = kernel
        self.ready = ready
        self.started = time.time()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(FileserverCollector(stats, kernel))
        ProcessCollector(registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


@asynccontextmanager
async def start_metrics(config: Config, metrics: Metrics) -> AsyncIterator[None]:
    async def handle(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def handle_json(_: web.Request) -> web.Response:
        from fileserver.stats import snapshot

        body = json.dumps(snapshot(metrics.stats(), metrics.kernel, metrics.started))
        # The demo page on the main port reads this cross-origin; it is read-only and public anyway.
        return web.Response(text=body, content_type="application/json",
                            headers={"Access-Control-Allow-Origin": "*", "Cache-Control": "no-store"})

    async def handle_ready(_: web.Request) -> web.Response:
        # For load balancers' health checks and Kubernetes' readinessProbe: 503 with the reason
        # until every worker serves the root and, unless --no-kernel-cache, the kernel path is
        # attached; the endpoint closes as the server starts draining (SIGTERM).
        reason = metrics.ready()
        return web.Response(status=200 if reason is None else 503, text=f"{reason or 'ready'}\n",
                            headers={"Cache-Control": "no-store"})

    async def handle_live(_: web.Request) -> web.Response:
        return web.Response(text="alive\n", headers={"Cache-Control": "no-store"})  # the event loop answers

    app = web.Application()
    app.router.add_get("/metrics", handle)
    app.router.add_get("/stats.json", handle_json)
    app.router.add_get("/ready", handle_ready)
    app.router.add_get("/live", handle_live)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await start_site(runner, config.metrics_bind, config.metrics_port, "metrics")
        yield
    finally:
        await runner.cleanup()
