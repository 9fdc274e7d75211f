"""Differential testing of the kernel's HTTP parser against llhttp (aiohttp's parser).

The kernel may only answer a request that llhttp reads as exactly one body-less GET or HEAD,
HTTP/1.0 or 1.1, without an upgrade, of the path whose file the answer holds; and its answer must keep or end the connection as
llhttp's reading says (expected_head_marks). Cases are mutations of real requests (grammar-aware) plus random
bytes, from a seeded generator so failures reproduce.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from unittest import mock

from aiohttp import http_parser

TARGET = "/hot.txt"
BASE_HEADERS = [b"Host: test", b"User-Agent: fuzz/1.0", b"Accept: */*"]
ODD_BYTES = [b"\x00", b"\t", b" ", b"\r", b"\n", b"\x7f", b"\x80", b"\xff", b":", b",", b"%", b"?", b"#", b"/", b"\\",
             b'"', b"..", b"%2e", b"%00", b"a"]
INTERESTING_HEADERS = [
    b"Content-Length: 0", b"Content-Length: 5", b"Transfer-Encoding: chunked", b"Connection: close",
    b"Connection: keep-alive", b"Connection: Keep-Alive, Upgrade", b"Expect: 100-continue", b"Range: bytes=0-1",
    b"If-None-Match: *", b'If-None-Match: "x"', b"Host: other", b"Upgrade: websocket", b" folded", b"\tfolded",
    b"X: a\nY: b", b"Bad Header: x", b"X-Empty:", b":novalue", b"Content-length: 0", b"TRANSFER-ENCODING: x",
]


def base_request(method: bytes = b"GET", target: bytes = TARGET.encode(), version: bytes = b"HTTP/1.1",
                 headers: list[bytes] | None = None) -> bytes:
    hs = BASE_HEADERS if headers is None else headers
    return method + b" " + target + b" " + version + b"\r\n" + b"".join(h + b"\r\n" for h in hs) + b"\r\n"


def mutate(rng: random.Random) -> bytes:
    kind = rng.randrange(10)
    if kind == 0:  # random bytes spliced into a valid request
        req = bytearray(base_request())
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(req))
            req[pos:pos] = rng.choice(ODD_BYTES)
        return bytes(req)
    if kind == 1:  # a byte replaced
        req = bytearray(base_request())
        pos = rng.randrange(len(req))
        req[pos] = rng.randrange(256)
        return bytes(req)
    if kind == 2:  # method and version variants
        method = rng.choice([b"GET", b"HEAD", b"get", b"GETX", b"POST", b"G ET", b"GET\t"])
        version = rng.choice([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"http/1.1", b"HTTP/2.0", b"HTTP/1.1 ", b"HTTP/11"])
        return base_request(method, version=version)
    if kind == 3:  # target variants
        target = rng.choice([b"/hot.txt?x=1", b"/hot.txt#frag", b"//hot.txt", b"/./hot.txt", b"/x/../hot.txt",
                             b"http://test/hot.txt", b"*", b"/hot.txt%20", b"/hot%2etxt", b"/hot.txt?a b",
                             b"/hot.txt?" + b"q" * 300, b"/" + b"a" * 200, b"/hot.txt\x00", b"/HOT.TXT"])
        return base_request(target=target)
    if kind == 4:  # interesting headers, possibly several
        hs = list(BASE_HEADERS) + rng.sample(INTERESTING_HEADERS, rng.randint(1, 3))
        rng.shuffle(hs)
        return base_request(headers=hs)
    if kind == 5:  # line endings
        req = base_request()
        return req.replace(b"\r\n", rng.choice([b"\n", b"\r", b"\r\r\n", b"\r\n "]), rng.randint(1, 4))
    if kind == 6:  # pipelined or trailing bytes
        return base_request() + rng.choice([base_request(), b"G", b"\r\n", b"x"])
    if kind == 7:  # truncated
        req = base_request()
        return req[: rng.randrange(1, len(req))]
    if kind == 8:  # many or long headers
        hs = [b"X-%d: %s" % (i, b"v" * rng.randint(0, 80)) for i in range(rng.randint(1, 25))]
        return base_request(headers=hs)
    return bytes(rng.randrange(256) for _ in range(rng.randint(1, 120)))  # noise


@dataclass
class LlhttpView:
    ok: bool
    answerable: bool  # what the kernel may answer: one GET/HEAD, HTTP/1.x, no body, no upgrade
    detail: str
    path: str = ""  # as llhttp (and yarl) read it, query left out
    version: tuple[int, int] = (1, 1)
    should_close: bool = False

    def expected_head_marks(self) -> tuple[bytes, bytes | None]:
        """The status line's start and the Connection header aiohttp answers this reading with."""
        if self.version == (1, 0):
            return b"HTTP/1.0 ", None if self.should_close else b"keep-alive"
        return b"HTTP/1.1 ", b"close" if self.should_close else None


def head_marks(response: bytes) -> tuple[bytes, bytes | None]:
    """The same two things, read from a response."""
    head = response.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    conn = [h.split(b":", 1)[1].strip() for h in head[1:] if h.lower().startswith(b"connection:")]
    return head[0][:9], conn[0] if conn else None


def llhttp(data: bytes) -> LlhttpView:
    loop = asyncio.new_event_loop()
    try:
        parser = http_parser.HttpRequestParser(mock.Mock(), loop, 2**16, max_line_size=8190, max_field_size=8190)
        try:
            messages, upgraded, tail = parser.feed_data(data)
        except Exception as e:  # BadHttpMessage and friends
            return LlhttpView(False, False, f"rejected: {type(e).__name__}")
        if len(messages) != 1 or upgraded or tail:
            return LlhttpView(True, False, f"{len(messages)} messages, tail {tail!r}")
        msg = messages[0][0]
        body_less = msg.headers.get("Content-Length") in (None,) and not msg.chunked
        answerable = (
            msg.method in ("GET", "HEAD")
            and msg.version in ((1, 0), (1, 1))
            and body_less
            and not msg.upgrade
        )
        return LlhttpView(True, answerable, f"{msg.method} {msg.path} {msg.version}", msg.url.path,
                          tuple(msg.version), bool(msg.should_close))
    finally:
        loop.close()
