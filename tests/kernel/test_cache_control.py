"""Cache-Control from --cache-control and the config file's rules: part of the stored bytes, so
the kernel's 200 and 304 carry exactly what userspace's do, and a reload that changes a rule
changes what the kernel sends."""

from __future__ import annotations

import time
from pathlib import Path

from tests.kernel.kernel_path import assert_no_tcp_trouble, user_answer
from tests.support import NetNS, RawClient, Server, split_response, without_date

# The *.css value is about as long as a value may be (MAX_VALUE_LEN): with Vary, its 304 did not fit
# the kernel's 256-byte region, and style.css was userspace's.
CSS_CC = "max-age=60, stale-while-revalidate=86400, stale-if-error=604800, proxy-revalidate, no-transform"
RULES = f'[cache-control-rules]\n"/assets/*" = "public, max-age=31536000, immutable"\n"*.css" = "{CSS_CC}"\n'



def test_cache_control_is_the_same_from_both_paths(netns: NetNS, site: Path, tmp_path: Path,
                                                   server_factory) -> None:  # type: ignore[no-untyped-def]
    (site / "assets").mkdir()
    (site / "assets" / "app.1f2e.js").write_bytes(b"console.log(1);\n")
    conf = tmp_path / "fileserver.toml"
    conf.write_text('cache-control = "no-cache"\nhot-after = 0\n' + RULES)
    srv: Server = server_factory(site, "--config", str(conf))
    expected = {"/assets/app.1f2e.js": "public, max-age=31536000, immutable", "/style.css": CSS_CC,
                "/": "no-cache", "/hot.txt": "no-cache"}
    c = RawClient(netns)
    for path, value in expected.items():
        k, u = srv.kernel_hits(), srv.user_hits()
        from_kernel = c.get(path)
        assert (srv.kernel_hits() - k, srv.user_hits() - u) == (1, 0), path
        assert split_response(from_kernel)[1]["cache-control"] == value, path
        etag = split_response(from_kernel)[1]["etag"]
        nm_kernel = c.get(path, f"If-None-Match: {etag}\r\n")
        assert srv.kernel_hits() - k == 2 and nm_kernel.startswith(b"HTTP/1.1 304"), path
        assert split_response(nm_kernel)[1]["cache-control"] == value  # RFC 9110 section 15.4.5
        assert without_date(user_answer(srv, c, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")) == without_date(from_kernel)
        nm_user = user_answer(srv, c, f"GET {path} HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\n\r\n")
        assert without_date(nm_user) == without_date(nm_kernel), path
        time.sleep(0.05)
    # Error answers carry none (as nginx's `expires` leaves a 404 alone).
    assert "cache-control" not in split_response(c.get("/cc-missing"))[1]

    conf.write_text('hot-after = 0\n' + RULES.replace("max-age=60", "max-age=120"))
    assert "reloaded" in srv.reload()
    time.sleep(0.3)
    k = srv.kernel_hits()
    assert split_response(c.get("/style.css"))[1]["cache-control"] == CSS_CC.replace("max-age=60", "max-age=120")
    resp = c.get("/hot.txt")
    assert "cache-control" not in split_response(resp)[1]
    assert srv.kernel_hits() == k + 2   # the entries were rebuilt with the new rules
    assert_no_tcp_trouble(netns)
