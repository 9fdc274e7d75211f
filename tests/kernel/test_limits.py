"""Resource limits and link changes fail safe: userspace serves, counters say what happened."""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import SITE_FILES
from tests.support import NetNS, RawClient, Server, body_of


def test_full_connection_table_sends_new_connections_to_userspace(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory(site, "--hot-after", "0", "--kernel-connections", "4")
    clients = [RawClient(netns) for _ in range(6)]  # held open: their entries stay
    for c in clients:
        assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]
    m = srv.metrics()
    assert m["fileserver_requests_total{path=kernel}"] == 4
    assert m["fileserver_requests_total{path=user}"] == 2
    assert m["fileserver_kernel_errors_total{kind=conn_full}"] == 2
    assert m["fileserver_kernel_passes_total{reason=no_conn}"] == 2
    assert m["fileserver_conn_state_entries"] == 4 and m["fileserver_conn_state_capacity"] == 4
    for c in clients:  # every connection still works
        assert body_of(c.get("/style.css")) == SITE_FILES["style.css"]
        c.close()


def test_mtu_change_at_run_time(veth, site: Path) -> None:  # type: ignore[no-untyped-def]
    srv = Server(veth.server, site, "--hot-after", "0", "--interface", veth.server_if)
    try:
        c = RawClient(veth.client, host="192.0.2.1")
        assert body_of(c.get("/style.css")) == SITE_FILES["style.css"]  # ~700 bytes: fits 1500
        assert srv.kernel_hits() == 1
        for ns, dev in ((veth.server, veth.server_if), (veth.client, veth.client_if)):
            ns.run("ip", "link", "set", dev, "mtu", "600")
        time.sleep(1.5)  # the maintenance thread notices within a second
        c2 = RawClient(veth.client, host="192.0.2.1")
        assert body_of(c2.get("/style.css")) == SITE_FILES["style.css"]  # now two segments of 548 bytes
        assert body_of(c2.get("/hot.txt")) == SITE_FILES["hot.txt"]
        m = srv.metrics()
        assert m["fileserver_requests_total{path=kernel}"] == 3 and m["fileserver_requests_total{path=user}"] == 0
        assert m["fileserver_kernel_segments_total{kind=more}"] == 1
        assert "MTU of" in srv.log()
    finally:
        srv.stop()


def test_interface_down_and_up(veth, site: Path) -> None:  # type: ignore[no-untyped-def]
    srv = Server(veth.server, site, "--hot-after", "0", "--interface", veth.server_if)
    try:
        c = RawClient(veth.client, host="192.0.2.1")
        assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]
        veth.server.run("ip", "link", "set", veth.server_if, "down")
        time.sleep(0.5)
        veth.server.run("ip", "link", "set", veth.server_if, "up")
        deadline = time.monotonic() + 10
        while "state UP" not in veth.server.run("ip", "link", "show", veth.server_if).stdout:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        # The filters survive the link flap and the same connection goes on.
        assert "fileserver:8080:ingress" in veth.server.run("tc", "filter", "show", "dev", veth.server_if, "ingress").stdout
        assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]
        assert srv.kernel_hits() == 2
    finally:
        srv.stop()


