"""What the userspace path answered: counters and a latency histogram, one writer each.

With --workers N every worker writes its own slot of one shared anonymous mapping (made before the
workers are forked) and the metrics endpoint sums the slots when scraped: exact totals with no
locks and no messages (each field has one writer; a reader may see a slot mid-request, never a
torn 8-byte field on x86-64 or arm64).
"""

from __future__ import annotations

import ctypes as ct
import mmap

# Userspace request latency buckets, in seconds: a static file server answers in micro- to milliseconds.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class UserStats(ct.Structure):
    """One worker's userspace counters (or their sum: `SharedStats.total`)."""

    _fields_ = [
        ("requests", ct.c_uint64),
        ("response_bytes", ct.c_uint64),
        ("header_timeouts", ct.c_uint64),  # connections closed for a request head that did not arrive in time
        ("refused", ct.c_uint64),          # connections over --max-connections, answered 503 and closed
        # Handler latency: counts per bucket (not cumulative; the last is +Inf), their sum in seconds.
        ("latency_buckets", ct.c_uint64 * (len(LATENCY_BUCKETS) + 1)),
        ("latency_sum", ct.c_double),
    ]

    def observe_latency(self, seconds: float) -> None:
        i = next((i for i, bound in enumerate(LATENCY_BUCKETS) if seconds <= bound), len(LATENCY_BUCKETS))
        self.latency_buckets[i] += 1
        self.latency_sum += seconds

    def latency_cumulative(self) -> list[tuple[str, int]]:
        """Prometheus' histogram buckets: (upper bound, count of observations at or below it)."""
        out, total = [], 0
        for bound, count in zip([*map(str, LATENCY_BUCKETS), "+Inf"], self.latency_buckets):
            total += count
            out.append((bound, total))
        return out

    def add(self, other: "UserStats") -> None:
        for name in ("requests", "response_bytes", "header_timeouts", "refused", "latency_sum"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for i, count in enumerate(other.latency_buckets):
            self.latency_buckets[i] += count


class SharedStats:
    """One UserStats slot per worker in a MAP_SHARED anonymous mapping: made by the supervisor
    before it forks, written by each worker in its slot, summed by the supervisor. A restarted
    worker goes on from its slot's counts (counters never go back)."""

    def __init__(self, workers: int) -> None:
        self._mm = mmap.mmap(-1, max(1, workers) * ct.sizeof(UserStats), flags=mmap.MAP_SHARED)
        self.slots = [UserStats.from_buffer(self._mm, i * ct.sizeof(UserStats)) for i in range(workers)]

    def total(self) -> UserStats:
        total = UserStats()
        for slot in self.slots:
            total.add(slot)
        return total
