"""Probes on a connection the kernel has answered on (its deltas are not zero): TCP keep-alive
probes (RFC 9293 section 3.8.4: a segment one byte before the next expected, which the peer
answers with an ACK) and zero-window probes (section 3.8.6.1). A plain socket answers both; the
translated connection must too, and go on. Each case runs against --no-kernel-cache too."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.conftest import SITE_FILES
from tests.kernel.kernel_path import assert_no_tcp_trouble
from tests.support import NetNS, RawClient, body_of, nstat


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "no-kernel-cache"])
def test_keepalive_probes_are_answered(netns: NetNS, site: Path, server_factory, kernel: bool) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory(site, "--hot-after", "0", *([] if kernel else ["--no-kernel-cache"]), expect_kernel=kernel)
    c = RawClient(netns)
    for _ in range(2):
        assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]
    # Probe after 1 s idle, every second; 3 unanswered ones would end the connection (ETIMEDOUT).
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    before = nstat(netns).get("TcpExtTCPKeepAlive", 0)
    time.sleep(4.5)
    assert nstat(netns).get("TcpExtTCPKeepAlive", 0) - before >= 3  # probes went out, and were answered:
    assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]     # the connection lives on
    assert srv.kernel_hits() == (3 if kernel else 0)
    c.close()
    assert_no_tcp_trouble(netns)


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "no-kernel-cache"])
def test_zero_window_probes_after_kernel_answers(netns: NetNS, site: Path, server_factory, kernel: bool) -> None:  # type: ignore[no-untyped-def]
    """The client stops reading a 300 KB sendfile answer, after kernel answers: its window closes,
    the socket probes it, then the client reads on and gets every byte."""
    srv = server_factory(site, "--hot-after", "0", *([] if kernel else ["--no-kernel-cache"]), expect_kernel=kernel)
    c = RawClient(netns, timeout=20, rcvbuf=4096)  # a small window, closed soon
    for path in ("/hot.txt", "/style.css"):
        assert body_of(c.get(path)) == SITE_FILES[path[1:]]
    probes = nstat(netns).get("TcpExtTCPWinProbe", 0)
    c.send(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(3)  # not reading: the window is zero, and the socket probes it
    assert nstat(netns).get("TcpExtTCPWinProbe", 0) > probes
    assert body_of(c.read_response()) == SITE_FILES["big.bin"]
    assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]
    c.close()
    m = srv.metrics()
    assert m["fileserver_requests_total{path=kernel}"] + m["fileserver_requests_total{path=user}"] == 4
    if kernel:
        assert m["fileserver_requests_total{path=kernel}"] >= 2
    # (Linux rate-limits its replies to the probes, which sit one byte before the window: that
    # moves TCPACKSkippedSeq on the userspace path alone too, so only the rest is checked.)
    s = nstat(netns)
    for name in ("TcpInCsumErrors", "TcpExtTCPChallengeACK", "TcpExtPAWSEstab", "TcpExtTCPSACKDiscard",
                 "TcpEstabResets", "TcpOutRsts"):
        assert s.get(name, 0) == 0, (name, s.get(name))
