"""One JSON snapshot of the server's state, for `fileserver stats` and the demo page.

Served on the metrics port at /stats.json (with `Access-Control-Allow-Origin: *`, so the demo page
on the main port can read it). Built from the same sources as the Prometheus collector.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from fileserver import __version__

if TYPE_CHECKING:
    from fileserver.userstats import UserStats
    from fileserver.kernel import KernelPath


def snapshot(stats: "UserStats", kernel: "KernelPath", started: float) -> dict[str, Any]:
    k = kernel.counters()
    conns, capacity = kernel.conn_usage()
    return {
        "version": __version__,
        "time": time.time(),
        "uptime_seconds": round(time.time() - started, 3),
        "kernel": {"enabled": kernel.enabled, "reason": kernel.off_reason, "interfaces": kernel.interface_stats()},
        "requests": {"kernel": k.hits, "user": stats.requests},
        "response_bytes": {"kernel": k.hit_bytes, "user": stats.response_bytes},
        "passes": {r: v for r, v in k.passes.items() if v},
        "errors": {r: v for r, v in k.errors.items() if v},
        "retransmits": k.retransmits,
        "returns": k.returns,
        "races": k.races,
        "segments": {"more": k.segments, "resent": k.resent, "ack": k.acks, "probe": k.probes, "held": k.held},
        "cache": kernel.cache_stats(),
        "hot_files": kernel.hot_files(10),
        "conn_state": {"entries": conns, "capacity": capacity},
    }
