"""Precompressed siblings chosen by Accept-Encoding: the kernel answers the exact values browsers
and curl send with the representation userspace picks for that value, byte for byte; any other
value is userspace's (q-values and all); a sibling that changes, appears or goes is followed."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import brotli
import zstandard

from tests.kernel.kernel_path import assert_no_tcp_trouble, user_answer
from tests.support import NetNS, RawClient, Server, require_tool, split_response, without_date

CSS = b"body { color: #333; margin: 0 auto; }\n" * 40


def siblings(site: Path) -> dict[str, bytes]:
    coded = {"br": brotli.compress(CSS), "zstd": zstandard.ZstdCompressor().compress(CSS), "gzip": gzip.compress(CSS, mtime=0)}
    for coding, suffix in (("br", ".br"), ("zstd", ".zst"), ("gzip", ".gz")):
        (site / f"app.css{suffix}").write_bytes(coded[coding])
    (site / "app.css").write_bytes(CSS)
    return coded



def test_precompressed_siblings_from_the_kernel(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    coded = siblings(site)
    srv: Server = server_factory(site, "--hot-after", "0")
    cases = {  # Accept-Encoding (None: no header): (coding sent, by the kernel)
        None: ("", True), "gzip, deflate, br, zstd": ("br", True), "gzip, deflate": ("gzip", True),
        "deflate, gzip, br, zstd": ("br", True), "gzip": ("gzip", True), "identity": ("", True),
        "br;q=0.5, zstd;q=0.9": ("zstd", False), "GZIP, deflate": ("gzip", False), "gzip,deflate": ("gzip", False),
        "*;q=0, identity": ("", False),
    }
    c = RawClient(netns)
    for value, (coding, by_kernel) in cases.items():
        request = f"GET /app.css HTTP/1.1\r\nHost: x\r\n{f'Accept-Encoding: {value}' + chr(13) + chr(10) if value else ''}\r\n"
        k, u = srv.kernel_hits(), srv.user_hits()
        c.send(request.encode())
        resp = c.read_response()
        assert (srv.kernel_hits() - k, srv.user_hits() - u) == ((1, 0) if by_kernel else (0, 1)), value
        _, headers, body = split_response(resp)
        assert headers.get("content-encoding", "") == coding and headers["vary"] == "Accept-Encoding", value
        assert body == (coded[coding] if coding else CSS), value
        assert headers["content-type"] == "text/css; charset=utf-8"
        assert without_date(user_answer(srv, c, request)) == without_date(resp), value
        # Each representation revalidates by its own entity-tag, and its 304 carries Vary too.
        etag = headers["etag"]
        c.send(request.replace("\r\n\r\n", f"\r\nIf-None-Match: {etag}\r\n\r\n").encode())
        nm = c.read_response()
        assert nm.startswith(b"HTTP/1.1 304") and split_response(nm)[1]["vary"] == "Accept-Encoding", value
        time.sleep(0.05)   # (a fast client stays userspace's for one request after a userspace answer)
    assert srv.metrics()["fileserver_kernel_passes_total{reason=encoding}"] >= 4

    # curl --compressed (deflate, gzip, br, zstd here) gets the brotli body from the kernel and decodes it.
    k = srv.kernel_hits()
    out = netns.run(require_tool("curl"), "-sS", "--compressed", "-o", "-", "http://127.0.0.1:8080/app.css").stdout
    assert out.encode() == CSS and srv.kernel_hits() == k + 1

    # A sibling that changes is followed; one that goes hands its requests to the next best.
    new_css = CSS.replace(b"#333", b"#444")
    (site / "app.css.br").write_bytes(brotli.compress(new_css))
    (site / "app.css.zst").unlink()
    (site / "app.css.gz").unlink()
    time.sleep(1.2)
    c2 = RawClient(netns)
    for value, (coding, body) in {"gzip, deflate, br": ("br", brotli.compress(new_css)), "gzip": ("", CSS)}.items():
        k = srv.kernel_hits()
        c2.send(f"GET /app.css HTTP/1.1\r\nHost: x\r\nAccept-Encoding: {value}\r\n\r\n".encode())
        _, headers, got = split_response(c2.read_response())
        assert (headers.get("content-encoding", ""), got) == (coding, body) and srv.kernel_hits() == k + 1, value
    assert_no_tcp_trouble(netns)


def test_vary_and_the_switch(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    """Text types always carry Vary (a cache must not hand a compressed copy to a client that did
    not ask for one); other types only with siblings; --no-precompressed sends the file itself and no Vary."""
    siblings(site)
    (site / "logo.png").write_bytes(b"\x89PNG" + bytes(200))
    for args, coding, vary in (((), "br", True), (("--no-precompressed",), "", False)):
        srv = server_factory(site, "--hot-after", "0", *args)
        c = RawClient(netns)
        k = srv.kernel_hits()
        headers = split_response(c.get("/app.css", "Accept-Encoding: gzip, deflate, br\r\n"))[1]
        assert headers.get("content-encoding", "") == coding and ("vary" in headers) == vary, args
        assert ("vary" in split_response(c.get("/hot.txt"))[1]) == vary, args
        assert "vary" not in split_response(c.get("/logo.png", "Accept-Encoding: gzip\r\n"))[1]
        assert srv.kernel_hits() == k + 3
        c.close()
        srv.stop()


def test_compressed_here_from_the_kernel(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    """--compress: a text file without siblings is compressed once per version, and the kernel
    answers with those bytes, as userspace does; a file compression does not shrink goes as itself."""
    (site / "page.css").write_bytes(CSS)
    (site / "tiny.txt").write_bytes(b"hi\n")
    srv: Server = server_factory(site, "--hot-after", "0", "--compress")
    c = RawClient(netns)
    for path, value, coding, decode in (("/page.css", "gzip, deflate, br", "br", brotli.decompress),
                                        ("/page.css", "gzip, deflate", "gzip", gzip.decompress),
                                        ("/page.css", "deflate, gzip, br, zstd", "br", brotli.decompress),
                                        ("/tiny.txt", "gzip, deflate, br", "", bytes)):
        request = f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept-Encoding: {value}\r\n\r\n"
        k = srv.kernel_hits()
        c.send(request.encode())
        resp = c.read_response()
        assert srv.kernel_hits() == k + 1, (path, value)
        _, headers, body = split_response(resp)
        assert headers.get("content-encoding", "") == coding, (path, value)
        assert decode(body) == (site / path.lstrip("/")).read_bytes()
        assert without_date(user_answer(srv, c, request)) == without_date(resp), (path, value)
        time.sleep(0.05)
    (site / "page.css").write_bytes(CSS.replace(b"#333", b"#555"))
    time.sleep(1.2)
    k = srv.kernel_hits()
    out = netns.run(require_tool("curl"), "-sS", "--compressed", "http://127.0.0.1:8080/page.css").stdout
    assert out.encode() == CSS.replace(b"#333", b"#555") and srv.kernel_hits() == k + 1


def test_a_sibling_too_large_to_hold_is_followed(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    """A .br sibling that appears but is over --max-kernel-file-size changes none of the bodies the
    kernel holds, yet every answer of the file now carries Vary and its brotli forms are
    userspace's (sendfile). The entry must be rebuilt all the same: kept as it was, the kernel
    went on answering them with the file itself, without Vary."""
    png = b"\x89PNG" + bytes(300)
    (site / "logo.png").write_bytes(png)
    srv: Server = server_factory(site, "--hot-after", "0", "--max-kernel-file-size", "4096")
    c = RawClient(netns)
    request = "GET /logo.png HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip, deflate, br\r\n\r\n"
    c.send(request.encode())
    assert "vary" not in split_response(c.read_response())[1]
    k = srv.kernel_hits()
    c.send(request.encode())
    assert "vary" not in split_response(c.read_response())[1] and srv.kernel_hits() == k + 1  # cached
    big = bytes(range(256)) * 20   # (not really brotli: the server only serves it)
    (site / "logo.png.br").write_bytes(big)
    time.sleep(1.2)
    k, u = srv.kernel_hits(), srv.user_hits()
    c.send(request.encode())
    _, headers, body = split_response(c.read_response())
    assert (headers.get("content-encoding"), headers.get("vary"), body) == ("br", "Accept-Encoding", big)
    assert (srv.kernel_hits() - k, srv.user_hits() - u) == (0, 1)
    time.sleep(0.3)
    k = srv.kernel_hits()
    _, headers, body = split_response(c.get("/logo.png"))   # the file itself, from the kernel, with Vary now
    assert (headers.get("vary"), body, srv.kernel_hits()) == ("Accept-Encoding", png, k + 1)
    assert_no_tcp_trouble(netns)


def test_any_accept_encoding_for_a_file_with_one_representation(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    """A value the kernel does not parse (q-values, odd spacing) is userspace's only where it could
    matter: a file with siblings. A file without any is sent as itself whatever the value says
    (encoding.choose), so the kernel answers it, with userspace's bytes; its 404s too."""
    siblings(site)
    (site / "logo.png").write_bytes(b"\x89PNG" + bytes(200))
    srv: Server = server_factory(site, "--hot-after", "0")
    c = RawClient(netns)
    for value in ("br;q=1.0, gzip;q=0.8", "identity;q=0", "*", "GZIP"):
        for path, by_kernel in (("/logo.png", True), ("/hot.txt", True), ("/app.css", False), ("/none.png", True)):
            request = f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept-Encoding: {value}\r\n\r\n"
            if path == "/none.png":
                c.get(path)  # (its first miss makes the negative entry)
                time.sleep(0.3)
            k, u = srv.kernel_hits(), srv.user_hits()
            c.send(request.encode())
            resp = c.read_response()
            assert (srv.kernel_hits() - k, srv.user_hits() - u) == ((1, 0) if by_kernel else (0, 1)), (path, value)
            assert without_date(user_answer(srv, c, request)) == without_date(resp), (path, value)
            time.sleep(0.3)
    assert_no_tcp_trouble(netns)


