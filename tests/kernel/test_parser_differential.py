"""The kernel never answers a request that llhttp (aiohttp's parser) reads differently.

Each case goes over a real connection to the real server; the kernel counter says whether the
kernel answered. `make fuzz` runs many more cases (FUZZ_CASES).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
from pathlib import Path

import pytest

from tests.kernel.differential import REAL_REQUESTS, base_request, head_marks, llhttp, mutate
from tests.conftest import SITE_FILES
from tests.support import NetNS, body_of, split_response

CASES = int(os.environ.get("FUZZ_CASES", "400"))
SEED = int(os.environ.get("FUZZ_SEED", "20261122"))
# 2,000 cases take about 70 s here: a long run (make fuzz) gets the time it needs, beyond the
# suite's 300 s per test.
TIMEOUT_S = max(300, 120 + CASES // 20)


# What each path serves: a kernel answer must hold the file of the path llhttp read.
SITE_BODIES = {"/" + rel: body for rel, body in SITE_FILES.items()}
NOT_FOUND = b"404: Not Found\n"  # a missing path's answer, from its negative entry once it has missed
SITE_BODIES.update({"/" + rel[: -len("index.html")]: body for rel, body in SITE_FILES.items() if rel.endswith("index.html")})


def kernel_hits(stats: http.client.HTTPConnection) -> int:
    stats.request("GET", "/stats.json")
    return int(json.loads(stats.getresponse().read())["requests"]["kernel"])


@pytest.mark.timeout(TIMEOUT_S)
def first_answer(response: bytes) -> bytes:
    """The first of the answers in response (pipelined requests get several), by its Content-Length."""
    head, _, rest = response.partition(b"\r\n\r\n")
    length = int(split_response(response)[1].get("content-length", "0") or 0)
    return head + b"\r\n\r\n" + rest[:length]


def test_kernel_parser_never_disagrees_with_llhttp(netns: NetNS, site: Path, server_factory,  # type: ignore[no-untyped-def]
                                                   record_property) -> None:
    server_factory(site, "--hot-after", "0")
    with netns.entered():
        stats = http.client.HTTPConnection("127.0.0.1", 9180, timeout=5)
        stats.connect()
    rng = random.Random(SEED)
    cases = [base_request(), base_request(b"HEAD")] + [mutate(rng) for _ in range(CASES)]
    answered = 0
    problems = []
    for data in cases:
        before = kernel_hits(stats)
        with netns.entered():
            s = socket.create_connection(("127.0.0.1", 8080), timeout=0.3)
        try:
            s.sendall(data)
            try:
                response = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                response = b""
        finally:
            s.close()
        if kernel_hits(stats) > before:
            answered += 1
            view = llhttp(data)
            if not view.answerable:
                problems.append((data, view.detail))
            elif kernel_hits(stats) - before != view.messages:
                problems.append((data, f"{view.detail}: {kernel_hits(stats) - before} answered by the kernel"))
            elif data.startswith(b"GET") and body_of(first_answer(response)) != SITE_BODIES.get(view.path, NOT_FOUND):
                problems.append((data, f"{view.detail}: answered with another file"))
            elif head_marks(response) != view.expected_head_marks():
                problems.append((data, f"{view.detail}: answered {head_marks(response)}"))
    record_property("summary", f"{len(cases)} cases (seed {SEED}), {answered} answered by the kernel")
    assert not problems, problems[:5]
    assert answered >= 2  # the base requests at least: the test can see a kernel answer


@pytest.mark.parametrize("name", REAL_REQUESTS)
def test_real_client_requests(netns: NetNS, site: Path, server_factory, name: str) -> None:  # type: ignore[no-untyped-def]
    """Requests exactly as browsers, curl, wget, proxies and CDNs send them: the headers browsers
    add (Upgrade-Insecure-Requests on every navigation, sec-ch-ua*, Sec-Fetch-*, Priority, DNT,
    Cache-Control and Pragma, cookies) are decided on by their whole name, so these are answered
    by the kernel, with the file and connection handling llhttp's reading calls for; a header
    llhttp acts on (Proxy-Connection) or rejects (a second User-Agent) sends the request to userspace."""
    data, by_kernel = REAL_REQUESTS[name]
    srv = server_factory(site, "--hot-after", "0")
    view = llhttp(data)
    assert view.answerable or not by_kernel, view.detail
    with netns.entered():
        s = socket.create_connection(("127.0.0.1", 8080), timeout=5)
    try:
        s.sendall(data)
        response = b""
        while b"\r\n\r\n" not in response:
            response += s.recv(65536)
        head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
        length = int(head.split("content-length:", 1)[1].split("\r\n", 1)[0])
        while len(response) < response.index(b"\r\n\r\n") + 4 + length:
            response += s.recv(65536)
    finally:
        s.close()
    if not view.ok:  # llhttp rejects it: aiohttp's 400
        assert response.split(b" ", 2)[1] == b"400", (name, response[:80])
    else:
        assert body_of(response) == SITE_BODIES[view.path], name
        assert head_marks(response) == view.expected_head_marks(), name
    assert srv.kernel_hits() == (1 if by_kernel else 0), name


def test_long_requests_and_a_late_if_none_match(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    """Requests up to MAX_REQ bytes (a browser's, with its cookies) are the kernel's, and an
    If-None-Match value is compared where it is, however late. Compared at a clamped position
    (as once past byte 960), it was read from the bytes of an earlier header: here one whose value
    ends in the file's own ETag right before it, so the kernel answered 304 where aiohttp, reading
    If-None-Match: "x", answers 200. Longer requests are userspace's (too_long)."""
    from fileserver.abi import MAX_REQ
    from tests.support import RawClient

    srv = server_factory(site, "--hot-after", "0")
    etag = split_response(RawClient(netns).get("/hot.txt"))[1]["etag"]
    head = b"GET /hot.txt HTTP/1.1\r\nHost: test\r\nCookie: "
    for at, inm, status in ((960, b'"x"', b"200"), (3000, b'"x"', b"200"), (3000, etag.encode(), b"304"),
                            (MAX_REQ - 80, b'"x", ' + etag.encode(), b"304")):
        data = head + b"c" * (at - len(head)) + etag.encode() + b"\r\nIf-None-Match: " + inm + b"\r\n\r\n"
        assert len(data) <= MAX_REQ and data.index(etag.encode()) == at, len(data)
        hits, user = srv.kernel_hits(), srv.user_hits()
        c = RawClient(netns)
        c.send(data)
        resp = c.read_response()
        assert resp.startswith(b"HTTP/1.1 " + status), (at, resp[:80])
        assert (srv.kernel_hits() - hits, srv.user_hits() - user) == (1, 0), at
        c.close()
    too_long = head + b"c" * (MAX_REQ + 1 - len(head) - 4) + b"\r\n\r\n"
    before = srv.metrics().get("fileserver_kernel_passes_total{reason=too_long}", 0)
    c = RawClient(netns)
    c.send(too_long)
    assert body_of(c.read_response()) == SITE_FILES["hot.txt"]
    assert srv.metrics()["fileserver_kernel_passes_total{reason=too_long}"] == before + 1
