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
    b"Proxy-Connection: close", b"Proxy-Connection: keep-alive", b"Upgrade-Insecure-Requests: 1", b"Upgrade: h2c",
    b"Upgrade-X: y", b"If-Modified-Since: Thu, 01 Jan 2026 00:00:00 GMT", b"If-Foo: x", b"Content-Type: text/plain",
    b"Content-Lengthy: 5", b"Transfer-Encodings: x", b"Connection-X: close", b"Hostname: x", b"Expect-CT: x",
    b"Rangefinder: x", b"Cache-Control: no-cache", b"Pragma: no-cache", b"Cookie: a=b; c=d",
    # aiohttp's singletons (a second one is a 400; BASE_HEADERS has a User-Agent) and near names
    b"User-Agent: again/2", b"user-agent: lower", b"Server: x", b"Server: y", b'ETag: "x"', b'Etag: "y"',
    b"Max-Forwards: 3", b"Max-Forwards: 4", b"Content-Location: /x", b"Content-Range: bytes 0-1/2",
    b"Content-Type: text/html", b"User-Agents: x", b"ETags: x", b"Servers: x", b"Host: test",
    b"Content-Encoding: zstd", b"Content-Encoding: gzip", b"Content-Language: en", b"Sec-WebSocket-Key1: 4 @1  46546xW%0l",
    b"sec-websocket-key2: x", b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
]



def base_request(method: bytes = b"GET", target: bytes = TARGET.encode(), version: bytes = b"HTTP/1.1",
                 headers: list[bytes] | None = None) -> bytes:
    hs = BASE_HEADERS if headers is None else headers
    return method + b" " + target + b" " + version + b"\r\n" + b"".join(h + b"\r\n" for h in hs) + b"\r\n"


# Requests as real clients send them (Chromium 120 and Firefox 121 navigations and subresources,
# curl, wget, nginx and HAProxy as proxies, a CDN in front), each with whether the kernel answers
# it: every one of them llhttp reads as one plain GET, except where a header says otherwise.
_CHROME_UA = (b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
              b"Chrome/120.0.0.0 Safari/537.36")
_CHROME_HINTS = [b'sec-ch-ua: "Chromium";v="120", "Not?A_Brand";v="8"', b"sec-ch-ua-mobile: ?0",
                 b'sec-ch-ua-platform: "Linux"']
