"""The aiohttp server: every request goes to the static handler, under llhttp's limits and ours.

aiohttp's low-level server (no router: one handler answers everything). llhttp answers 400 for an
oversized request line, header field or header count before any handler runs; idle keep-alive
connections close after keepalive_timeout. Our per-connection request handler adds what aiohttp
lacks: a deadline for reading a request head, and the two ways the kernel path and userspace share
a connection (closing it after a kernel answer that ends it, handing it back when userspace is idle).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any, Protocol, cast

from aiohttp import web
from aiohttp.http_parser import RawRequestMessage

from fileserver.config import Config
from fileserver.conns import CloseEvent, canonical_address
from fileserver.handlers import StaticHandler
from fileserver.userstats import UserStats

# A closing answer the client never acknowledged (its ACK lost): close after this long anyway.
CLOSE_FALLBACK_S = 3.0
REQUEST_TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
BUSY_RESPONSE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def handler_limits(config: Config) -> dict[str, Any]:
    """The per-connection settings aiohttp's request handler takes from config."""
    return {
        "max_line_size": config.max_url_length,
        "max_field_size": config.max_header_size,
        "max_headers": config.max_headers,
        "keepalive_timeout": config.keepalive_timeout,
    }


# What the handler below relies on in aiohttp's RequestHandler (and its BaseProtocol) beyond the
# documented API: private state it reads or sets, and internal methods it overrides. pyproject.toml
# pins the aiohttp minor versions these were checked against; tests/unit/test_aiohttp_internals.py
# fails, naming the member, if one is gone (and if one of our own names shadows one of aiohttp's).
AIOHTTP_HANDLER_INTERNALS = (
    "_close", "_force_close", "_keepalive", "_keepalive_handle", "_keepalive_timeout", "_loop", "_manager",
    "_messages", "_next_keepalive_close_time", "_process_keepalive", "_request_count", "_request_in_progress",
    "_waiter", "finish_response",
)
# ... and in web.Server (HttpServer below).
AIOHTTP_SERVER_INTERNALS = ("_kwargs", "_loop")