def test_slowloris_does_not_starve_normal_clients(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    import socket
    import threading

    srv = server_factory(site, "--hot-after", "0")
    slow: list[socket.socket] = []
    with netns.entered():
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", 8080), timeout=5)
            s.sendall(b"GET /hot.txt HTTP/1.1\r\nX-Slow: ")
            slow.append(s)
    stop = threading.Event()

    def drip() -> None:  # one byte a second on every slow connection
        while not stop.wait(1.0):
            for s in slow:
                try:
                    s.send(b"a")
                except OSError:
                    pass

    t = threading.Thread(target=drip)
    t.start()
    try:
        worst = 0.0
        for i in range(20):
            start = time.monotonic()
            c = RawClient(netns)
            path = "/hot.txt" if i % 2 else f"/nope{i}"  # kernel and userspace answers (a 404 once per path)
            resp = c.get(path)
            c.close()
            worst = max(worst, time.monotonic() - start)
            assert resp.startswith(b"HTTP/1.1 200") or resp.startswith(b"HTTP/1.1 404")
            time.sleep(0.1)
        assert worst < 1.0, worst
        assert srv.user_hits() >= 10 and srv.kernel_hits() >= 10
    finally:
        stop.set()
        t.join()
        for s in slow:
            s.close()


def test_capabilities_dropped_after_start(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    from fileserver.privileges import KERNEL_PATH_CAPS, thread_capabilities

    srv = server_factory(site, "--hot-after", "0")
    c = RawClient(netns)
    assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]  # the kernel path works without them
    assert body_of(c.get("/big.bin")) == SITE_FILES["big.bin"]  # sendfile in a fresh executor thread
    (site / "hot.txt").write_bytes(b"new\n")  # the watcher and the map updates need none either
    time.sleep(1.2)
    assert body_of(RawClient(netns).get("/hot.txt")) == b"new\n"
    pid = int(netns.run("ip", "netns", "pids", netns.name).stdout.split()[0])
    caps = thread_capabilities(pid)
    assert len(caps) >= 3  # main, watcher, maintenance, ...
    names = {t: open(f"/proc/{pid}/task/{t}/comm").read().strip() for t in caps}
    assert all(v == 0 for v in caps.values()), sorted((int(t), names[t], hex(v)) for t, v in caps.items())
    # Permitted (not effective): BPF, NET_ADMIN and PERFMON, for a reload and the detach at stop.
    expected = sum(1 << c for c in KERNEL_PATH_CAPS)
    assert set(thread_capabilities(pid, "CapPrm").values()) == {expected}
    assert "none effective" in srv.log()
    assert srv.stop() == 0
    assert "fileserver" not in netns.run("tc", "filter", "show", "dev", "lo", "ingress").stdout  # still detaches


def test_configured_limits_and_keepalive_timeout(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory(site, "--hot-after", "0", "--keepalive-timeout", "1", "--max-url-length", "100",
                         "--max-header-size", "200", "--max-headers", "5")
    c = RawClient(netns)
    assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]  # kernel
    assert c.get("/nope").startswith(b"HTTP/1.1 404")  # userspace answers, then the connection idles
    time.sleep(2.5)  # idle longer than the keep-alive timeout: the server closes it
    c.sock.settimeout(2)
    assert c.sock.recv(100) == b""
    for request in (b"GET /" + b"a" * 150 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 300 + b"\r\n\r\n",
                    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(10)) + b"\r\n"):
        c = RawClient(netns)
        c.send(request)
        assert c.read_response(head_only=True).split(b" ")[1] in (b"400", b"414", b"431"), request[:40]
    assert srv.user_hits() == 1  # the parser refused them before any handler ran


def test_max_connections_answers_503_beyond_the_limit(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    import socket

    # One worker: with N, each holds its share (ceil(5 / N)) of the connections the kernel's
    # reuseport hash happens to give it, so the sixth connection is not always the refused one.
    srv = server_factory(site, "--hot-after", "0", "--max-connections", "5", "--workers", "1")
    held = [RawClient(netns) for _ in range(5)]
    time.sleep(0.3)  # accepted
    with netns.entered():
        extra = socket.create_connection(("127.0.0.1", 8080), timeout=5)
    reply = extra.recv(200)
    assert reply.startswith(b"HTTP/1.1 503 Service Unavailable"), reply
    assert extra.recv(10) == b""
    assert body_of(held[0].get("/hot.txt")) == SITE_FILES["hot.txt"]  # those within the limit are served
    held.pop().close()
    time.sleep(0.3)
    assert RawClient(netns).get("/nope").startswith(b"HTTP/1.1 404")  # room again
    assert srv.metrics()["fileserver_connections_refused_total"] == 1


def test_kernel_served_connection_outlives_userspace_timers(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    """Requests the kernel answers never reach userspace: its header and keep-alive timers must not
    take such a connection for an idle one (and do close it once it really is idle)."""
    srv = server_factory(site, "--hot-after", "0", "--header-timeout", "1", "--keepalive-timeout", "1.5")
    c = RawClient(netns)
    for _ in range(12):  # 3.6 s, more than both timeouts
        assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]
        time.sleep(0.3)
    assert srv.kernel_hits() == 12 and srv.user_hits() == 0
    time.sleep(2.5)  # idle for real, longer than the keep-alive timeout
    c.sock.settimeout(2)
    assert c.sock.recv(10) == b""
    assert srv.metrics()["fileserver_header_timeouts_total"] == 0  # closed as an idle keep-alive connection
