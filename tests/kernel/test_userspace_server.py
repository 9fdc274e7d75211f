"""The userspace path, through the real CLI in a namespace, with real clients."""

from __future__ import annotations

import http.client
import re
import signal
import socket
import time
from pathlib import Path

import pytest

from fileserver import SERVER_NAME
from tests.conftest import SITE_FILES
from tests.support import NetNS, Server


@pytest.fixture
def srv(netns: NetNS, site: Path, server_factory) -> Server:  # type: ignore[no-untyped-def]
    return server_factory(site, "--no-kernel-cache", expect_kernel=False)


def request(ns: NetNS, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    with ns.entered():
        conn = http.client.HTTPConnection("127.0.0.1", 8080, timeout=5)
        conn.connect()  # the socket is made here, inside the namespace
    conn.request(method, path, headers=headers or {})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


def raw(ns: NetNS, data: bytes, port: int = 8080) -> bytes:
    with ns.entered():
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
    with s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and b"Connection: close" in b"".join(chunks):
                pass
        return b"".join(chunks)


def test_get_every_file_byte_exact(srv: Server) -> None:
    for rel, data in SITE_FILES.items():
        status, headers, body = request(srv.ns, "GET", "/" + rel)
        assert status == 200, rel
        assert body == data, rel
        assert headers["content-length"] == str(len(data))
        assert headers["server"] == SERVER_NAME
        assert headers["accept-ranges"] == "bytes"
        assert headers["etag"].startswith('"')
        assert "date" in headers and "last-modified" in headers


def test_index_and_redirect(srv: Server) -> None:
    assert request(srv.ns, "GET", "/")[2] == SITE_FILES["index.html"]
    assert request(srv.ns, "GET", "/sub/")[2] == SITE_FILES["sub/index.html"]
    status, headers, _ = request(srv.ns, "GET", "/sub")
    assert status == 301 and headers["location"] == "/sub/"


def test_content_types(srv: Server) -> None:
    assert request(srv.ns, "GET", "/style.css")[1]["content-type"] == "text/css; charset=utf-8"
    assert request(srv.ns, "GET", "/")[1]["content-type"] == "text/html; charset=utf-8"
    assert request(srv.ns, "GET", "/big.bin")[1]["content-type"] == "application/octet-stream"


def test_head_has_headers_no_body(srv: Server) -> None:
    status, headers, body = request(srv.ns, "HEAD", "/style.css")
    assert status == 200 and body == b""
    assert headers["content-length"] == str(len(SITE_FILES["style.css"]))
    out = srv.ns.run("curl", "-sI", "http://127.0.0.1:8080/big.bin").stdout
    assert f"Content-Length: {len(SITE_FILES['big.bin'])}" in out


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_405(srv: Server, method: str) -> None:
    status, headers, _ = request(srv.ns, method, "/hot.txt")
    assert status == 405
    assert headers["allow"] == "GET, HEAD"


def test_conditional_requests(srv: Server) -> None:
    _, headers, _ = request(srv.ns, "GET", "/hot.txt")
    status, h304, body = request(srv.ns, "GET", "/hot.txt", {"If-None-Match": headers["etag"]})
    assert status == 304 and body == b"" and h304["etag"] == headers["etag"]
    assert request(srv.ns, "GET", "/hot.txt", {"If-Modified-Since": headers["last-modified"]})[0] == 304
    assert request(srv.ns, "GET", "/hot.txt", {"If-None-Match": '"nope"'})[0] == 200
    assert request(srv.ns, "GET", "/hot.txt", {"If-Match": '"nope"'})[0] == 412


def test_ranges(srv: Server) -> None:
    data = SITE_FILES["mid.bin"]
    status, headers, body = request(srv.ns, "GET", "/mid.bin", {"Range": "bytes=10-19"})
    assert status == 206 and body == data[10:20]
    assert headers["content-range"] == f"bytes 10-19/{len(data)}"
    assert request(srv.ns, "GET", "/mid.bin", {"Range": "bytes=-5"})[2] == data[-5:]
    status, headers, _ = request(srv.ns, "GET", "/mid.bin", {"Range": f"bytes={len(data)}-"})
    assert status == 416 and headers["content-range"] == f"bytes */{len(data)}"
    big = SITE_FILES["big.bin"]
    status, _, body = request(srv.ns, "GET", "/big.bin", {"Range": "bytes=100000-100099"})
    assert status == 206 and body == big[100000:100100]
    # If-Range with a stale validator: the whole file
    assert request(srv.ns, "GET", "/mid.bin", {"Range": "bytes=0-0", "If-Range": '"old"'})[0] == 200


@pytest.mark.parametrize(
    "path, statuses",
    [
        ("/../../../etc/passwd", {403, 404}),
        ("/%2e%2e/%2e%2e/etc/passwd", {403, 404}),
        ("/..%2f..%2fetc%2fpasswd", {403, 404}),
        ("/sub/../../etc/passwd", {403, 404}),
        ("/%00", {400}),
        ("/hot.txt%00.html", {400}),
        ("//etc/passwd", {404}),
    ],
)
def test_traversal_never_leaks(srv: Server, path: str, statuses: set[int]) -> None:
    resp = raw(srv.ns, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    status = int(resp.split(b" ", 2)[1])
    assert status in statuses
    assert b"root:" not in resp


def test_symlink_out_of_root(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    secret = site.parent / "secret.txt"
    secret.write_text("top secret")
    (site / "leak.txt").symlink_to(secret)
    (site / "leakdir").symlink_to(site.parent)
    server_factory(site, "--no-kernel-cache", expect_kernel=False)
    assert request(netns, "GET", "/leak.txt")[0] == 404
    assert request(netns, "GET", "/leakdir/secret.txt")[0] == 404


def test_malformed_requests_400(srv: Server) -> None:
    for bad in (b"GARBAGE\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"):
        resp = raw(srv.ns, bad)
        assert resp.startswith(b"HTTP/1.1 400") or resp.startswith(b"HTTP/1.0 400"), (bad, resp[:80])


def test_oversized_headers_rejected(srv: Server) -> None:
    resp = raw(srv.ns, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    assert resp.split(b" ", 2)[1] in (b"400", b"431")
    resp = raw(srv.ns, b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp.split(b" ", 2)[1] in (b"400", b"414", b"431")
    # and the server still serves
    assert request(srv.ns, "GET", "/hot.txt")[0] == 200


def test_keepalive_and_pipelining(srv: Server) -> None:
    reqs = b"".join(f"GET /{p} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for p in ("hot.txt", "style.css", "nope"))
    resp = raw(srv.ns, reqs + b"GET /hot.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert resp.count(b"HTTP/1.1 200 OK") == 3 and resp.count(b"HTTP/1.1 404") == 1
    assert resp.index(SITE_FILES["hot.txt"]) < resp.index(SITE_FILES["style.css"])


def test_http10(srv: Server) -> None:
    resp = raw(srv.ns, b"GET /hot.txt HTTP/1.0\r\n\r\n")
    assert resp.startswith(b"HTTP/1.0 200") and resp.endswith(SITE_FILES["hot.txt"])


def test_file_changes_are_seen(srv: Server) -> None:
    path = srv.root / "hot.txt"
    path.write_bytes(b"new content\n")
    assert request(srv.ns, "GET", "/hot.txt")[2] == b"new content\n"
    tmp = srv.root / "hot.tmp"
    tmp.write_bytes(b"renamed in\n")
    tmp.rename(path)
    assert request(srv.ns, "GET", "/hot.txt")[2] == b"renamed in\n"
    path.unlink()
    assert request(srv.ns, "GET", "/hot.txt")[0] == 404


def test_curl_and_counts(srv: Server) -> None:
    before = srv.user_hits()
    for _ in range(5):
        out = srv.ns.run("curl", "-s", "http://127.0.0.1:8080/hot.txt").stdout
        assert out.encode() == SITE_FILES["hot.txt"]
    assert srv.user_hits() == before + 5
    assert srv.kernel_hits() == 0


def test_autoindex(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    (site / "listme").mkdir()
    (site / "listme" / "x.txt").write_text("x")
    server_factory(site, "--no-kernel-cache", "--autoindex", expect_kernel=False)
    status, _, body = request(netns, "GET", "/listme/")
    assert status == 200 and b'href="x.txt"' in body


def test_no_listing_by_default(srv: Server) -> None:
    (srv.root / "listme").mkdir()
    assert request(srv.ns, "GET", "/listme/")[0] == 404


def test_graceful_shutdown_exit_0(srv: Server) -> None:
    assert request(srv.ns, "GET", "/hot.txt")[0] == 200
    assert srv.stop() == 0
    assert "stopped" in srv.log()


def test_port_in_use_is_one_clear_line(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    server_factory(site, "--no-kernel-cache", expect_kernel=False)
    import sys

    r = netns.run(sys.executable, "-m", "fileserver", "--root", str(site), "--port", "8080", "--metrics-port", "0",
                  "--no-kernel-cache", check=False)
    assert r.returncode != 0
    assert "port 8080 is already in use" in r.stderr
    assert "python" in r.stderr or "fileserver" in r.stderr  # names the holder


def test_missing_root(netns: NetNS, tmp_path: Path) -> None:
    import sys

    r = netns.run(sys.executable, "-m", "fileserver", "--root", str(tmp_path / "nope"), check=False)
    assert r.returncode != 0
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_bad_interface_is_one_clear_line(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    import sys

    r = netns.run(sys.executable, "-m", "fileserver", "--root", str(site), "--interface", "nosuchif0", check=False)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no network interface named 'nosuchif0'" in lines[0], r.stderr
    # with the kernel path off the interface does not matter
    server_factory(site, "--interface", "nosuchif0", "--no-kernel-cache", expect_kernel=False)
    assert request(netns, "GET", "/hot.txt")[0] == 200


def test_sigterm_finishes_inflight_response(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    big = site / "huge.bin"
    data = bytes(range(256)) * 16384  # 4 MiB: more than socket buffers hold, sent with sendfile
    big.write_bytes(data)
    srv = server_factory(site, "--no-kernel-cache", expect_kernel=False)
    with netns.entered():
        s = socket.create_connection(("127.0.0.1", 8080), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    s.sendall(b"GET /huge.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    first = s.recv(4096)
    assert first.startswith(b"HTTP/1.1 200")
    srv.proc.send_signal(signal.SIGTERM)
    received = first
    while True:
        time.sleep(0.001)
        chunk = s.recv(65536)
        if not chunk:
            break
        received += chunk
    s.close()
    assert received.endswith(data) and len(received.partition(b"\r\n\r\n")[2]) == len(data)
    assert srv.proc.wait(timeout=20) == 0


def test_access_log_combined_format(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory(site, "--no-kernel-cache", "--access-log", expect_kernel=False)
    netns.run("curl", "-s", "-A", "agent/1.0", "-e", "http://ref/", "http://127.0.0.1:8080/hot.txt")
    time.sleep(0.2)
    line = [ln for ln in srv.log().splitlines() if "GET /hot.txt" in ln][0]
    assert re.search(r'127\.0\.0\.1 - - \[[^\]]+\] "GET /hot.txt HTTP/1.1" 200 \d+ "http://ref/" "agent/1.0"', line), line


def test_listen_backlog(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    """The listening socket queues 511 connections by default (nginx's), or --backlog: with 128
    (aiohttp's), clients the kernel answers and that close at once (wrk -H 'Connection: close')
    filled the queue faster than Python accepts, and the kernel dropped their SYNs."""
    for args, expected in (((), "511"), (("--backlog", "700"), "700")):
        srv = server_factory(site, "--no-kernel-cache", *args, expect_kernel=False)
        out = netns.run("ss", "-ltnH", "sport = :8080").stdout.split()
        assert out[0] == "LISTEN" and out[2] == expected, out
        srv.stop()
    assert "--backlog must be between" in run_cli_error(site, "--backlog", "0")


def run_cli_error(site: Path, *args: str) -> str:
    from tests.support import run_cli

    r = run_cli("--root", str(site), *args)
    assert r.returncode != 0
    return r.stderr
