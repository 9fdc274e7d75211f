"""The kernel path's lifetime: kill -9 and the heartbeat, restart, clean stop, foreign filters,
two instances on one interface, and no root."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import SITE_FILES
from tests.support import NetNS, RawClient, body_of, tc_filters


def foreign_filter(ns: NetNS) -> None:
    """Another program's filter on lo (u32: matchall is not built into this kernel). It matches
    only port 9999, so for our traffic it says "no match" and classification goes on to ours."""
    ns.run("tc", "qdisc", "add", "dev", "lo", "clsact", check=False)
    ns.run("tc", "filter", "add", "dev", "lo", "ingress", "pref", "7", "protocol", "ip", "u32", "match", "ip",
           "dport", "9999", "0xffff", "flowid", "1:1")


def test_kill9_heartbeat_restart_and_foreign_filters(netns: NetNS, site: Path, server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    foreign_filter(netns)
    assert "pref 7 u32" in tc_filters(netns)
    srv = server_factory(site, "--hot-after", "0")
    c = RawClient(netns)
    assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait()
    # The filters outlive the process; another server takes the port.
    assert "fileserver:8080:ingress" in tc_filters(netns)
    other_root = tmp_path / "other"
    other_root.mkdir()
    (other_root / "hot.txt").write_bytes(b"FOREIGN\n")
    other = netns.popen(sys.executable, "-m", "http.server", "8080", "--bind", "127.0.0.1", "--directory",
                        str(other_root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(4)  # > heartbeat timeout (3 s)
        for _ in range(5):
            out = netns.run("curl", "-s", "--max-time", "5", "http://127.0.0.1:8080/hot.txt").stdout
            assert out == "FOREIGN\n"  # never the dead server's cached file
    finally:
        other.terminate()
        other.wait()
    srv2 = server_factory(site, "--hot-after", "0")
    assert "removing stale filter" in srv2.log()
    filters = tc_filters(netns)
    assert filters.count("fileserver:8080:ingress") == 1 and filters.count("fileserver:8080:egress") == 1
    assert "pref 7 u32" in filters
    c = RawClient(netns)
    assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]
    assert srv2.kernel_hits() == 1, {k: v for k, v in srv2.metrics().items() if v and "passes" in k}
    assert srv2.stop() == 0
    filters = tc_filters(netns)
    assert "fileserver" not in filters and "pref 7 u32" in filters


def test_clean_stop_removes_everything_it_added(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    assert "clsact" not in netns.run("tc", "qdisc", "show", "dev", "lo").stdout
    srv = server_factory(site, "--hot-after", "0")
    assert "fileserver:8080" in tc_filters(netns)
    assert srv.stop() == 0
    assert tc_filters(netns).strip() == ""
    assert "clsact" not in netns.run("tc", "qdisc", "show", "dev", "lo").stdout


def test_two_instances_on_one_interface(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    a = server_factory(site, "--hot-after", "0", port=8080, metrics_port=9180)
    b = server_factory(site, "--hot-after", "0", port=8081, metrics_port=9181)
    for port in (8080, 8081, 8080):
        c = RawClient(netns, port=port)
        assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]
        assert body_of(c.get("/style.css")) == SITE_FILES["style.css"]
        c.close()
    assert a.kernel_hits() == 4 and b.kernel_hits() == 2
    assert b.stop() == 0
    assert "fileserver:8080" in tc_filters(netns) and "fileserver:8081" not in tc_filters(netns)
    c = RawClient(netns, port=8080)
    assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]
    assert a.kernel_hits() == 5


def test_not_root_serves_from_userspace(netns: NetNS, server_factory) -> None:  # type: ignore[no-untyped-def]
    root = Path(tempfile.mkdtemp(prefix="fs-nonroot-"))
    try:
        os.chmod(root, 0o755)
        (root / "hot.txt").write_bytes(SITE_FILES["hot.txt"])
        os.chmod(root / "hot.txt", 0o644)
        srv = server_factory(root, "--hot-after", "0", expect_kernel=False, user="nobody")
        assert "kernel path off: not root" in srv.log()
        # A balancer's health check passes over a node whose kernel path was asked for and is off.
        ready = netns.run("curl", "-s", "-w", " %{http_code}", "http://127.0.0.1:9180/ready").stdout
        assert ready.startswith("kernel path off: not root") and ready.endswith(" 503"), ready
        out = netns.run("curl", "-s", "http://127.0.0.1:8080/hot.txt").stdout
        assert out.encode() == SITE_FILES["hot.txt"]
        assert srv.user_hits() == 1
    finally:
        import shutil

        shutil.rmtree(root)
