"""The kernel cache: when files enter it, its bound, and changes reaching it within a second."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from tests.conftest import SITE_FILES
from tests.support import NetNS, RawClient, body_of, split_response


def test_hot_after_n_user_hits(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory(site, "--hot-after", "3")
    for _ in range(3):
        c = RawClient(netns)
        assert body_of(c.get("/style.css")) == SITE_FILES["style.css"]
        c.close()
    assert srv.user_hits() == 3 and srv.kernel_hits() == 0
    assert srv.metrics()["fileserver_kernel_cache_entries"] == 1
    c = RawClient(netns)
    assert body_of(c.get("/style.css")) == SITE_FILES["style.css"]
    assert srv.kernel_hits() == 1 and srv.user_hits() == 3


def test_cache_bounded_and_never_fails(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    for i in range(12):
        (site / f"f{i}.txt").write_bytes(f"file {i}\n".encode())
    srv = server_factory(site, "--hot-after", "1", "--kernel-cache-entries", "4")
    for _ in range(2):
        for i in range(12):
            c = RawClient(netns)
            assert body_of(c.get(f"/f{i}.txt")) == f"file {i}\n".encode()
            c.close()
    m = srv.metrics()
    assert m["fileserver_kernel_cache_entries"] <= 4
    assert m["fileserver_requests_total{path=kernel}"] + m["fileserver_requests_total{path=user}"] == 24


def test_file_changes_reach_the_kernel_within_a_second(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory(site, "--hot-after", "0")
    path = site / "hot.txt"
    stop = threading.Event()
    # b"" is a real state of a file rewritten in place (truncated, not yet written); what must never
    # be seen is a mix of two versions.
    versions: list[bytes] = [SITE_FILES["hot.txt"], b""]
    problems: list[str] = []

    def writer() -> None:
        for i in range(10):
            data = (f"version {i} ".encode() * (i + 1)) + b"\n"
            versions.append(data)  # before the write: a reader may see it at once
            if i % 2:
                path.write_bytes(data)  # in place
            else:
                tmp = site / ".hot.tmp"
                tmp.write_bytes(data)
                tmp.rename(path)  # atomic replace
            time.sleep(0.3)
        stop.set()

    t = threading.Thread(target=writer)
    t.start()
    while not stop.is_set():
        c = RawClient(netns)
        body = body_of(c.get("/hot.txt"))
        c.close()
        if body not in versions:
            problems.append(f"mixed or unknown content: {body!r}")
    t.join()
    assert not problems
    deadline = time.monotonic() + 1.0
    time.sleep(1.0)
    for _ in range(10):
        c = RawClient(netns)
        assert body_of(c.get("/hot.txt")) == versions[-1]
        c.close()
    assert time.monotonic() > deadline
    k = srv.kernel_hits()
    assert k > 0  # the new content came from the kernel
    path.unlink()
    time.sleep(1.0)
    c = RawClient(netns)
    assert split_response(c.get("/hot.txt"))[0].split()[1] == "404"
    assert srv.kernel_hits() == k