class _RequestHandler(web.RequestHandler):
    """aiohttp's handler of one connection, plus:
    - at most max_connections open: more are answered 503 and closed;
    - a request head must arrive in full within header_timeout, counted from the connection's start
      for the first request and from the first byte of each later one (idle time between requests
      is the keep-alive timeout's business); else 408 (if part of it came) and close;
    - kernel_answered_last: close the socket after a kernel answer that ended the connection;
    - eof_received: a client that half-closes still gets the answers to what it sent;
    - finish_response: tell the kernel path when this connection has nothing left in userspace;
    - its timers ask the kernel path when it last saw the connection, before calling it idle."""

    def __init__(self, *args: Any, header_timeout: float, max_connections: int, stats: UserStats,
                 registry: "ConnectionRegistry", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_connections = max_connections
        self._header_timeout = header_timeout
        self._stats = stats
        self._registry = registry
        self._deadline: asyncio.TimerHandle | None = None
        self._partial = False
        self._addresses: Addresses | None = None
        self._close_fallback: asyncio.TimerHandle | None = None
        self._answered = 0  # responses finished (aiohttp's _request_count: request heads read)
        self._consumed = 0          # bytes read from the socket
        self._written = 0           # bytes written to it
        self._at_boundary = False   # ... and they end exactly after whole body-less requests

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if len(self._registry) >= self._max_connections:
            self._stats.refused += 1
            cast(asyncio.Transport, transport).write(BUSY_RESPONSE)
            self.force_close()
            return
        self._arm()
        peer, local = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
        if peer and local:
            # The spelling close events use: a dual-stack socket names an IPv4 peer ::ffff:a.b.c.d.
            self._addresses = (canonical_address(peer[0]), peer[1], canonical_address(local[0]), local[1])
            self._registry.add(self._addresses, self)

    def eof_received(self) -> bool | None:
        """The client shut down its sending side (a half-close: HTTP/1.0 tools do, right after the
        request). asyncio closes the transport when this returns a false value, which would drop a
        response not yet written; instead answer every request already read, then close, as nginx
        does (RFC 9112 section 9.6: the server closes after its final response)."""
        if self._request_count == self._answered:
            return None  # every request read is answered: close now
        self._close = True
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        if self._close_fallback is not None:
            self._close_fallback.cancel()
        if self._addresses is not None:
            self._registry.remove(self._addresses, self)
        super().connection_lost(exc)

    async def finish_response(self, request: web.BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> Any:
        """After each response: if userspace now owes nothing on this connection (nothing queued or
        half read), say so with the exact bytes read and written, so that the kernel can take the
        connection back once the client has acknowledged every one of them (bpf: back_to_kernel).
        Said only after the bytes are written: a count told early and wrong could let the kernel
        answer between two parts of a response."""
        result = await super().finish_response(request, resp, start_time)
        self._answered += 1
        self._written += request.writer.output_size  # status line, headers and written bodies
        if isinstance(resp, web.FileResponse) and request.method != "HEAD" and resp.status in (200, 206):
            self._written += resp.content_length or 0  # sent with sendfile, which the writer does not count
        if self._owes_nothing():
            self._tell_idle(self._written)
        return result

    def _owes_nothing(self) -> bool:
        return (self._at_boundary and not self._messages and self._keepalive and not self._close
                and not self._force_close and self.transport is not None)

    def _kernel(self) -> "KernelLink | None":
        return getattr(self._manager, "kernel", None)  # the HttpServer's (no manager once the connection is lost)

    def _tell_idle(self, written: int) -> None:
        kernel = self._kernel()
        if kernel is not None and self._addresses is not None:
            kernel.user_idle(self._addresses, self._consumed, written)

    def _kernel_quiet_for(self) -> float | None:
        """Seconds since the kernel path saw this connection's last segment, if it answers requests
        on it: those never reach us, so our timers must not take the connection for an idle one."""
        kernel = self._kernel()
        if kernel is None or self._addresses is None:
            return None
        return kernel.seconds_since_segment(self._addresses)

    def _process_keepalive(self) -> None:
        quiet = self._kernel_quiet_for()
        if quiet is not None and quiet < self._keepalive_timeout and self._keepalive and not self._force_close:
            self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout - quiet
            self._keepalive_handle = self._loop.call_at(self._next_keepalive_close_time, self._process_keepalive)
            return
        super()._process_keepalive()

    def _idle(self) -> bool:
        """No request queued or being handled (also true before aiohttp's loop first waits)."""
        return not self._request_in_progress and not self._messages

    def kernel_answered_last(self, acked: bool) -> None:
        """The kernel answered a request that ends this connection (Connection: close, HTTP/1.0).
        Close the socket once the client has that answer (acked), so that our FIN follows it;
        if no acknowledgement is heard of (a lost ACK), after CLOSE_FALLBACK_S anyway."""
        if not acked:
            if self._close_fallback is None:
                self._close_fallback = self._loop.call_later(CLOSE_FALLBACK_S, self.kernel_answered_last, True)
            return
        if self._close_fallback is not None:
            self._close_fallback.cancel()
        if self._idle():
            self.force_close()  # nothing in flight: close now (close() would wait for a request to come)
        else:
            self.close()

    def reset(self) -> None:
        """End the connection with a reset: a kernel answer on it can no longer be completed, and
        a client must not take a truncated answer for a whole one."""
        transport = self.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    def data_received(self, data: bytes) -> None:
        heads = self._request_count
        super().data_received(data)
        self._consumed += len(data)
        new = self._request_count - heads
        self._at_boundary = bool(new) and data.endswith(b"\r\n\r\n") and all(
            isinstance(msg, RawRequestMessage) and not msg.chunked and msg.headers.get("Content-Length") in (None, "0")
            for msg, _ in list(self._messages)[-new:])
        if new:
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
        if not self._partial and self._kernel_quiet_for() is not None:
            return  # nothing half-read, and the kernel answers here: idleness is the keep-alive timer's business
        self._stats.header_timeouts += 1
        if self._partial and self.transport is not None:
            self.transport.write(REQUEST_TIMEOUT_RESPONSE)
        self.force_close()


Addresses = tuple[str, int, str, int]  # client address and port, server address and port


class KernelLink(Protocol):
    """What the request handler needs from the kernel path (fileserver.kernel.KernelPath)."""

    def user_idle(self, addresses: Addresses, consumed: int, written: int) -> None: ...

    def seconds_since_segment(self, addresses: Addresses) -> float | None: ...


class ConnectionRegistry:
    """Open connections by address, so that a close the kernel asks for finds its socket. The
    kernel can be faster than accept(): a request for a connection not accepted yet waits here
    (briefly) for it."""

    PENDING_TTL_S = 10.0

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._open: dict[Addresses, _RequestHandler] = {}
        self._pending: dict[Addresses, tuple[float, bool]] = {}

    def __len__(self) -> int:
        return len(self._open)

    def addresses(self) -> list[Addresses]:
        return list(self._open)

    def add(self, addresses: Addresses, handler: _RequestHandler) -> None:
        self._open[addresses] = handler
        early = self._pending.pop(addresses, None)
        if early is not None and early[0] > self._loop.time():
            handler.kernel_answered_last(early[1])

    def remove(self, addresses: Addresses, handler: _RequestHandler) -> None:
        if self._open.get(addresses) is handler:
            del self._open[addresses]

    def reset(self, addresses: Addresses) -> None:
        handler = self._open.get(addresses)
        if handler is not None:
            handler.reset()

    def close_for_kernel(self, addresses: Addresses, acked: bool) -> None:
        handler = self._open.get(addresses)
        if handler is not None:
            handler.kernel_answered_last(acked)
            return
        now = self._loop.time()
        if len(self._pending) > 1024:
            self._pending = {a: p for a, p in self._pending.items() if p[0] > now}
        previous = self._pending.get(addresses)
        self._pending[addresses] = (now + self.PENDING_TTL_S, acked or bool(previous and previous[1]))


class HttpServer(web.Server):
    """aiohttp's low-level server with our request handler; `reconfigure` changes the limits for
    connections accepted from then on (those already open keep theirs)."""

    def __init__(self, handler: StaticHandler, config: Config, **kwargs: Any) -> None:
        super().__init__(handler, **handler_limits(config), **kwargs)  # type: ignore[arg-type]
        self._header_timeout = config.header_timeout
        self._max_connections = config.max_connections
        self._stats = handler.stats
        self.registry = ConnectionRegistry(self._loop)
        self.kernel: KernelLink | None = None  # set when the kernel path runs

    def close_for_kernel(self, events: list[CloseEvent]) -> None:
        """The kernel ended these connections with its answers: close our sockets (see the handler)."""
        for event in events:
            addresses = (event.client_ip, event.client_port, event.server_ip, event.server_port)
            if event.abort:
                self.registry.reset(addresses)
            else:
                self.registry.close_for_kernel(addresses, event.acked)

    def reconfigure(self, config: Config) -> None:
        self._kwargs.update(handler_limits(config))
        self._header_timeout = config.header_timeout
        self._max_connections = config.max_connections

    def __call__(self) -> web.RequestHandler:
        return _RequestHandler(self, loop=self._loop, header_timeout=self._header_timeout,
                               max_connections=self._max_connections, stats=self._stats, registry=self.registry,
                               **self._kwargs)
