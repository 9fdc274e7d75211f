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

from tests.kernel.differential import base_request, head_marks, llhttp, mutate
from tests.conftest import SITE_FILES
from tests.support import NetNS, body_of

CASES = int(os.environ.get("FUZZ_CASES", "400"))
SEED = int(os.environ.get("FUZZ_SEED", "20261122"))
# 2,000 cases take about 70 s here: a long run (make fuzz) gets the time it needs, beyond the
# suite's 300 s per test.
TIMEOUT_S = max(300, 120 + CASES // 20)


# What each path serves: a kernel answer must hold the file of the path llhttp read.
SITE_BODIES = {"/" + rel: body for rel, body in SITE_FILES.items()}
SITE_BODIES.update({"/" + rel[: -len("index.html")]: body for rel, body in SITE_FILES.items() if rel.endswith("index.html")})


def kernel_hits(stats: http.client.HTTPConnection) -> int:
    stats.request("GET", "/stats.json")
    return int(json.loads(stats.getresponse().read())["requests"]["kernel"])


@pytest.mark.timeout(TIMEOUT_S)
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
            elif data.startswith(b"GET") and body_of(response) != SITE_BODIES.get(view.path):
                problems.append((data, f"{view.detail}: answered with another file"))
            elif head_marks(response) != view.expected_head_marks():
                problems.append((data, f"{view.detail}: answered {head_marks(response)}"))
    record_property("summary", f"{len(cases)} cases (seed {SEED}), {answered} answered by the kernel")
    assert not problems, problems[:5]
    assert answered >= 2  # the base requests at least: the test can see a kernel answer
