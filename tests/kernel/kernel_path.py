"""What the kernel path tests share: TCP health checks, requests in every variant, lossy links."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import SITE_FILES
from tests.support import (
    NetNS,
    RawClient,
    Server,
    body_of,
    nstat,
)


def assert_no_tcp_trouble(ns: NetNS, resets_allowed: bool = False, duplicates: bool = False,
                          challenge_acks: int = 0) -> None:
    """Counters that a sequence-translation or checksum mistake would move. Load generators reset
    their own connections when they stop, so those runs allow resets (a userspace-only run shows
    the same). Where the test itself duplicates the client's segments, the server socket's D-SACKs
    of them can reach the client when it no longer holds what they name, and it discards or
    ignores them: a userspace-only run counts those too, so they are not checked then. A test
    whose copies can overtake the client's own segments allows a few challenge ACKs (see there)."""
    s = nstat(ns)
    names = ["TcpInCsumErrors", "TcpExtPAWSEstab", "TcpExtTCPACKSkippedSeq", "TcpExtTCPACKSkippedChallenge"]
    if not duplicates:
        names += ["TcpExtTCPSACKDiscard", "TcpExtTCPDSACKIgnoredNoUndo"]
    for name in names:
        assert s.get(name, 0) == 0, (name, s.get(name))
    assert s.get("TcpExtTCPChallengeACK", 0) <= challenge_acks, ("TcpExtTCPChallengeACK", s.get("TcpExtTCPChallengeACK"))
    if not resets_allowed:
        nonzero = {k: v for k, v in s.items() if v and k.startswith(("Tcp", "TcpExt"))}
        assert s.get("TcpEstabResets", 0) == 0 and s.get("TcpOutRsts", 0) == 0, nonzero


VARIANT_REQUESTS = {
    "1.1 close": (b"GET /style.css HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", True),
    "1.0": (b"GET /style.css HTTP/1.0\r\n\r\n", True),
    "1.0 close": (b"GET /style.css HTTP/1.0\r\nConnection: Close\r\n\r\n", True),
    "1.0 keep-alive": (b"GET /style.css HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", False),
    "1.0 HEAD": (b"HEAD /style.css HTTP/1.0\r\n\r\n", True),
    "1.1 HEAD close": (b"HEAD /style.css HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", True),
    "1.0 304 keep-alive": (b"GET /style.css HTTP/1.0\r\nConnection: keep-alive\r\nIf-None-Match: ETAG\r\n\r\n", False),
    "1.1 304 close": (b"GET /style.css HTTP/1.1\r\nHost: x\r\nIf-None-Match: ETAG\r\nConnection: close\r\n\r\n", True),
}


def exchange(ns: NetNS, request: bytes, port: int = 8080, host: str = "127.0.0.1") -> tuple[bytes, bool]:
    """Send one request on a fresh connection; the bytes until the response is complete, and
    whether the server then closed the connection (within 2 s)."""
    c = RawClient(ns, host=host, port=port)
    c.send(request)
    resp = c.read_response(head_only=request.startswith(b"HEAD"))
    c.sock.settimeout(2)
    try:
        closed = c.sock.recv(1) == b""
    except TimeoutError:
        closed = False
    c.close()
    return resp, closed


def user_answer(srv: Server, c: RawClient, request: str, head_only: bool = False) -> bytes:
    """Userspace's answer to request: sent behind a miss in the same segment (a pipelined segment
    with a miss is userspace's whole), for a path never asked for before (one missed before may be
    a negative entry by now, which the kernel answers); checked on userspace's counter."""
    user = srv.user_hits()
    c.send(f"GET /never-{uuid.uuid4().hex} HTTP/1.1\r\nHost: x\r\n\r\n{request}".encode())
    assert c.read_response().startswith(b"HTTP/1.1 404")
    answer = c.read_response(head_only=head_only)
    assert srv.user_hits() == user + 2, "the kernel answered what was meant for userspace"
    return answer


def closing_fetches(ns: NetNS, host: str, n: int) -> None:
    """n requests for large.bin with Connection: close, each on its own connection: the whole
    answer, byte-exact, then the server's close."""
    for i in range(n):
        c = RawClient(ns, host=host, timeout=20)
        c.send(b"GET /large.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert body_of(c.read_response()) == SITE_FILES["large.bin"], i
        assert c.sock.recv(1) == b"", i
        c.close()


@contextlib.contextmanager
def lossy_veth(veth, site: Path, *args: str, drop: set[int] = frozenset(), expect_kernel: bool = True,  # type: ignore[no-untyped-def]
               **loss: object) -> Iterator[tuple[Server, object]]:
    """A server (with args) on the veth pair's server side and the test-only dropper on the client side."""
    from tests.kernel.lossy import Dropper

    srv = Server(veth.server, site, "--hot-after", "0", "--interface", veth.server_if, *args, expect_kernel=expect_kernel)
    dropper = Dropper(veth.client, veth.client_if, 8080, drop, **loss)  # type: ignore[arg-type]
    try:
        yield srv, dropper
    finally:
        dropper.close()
        srv.stop()
