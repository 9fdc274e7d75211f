"""Pipelined requests: several complete requests in one segment, all hits, are answered by the
kernel in order, in one segment, or, if their answers need more, each answer in segments of its
own; a segment with any request the kernel cannot answer goes to userspace whole, in order. Every
answer is userspace's own, byte for byte but the Date."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.conftest import SITE_FILES
from tests.kernel.kernel_path import assert_no_tcp_trouble, lossy_veth
from tests.support import NetNS, RawClient, Server, body_of, require_tool, split_response, without_date

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
    assert_no_tcp_trouble(netns)


# Pipelined requests whose answers take 18 segments of a 1500-byte link: large.bin's 11, the HEAD's
# one, mid.bin's 4 (HTTP/1.0 keep-alive: a header line inserted), hot.txt's and style.css's one each.
SEVERAL = (
    "GET /large.bin HTTP/1.1\r\nHost: x\r\n\r\n",
    "HEAD /mid.bin HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET /mid.bin HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "GET /hot.txt HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET /style.css HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n",
)


def test_pipelined_answers_of_several_segments(veth, site: Path) -> None:  # type: ignore[no-untyped-def]
    """Answers that need more than one segment together: the kernel sends each in segments of its
    own (full checksums on the veth, which the client verifies), byte for byte userspace's; the
    last may end the connection. Answers that would take more segments than a packet may send
    (three of large.bin: 33) go to userspace, whole and in order."""
    srv = Server(veth.server, site, "--hot-after", "0", "--interface", veth.server_if, "--max-kernel-file-size", "31000")
    try:
        c = RawClient(veth.client, host="192.0.2.1")
        before = srv.metrics()
        for _ in range(3):
            c.send("".join(SEVERAL).encode())
            from_kernel = read_all(c, SEVERAL)
        m = srv.metrics()
        delta = {k: m.get(k, 0) - before.get(k, 0) for k in ("fileserver_requests_total{path=kernel}",
                                                            "fileserver_requests_total{path=user}",
                                                            "fileserver_kernel_segments_total{kind=more}")}
        assert delta == {"fileserver_requests_total{path=kernel}": 3 * len(SEVERAL),
                         "fileserver_requests_total{path=user}": 0,
                         "fileserver_kernel_segments_total{kind=more}": 3 * 17}, delta
        assert [split_response(a)[2] for a in (from_kernel[0], from_kernel[2], from_kernel[3])] == \
            [SITE_FILES["large.bin"], SITE_FILES["mid.bin"], SITE_FILES["hot.txt"]]
        # The same requests behind a miss: userspace's, whole; the same bytes.
        time.sleep(0.05)
        c.send(("GET /pipe-miss HTTP/1.1\r\nHost: x\r\n\r\n" + "".join(SEVERAL)).encode())
        assert c.read_response().startswith(b"HTTP/1.1 404")
        from_user = read_all(c, SEVERAL)
        assert [without_date(a) for a in from_user] == [without_date(a) for a in from_kernel]
        c.close()
        # The last request ends the connection: all answered by the kernel, then the server closes.
        c = RawClient(veth.client, host="192.0.2.1")
        last = "GET /mid.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        k = srv.kernel_hits()
        c.send((SEVERAL[0] + last).encode())
        answers = read_all(c, (SEVERAL[0], last))
        assert body_of(answers[1]) == SITE_FILES["mid.bin"] and b"Connection: close\r\n" in answers[1]
        assert srv.kernel_hits() == k + 2
        assert c.sock.recv(1) == b""
        c.close()
        c = RawClient(veth.client, host="192.0.2.1")
        three = ("GET /large.bin HTTP/1.1\r\nHost: x\r\n\r\n",) * 3
        k, passed = srv.kernel_hits(), srv.metrics()["fileserver_kernel_passes_total{reason=pipelined}"]
        c.send("".join(three).encode())
        assert [body_of(a) for a in read_all(c, three)] == [SITE_FILES["large.bin"]] * 3
        assert srv.kernel_hits() == k
        assert srv.metrics()["fileserver_kernel_passes_total{reason=pipelined}"] == passed + 1
        assert_no_tcp_trouble(veth.client)
    finally:
        srv.stop()


def test_a_batch_takes_every_tail_call_left_and_no_more(veth, site: Path) -> None:  # type: ignore[no-untyped-def]
    """Two short pipelined requests take two fs_parse calls; with the sender and the tail probe that
    leaves 29 of a packet's 33 tail calls for segments. Answers of 15 + 14 segments (1448 bytes
    each on this link) are the kernel's, 15 + 15 pass whole: a 34th call would fail, and the
    answer would go out without its probe (or its last segment)."""
    seg = 1448
    srv = Server(veth.server, site, "--hot-after", "0", "--interface", veth.server_if, "--max-kernel-file-size", "31000")
    try:
        c = RawClient(veth.client, host="192.0.2.1")
        head = len(c.get("/large.bin")) - len(SITE_FILES["large.bin"])  # (every .bin of 5 digits has this head)
        bodies = {name: bytes(range(256)) * 100 for name in ("a15.bin", "b14.bin", "b15.bin")}
        for name, n in (("a15.bin", 15), ("b14.bin", 14), ("b15.bin", 15)):
            bodies[name] = (bodies[name] * 2)[: n * seg - 100 - head]
            (site / name).write_bytes(bodies[name])
        for name in bodies:  # (cached by now, or by this request)
            assert body_of(c.get("/" + name)) == bodies[name]
        time.sleep(0.3)
        for pair, segs, kernel in ((("a15.bin", "b14.bin"), 29, 2), (("a15.bin", "b15.bin"), 30, 0)):
            requests = tuple(f"GET /{name} HTTP/1.1\r\nHost: x\r\n\r\n" for name in pair)
            before = srv.metrics()
            c.send("".join(requests).encode())
            answers = read_all(c, requests)
            assert [body_of(a) for a in answers] == [bodies[name] for name in pair]
            assert sum(-(-len(a) // seg) for a in answers) == segs, [len(a) for a in answers]
            m = srv.metrics()
            delta = {k: m.get(k, 0) - before.get(k, 0) for k in ("fileserver_requests_total{path=kernel}",
                                                                "fileserver_kernel_passes_total{reason=pipelined}",
                                                                "fileserver_kernel_segments_total{kind=more}",
                                                                "fileserver_kernel_segments_total{kind=probe}")}
            assert delta == {"fileserver_requests_total{path=kernel}": kernel,
                             "fileserver_kernel_passes_total{reason=pipelined}": 0 if kernel else 1,
                             "fileserver_kernel_segments_total{kind=more}": segs - 1 if kernel else 0,
                             "fileserver_kernel_segments_total{kind=probe}": 1 if kernel else 0}, (pair, delta)
            time.sleep(0.3)  # (after userspace's answers the connection comes back to the kernel)
        assert_no_tcp_trouble(veth.client)
    finally:
        srv.stop()


# The client's data segments as its interface sees them: the batch's 18 (large.bin 1-11, the HEAD
# 12, mid.bin 13-16, hot.txt 17, style.css 18), then the tail probe (19), then a first resend (20).
BATCH_LOSS = {
    "first": {"drop": {1}}, "head-only-answer": {"drop": {12}}, "inside-the-third": {"drop": {14}},
    "last": {"drop": {18}}, "last-and-probe": {"drop": {18, 19}}, "resend-lost": {"drop": {13, 20}},
    "every-5th": {"every": 5}, "random-1-in-6": {"share": 1 / 6, "seed": 5},
}


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "no-kernel-cache"])
@pytest.mark.parametrize("loss", BATCH_LOSS.values(), ids=BATCH_LOSS.keys())
def test_pipelined_answers_of_several_segments_survive_loss(veth, site: Path, loss: dict[str, object],  # type: ignore[no-untyped-def]
                                                            kernel: bool) -> None:
    """A segment lost anywhere in the answers to a pipelined batch (an answer's first, one inside,
    the last, with its probe, a resend) is sent again, as for one multi-segment answer: the
    request segment stays unacknowledged until the client has every answer, so the client sends
    the batch again, and its ACK says what it lacks. Every answer byte-exact, once, in order; the
    same as userspace alone on the same losses."""
    with lossy_veth(veth, site, *([] if kernel else ["--no-kernel-cache"]), expect_kernel=kernel,
                    **loss) as (srv, dropper):  # type: ignore[arg-type]
        c = RawClient(veth.client, host="192.0.2.1", timeout=20, nodelay=False)
        expected: list[bytes] = []
        for i in range(10):
            c.send("".join(SEVERAL).encode())
            answers = read_all(c, SEVERAL)
            assert [body_of(a) for a in (answers[0], answers[2], answers[3])] == \
                [SITE_FILES["large.bin"], SITE_FILES["mid.bin"], SITE_FILES["hot.txt"]], i
            if not expected:
                expected = [without_date(a) for a in answers]
            assert [without_date(a) for a in answers] == expected, i
        c.close()
        seen, dropped = dropper.stats()
        m = srv.metrics()
        assert m["fileserver_requests_total{path=kernel}"] == (10 * len(SEVERAL) if kernel else 0)
        assert m["fileserver_requests_total{path=user}"] == (0 if kernel else 10 * len(SEVERAL))
        if "drop" in loss:
            assert dropped == len(loss["drop"])  # type: ignore[arg-type]
        else:
            assert dropped >= 20, (seen, dropped)
        if kernel:
            assert m["fileserver_kernel_segments_total{kind=resent}"] >= 1
        assert_no_tcp_trouble(veth.client, duplicates=True)
        assert_no_tcp_trouble(veth.server)


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


@pytest.mark.parametrize("path", ["/hot.txt", "/mid.bin"])
def test_h2load_pipelining_is_answered_by_the_kernel(netns: NetNS, site: Path, server_factory, path: str,
                                                     record_property) -> None:  # type: ignore[no-untyped-def]
    """h2load --h1 -m 8, a real pipelining client: at least 90 % from the kernel, none failed;
    eight answers in one segment (hot.txt) and in several (mid.bin, 5 KiB: one skb of lo each)."""
    h2load = require_tool("h2load")
    srv: Server = server_factory(site, "--hot-after", "0")
    k, u = srv.kernel_hits(), srv.user_hits()
    out = netns.run(h2load, "--h1", "-m", "8", "-c", "4", "-n", "4000", f"http://127.0.0.1:8080{path}", timeout=120).stdout
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    assert m, out
    assert int(m.group(3)) == 4000 and int(m.group(4)) == 0, out
    kernel, user = srv.kernel_hits() - k, srv.user_hits() - u
    record_property("summary", f"h2load --h1 -m 8 {path}: {kernel} of {kernel + user} in the kernel")
    assert kernel + user == 4000 and kernel >= 0.9 * 4000, (kernel, user, {k2: v for k2, v in srv.metrics().items() if v and "passes" in k2})
    if path == "/mid.bin":  # (eight 5 KiB answers: a segment of lo's each)
        assert srv.metrics()["fileserver_kernel_segments_total{kind=more}"] >= 7 * kernel / 8 * 0.9
    assert_no_tcp_trouble(netns)
