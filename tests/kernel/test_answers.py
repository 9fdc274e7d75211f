"""The kernel path for real: BPF programs loaded and attached in a namespace, real clients, and
proof of where each answer came from (kernel counter, userspace counter, exact bytes)."""

from __future__ import annotations

import re
import time
from pathlib import Path

from bench.run import parse_wrk
from fileserver.abi import INM_SCAN
from tests.conftest import SITE_FILES
from tests.kernel.kernel_path import assert_no_tcp_trouble, user_answer
from tests.support import (
    NetNS,
    RawClient,
    Server,
    body_of,
    nstat,
    require_tool,
    split_response,
    without_date,
)


def test_hot_file_answered_by_kernel(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory(site, "--hot-after", "0")
    k0, u0 = srv.kernel_hits(), srv.user_hits()
    client = RawClient(netns)
    for _ in range(20):  # keep-alive
        assert body_of(client.get("/hot.txt")) == SITE_FILES["hot.txt"]
    client.close()
    for _ in range(20):  # a new connection each time
        c = RawClient(netns)
        assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]
        c.close()
    assert srv.kernel_hits() == k0 + 40
    assert srv.user_hits() == u0  # the userspace handler was never called
    assert_no_tcp_trouble(netns)


def test_kernel_and_user_bytes_identical(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory(site, "--hot-after", "0")
    c = RawClient(netns)
    from_kernel = c.get("/style.css")
    assert srv.user_hits() == 0
    # Behind a miss in the same segment (pipelined), the request goes to userspace too.
    c.send(b"GET /not-there HTTP/1.1\r\nHost: x\r\n\r\nGET /style.css HTTP/1.1\r\nHost: x\r\n\r\n")
    assert c.read_response().startswith(b"HTTP/1.1 404")
    from_user = c.read_response()
    assert srv.user_hits() == 2 and srv.kernel_hits() == 1
    assert without_date(from_kernel) == without_date(from_user)
    date = split_response(from_kernel)[1]["date"]
    assert abs(time.mktime(time.strptime(date, "%a, %d %b %Y %H:%M:%S GMT")) - time.mktime(time.gmtime())) <= 2


def test_head_answered_by_kernel_like_userspace(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory(site, "--hot-after", "0")
    c = RawClient(netns)
    c.send(b"HEAD /style.css HTTP/1.1\r\nHost: x\r\n\r\n")
    from_kernel = c.read_response(head_only=True)
    full = c.get("/style.css")
    assert srv.kernel_hits() == 2 and srv.user_hits() == 0
    assert full.startswith(from_kernel) and split_response(full)[2] == SITE_FILES["style.css"]
    c.send(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\nHEAD /style.css HTTP/1.1\r\nHost: x\r\n\r\n")  # pipelined: userspace
    assert c.read_response().startswith(b"HTTP/1.1 404")
    from_user = c.read_response(head_only=True)
    assert srv.user_hits() == 2
    assert without_date(from_kernel) == without_date(from_user)
    assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]  # and the stream is still in sync


def test_conditional_get_answered_by_kernel(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory(site, "--hot-after", "0")
    c = RawClient(netns)
    etag = split_response(c.get("/style.css"))[1]["etag"]
    kernel = {
        "match": c.get("/style.css", f"If-None-Match: {etag}\r\n"),
        "weak": c.get("/style.css", f"If-None-Match:W/{etag}  \r\n"),
        "other": c.get("/style.css", 'If-None-Match: "0-0"\r\n'),
        "head": (c.send(f"HEAD /style.css HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\n\r\n".encode())
                 or c.read_response(head_only=True)),
    }
    assert srv.kernel_hits() == 5 and srv.user_hits() == 0, ({k: v[:40] for k, v in kernel.items()}, {k: v for k, v in srv.metrics().items() if "passes" in k and v})
    assert kernel["match"].startswith(b"HTTP/1.1 304 Not Modified\r\n") and kernel["match"].endswith(b"\r\n\r\n")
    assert kernel["weak"] == kernel["match"] or without_date(kernel["weak"]) == without_date(kernel["match"])
    assert split_response(kernel["other"])[2] == SITE_FILES["style.css"]
    assert kernel["head"].startswith(b"HTTP/1.1 304")
    # Lists are the kernel's too, read as userspace reads them (split at commas, each element
    # stripped, W/ dropped, compared whole); "*" and values longer than the kernel reads
    # (INM_SCAN) are userspace's. Every answer is userspace's own, byte for byte but the Date.
    long_list = ", ".join(f'"{i:040d}"' for i in range(7)) + ", " + etag
    assert len(long_list) > INM_SCAN
    lists = {  # value: (answered by the kernel, 304)
        f'"0-0", {etag}': (True, True), f"{etag}, W/{etag}": (True, True), f' "a" ,\t"b",, W/{etag} ': (True, True),
        '"a", "b"': (True, False), f'"a" {etag}': (True, False), f"{etag}x, x{etag}": (True, False),
        f"W{etag}, W /{etag}": (True, False), f"*, {etag}": (False, True), f'"a", *': (False, True),
        long_list: (False, True),
    }
    for value, (by_kernel, not_modified) in lists.items():
        k, u = srv.kernel_hits(), srv.user_hits()
        resp = c.get("/style.css", f"If-None-Match: {value}\r\n")
        assert (srv.kernel_hits() - k, srv.user_hits() - u) == ((1, 0) if by_kernel else (0, 1)), value
        assert resp.startswith(b"HTTP/1.1 304" if not_modified else b"HTTP/1.1 200"), value
        from_user = user_answer(srv, c, f"GET /style.css HTTP/1.1\r\nHost: x\r\nIf-None-Match: {value}\r\n\r\n")
        assert without_date(from_user) == without_date(resp), value
        time.sleep(0.05)
    # Userspace's 304 (behind a miss in the same segment) must be the kernel's, byte for byte.
    from_user = user_answer(srv, c, f"GET /style.css HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\n\r\n")
    assert without_date(from_user) == without_date(kernel["match"])
    # ("*" twice and the long list passed as conditional)
    assert srv.metrics()["fileserver_kernel_passes_total{reason=conditional}"] == 3
    c2 = RawClient(netns)
    c2.get("/style.css", f"If-None-Match: {etag}\r\nIf-None-Match: {etag}\r\n")
    assert srv.metrics()["fileserver_kernel_passes_total{reason=conditional}"] == 4
    # After a change the old ETag no longer matches: the new content comes back.
    (site / "style.css").write_bytes(b"changed\n")
    time.sleep(1.2)
    c3 = RawClient(netns)
    resp = c3.get("/style.css", f"If-None-Match: {etag}\r\n")
    assert split_response(resp)[2] == b"changed\n"


def test_revalidation_as_browsers_send_it(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    """A reload revalidates with If-None-Match and If-Modified-Since together: RFC 9110 section
    13.2.2 has the ETag decide then, so the kernel answers those by If-None-Match alone; and
    If-Modified-Since alone that is exactly the file's Last-Modified gets its 304 from the kernel
    too. Any other date is userspace's to parse. Every answer is the one --no-kernel-cache gives,
    byte for byte but the Date."""
    def requests(etag: str, lm: str) -> dict[str, tuple[str, str, bool]]:
        later, earlier = "Fri, 01 Jan 2100 00:00:00 GMT", "Thu, 01 Jan 1970 00:00:01 GMT"
        return {  # name: (method, extra headers, answered by the kernel)
            "both": ("GET", f"If-None-Match: {etag}\r\nIf-Modified-Since: {lm}\r\n", True),
            "both, other etag": ("GET", f'If-None-Match: "0-0"\r\nIf-Modified-Since: {lm}\r\n', True),
            "both, older date": ("GET", f"If-None-Match: {etag}\r\nIf-Modified-Since: {earlier}\r\n", True),
            "date first": ("GET", f"If-Modified-Since: {lm}\r\nIf-None-Match: {etag}\r\n", True),
            "date alone": ("GET", f"If-Modified-Since:  {lm} \r\n", True),
            "date alone, HEAD": ("HEAD", f"If-Modified-Since: {lm}\r\n", True),
            "later date": ("GET", f"If-Modified-Since: {later}\r\n", False),
            "earlier date": ("GET", f"If-Modified-Since: {earlier}\r\n", False),
            "two dates": ("GET", f"If-Modified-Since: {lm}\r\nIf-Modified-Since: {lm}\r\n", False),
        }

    def fetch_all(srv: Server) -> dict[str, bytes]:
        c = RawClient(netns)
        headers = split_response(c.get("/style.css"))[1]
        got = {}
        for name, (method, extra, by_kernel) in requests(headers["etag"], headers["last-modified"]).items():
            hits = srv.kernel_hits()
            c.send(f"{method} /style.css HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
            got[name] = c.read_response(head_only=method == "HEAD")
            if srv.kernel_hits() - hits != (1 if by_kernel and kernel else 0):
                problems.append((name, srv.kernel_hits() - hits))
            time.sleep(0.05)  # (after a userspace answer, the next request returns to the kernel)
        c.close()
        return got

    problems: list[tuple[str, int]] = []
    kernel = True
    srv = server_factory(site, "--hot-after", "0")
    from_kernel = fetch_all(srv)
    srv.stop()
    assert not problems, problems
    assert all(from_kernel[n].startswith(b"HTTP/1.1 304") for n in ("both", "both, older date", "date first",
                                                                    "date alone", "date alone, HEAD", "later date"))
    assert split_response(from_kernel["both, other etag"])[2] == SITE_FILES["style.css"]
    assert split_response(from_kernel["earlier date"])[2] == SITE_FILES["style.css"]
    kernel = False
    from_user = fetch_all(server_factory(site, "--no-kernel-cache", expect_kernel=False))
    for name in from_kernel:
        assert without_date(from_kernel[name]) == without_date(from_user[name]), name


def test_ab_without_keepalive_answered_by_kernel(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    """ab without -k: HTTP/1.0, one request per connection. The kernel answers; the server socket
    closes after the client has the answer; nothing is left half-closed and nothing is reset."""
    ab = require_tool("ab")
    srv = server_factory(site, "--hot-after", "0")
    out = netns.run(ab, "-n", "5000", "-c", "50", "http://127.0.0.1:8080/hot.txt").stdout
    assert re.search(r"Complete requests:\s+5000", out) and re.search(r"Failed requests:\s+0", out), out
    assert "Non-2xx" not in out
    assert srv.kernel_hits() >= 0.98 * 5000, (srv.kernel_hits(), srv.user_hits())
    longest = int(re.search(r"100%\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    assert longest < 2000, out  # no connection waited for a fallback close
    time.sleep(3)
    states = netns.run("ss", "-tanH", "sport", "= :8080").stdout.split()
    assert not {"CLOSE-WAIT", "LAST-ACK", "FIN-WAIT-1", "FIN-WAIT-2", "ESTAB", "CLOSING"} & set(states), states[:20]
    assert_no_tcp_trouble(netns)


def test_ab_over_a_full_accept_queue(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    """ab -c 400 overflows the listener's accept queue (--backlog 128): the listener drops handshakes' last
    ACKs and answers with SYN cookies, and clients send requests on connections whose server socket
    does not exist yet. The kernel answers none of those (it would acknowledge a request for a
    socket that then never closes: the client would wait for ever), so every request is answered."""
    ab = require_tool("ab")
    srv = server_factory(site, "--hot-after", "0", "--backlog", "128")   # (the default, 511, would not overflow)
    out = netns.run(ab, "-n", "10000", "-c", "400", "http://127.0.0.1:8080/hot.txt").stdout
    s = nstat(netns)
    assert s.get("TcpExtListenOverflows", 0) > 0, ("the accept queue never overflowed: nothing was tested", s)
    assert re.search(r"Complete requests:\s+10000", out) and re.search(r"Failed requests:\s+0", out), out
    m = srv.metrics()
    assert m["fileserver_requests_total{path=kernel}"] + m["fileserver_requests_total{path=user}"] == 10000
    assert m["fileserver_requests_total{path=kernel}"] >= 0.9 * 10000, m
    time.sleep(3)
    states = netns.run("ss", "-tanH", "sport", "= :8080").stdout.split()
    assert not {"CLOSE-WAIT", "LAST-ACK", "FIN-WAIT-1", "FIN-WAIT-2", "ESTAB", "CLOSING"} & set(states), states[:20]
    # ab closes the connections it opened but did not need; after SYN cookies some of those meet
    # no socket and are reset (a userspace-only server shows the same): resets allowed here.
    assert_no_tcp_trouble(netns, resets_allowed=True)


def test_request_before_the_handshake_completes_passes(veth, site: Path) -> None:  # type: ignore[no-untyped-def]
    """The handshake's last ACK is lost (as when a full accept queue drops it): the client sends
    its request, but the server socket is not established. The kernel does not answer for it: the
    request passes (handshake), its ACK completes the handshake, userspace answers, and the
    connection then comes back to the kernel. IPv4 and IPv6."""
    from tests.kernel.lossy import Dropper

    srv = Server(veth.server, site, "--hot-after", "0", "--interface", veth.server_if, "--bind", "0.0.0.0,::")
    try:
        for n, host in enumerate(("192.0.2.1", "2001:db8:77::1"), 1):
            dropper = Dropper(veth.client, veth.client_if, drop={1}, dport=8080, egress=True, pure_acks=True)
            try:
                c = RawClient(veth.client, host=host)
                assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]
                assert dropper.stats()[1] == 1  # the handshake's ACK
                m = srv.metrics()
                assert m["fileserver_kernel_passes_total{reason=handshake}"] == n
                assert (srv.user_hits(), srv.kernel_hits()) == (n, 2 * (n - 1))
                time.sleep(0.05)  # userspace says it is done after writing (see test_connection_returns_...)
                for path in ("/hot.txt", "/style.css"):
                    assert body_of(c.get(path)) == SITE_FILES[path[1:]]
                assert (srv.user_hits(), srv.kernel_hits()) == (n, 2 * n)
                c.close()
            finally:
                dropper.close()
        assert_no_tcp_trouble(veth.client)
    finally:
        srv.stop()


def test_query_string_ignored_and_index(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory(site, "--hot-after", "0")
    c = RawClient(netns)
    assert body_of(c.get("/hot.txt?v=123&x=%20")) == SITE_FILES["hot.txt"]
    assert body_of(c.get("/")) == SITE_FILES["index.html"]
    assert body_of(c.get("/sub/")) == SITE_FILES["sub/index.html"]
    assert srv.kernel_hits() == 3 and srv.user_hits() == 0


def test_keepalive_mixing_hits_misses_404_and_sendfile(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory(site, "--hot-after", "0")
    expected = {"/hot.txt": SITE_FILES["hot.txt"], "/style.css": SITE_FILES["style.css"],
                "/big.bin": SITE_FILES["big.bin"], "/mid.bin": SITE_FILES["mid.bin"], "/nope": None}
    sequences = [
        ["/hot.txt", "/style.css", "/nope", "/big.bin", "/hot.txt", "/mid.bin", "/hot.txt"],
        ["/hot.txt", "/big.bin", "/hot.txt"],
        ["/nope", "/hot.txt", "/style.css"],
        ["/hot.txt", "/hot.txt", "/mid.bin", "/nope", "/big.bin", "/big.bin"],
    ]
    for _ in range(3):
        for seq in sequences:
            c = RawClient(netns)
            for path in seq:
                status, _, body = split_response(c.get(path))
                if expected[path] is None:
                    assert status.split()[1] == "404"
                else:
                    assert body == expected[path], (path, seq)
            c.close()
    assert srv.kernel_hits() > 0 and srv.user_hits() > 0
    assert_no_tcp_trouble(netns)


def test_ineligible_requests_pass_to_userspace(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory(site, "--hot-after", "0")
    cases = {
        "method": b"DELETE /hot.txt HTTP/1.1\r\nHost: x\r\n\r\n",
        "close": b"GET /hot.txt HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\n\r\n",
        "range": b"GET /hot.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=0-3\r\n\r\n",
        "conditional": b"GET /hot.txt HTTP/1.1\r\nHost: x\r\nIf-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n",
        "body": b"GET /hot.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        "escaped": b"GET http://x/hot.txt HTTP/1.1\r\nHost: x\r\n\r\n",
        "pipelined": b"GET /hot.txt HTTP/1.1\r\nHost: x\r\n\r\nGET /hot.txt HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"x\"\r\n\r\n",
        "miss": b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
        "malformed": b"GET /hot.txt HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
    }
    for reason, data in cases.items():
        before = srv.metrics()
        c = RawClient(netns)
        c.send(data)
        try:
            first = c.read_response()
        except ConnectionError:
            first = b""
        c.close()
        after = srv.metrics()
        assert after["fileserver_requests_total{path=kernel}"] == before["fileserver_requests_total{path=kernel}"], reason
        key = f"fileserver_kernel_passes_total{{reason={reason}}}"
        assert after[key] == before.get(key, 0) + 1, reason
        if reason not in ("malformed",):
            assert first.split(b" ")[1] in (b"200", b"206", b"404", b"405"), (reason, first[:60])


def test_percent_encoded_paths_answered_by_kernel(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    """Non-ASCII and reserved characters arrive percent-encoded: the kernel matches the one spelling
    browsers send (UTF-8, uppercase hex, only what RFC 3986 requires), as bytes, registered by
    userspace from the path it decoded; every other spelling of the same file is userspace's, and
    both give the same bytes."""
    files = {"文档.html": b"<p>doc</p>\n", "a b.html": b"<p>space</p>\n", "100%.txt": b"percent\n",
             "café/menu (1).txt": b"menu\n", "it's+ok.txt": b"sub-delims\n"}
    for name, data in files.items():
        (site / name).parent.mkdir(exist_ok=True)
        (site / name).write_bytes(data)
    srv = server_factory(site, "--hot-after", "0")
    canonical = {"/%E6%96%87%E6%A1%A3.html": "文档.html", "/a%20b.html": "a b.html", "/100%25.txt": "100%.txt",
                 "/caf%C3%A9/menu%20(1).txt": "café/menu (1).txt", "/it's+ok.txt": "it's+ok.txt"}
    other = {"/%e6%96%87%e6%a1%a3.html": "文档.html", "/a%20b%2Ehtml": "a b.html", "/%61%20b.html": "a b.html",
             "/it%27s%2Bok.txt": "it's+ok.txt"}
    c = RawClient(netns)
    answers = {}
    for spellings, by_kernel in ((canonical, True), (other, False)):
        for raw, name in spellings.items():
            k, u = srv.kernel_hits(), srv.user_hits()
            answers[raw] = c.get(raw)
            assert body_of(answers[raw]) == files[name], raw
            assert (srv.kernel_hits() - k, srv.user_hits() - u) == ((1, 0) if by_kernel else (0, 1)), raw
            time.sleep(0.05)   # (a fast client stays userspace's for one request after a userspace answer)
    assert without_date(answers["/%e6%96%87%e6%a1%a3.html"]) == without_date(answers["/%E6%96%87%E6%A1%A3.html"])
    # curl sends what it is given; a request for the canonical spelling is the kernel's.
    k = srv.kernel_hits()
    out = netns.run(require_tool("curl"), "-sS", "http://127.0.0.1:8080/%E6%96%87%E6%A1%A3.html").stdout
    assert out.encode() == files["文档.html"] and srv.kernel_hits() == k + 1
    # A directory named without its slash redirects to the canonical spelling.
    resp = c.get("/caf%c3%a9")
    assert split_response(resp)[1]["location"] == "/caf%C3%A9/"
    assert_no_tcp_trouble(netns)


def test_browser_style_request_answered(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory(site, "--hot-after", "0")
    c = RawClient(netns)
    browser = ("Connection: keep-alive\r\nPragma: no-cache\r\nCache-Control: no-cache\r\n"
               "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120 Safari/537.36\r\n"
               "Accept: */*\r\nSec-Fetch-Mode: cors\r\nAccept-Encoding: gzip, deflate, br\r\n"
               "Accept-Language: en-US,en;q=0.9\r\n")
    assert body_of(c.get("/hot.txt", browser)) == SITE_FILES["hot.txt"]
    assert body_of(c.get("/hot.txt", "connection: Keep-Alive\r\n")) == SITE_FILES["hot.txt"]
    assert srv.kernel_hits() == 2
    c.get("/hot.txt", "Connection: keep-alive, Upgrade\r\n")
    assert srv.kernel_hits() == 2 and srv.metrics()["fileserver_kernel_passes_total{reason=close}"] == 1


def test_split_request_passes(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory(site, "--hot-after", "0")
    c = RawClient(netns)
    c.send(b"GET /hot.txt HTTP/1.1\r\nHo")
    time.sleep(0.2)
    c.send(b"st: x\r\n\r\n")
    assert body_of(c.read_response()) == SITE_FILES["hot.txt"]
    assert srv.kernel_hits() == 0
    assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]  # userspace has it all: back to the kernel
    m = srv.metrics()
    assert m["fileserver_kernel_passes_total{reason=split}"] == 1
    assert m["fileserver_requests_total{path=kernel}"] == 1 and m["fileserver_kernel_returns_total"] == 1


def test_wrk_and_ab_keepalive_zero_errors(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    wrk, ab = require_tool("wrk"), require_tool("ab")
    srv = server_factory(site, "--hot-after", "0")
    out = netns.run(wrk, "-t1", "-c20", "-d3s", "http://127.0.0.1:8080/hot.txt").stdout
    report = parse_wrk(out)
    requests, errors = int(report["requests"]), int(report["errors"])
    assert requests > 1000 and errors == 0, out
    k = srv.kernel_hits()
    assert k >= requests  # wrk counts completed responses; every one came from the kernel
    assert srv.user_hits() == 0
    out = netns.run(ab, "-k", "-n", "5000", "-c", "20", "http://127.0.0.1:8080/hot.txt").stdout
    assert re.search(r"Complete requests:\s+5000", out), out
    assert re.search(r"Failed requests:\s+0", out), out
    assert "Non-2xx" not in out
    # ab -k speaks HTTP/1.0 with "Connection: keep-alive": the kernel answers that too
    assert srv.kernel_hits() >= k + 5000 and srv.user_hits() == 0
    assert_no_tcp_trouble(netns, resets_allowed=True)