def test_a_coding_no_known_form_picks_stays_userspaces(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    """--compress and a tiny text file with a .zst sibling: br and gzip made here come out larger,
    so every form the kernel knows gets the file itself, and none of them picks zstd (they all
    list br, which wins). Yet "Accept-Encoding: zstd" gets the sibling from userspace: the kernel
    must not take "every form points at the file" for "the file has no other representation"."""
    (site / "tiny.txt").write_bytes(b"hi\n")
    (site / "tiny.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(b"hi\n"))
    srv: Server = server_factory(site, "--hot-after", "0", "--compress")
    c = RawClient(netns)
    c.get("/tiny.txt")
    time.sleep(0.3)
    k, u = srv.kernel_hits(), srv.user_hits()
    assert "content-encoding" not in split_response(c.get("/tiny.txt", "Accept-Encoding: gzip, deflate, br\r\n"))[1]
    assert (srv.kernel_hits() - k, srv.user_hits() - u) == (1, 0)
    time.sleep(0.3)
    for value in ("zstd", "zstd;q=1, gzip;q=0.5"):
        k, u = srv.kernel_hits(), srv.user_hits()
        headers = split_response(c.get("/tiny.txt", f"Accept-Encoding: {value}\r\n"))[1]
        assert headers.get("content-encoding") == "zstd", value
        assert (srv.kernel_hits() - k, srv.user_hits() - u) == (0, 1), value
        time.sleep(0.3)
