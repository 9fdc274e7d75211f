"""Pipelined requests: several complete requests in one segment, all hits, are answered by the
kernel in order, in one segment; a segment with any request the kernel cannot answer goes to
userspace whole, in order. Every answer is userspace's own, byte for byte but the Date."""

from __future__ import annotations

import re
import time
from pathlib import Path

from tests.conftest import SITE_FILES
from tests.kernel.kernel_path import assert_no_tcp_trouble, lossy_veth
from tests.support import NetNS, RawClient, Server, require_tool, split_response, without_date

BATCH = (  # as a pipelining client sends them: GET and HEAD, both versions, Accept-Encoding
    "GET /hot.txt HTTP/1.1\r\nHost: x\r\n\r\n",
    "HEAD /style.css HTTP/1.1\r\nHost: x\r\nUser-Agent: h2load nghttp2/1.52.0\r\n\r\n",
    "GET /sub/page.html HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "GET /index.html?v=2 HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip, deflate\r\n\r\n",
)  # (their answers, about 1.1 KB, fit one segment of a 1500-byte link)


def read_all(c: RawClient, requests: tuple[str, ...]) -> list[bytes]:
    return [c.read_response(head_only=r.startswith("HEAD")) for r in requests]


def test_pipelined_hits_from_the_kernel_in_one_segment(veth, site: Path) -> None:  # type: ignore[no-untyped-def]
    """On a 1500-byte link with full checksums (the client verifies them): answers at odd offsets
    of the segment are summed right."""
    srv = Server(veth.server, site, "--hot-after", "0", "--interface", veth.server_if)
    try:
        c = RawClient(veth.client, host="192.0.2.1")
        k, u = srv.kernel_hits(), srv.user_hits()
        c.send("".join(BATCH).encode())
        from_kernel = read_all(c, BATCH)
        assert (srv.kernel_hits() - k, srv.user_hits() - u) == (len(BATCH), 0), {k2: v for k2, v in srv.metrics().items() if v and "passes" in k2}
        offsets = [sum(len(a) for a in from_kernel[:i]) for i in range(len(BATCH))]
        assert any(o & 1 for o in offsets), offsets            # (the case csum_at_odd is for)
        assert split_response(from_kernel[0])[2] == SITE_FILES["hot.txt"]
        assert from_kernel[2].startswith(b"HTTP/1.0 200") and b"Connection: keep-alive\r\n" in from_kernel[2]
        # The same requests behind a miss: the segment is userspace's whole, in order.
        time.sleep(0.05)
        c.send(("GET /pipe-miss HTTP/1.1\r\nHost: x\r\n\r\n" + "".join(BATCH)).encode())
        assert c.read_response().startswith(b"HTTP/1.1 404")
        from_user = read_all(c, BATCH)
        assert [without_date(a) for a in from_user] == [without_date(a) for a in from_kernel]
        assert srv.user_hits() - u == len(BATCH) + 1
        m = srv.metrics()
        assert m["fileserver_kernel_passes_total{reason=miss}"] >= 1
        # And the connection is the kernel's again (once the client has acknowledged userspace's
        # answers: its delayed ACK).
        time.sleep(0.3)
        k = srv.kernel_hits()
        for _ in range(2):   # (the second batch on a connection starts its offsets afresh)
            c.send("".join(BATCH[:2]).encode())
            again = read_all(c, BATCH[:2])
            assert [without_date(a) for a in again] == [without_date(a) for a in from_kernel[:2]]
        assert srv.kernel_hits() == k + 4
        assert_no_tcp_trouble(veth.client)
    finally:
        srv.stop()


def test_what_ends_or_does_not_fit_a_batch(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    srv: Server = server_factory(site, "--hot-after", "0")
    # The last request may end the connection: the kernel answers all, then the server closes.
    c = RawClient(netns)
    last = "GET /hot.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    k = srv.kernel_hits()
    c.send((BATCH[0] + last).encode())
    answers = read_all(c, (BATCH[0], last))
    assert srv.kernel_hits() == k + 2 and b"Connection: close\r\n" in answers[1]
    assert c.sock.recv(1) == b""
    c.close()
    # Not so in the middle (llhttp refuses data after it: 400), nor a conditional, nor a split request.
    for batch, statuses in (((last, BATCH[0]), ["400"]),
                            ((BATCH[0], "GET /hot.txt HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"x\"\r\n\r\n"), ["200", "200"]),
                            ((BATCH[0], "GET /hot.txt HTTP/1.1\r\nHo"), ["200"])):
        c = RawClient(netns)
        before = srv.metrics()
        c.send("".join(batch).encode())
        assert [c.read_response().split(b" ")[1].decode() for _ in statuses] == statuses, batch
        after = srv.metrics()
        assert after["fileserver_requests_total{path=kernel}"] == before["fileserver_requests_total{path=kernel}"], batch
        c.close()
    # Answers that do not fit one segment go to userspace too, whole and in order (lo: 16 KB).
    c = RawClient(netns)
    big = ("GET /large.bin HTTP/1.1\r\nHost: x\r\n\r\n",) * 2
    k = srv.kernel_hits()
    c.send("".join(big).encode())
    assert [split_response(a)[2] for a in read_all(c, big)] == [SITE_FILES["large.bin"]] * 2
    assert srv.kernel_hits() == k
    assert srv.metrics()["fileserver_kernel_passes_total{reason=pipelined}"] >= 2
    assert_no_tcp_trouble(netns)


def test_a_lost_batch_answer_is_answered_again(veth, site: Path) -> None:  # type: ignore[no-untyped-def]
    """The answer to the whole batch is lost once: the client sends the segment again, and gets
    every answer, once, in order (the kernel answers again, the hits counted once)."""
    with lossy_veth(veth, site, drop={1}) as (srv, dropper):
        c = RawClient(veth.client, host="192.0.2.1", timeout=20)
        c.send("".join(BATCH).encode())
        answers = read_all(c, BATCH)
        assert split_response(answers[0])[2] == SITE_FILES["hot.txt"] and dropper.stats()[1] == 1
        m = srv.metrics()
        assert m["fileserver_requests_total{path=kernel}"] == len(BATCH)
        assert m["fileserver_requests_total{path=user}"] == 0
        assert m["fileserver_kernel_retransmits_total"] >= len(BATCH)
        assert_no_tcp_trouble(veth.client, duplicates=True)


def test_h2load_pipelining_is_answered_by_the_kernel(netns: NetNS, site: Path, server_factory,
                                                     record_property) -> None:  # type: ignore[no-untyped-def]
    """h2load --h1 -m 8, a real pipelining client: at least 90 % from the kernel, none failed."""
    h2load = require_tool("h2load")
    srv: Server = server_factory(site, "--hot-after", "0")
    k, u = srv.kernel_hits(), srv.user_hits()
    out = netns.run(h2load, "--h1", "-m", "8", "-c", "4", "-n", "4000", "http://127.0.0.1:8080/hot.txt", timeout=120).stdout
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    assert m, out
    assert int(m.group(3)) == 4000 and int(m.group(4)) == 0, out
    kernel, user = srv.kernel_hits() - k, srv.user_hits() - u
    record_property("summary", f"h2load --h1 -m 8: {kernel} of {kernel + user} in the kernel")
    assert kernel + user == 4000 and kernel >= 0.9 * 4000, (kernel, user, {k2: v for k2, v in srv.metrics().items() if v and "passes" in k2})
    assert_no_tcp_trouble(netns)
