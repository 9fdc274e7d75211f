from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import REPO, NetNS, Server, require_root

SITE_FILES = {
    "index.html": b"<!doctype html><title>test</title><p>index\n",
    "hot.txt": b"hot file body\n" * 8,
    "style.css": b"body { color: #333; }\n" * 20,
    "sub/index.html": b"<p>sub index</p>\n",
    "sub/page.html": b"<p>sub page</p>\n",
    "mid.bin": bytes(range(256)) * 20,  # 5 KiB: several MSS on a 1500 link, one skb on lo
    "large.bin": bytes(range(253)) * 60,  # 14.8 KiB: 11 segments on a 1500 link
    "xl.bin": bytes(range(251)) * 120,  # 29.4 KiB: over --max-kernel-file-size's default; 2 skbs on lo
    "big.bin": bytes(range(251)) * 1200,  # ~300 KiB: never in the kernel, sendfile path
}


def pytest_configure(config: pytest.Config) -> None:
    """Every server this run starts shares one BPF program cache of its own (progcache.py): the
    first start with a set of flags compiles, later ones load the cached build (the verifier
    checks it all the same). A fresh directory per run, so a run never depends on an earlier one."""
    import os
    import tempfile

    if "FILESERVER_CACHE_DIR" not in os.environ:
        os.environ["FILESERVER_CACHE_DIR"] = config._fileserver_cache = tempfile.mkdtemp(prefix="fileserver-progcache-")  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    made = getattr(config, "_fileserver_cache", None)
    if made:
        shutil.rmtree(made, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """What a test recorded with record_property("summary", ...), such as the counts of the
    differential fuzz run, after the results."""
    seen = set()
    for category in ("passed", "failed"):
        for report in terminalreporter.getreports(category):
            for name, value in report.user_properties:
                if name == "summary" and report.nodeid not in seen:
                    seen.add(report.nodeid)
                    terminalreporter.write_line(f"{report.nodeid}: {value}")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A small document root with known bytes."""
    root = tmp_path / "www"
    for rel, data in SITE_FILES.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


@pytest.fixture
def netns() -> Iterator[NetNS]:
    require_root()
    ns = NetNS()
    try:
        yield ns
    finally:
        ns.close()


@pytest.fixture
def server_factory(netns: NetNS) -> Iterator[object]:
    started: list[Server] = []

    def start(root: Path, *args: str, **kw: object) -> Server:
        srv = Server(netns, root, *args, **kw)  # type: ignore[arg-type]
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def demo_root() -> Path:
    return REPO / "www"


@pytest.fixture
def tool() -> object:
    return shutil.which


class VethPair:
    """Two namespaces joined by a veth pair: server 192.0.2.1 and 2001:db8:77::1, client 192.0.2.2 and 2001:db8:77::2,
    full checksums."""

    def __init__(self) -> None:
        import os
        import subprocess

        from tests.support import require_tool

        ethtool = require_tool("ethtool")
        self.server, self.client = NetNS("fsv"), NetNS("fsc")
        n = os.getpid() % 100000
        self.server_if, self.client_if = f"vs{n}", f"vc{n}"
        subprocess.run(["ip", "link", "add", self.server_if, "netns", self.server.name, "type", "veth", "peer",
                        "name", self.client_if, "netns", self.client.name], check=True)
        self.server.run("ip", "addr", "add", "192.0.2.1/24", "dev", self.server_if)
        self.client.run("ip", "addr", "add", "192.0.2.2/24", "dev", self.client_if)
        # and IPv6 (no duplicate address detection: usable at once)
        self.server.run("ip", "addr", "add", "2001:db8:77::1/64", "dev", self.server_if, "nodad")
        self.client.run("ip", "addr", "add", "2001:db8:77::2/64", "dev", self.client_if, "nodad")
        for ns, dev in ((self.server, self.server_if), (self.client, self.client_if)):
            ns.run("ip", "link", "set", dev, "up")
            ns.run(ethtool, "-K", dev, "tx", "off")  # full checksums: CHECKSUM_PARTIAL hides bugs

    def close(self) -> None:
        self.server.close()
        self.client.close()


@pytest.fixture
def veth() -> Iterator[VethPair]:
    require_root()
    pair = VethPair()
    try:
        yield pair
    finally:
        pair.close()


class RoutedPath:
    """Three namespaces, client - router - server, with a smaller hop on the way: every link is
    1500 bytes at its ends except the router's side of the client link (router_mtu), as when a
    tunnel or a PPPoE hop narrows the path without either end knowing. No MSS clamping: the
    client announces 1460. Client 198.51.100.2 and 2001:db8:1::2, server 203.0.113.2 and
    2001:db8:2::2; full checksums."""

    CLIENT4, SERVER4, CLIENT6, SERVER6 = "198.51.100.2", "203.0.113.2", "2001:db8:1::2", "2001:db8:2::2"

    def __init__(self, router_mtu: int = 1400) -> None:
        import os
        import subprocess

        from tests.support import require_tool

        ethtool = require_tool("ethtool")
        self.client, self.router, self.server = NetNS("fpc"), NetNS("fpr"), NetNS("fps")
        n = os.getpid() % 100000
        self.client_if, self.server_if = f"pc{n}", f"ps{n}"
        rc, rs = self.router_client_if, self.router_server_if = f"rc{n}", f"rs{n}"
        for mine, ns, theirs in ((self.client_if, self.client, rc), (self.server_if, self.server, rs)):
            subprocess.run(["ip", "link", "add", mine, "netns", ns.name, "type", "veth", "peer", "name", theirs,
                            "netns", self.router.name], check=True)
        plan = ((self.client, self.client_if, "198.51.100.2/24", "2001:db8:1::2/64", "198.51.100.1", "2001:db8:1::1"),
                (self.server, self.server_if, "203.0.113.2/24", "2001:db8:2::2/64", "203.0.113.1", "2001:db8:2::1"))
        # No duplicate address detection on any of them, link-local addresses included: the router
        # answers neighbour solicitations at once, and the first SYN is not lost to a warm-up.
        for ns, dev in ((self.client, self.client_if), (self.server, self.server_if), (self.router, rc), (self.router, rs)):
            ns.run("sysctl", "-qw", f"net.ipv6.conf.{dev}.accept_dad=0")
        for ns, dev, a4, a6, gw4, gw6 in plan:
            ns.run("ip", "addr", "add", a4, "dev", dev)
            ns.run("ip", "addr", "add", a6, "dev", dev, "nodad")
            ns.run("ip", "link", "set", dev, "up")
            ns.run(ethtool, "-K", dev, "tx", "off")
            ns.run("ip", "route", "add", "default", "via", gw4)
            ns.run("ip", "-6", "route", "add", "default", "via", gw6)
        for dev, a4, a6 in ((rc, "198.51.100.1/24", "2001:db8:1::1/64"), (rs, "203.0.113.1/24", "2001:db8:2::1/64")):
            self.router.run("ip", "addr", "add", a4, "dev", dev)
            self.router.run("ip", "addr", "add", a6, "dev", dev, "nodad")
            self.router.run("ip", "link", "set", dev, "up")
            self.router.run(ethtool, "-K", dev, "tx", "off")
        self.router.run("ip", "link", "set", rc, "mtu", str(router_mtu))
        self.router.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.router.run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")

    def close(self) -> None:
        for ns in (self.client, self.router, self.server):
            ns.close()


@pytest.fixture
def routed() -> Iterator[RoutedPath]:
    require_root()
    path = RoutedPath()
    try:
        yield path
    finally:
        path.close()
