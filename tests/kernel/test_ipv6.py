"""IPv6: the same kernel path as IPv4, on ::1 and on a veth with full checksums, also under loss."""

from __future__ import annotations

import re
import time
from pathlib import Path

from tests.conftest import SITE_FILES
from tests.kernel.kernel_path import (
    VARIANT_REQUESTS,
    assert_no_tcp_trouble,
    closing_fetches,
    exchange,
    lossy_veth,
)
from tests.support import (
    NetNS,
    RawClient,
    Server,
    body_of,
    require_tool,
    split_response,
    without_date,
)


def test_ipv6_answered_by_kernel(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    """IPv6 on ::1 takes the same kernel path as IPv4: keep-alive, answers over several skbs, every
    variant (Connection: close, HTTP/1.0, HEAD, 304) byte for byte as IPv4 gets them, closing
    connections closed, back to the kernel after a miss; IPv4 clients of the same server beside it."""
    srv = server_factory(site, "--hot-after", "0", "--bind", "0.0.0.0,::", "--max-kernel-file-size", "31000")
    c = RawClient(netns, host="::1", nodelay=False)
    for _ in range(3):
        for path in ("/hot.txt", "/xl.bin", "/style.css"):  # xl.bin: 2 skbs on lo
            assert body_of(c.get(path)) == SITE_FILES[path[1:]]
    assert (srv.kernel_hits(), srv.user_hits()) == (9, 0)
    assert srv.metrics()["fileserver_kernel_segments_total{kind=more}"] == 3
    assert c.get("/nope").startswith(b"HTTP/1.1 404")  # userspace ...
    time.sleep(0.05)
    assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]  # ... and back to the kernel
    assert (srv.kernel_hits(), srv.user_hits()) == (10, 1)
    c.close()
    etag = split_response(RawClient(netns, host="::1").get("/style.css"))[1]["etag"]
    for name, (request, close) in VARIANT_REQUESTS.items():
        request = request.replace(b"ETAG", etag.encode())
        hits = srv.kernel_hits()
        v6 = exchange(netns, request, host="::1")
        v4 = exchange(netns, request)
        assert srv.kernel_hits() == hits + 2, name
        assert without_date(v6[0]) == without_date(v4[0]), name
        assert v6[1] == v4[1] == close, name  # closed by the server exactly when it should be
    assert srv.user_hits() == 1
    ab = require_tool("ab")
    out = netns.run(ab, "-n", "500", "-c", "10", "http://[::1]:8080/hot.txt").stdout  # HTTP/1.0: a close each
    assert re.search(r"Failed requests:\s+0", out) and "Non-2xx" not in out, out
    assert srv.kernel_hits() >= 0.98 * 500 + 11 + 2 * len(VARIANT_REQUESTS)
    time.sleep(3)
    states = netns.run("ss", "-tanH", "sport", "= :8080").stdout.split()
    assert not {"CLOSE-WAIT", "LAST-ACK", "FIN-WAIT-1", "FIN-WAIT-2", "ESTAB", "CLOSING"} & set(states), states[:20]
    assert_no_tcp_trouble(netns)


def test_ipv6_on_a_veth_with_full_checksums(veth, site: Path) -> None:  # type: ignore[no-untyped-def]
    """IPv6 over a 1500-byte link, checksums in full (the client checks them): one- and
    multi-segment answers, keep-alive and closing, all from the kernel."""
    srv = Server(veth.server, site, "--hot-after", "0", "--interface", veth.server_if, "--bind", "::")
    try:
        c = RawClient(veth.client, host="2001:db8:77::1", nodelay=False)
        for _ in range(3):
            for path in ("/hot.txt", "/mid.bin", "/large.bin", "/style.css"):
                assert body_of(c.get(path)) == SITE_FILES[path[1:]]
        c.close()
        c = RawClient(veth.client, host="2001:db8:77::1")
        c.send(b"GET /large.bin HTTP/1.0\r\n\r\n")
        assert body_of(c.read_response()) == SITE_FILES["large.bin"]
        assert c.sock.recv(1) == b""
        c.close()
        m = srv.metrics()
        assert m["fileserver_requests_total{path=kernel}"] == 13 and m["fileserver_requests_total{path=user}"] == 0
        # 1440-byte MSS less 12 of timestamps: mid.bin is 4 segments, large.bin 11 (1428 B each)
        assert m["fileserver_kernel_segments_total{kind=more}"] == 3 * (3 + 10) + 10
        assert m["fileserver_kernel_passes_total{reason=too_big}"] == 0
        assert_no_tcp_trouble(veth.client)
        assert_no_tcp_trouble(veth.server)
    finally:
        srv.stop()


def test_ipv6_answers_survive_loss(veth, site: Path) -> None:  # type: ignore[no-untyped-def]
    """The loss recovery of multi-segment answers over IPv6: a seeded 1 in 6 of the server's data
    segments dropped, keep-alive and closing, byte-exact."""
    with lossy_veth(veth, site, "--bind", "::", share=1 / 6, seed=11) as (srv, dropper):
        c = RawClient(veth.client, host="2001:db8:77::1", timeout=20, nodelay=False)
        for i in range(20):
            for path in ("/large.bin", "/hot.txt"):
                assert body_of(c.get(path)) == SITE_FILES[path[1:]], (i, path)
        c.close()
        closing_fetches(veth.client, "2001:db8:77::1", 5)
        m = srv.metrics()
        assert m["fileserver_requests_total{path=kernel}"] == 45 and m["fileserver_requests_total{path=user}"] == 0
        assert dropper.stats()[1] >= 20 and m["fileserver_kernel_segments_total{kind=resent}"] >= 1
        assert_no_tcp_trouble(veth.client, resets_allowed=True)  # (see test_multi_segment_answers_survive_loss)
        assert_no_tcp_trouble(veth.server)
