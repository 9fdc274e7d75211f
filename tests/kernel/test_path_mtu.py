"""Path MTU below the link MTU (RFC 1191, RFC 8201): a router between client and server has a
smaller hop than either end, and there is no MSS clamping. The router drops the kernel's larger
segments and says so in ICMP errors quoting them; the kernel path must learn from those (and the
route must remember) and answer at the path's size, as the server socket does for its own
segments. Each case runs against --no-kernel-cache on the same topology too."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import SITE_FILES, RoutedPath
from tests.kernel.kernel_path import assert_no_tcp_trouble
from tests.support import RawClient, Server, body_of

# One segment on a 1500-byte link but over 1400 bytes, and several; the small file fits anyway.
PATHS = ("/one.bin", "/large.bin", "/style.css")


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "no-kernel-cache"])
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_answers_cross_a_smaller_hop(routed: RoutedPath, site: Path, family: str, kernel: bool) -> None:
    (site / "one.bin").write_bytes(bytes(range(240)) * 5)  # 1,200 bytes: a 1.4 KB response, one segment
    host = RoutedPath.SERVER4 if family == "ipv4" else RoutedPath.SERVER6
    args = ("--bind", "0.0.0.0,::", *(() if kernel else ("--no-kernel-cache",)))
    srv = Server(routed.server, site, "--hot-after", "0", "--interface", routed.server_if, *args, expect_kernel=kernel)
    try:
        data = {"/one.bin": (site / "one.bin").read_bytes(), **{p: SITE_FILES[p[1:]] for p in PATHS[1:]}}
        for conn in range(3):  # the first connection learns; the later ones start from the route
            c = RawClient(routed.client, host=host, timeout=20)
            for _ in range(2):
                for path in PATHS:
                    assert body_of(c.get(path)) == data[path], (conn, path)
            c.close()
        m = srv.metrics()
        assert m["fileserver_requests_total{path=kernel}"] + m["fileserver_requests_total{path=user}"] == 18
        if kernel:
            assert m["fileserver_requests_total{path=kernel}"] == 18
            # Learnt once, on the first connection; the later ones start from the route's, through
            # their socket's MSS, and lose nothing to the smaller hop.
            assert m["fileserver_kernel_path_mtu_reductions_total"] == 1
        assert_no_tcp_trouble(routed.client)
    finally:
        srv.stop()
