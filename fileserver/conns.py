"""Connections as both sides see them: addresses in struct conn_key's form, what userspace tells
the kernel (user_idle), what it asks (conn_state) and what it hears (close_events)."""

from __future__ import annotations

import ctypes as ct
import ipaddress
import socket
from dataclasses import dataclass

from fileserver import conn_gc
from fileserver.abi import CLOSE_ABORT, CLOSE_NOW, CONN_CLOSE_ACKED, CONN_CLOSING, CloseEventC, KernelError
from fileserver.maps import Maps


def address_bytes(text: str) -> bytes:
    """An address as struct conn_key holds it: 16 bytes in network order, IPv4 as IPv4-mapped
    (::ffff:a.b.c.d), which is also how a dual-stack socket names an IPv4 peer."""
    ip = ipaddress.ip_address(text.split("%")[0])  # (a link-local peer's name carries its scope)
    if isinstance(ip, ipaddress.IPv4Address):
        ip = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
    return ip.packed


def address_text(packed: bytes) -> str:
    """The inverse of address_bytes, and the one spelling of an address on both sides: dotted
    for IPv4 (mapped or not), compressed IPv6 otherwise."""
    ip = ipaddress.IPv6Address(packed)
    return str(ip.ipv4_mapped or ip)


def canonical_address(text: str) -> str:
    """A socket's name for an address in the spelling close events use (see address_text)."""
    return address_text(address_bytes(text))


def conn_key(table: object, client_ip: str, client_port: int, server_ip: str, server_port: int) -> object:
    """A struct conn_key (as the programs build it) for a table keyed by it."""
    key = table.Key()  # type: ignore[attr-defined]
    ct.memmove(key.client_ip, address_bytes(client_ip), 16)
    ct.memmove(key.server_ip, address_bytes(server_ip), 16)
    key.client_port, key.server_port = socket.htons(client_port), socket.htons(server_port)
    return key


@dataclass(frozen=True)
class CloseEvent:
    """The kernel answered a request that ends its connection (Connection: close, HTTP/1.0):
    userspace must close the server socket; `acked`: the client has the whole answer. `abort`: a
    multi-segment answer lost a segment whose version is gone: reset the connection instead."""

    client_ip: str
    client_port: int
    server_ip: str
    server_port: int
    acked: bool
    abort: bool = False


def close_event(record: CloseEventC) -> CloseEvent:
    key = record.key
    return CloseEvent(address_text(bytes(key.client_ip)), socket.ntohs(key.client_port),
                      address_text(bytes(key.server_ip)), socket.ntohs(key.server_port),
                      record.kind == CLOSE_NOW, record.kind == CLOSE_ABORT)


class Connections:
    """The connection tables of a map set: conn_state, user_idle and close_events."""

    def __init__(self, maps: Maps) -> None:
        self.maps = maps
        self.conn_state = maps.table("conn_state")
        self.capacity = int(self.conn_state.max_entries)
        self.user_idle = maps.table("user_idle")

    def open_close_events(self) -> None:
        """Start reading close_events (then poll_close_events, from one reader thread)."""
        self._close_batch: list[CloseEvent] = []

        def raw(_ctx: object, data: int, _size: int) -> None:
            self._close_batch.append(close_event(ct.cast(data, ct.POINTER(CloseEventC)).contents))

        self.maps.table("close_events").open_ring_buffer(raw)

    def poll_close_events(self, timeout_ms: int) -> list[CloseEvent]:
        """The records that arrived, waiting up to timeout_ms for the first: all the ring holds,
        in one batch (one wake-up of the event loop for many closes)."""
        self.maps.bpf.ring_buffer_poll(timeout_ms)  # type: ignore[union-attr]
        batch, self._close_batch = self._close_batch, []
        return batch

    def mark_user_idle(self, client_ip: str, client_port: int, server_ip: str, server_port: int,
                       consumed: int, written: int) -> None:
        """Userspace has answered everything it read from this connection (`consumed` bytes read,
        `written` written in all): the kernel may take it back once the client has acknowledged
        all of it (back_to_kernel)."""
        key = conn_key(self.user_idle, client_ip, client_port, server_ip, server_port)
        leaf = self.user_idle.Leaf()
        leaf.consumed, leaf.written = consumed, written
        self.user_idle[key] = leaf

    def kernel_last_seen_ns(self, client_ip: str, client_port: int, server_ip: str, server_port: int) -> int | None:
        """bpf_ktime_get_ns (CLOCK_MONOTONIC) of the last segment of a connection the kernel has
        answered requests on; None for any other."""
        try:
            leaf = self.conn_state[conn_key(self.conn_state, client_ip, client_port, server_ip, server_port)]
        except KeyError:
            return None
        return int(leaf.last_seen_ns) if leaf.delta_in else None

    def kernel_closing(self, client_ip: str, client_port: int, server_ip: str, server_port: int) -> CloseEvent | None:
        """The close event this connection's state implies, if the kernel's last answer on it
        ended it: what its lost close_events record said (see closes_lost)."""
        try:
            leaf = self.conn_state[conn_key(self.conn_state, client_ip, client_port, server_ip, server_port)]
        except KeyError:
            return None
        if not leaf.flags & CONN_CLOSING:
            return None
        return CloseEvent(client_ip, client_port, server_ip, server_port, bool(leaf.flags & CONN_CLOSE_ACKED))

    def closes_lost(self) -> int:
        """close_events records the programs could not write (the ring was full): the count only
        grows, so a reader that sees it move looks for those connections in conn_state."""
        return self.maps.counters().errors.get(KernelError.CLOSE_LOST.label, 0)

    def entries(self) -> int:
        return sum(1 for _ in self.conn_state.keys())

    def collect_garbage(self, port: int, idle_ns: int = 10 * 1_000_000_000) -> int:
        """Delete the entries of connections that no longer exist; how many."""
        return conn_gc.collect(self.conn_state, port, idle_ns)
