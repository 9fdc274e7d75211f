"""Connections without a socket (--socketless-close, bpf/nosock.h): every SYN gets a cookie, the
handshake's last ACK stays in the kernel path, and a first request that is a hit ending the
connection is answered with our FIN, the client's FIN acknowledged: no socket is ever created and
the server process never hears of the connection. Any other first request gets its socket from
the cookie and goes on as usual. Loss is recovered from the client's retransmissions."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

from tests.conftest import SITE_FILES
from tests.kernel.kernel_path import assert_no_tcp_trouble, lossy_veth
from tests.kernel.lossy import Dropper
from tests.support import NetNS, RawClient, Server, body_of, nstat, require_tool, without_date

CLOSING = b"GET /hot.txt HTTP/1.0\r\n\r\n"


def syncookies(ns: NetNS) -> str:
    return ns.run("sysctl", "-n", "net.ipv4.tcp_syncookies").stdout.strip()


def fetch_until_closed(ns: NetNS, request: bytes, host: str = "127.0.0.1", timeout: float = 10,
                       port: int = 8080) -> bytes:
    """One request on a new connection; every byte until the server closes it."""
    with ns.entered():
        sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data
    finally:
        sock.close()


def busy_sockets(ns: NetNS) -> list[str]:
    """The server's port's sockets in any state but LISTEN."""
    out = ns.run("ss", "-tanH", "sport", "= :8080").stdout
    return [line.split()[0] for line in out.splitlines() if line.split() and line.split()[0] != "LISTEN"]


def test_ab_without_keepalive_never_reaches_userspace(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    """The seed's benchmark: ab without -k. Every request is the kernel's, no connection with a
    request gets a socket (TcpPassiveOpens), nothing is left in any state, and the namespace's SYN
    cookie setting is put back at stop."""
    ab = require_tool("ab")
    before = syncookies(netns)
    srv: Server = server_factory(site, "--hot-after", "0", "--socketless-close")
    assert syncookies(netns) == "2"
    k, u = srv.kernel_hits(), srv.user_hits()
    s0 = nstat(netns)
    out = netns.run(ab, "-n", "2000", "-c", "10", "http://127.0.0.1:8080/hot.txt", timeout=120).stdout
    s1 = nstat(netns)
    assert re.search(r"Complete requests:\s+2000\b", out) and re.search(r"Failed requests:\s+0\b", out), out
    delta = {name: s1.get(name, 0) - s0.get(name, 0) for name in ("TcpActiveOpens", "TcpPassiveOpens", "TcpExtSyncookiesSent",
                                                                  "TcpExtSyncookiesRecv", "TcpOutRsts")}
    # ab opens one connection more than it needs and closes it without a request: that one's FIN
    # passes, and the kernel makes its socket from the cookie to take it (a server's usual close).
    # Every connection with a request has none.
    idle = delta["TcpActiveOpens"] - 2000
    assert 0 <= idle <= 10 and delta["TcpPassiveOpens"] == idle == delta["TcpExtSyncookiesRecv"], delta
    assert delta["TcpExtSyncookiesSent"] == delta["TcpActiveOpens"] and delta["TcpOutRsts"] == 0, delta
    m = srv.metrics()
    assert srv.kernel_hits() - k == 2000 and srv.user_hits() == u
    assert m["fileserver_kernel_socketless_connections_total"] == 2000
    time.sleep(0.5)
    assert busy_sockets(netns) == []
    assert_no_tcp_trouble(netns)
    srv.stop()
    assert syncookies(netns) == before


def test_every_other_first_request_gets_its_socket(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    """A keep-alive hit, a miss and a Connection: close hit on socketless connections. The first
    is the kernel's, and the connection gets its socket from the cookie (browsers keep their first
    requests in the kernel, and keep-alive goes on); the miss gets its socket from its own ACK and
    userspace answers; the third is the kernel's alone. Every answer is byte for byte what a
    server without the kernel path sends."""
    srv: Server = server_factory(site, "--hot-after", "0", "--socketless-close")
    plain: Server = server_factory(site, "--no-kernel-cache", port=8081, metrics_port=9181, expect_kernel=False)
    c = RawClient(netns)
    k, u = srv.kernel_hits(), srv.user_hits()
    for _ in range(3):
        assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]
    assert (srv.kernel_hits(), srv.user_hits()) == (k + 3, u)
    (src, sport), _ = c.sock.getsockname(), None
    assert netns.run("ss", "-tanH", "state", "established", "dport", f"= :{sport}").stdout.strip(), "no socket"
    c.close()
    assert fetch_until_closed(netns, b"GET /nothing-here HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 404 ")
    assert srv.user_hits() == u + 1
    closing = fetch_until_closed(netns, b"GET /style.css HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert srv.kernel_hits() == k + 4 and srv.metrics()["fileserver_kernel_socketless_connections_total"] == 1
    theirs = fetch_until_closed(netns, b"GET /style.css HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", port=8081)
    assert without_date(closing) == without_date(theirs)
    time.sleep(0.5)
    assert busy_sockets(netns) == [] or set(busy_sockets(netns)) <= {"TIME-WAIT"}
    assert_no_tcp_trouble(netns)
    del plain


@pytest.mark.parametrize("kernel", [True, False], ids=["socketless", "no-kernel-cache"])
def test_socketless_answers_survive_loss(veth, site: Path, kernel: bool) -> None:  # type: ignore[no-untyped-def]
    """Our answer (with our FIN) lost: the client sends its request again and gets it. Our ACK of
    the client's FIN lost: the client sends its FIN again and gets the ACK (nosock_closed). Both
    as a plain socket survives them (the same losses with userspace alone): byte-exact, every
    connection closed on both sides, no reset."""
    with lossy_veth(veth, site, "--socketless-close" if kernel else "--no-kernel-cache", expect_kernel=kernel,
                    drop={1, 3}) as (srv, dropper):
        acks = Dropper(veth.client, veth.client_if, 8080, {1}, pure_acks=True)  # our first ACK of a FIN
        s0 = nstat(veth.server)
        try:
            answers = [fetch_until_closed(veth.client, CLOSING, host="192.0.2.1", timeout=20) for _ in range(4)]
            time.sleep(1)  # (the FIN whose ACK was lost comes again, after the client's RTO)
        finally:
            acks_seen, acks_dropped = acks.stats()
            acks.close()
        s1 = nstat(veth.server)  # (before any metrics scrape: those are connections too)
        d = {n: s1.get(n, 0) - s0.get(n, 0) for n in ("TcpPassiveOpens", "TcpOutRsts", "TcpExtSyncookiesFailed")}
        assert d == {"TcpPassiveOpens": 0 if kernel else 4, "TcpOutRsts": 0, "TcpExtSyncookiesFailed": 0}, d  # (the FIN sent again got our ACK)
        assert [body_of(a) for a in answers] == [SITE_FILES["hot.txt"]] * 4
        assert dropper.stats()[1] == 2 and acks_dropped == 1, (dropper.stats(), acks_seen)
        m = srv.metrics()
        assert (m["fileserver_requests_total{path=kernel}"], m["fileserver_requests_total{path=user}"]) == ((4, 0) if kernel else (0, 4))
        if kernel:
            assert m["fileserver_kernel_socketless_connections_total"] == 4
            assert m["fileserver_kernel_retransmits_total"] == 2
        # (no socket at all; a plain server socket, which closed first, waits in TIME-WAIT)
        assert set(busy_sockets(veth.server)) <= (set() if kernel else {"TIME-WAIT"})
        client_states = veth.client.run("ss", "-tanH", "dport", "= :8080").stdout.split()
        assert not {"FIN-WAIT-1", "FIN-WAIT-2", "LAST-ACK", "CLOSING", "CLOSE-WAIT"} & set(client_states), client_states
        assert_no_tcp_trouble(veth.client, duplicates=True)


def test_a_syn_flood_leaves_other_clients_served(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    """5,000 SYNs that never complete, then real clients: every SYN got a cookie and nothing else
    (no socket for them), and every real request is answered, without a socket."""
    ab = require_tool("ab")
    srv: Server = server_factory(site, "--hot-after", "0", "--socketless-close")
    from tests.support import raw_tcp_socket, tcp_segment

    raw = raw_tcp_socket(netns)
    s0 = nstat(netns)
    for i in range(5000):  # bounded: 5,000 SYNs from ports nobody listens on (their SYN-ACKs draw resets)
        raw.sendto(tcp_segment("127.0.0.1", "127.0.0.1", 10000 + i, 8080, i * 7919, 0, 0x02, b""), ("127.0.0.1", 0))
    out = netns.run(ab, "-n", "500", "-c", "10", "http://127.0.0.1:8080/hot.txt", timeout=120).stdout
    s1 = nstat(netns)
    assert re.search(r"Failed requests:\s+0\b", out) and re.search(r"Complete requests:\s+500\b", out), out
    d = {name: s1.get(name, 0) - s0.get(name, 0) for name in ("TcpActiveOpens", "TcpPassiveOpens", "TcpExtSyncookiesSent")}
    assert d["TcpPassiveOpens"] == d["TcpActiveOpens"] - 500 <= 10, d  # (ab's spare connection, as above)
    assert d["TcpExtSyncookiesSent"] == 5000 + d["TcpActiveOpens"], d
    assert srv.metrics()["fileserver_kernel_socketless_connections_total"] == 500
    raw.close()



def test_socketless_over_ipv6(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    """The same on ::1 (cookie_v6_check makes the socket of a miss): ab without -k all from the
    kernel with no socket for any connection with a request, a miss answered by userspace, and an
    IPv4 client beside it."""
    ab = require_tool("ab")
    srv: Server = server_factory(site, "--hot-after", "0", "--socketless-close", "--bind", "0.0.0.0,::")
    k, u = srv.kernel_hits(), srv.user_hits()
    s0 = nstat(netns)
    out = netns.run(ab, "-n", "1000", "-c", "10", "http://[::1]:8080/hot.txt", timeout=120).stdout
    s1 = nstat(netns)
    assert re.search(r"Complete requests:\s+1000\b", out) and re.search(r"Failed requests:\s+0\b", out), out
    d = {n: s1.get(n, 0) - s0.get(n, 0) for n in ("TcpActiveOpens", "TcpPassiveOpens", "TcpOutRsts")}
    assert d["TcpPassiveOpens"] == d["TcpActiveOpens"] - 1000 <= 10 and d["TcpOutRsts"] == 0, d
    assert (srv.kernel_hits() - k, srv.user_hits() - u) == (1000, 0)
    assert fetch_until_closed(netns, b"GET /nothing-here HTTP/1.0\r\n\r\n", host="::1").startswith(b"HTTP/1.0 404 ")
    assert body_of(fetch_until_closed(netns, CLOSING)) == SITE_FILES["hot.txt"]
    assert (srv.kernel_hits() - k, srv.user_hits() - u) == (1001, 1)
    assert srv.metrics()["fileserver_kernel_socketless_connections_total"] == 1001
    time.sleep(0.5)
    assert set(busy_sockets(netns)) <= {"TIME-WAIT"}
    assert_no_tcp_trouble(netns)
