"""The way back to the client is the server socket's route, not the request's way in: behind a
load balancer that forwards requests but carries no responses (direct server return, as IPVS's
DR mode and Katran-style balancers do), or with asymmetric routes, the kernel's answers must leave
for the next hop the socket's own segments leave for. Each case runs against --no-kernel-cache on
the same topology too."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SITE_FILES
from tests.kernel.kernel_path import assert_no_tcp_trouble
from tests.support import NetNS, RawClient, Server, body_of, require_root


class ReturnPath:
    """Client - router - server, where the router has two addresses on the server's link: A
    (203.0.113.1), by which it forwards the client's segments to the server, and B (203.0.113.3),
    the server's default gateway. Anything the server sends to A is dropped there (the test-only
    dropper on A's ingress: a balancer's address that returns nothing), so only what follows the
    server's route, through B, reaches the client."""

    CLIENT, SERVER = "198.51.100.2", "203.0.113.2"

    def __init__(self) -> None:
        self.client, self.router, self.server = NetNS("frc"), NetNS("frr"), NetNS("frs")
        n = time.monotonic_ns() % 100000
        self.client_if, self.server_if, rc, rs = f"qc{n}", f"qs{n}", f"qrc{n}", f"qrs{n}"
        self.via_a, self.via_b = f"qa{n}", f"qb{n}"
        for mine, ns, theirs in ((self.client_if, self.client, rc), (self.server_if, self.server, rs)):
            subprocess.run(["ip", "link", "add", mine, "netns", ns.name, "type", "veth", "peer", "name", theirs,
                            "netns", self.router.name], check=True)
        r = self.router.run
        for dev in (self.via_a, self.via_b):
            r("ip", "link", "add", dev, "link", rs, "type", "macvlan", "mode", "bridge")
        for ns, dev, addr, gw in ((self.client, self.client_if, "198.51.100.2/24", "198.51.100.1"),
                                  (self.server, self.server_if, "203.0.113.2/24", "203.0.113.3")):
            ns.run("ip", "addr", "add", addr, "dev", dev)
            ns.run("ip", "link", "set", dev, "up")
            ns.run("ethtool", "-K", dev, "tx", "off")
            ns.run("ip", "route", "add", "default", "via", gw)
        r("ip", "addr", "add", "198.51.100.1/24", "dev", rc)
        r("ip", "addr", "add", "203.0.113.1/32", "dev", self.via_a)
        r("ip", "addr", "add", "203.0.113.3/32", "dev", self.via_b)
        for dev in (rc, rs, self.via_a, self.via_b):
            r("ip", "link", "set", dev, "up")
        r("ethtool", "-K", rc, "tx", "off")
        r("ip", "route", "add", "203.0.113.2/32", "dev", self.via_a)  # requests leave by A
        for key in ("all", "default", rc, self.via_a, self.via_b):
            r("sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0")  # (responses come in by B)
        r("sysctl", "-qw", "net.ipv4.ip_forward=1")
        r("sysctl", "-qw", f"net.ipv4.conf.{self.via_a}.arp_ignore=1")  # each address answers for itself
        r("sysctl", "-qw", f"net.ipv4.conf.{self.via_b}.arp_ignore=1")

    def close(self) -> None:
        for ns in (self.client, self.router, self.server):
            ns.close()


@pytest.fixture
def return_path() -> Iterator[ReturnPath]:
    require_root()
    path = ReturnPath()
    try:
        yield path
    finally:
        path.close()


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "no-kernel-cache"])
def test_answers_follow_the_sockets_route(return_path: ReturnPath, site: Path, kernel: bool) -> None:
    """Requests arrive from the router's address A; the server's route to the client is through
    B, and A returns nothing. One-segment and multi-segment answers, on two connections, reach
    the client byte-exact through B, answered in the kernel, as the socket's own segments do;
    before the fix they went back to A's MAC address (the request's source) and were lost, and
    the client hung."""
    from tests.kernel.lossy import Dropper

    p = return_path
    srv = Server(p.server, site, "--hot-after", "0", "--interface", p.server_if,
                 *([] if kernel else ["--no-kernel-cache"]), expect_kernel=kernel)
    black_hole = Dropper(p.router, p.via_a, 8080, share=1.0)  # every data segment the server sends to A
    try:
        for _ in range(2):
            c = RawClient(p.client, host=p.SERVER, timeout=5)
            for path in ("/hot.txt", "/large.bin", "/nope", "/style.css"):
                resp = c.get(path)
                assert resp.startswith(b"HTTP/1.1 404") if path == "/nope" else body_of(resp) == SITE_FILES[path[1:]], path
            c.close()
        m = srv.metrics()
        # (the hits after the 404 come back to the kernel once userspace says it owes nothing)
        assert m["fileserver_requests_total{path=kernel}"] + m["fileserver_requests_total{path=user}"] == 8
        hits = m["fileserver_requests_total{path=kernel}"]
        assert hits >= 4 if kernel else hits == 0, m
        assert m.get("fileserver_kernel_passes_total{reason=route}", 0) == 0
        assert black_hole.stats()[1] == 0  # nothing of it went to A
        assert_no_tcp_trouble(p.client)
        assert_no_tcp_trouble(p.server)
    finally:
        black_hole.close()
        srv.stop()
