"""404s for hot missing paths (/favicon.ico, /robots.txt ...) from the kernel: negative entries hold
userspace's own 404, go the moment a file appears at the path, and are bounded in number."""

from __future__ import annotations

import time
from pathlib import Path

from tests.kernel.kernel_path import exchange
from tests.support import NetNS, RawClient, without_date

REQUESTS = {  # name: (request, closes)
    "get": (b"GET /favicon.ico HTTP/1.1\r\nHost: x\r\n\r\n", False),
    "head": (b"HEAD /favicon.ico HTTP/1.1\r\nHost: x\r\n\r\n", False),
    "query": (b"GET /favicon.ico?v=2 HTTP/1.1\r\nHost: x\r\n\r\n", False),
    "1.1 close": (b"GET /favicon.ico HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", True),
    "1.0": (b"GET /favicon.ico HTTP/1.0\r\n\r\n", True),
    "1.0 keep-alive": (b"GET /favicon.ico HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", False),
    # No precondition applies to a 404 (RFC 9110 section 13.2.1): aiohttp's ignores them, and so must the kernel.
    "revalidation": (b'GET /favicon.ico HTTP/1.1\r\nHost: x\r\nIf-None-Match: "1-1"\r\n'
                     b"If-Modified-Since: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n", False),
}


def test_a_hot_missing_path_gets_its_404_from_the_kernel(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    """After userspace's first 404 for a path (--hot-after 0), the kernel answers every form of
    request for it with the same bytes as userspace, but the Date: the 404 of --no-kernel-cache."""
    srv = server_factory(site, "--hot-after", "0")
    first, _ = exchange(netns, REQUESTS["get"][0])
    assert first.startswith(b"HTTP/1.1 404 ") and srv.kernel_hits() == 0
    from_kernel = {}
    for name, (request, closes) in REQUESTS.items():
        hits = srv.kernel_hits()
        from_kernel[name], closed = exchange(netns, request)
        assert srv.kernel_hits() == hits + 1, name
        assert closed == closes, name
    m = srv.metrics()
    assert m["fileserver_kernel_cache_updates_total{cause=missing}"] == 1
    srv.stop()
    server_factory(site, "--no-kernel-cache", expect_kernel=False)
    for name, (request, _) in REQUESTS.items():
        from_user, _ = exchange(netns, request)
        assert without_date(from_kernel[name]) == without_date(from_user), name
    assert from_kernel["get"].endswith(b"\r\n\r\n404: Not Found\n")


def test_a_negative_entry_goes_when_the_file_appears(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    """A file created at a path with a negative entry is served at once (within the file event's
    delivery, as any change of a cached file), and from the kernel after that; never a stale 404
    once it is served. Deleted again, the path gets its 404 again."""
    srv = server_factory(site, "--hot-after", "0")
    c = RawClient(netns)
    for _ in range(2):
        assert c.get("/late.txt").startswith(b"HTTP/1.1 404 ")
        time.sleep(0.05)  # (after a userspace answer, the next request returns to the kernel)
    assert srv.kernel_hits() == 1
    (site / "late.txt").write_bytes(b"it exists now\n")
    deadline = time.monotonic() + 5
    while not (resp := c.get("/late.txt")).startswith(b"HTTP/1.1 200 ") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert resp.endswith(b"\r\n\r\nit exists now\n"), resp[:60]
    for _ in range(20):  # never the old 404 again
        assert c.get("/late.txt").endswith(b"\r\n\r\nit exists now\n")
    assert srv.metrics()["fileserver_requests_total{path=kernel}"] >= 15  # the file's entry answers now
    (site / "late.txt").unlink()
    deadline = time.monotonic() + 5
    while not (resp := c.get("/late.txt")).startswith(b"HTTP/1.1 404 ") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert resp.startswith(b"HTTP/1.1 404 ")


def test_negative_entries_are_bounded(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    """A scan of many missing paths fills only the negative entries' share (an eighth of the
    entries, at least 16): it evicts other negative entries, never the files' entries."""
    srv = server_factory(site, "--hot-after", "0", "--kernel-cache-entries", "32")
    files = srv.metrics()["fileserver_kernel_cache_entries"]
    c = RawClient(netns)
    for i in range(100):
        assert c.get(f"/scan/{i}.php").startswith(b"HTTP/1.1 404 ")
    time.sleep(0.05)
    m = srv.metrics()
    assert m["fileserver_kernel_cache_updates_total{cause=missing}"] == 100
    assert m["fileserver_kernel_cache_entries"] == files + 16, m["fileserver_kernel_cache_entries"]
    hits = srv.kernel_hits()
    assert c.get("/hot.txt").startswith(b"HTTP/1.1 200 ") and srv.kernel_hits() == hits + 1
    assert c.get("/scan/99.php").startswith(b"HTTP/1.1 404 ") and srv.kernel_hits() == hits + 2
