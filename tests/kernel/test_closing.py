"""Answers that end their connection (Connection: close, HTTP/1.0), also under loss, and connections
handed back from userspace to the kernel."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import SITE_FILES
from tests.kernel.kernel_path import VARIANT_REQUESTS, assert_no_tcp_trouble, exchange, lossy_veth
from tests.support import (
    NetNS,
    RawClient,
    Server,
    body_of,
    nstat,
    split_response,
    without_date,
)


def test_close_and_http10_variants_answered_by_kernel_like_userspace(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    """Connection: close and HTTP/1.0 (with and without keep-alive) in the kernel: the same bytes as
    userspace sends, and the connection closes (or stays) as it would with userspace."""
    kernel_srv = server_factory(site, "--hot-after", "0")
    etag = split_response(RawClient(netns).get("/style.css"))[1]["etag"]
    requests = {k: (r.replace(b"ETAG", etag.encode()), close) for k, (r, close) in VARIANT_REQUESTS.items()}
    from_kernel = {}
    for name, (request, _) in requests.items():
        hits = kernel_srv.kernel_hits()
        from_kernel[name] = exchange(netns, request)
        assert kernel_srv.kernel_hits() == hits + 1, name
    assert kernel_srv.user_hits() == 0
    assert_no_tcp_trouble(netns)
    kernel_srv.stop()
    user_srv = server_factory(site, "--no-kernel-cache", expect_kernel=False)
    for name, (request, close) in requests.items():
        resp, closed = exchange(netns, request)
        assert without_date(from_kernel[name][0]) == without_date(resp), name
        assert from_kernel[name][1] == closed == close, name
    assert user_srv.user_hits() == len(requests)


@pytest.mark.parametrize("loss", [{"every": 6}, {"share": 1 / 6, "seed": 7}], ids=["every-6th", "random-1-in-6"])
def test_closing_answers_survive_loss(veth, site: Path, loss: dict[str, float]) -> None:  # type: ignore[no-untyped-def]
    """A hundred requests whose answers end or keep their connection (HTTP/1.0, Connection: close,
    HTTP/1.0 keep-alive, keep-alive then close), with server->client data segments dropped: every
    answer arrives complete and byte-exact, each connection closes when it should, in bounded time."""
    with lossy_veth(veth, site, **loss) as (srv, dropper):  # type: ignore[arg-type]
        start = time.monotonic()
        for i in range(25):
            for request, closes in ((b"GET /hot.txt HTTP/1.0\r\n\r\n", True),
                                    (b"GET /hot.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", True)):
                c = RawClient(veth.client, host="192.0.2.1", timeout=20)
                c.send(request)
                assert body_of(c.read_response()) == SITE_FILES["hot.txt"], (i, request)
                c.sock.settimeout(20)
                assert c.sock.recv(1) == b"", (i, request)  # the server closed it
                c.close()
            c = RawClient(veth.client, host="192.0.2.1", timeout=20)
            for _ in range(2):
                c.send(b"GET /style.css HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                assert body_of(c.read_response()) == SITE_FILES["style.css"]
            assert body_of(c.get("/hot.txt", "Connection: close\r\n")) == SITE_FILES["hot.txt"]
            c.sock.settimeout(20)
            assert c.sock.recv(1) == b""
            c.close()
        elapsed = time.monotonic() - start
        seen, dropped = dropper.stats()
        assert dropped >= 10, (seen, dropped)
        m = srv.metrics()
        assert m["fileserver_requests_total{path=kernel}"] >= 125 and m["fileserver_kernel_retransmits_total"] >= 10
        assert elapsed < 60, elapsed
        time.sleep(1)
        states = veth.server.run("ss", "-tanH", "sport", "= :8080").stdout.split()
        assert not {"CLOSE-WAIT", "LAST-ACK", "FIN-WAIT-1", "FIN-WAIT-2", "CLOSING"} & set(states), states[:20]


def test_connection_returns_to_kernel_after_userspace(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    """A connection that went to userspace comes back once userspace has answered all it read and
    the client has it all; responses never change order on the way."""
    srv = server_factory(site, "--hot-after", "0")
    c = RawClient(netns)
    # Userspace says it is done only after writing; a client on loopback can be quicker than that,
    # so wait a moment before each request that should come back (a network's round trip does).
    assert c.get("/nope").startswith(b"HTTP/1.1 404")  # a miss: userspace
    time.sleep(0.05)
    assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]  # back in the kernel
    assert (srv.user_hits(), srv.kernel_hits()) == (1, 1)
    assert body_of(c.get("/big.bin")) == SITE_FILES["big.bin"]  # sendfile, many segments
    time.sleep(0.05)
    for path in ("/style.css", "/hot.txt"):
        assert body_of(c.get(path)) == SITE_FILES[path[1:]]
    assert (srv.user_hits(), srv.kernel_hits()) == (2, 3)
    assert srv.metrics()["fileserver_kernel_returns_total"] == 2
    # A miss and a hit pipelined in one segment: both to userspace, in order.
    c.send(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\nGET /hot.txt HTTP/1.1\r\nHost: x\r\n\r\n")
    assert c.read_response().startswith(b"HTTP/1.1 404")
    assert body_of(c.read_response()) == SITE_FILES["hot.txt"]
    # ... and in consecutive segments: a hit sent before a userspace answer came stays behind it.
    # (The client's stack may hold the second segment until the first answer has arrived; the
    # kernel may then answer it, in order: only the order and the bytes are certain.)
    for _ in range(20):
        c.send(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        c.send(b"GET /hot.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        assert body_of(c.read_response()) == SITE_FILES["big.bin"]
        assert body_of(c.read_response()) == SITE_FILES["hot.txt"]
    time.sleep(0.05)
    kernel = srv.kernel_hits()
    assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]
    assert srv.kernel_hits() == kernel + 1
    m = srv.metrics()
    assert m["fileserver_requests_total{path=user}"] + m["fileserver_requests_total{path=kernel}"] == 48
    assert m["fileserver_requests_total{path=user}"] >= 24  # the misses, the sendfiles, the pipelined pair
    assert_no_tcp_trouble(netns)
    # Nothing is lost on loopback: a retransmission would mean the server socket missed an ACK that
    # rode on a request the kernel answered (the kernel hands it over before answering).
    s = nstat(netns)
    print("NSTAT", {k: v for k, v in s.items() if v and k.startswith("TcpExt")}, {k: v for k, v in srv.metrics().items() if v and "kernel" in k})
    assert s.get("TcpRetransSegs", 0) == 0, {k: v for k, v in s.items() if v and k.startswith("TcpExt")}


def test_connection_state_is_freed_at_close(veth, site: Path) -> None:  # type: ignore[no-untyped-def]
    """A connection's kernel state goes the moment both FINs are acknowledged, whichever side
    closes first, not after the collector's idle time (a high rate of closes would fill the
    table). The server's side of a close it began then waits in TIME_WAIT, translated from what
    is left (closed_conns); nothing is reset or left half-closed."""
    srv = Server(veth.server, site, "--hot-after", "0", "--interface", veth.server_if)
    try:
        for _ in range(20):  # the server closes first: the kernel's answer ends the connection
            resp, closed = exchange(veth.client, b"GET /hot.txt HTTP/1.0\r\n\r\n", host="192.0.2.1")
            assert body_of(resp) == SITE_FILES["hot.txt"] and closed
        for _ in range(20):  # the client closes first, after two answers
            c = RawClient(veth.client, host="192.0.2.1")
            for _ in range(2):
                assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]
            c.close()
        time.sleep(0.5)  # (the collector runs every 5 s, on entries idle for 10 s)
        m = srv.metrics()
        assert m["fileserver_requests_total{path=kernel}"] == 60 and m["fileserver_requests_total{path=user}"] == 0
        assert m["fileserver_conn_state_entries"] == 0, m
        assert m["fileserver_kernel_connections_freed_total"] == 40, m
        states = veth.server.run("ss", "-tanH", "sport", "= :8080").stdout.split()
        assert states.count("TIME-WAIT") == 20, states
        assert not {"CLOSE-WAIT", "LAST-ACK", "FIN-WAIT-1", "FIN-WAIT-2", "CLOSING"} & set(states), states
        assert_no_tcp_trouble(veth.client)
    finally:
        srv.stop()


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "no-kernel-cache"])
def test_time_wait_after_the_last_ack_is_lost(veth, site: Path, kernel: bool) -> None:  # type: ignore[no-untyped-def]
    """The server closes first and its last ACK is lost: the client, in LAST_ACK, sends its FIN
    again, and the server's TIME_WAIT socket must acknowledge it in the client's sequence space.
    The connection's state is already freed then; what is left of it (closed_conns) translates
    both segments, and the client's side closes as it does with userspace alone."""
    from tests.kernel.lossy import Dropper

    srv = Server(veth.server, site, "--hot-after", "0", "--interface", veth.server_if,
                 *([] if kernel else ["--no-kernel-cache"]), expect_kernel=kernel)
    dropper = Dropper(veth.client, veth.client_if, 8080, {1}, pure_acks=True)  # the server's first pure ACK
    try:
        resp, closed = exchange(veth.client, b"GET /hot.txt HTTP/1.0\r\n\r\n", host="192.0.2.1")
        assert body_of(resp) == SITE_FILES["hot.txt"] and closed
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the client's RTO (200 ms), then its FIN again
            client = veth.client.run("ss", "-tanH", "dport", "= :8080").stdout.split()
            if "LAST-ACK" not in client:
                break
            time.sleep(0.1)
        assert dropper.stats()[1] == 1
        assert "LAST-ACK" not in client, client
        assert veth.server.run("ss", "-tanH", "sport", "= :8080").stdout.split().count("TIME-WAIT") == 1
        m = srv.metrics()
        assert m["fileserver_requests_total{path=kernel}"] == (1 if kernel else 0)
        if kernel:
            assert m["fileserver_kernel_connections_freed_total"] == 1 and m["fileserver_conn_state_entries"] == 0
        counters = nstat(veth.client)
        assert counters.get("TcpOutRsts", 0) == 0 and counters.get("TcpEstabResets", 0) == 0, counters
    finally:
        dropper.close()
        srv.stop()


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "no-kernel-cache"])
def test_a_client_that_resets_mid_answer_ends_the_server_socket(veth, site: Path, kernel: bool) -> None:  # type: ignore[no-untyped-def]
    """A client closes while part of a multi-segment answer is missing (ab and wrk do so when they
    stop): its FIN calls for the rest, and its closed socket answers the resent data with a reset
    whose sequence number is the ACK those segments carried (RFC 9293 section 3.10.7.1). The
    server socket must accept that reset and go, as it does with userspace alone, not stay
    established with nobody at the other end; and the connection's kernel state goes with it. A
    later connection on the same port pair then opens without a challenge ACK."""
    from tests.kernel.lossy import Dropper

    srv = Server(veth.server, site, "--hot-after", "0", "--interface", veth.server_if,
                 *([] if kernel else ["--no-kernel-cache"]), expect_kernel=kernel)
    dropper = Dropper(veth.client, veth.client_if, 8080, {2, 13})  # the second segment, and its fast resend
    try:
        c = RawClient(veth.client, host="192.0.2.1")
        port = c.sock.getsockname()[1]
        c.send(b"GET /large.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.1)  # everything but the hole (the client's RTO is 200 ms at least)
        c.sock.setblocking(False)
        got = b""
        while True:  # read what is in order, so that the close sends a FIN, not a reset of its own
            try:
                chunk = c.sock.recv(1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                break
            got += chunk
        c.sock.close()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            left = veth.server.run("ss", "-tanH", "sport", "= :8080", "dport", f"= :{port}").stdout.split()
            if not left:
                break
            time.sleep(0.1)
        assert dropper.stats()[1] >= 1
        assert not left, left  # before the fix: ESTAB until aiohttp's keep-alive timeout
        m = srv.metrics()
        if kernel:
            assert m["fileserver_requests_total{path=kernel}"] == 1 and m["fileserver_conn_state_entries"] == 0, m
        again = RawClient(veth.client, host="192.0.2.1")  # (a new socket: the port may be reused)
        assert body_of(again.get("/hot.txt")) == SITE_FILES["hot.txt"]
        again.close()
        assert nstat(veth.server).get("TcpExtTCPChallengeACK", 0) == 0
    finally:
        dropper.close()
        srv.stop()
