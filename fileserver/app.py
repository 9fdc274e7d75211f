"""The aiohttp server: every request goes to the static handler, under llhttp's limits and ours.

aiohttp's low-level server (no router: one handler answers everything). llhttp answers 400 for an
oversized request line, header field or header count before any handler runs; idle keep-alive
connections close after keepalive_timeout. aiohttp has no deadline for reading a request head, so a
client dripping a header byte a second would hold a connection until the keep-alive timeout; the
request handler below closes it after header_timeout instead, with 408 when part of a head arrived.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from fileserver.config import Config
from fileserver.handlers import StaticHandler, UserStats

REQUEST_TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def handler_limits(config: Config) -> dict[str, Any]:
    """The per-connection settings aiohttp's request handler takes from config."""
    return {
        "max_line_size": config.max_url_length,
        "max_field_size": config.max_header_size,
        "max_headers": config.max_headers,
        "keepalive_timeout": config.keepalive_timeout,
    }


class _DeadlineRequestHandler(web.RequestHandler):
    """A request head must arrive in full within header_timeout: counted from the connection's
    start for the first request and from the first byte of each later one (the idle time between
    requests is the keep-alive timeout's business)."""

    def __init__(self, *args: Any, header_timeout: float, stats: UserStats, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout = header_timeout
        self._stats = stats
        self._deadline: asyncio.TimerHandle | None = None
        self._partial = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:
            self._disarm()  # a whole head arrived; bytes after it in this chunk start no clock until more come
            self._partial = False
        elif data:
            self._partial = True
            if self._deadline is None:
                self._arm()

    def _arm(self) -> None:
        self._deadline = self._loop.call_later(self._header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            self._arm()  # a response is still being written: time spent on it is not the client's fault
            return
        self._stats.header_timeouts += 1
        if self._partial and self.transport is not None:
            self.transport.write(REQUEST_TIMEOUT_RESPONSE)
        self.force_close()


class HttpServer(web.Server):
    """aiohttp's low-level server with the deadline handler; `reconfigure` changes the limits for
    connections accepted from then on (those already open keep theirs)."""

    def __init__(self, handler: StaticHandler, config: Config, **kwargs: Any) -> None:
        super().__init__(handler, **handler_limits(config), **kwargs)  # type: ignore[arg-type]
        self._header_timeout = config.header_timeout
        self._stats = handler.stats

    def reconfigure(self, config: Config) -> None:
        self._kwargs.update(handler_limits(config))
        self._header_timeout = config.header_timeout

    def __call__(self) -> web.RequestHandler:
        return _DeadlineRequestHandler(self, loop=self._loop, header_timeout=self._header_timeout,
                                       stats=self._stats, **self._kwargs)