REAL_REQUESTS: dict[str, tuple[bytes, bool]] = {
    "chromium navigation": (base_request(target=b"/", headers=[
        b"Host: test", b"Connection: keep-alive", b"Cache-Control: max-age=0", *_CHROME_HINTS,
        b"Upgrade-Insecure-Requests: 1", _CHROME_UA,
        b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,"
        b"application/signed-exchange;v=b3;q=0.7",
        b"Sec-Fetch-Site: none", b"Sec-Fetch-Mode: navigate", b"Sec-Fetch-User: ?1", b"Sec-Fetch-Dest: document",
        b"Accept-Encoding: gzip, deflate, br", b"Accept-Language: en-US,en;q=0.9",
        b"Cookie: session=3f9a1c2e; theme=dark"]), True),
    "chromium stylesheet": (base_request(target=b"/style.css", headers=[
        b"Host: test", b"Connection: keep-alive", b'sec-ch-ua-platform: "Linux"', _CHROME_UA, *_CHROME_HINTS[:2],
        b"Accept: text/css,*/*;q=0.1", b"Sec-Fetch-Site: same-origin", b"Sec-Fetch-Mode: no-cors",
        b"Sec-Fetch-Dest: style", b"Referer: http://test/", b"Accept-Encoding: gzip, deflate, br, zstd",
        b"Accept-Language: en-US,en;q=0.9", b"Priority: u=0"]), True),
    "firefox navigation": (base_request(target=b"/", headers=[
        b"Host: test", b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
        b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", b"Accept-Language: en-US,en;q=0.5",
        b"Accept-Encoding: gzip, deflate, br", b"DNT: 1", b"Connection: keep-alive", b"Upgrade-Insecure-Requests: 1",
        b"Sec-Fetch-Dest: document", b"Sec-Fetch-Mode: navigate", b"Sec-Fetch-Site: none", b"Sec-Fetch-User: ?1",
        b"Pragma: no-cache", b"Cache-Control: no-cache"]), True),
    "curl": (base_request(headers=[b"Host: test", b"User-Agent: curl/7.88.1", b"Accept: */*"]), True),
    "wget": (base_request(headers=[b"Host: test", b"User-Agent: Wget/1.21.3", b"Accept: */*",
                                   b"Accept-Encoding: identity", b"Connection: Keep-Alive"]), True),
    "nginx proxy": (base_request(version=b"HTTP/1.0", headers=[
        b"Host: test", b"X-Real-IP: 198.51.100.7", b"X-Forwarded-For: 198.51.100.7", b"X-Forwarded-Proto: https",
        b"Connection: close", b"User-Agent: curl/7.88.1", b"Accept: */*"]), True),
    "haproxy": (base_request(headers=[b"Host: test", b"User-Agent: curl/7.88.1", b"Accept: */*",
                                      b"X-Forwarded-For: 198.51.100.7", b"Via: 1.1 haproxy"]), True),
    "cdn": (base_request(headers=[b"Host: test", b"Accept-Encoding: gzip", b"CF-Connecting-IP: 198.51.100.7",
                                  b"CDN-Loop: cloudflare", b"X-Forwarded-For: 198.51.100.7", b"X-Forwarded-Proto: https",
                                  b"Via: 1.1 varnish (Varnish/7.1)", b"User-Agent: Mozilla/5.0", b"Accept: */*"]), True),
    # aiohttp answers 400 to a second User-Agent (a singleton, as Host is): userspace's answer.
    "two User-Agents": (base_request(headers=[b"Host: test", b"User-Agent: curl/7.88.1", b"Accept: */*",
                                              b"user-agent: curl/7.88.1"]), False),
    # aiohttp answers 400 to a body coding it cannot decode, and to the old WebSocket handshake.
    "Content-Encoding: zstd": (base_request(headers=[b"Host: test", b"Accept: */*", b"Content-Encoding: zstd"]), False),
    "Sec-WebSocket-Key1": (base_request(headers=[b"Host: test", b"Accept: */*", b"Sec-WebSocket-Key1: 4 @1  46546xW%0l"]),
                           False),
    # llhttp reads Proxy-Connection as Connection: userspace answers, and closes.
    "old proxy, Proxy-Connection: close": (base_request(headers=[b"Host: test", b"Proxy-Connection: close",
                                                                 b"Accept: */*"]), False),
}


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
    answerable: bool  # what the kernel may answer: GET/HEAD, HTTP/1.x, no body, no upgrade (each one)
    detail: str
    path: str = ""  # as llhttp (and yarl) read it, query left out
    version: tuple[int, int] = (1, 1)
    should_close: bool = False
    messages: int = 1  # complete requests in the data (several: pipelined, which the kernel answers all of)

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
        if not messages or upgraded or tail:
            return LlhttpView(True, False, f"{len(messages)} messages, tail {tail!r}")
        # Pipelined requests may all be answered, in order, if each could be alone and none but
        # the last ends the connection (aiohttp reads nothing after it).
        answerable = all(
            m.method in ("GET", "HEAD")
            and m.version in ((1, 0), (1, 1))
            and m.headers.get("Content-Length") is None and not m.chunked
            and not m.upgrade
            and (i == len(messages) - 1 or not m.should_close)
            for i, (m, _) in enumerate(messages)
        )
        msg = messages[0][0]
        return LlhttpView(True, answerable, f"{msg.method} {msg.path} {msg.version} (+{len(messages) - 1})", msg.url.path,
                          tuple(msg.version), bool(msg.should_close), len(messages))
    finally:
        loop.close()
