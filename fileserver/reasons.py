"""Mirror of bpf/reasons.h: why the kernel passed a request on, and kernel-path errors.

Keep the order identical to the C enums; tests/test_reasons.py checks that they agree.
"""

from __future__ import annotations

import enum


class PassReason(enum.IntEnum):
    MISS = 0
    METHOD = enum.auto()
    CLOSING = enum.auto()
    VERSION = enum.auto()
    CLOSE = enum.auto()
    RANGE = enum.auto()
    CONDITIONAL = enum.auto()
    BODY = enum.auto()
    PIPELINED = enum.auto()
    SPLIT = enum.auto()
    TOO_LONG = enum.auto()
    ESCAPED = enum.auto()
    MALFORMED = enum.auto()
    TOO_BIG = enum.auto()
    WINDOW = enum.auto()
    OUT_OF_SYNC = enum.auto()
    USER_OWNED = enum.auto()
    TCP_OPTIONS = enum.auto()
    IP_OPTIONS = enum.auto()
    NO_CONN = enum.auto()
    STALE = enum.auto()
    CACHE_RACE = enum.auto()
    HANDSHAKE = enum.auto()

    @property
    def label(self) -> str:
        return self.name.lower()


class KernelError(enum.IntEnum):
    CHANGE_TAIL = 0
    STORE = enum.auto()
    CONN_FULL = enum.auto()
    XLATE = enum.auto()
    CLOSE_LOST = enum.auto()
    RESEND_GONE = enum.auto()

    @property
    def label(self) -> str:
        return self.name.lower()
