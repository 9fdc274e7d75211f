"""SIGHUP reload: a config file read again, applied without dropping a connection; the BPF
programs rebuilt over the same maps and swapped in place; header-read timeout; least privilege."""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.conftest import SITE_FILES
from tests.support import REPO, NetNS, RawClient, Server, body_of, tc_filters


def write_config(path: Path, **settings: object) -> None:
    lines = []
    for key, value in settings.items():
        if isinstance(value, str):
            value = f'"{value}"'
        elif isinstance(value, (list, tuple)):
            value = "[" + ", ".join(f'"{v}"' for v in value) + "]"
        lines.append(f"{key.replace('_', '-')} = {value}")
    path.write_text("\n".join(lines) + "\n")


def filter_ids(ns: NetNS, dev: str = "lo") -> dict[str, tuple[str, str]]:
    """Our filters: name -> (pref and handle, program id)."""
    out = {}
    for line in tc_filters(ns, dev).splitlines():
        m = re.search(r"pref (\d+) bpf chain \d+ handle (\S+) (fileserver:\S+) .* id (\d+)", line)
        if m:
            out[m.group(3)] = (f"{m.group(1)}/{m.group(2)}", m.group(4))
    return out


def test_reload_swaps_programs_in_place_without_dropping_a_request(netns: NetNS, site: Path, tmp_path: Path,
                                                                    server_factory) -> None:  # type: ignore[no-untyped-def]
    conf = tmp_path / "fileserver.toml"
    write_config(conf, hot_after=0, max_header_size=8190)
    srv = server_factory(site, "--config", str(conf))
    before = filter_ids(netns)
    assert set(before) == {"fileserver:8080:ingress", "fileserver:8080:egress"}
    early = RawClient(netns)  # opened before the swap: its translation state must carry over
    assert body_of(early.get("/hot.txt")) == SITE_FILES["hot.txt"]

    # Keep-alive clients hammer a hot file for the whole reload.
    stop, failures, answers = threading.Event(), [], [0]

    def hammer() -> None:
        c = RawClient(netns)
        while not stop.is_set():
            try:
                if body_of(c.get("/hot.txt")) != SITE_FILES["hot.txt"]:
                    failures.append("wrong body")
                answers[0] += 1
            except Exception as e:  # noqa: BLE001 - any failure is the finding
                failures.append(repr(e))
                c = RawClient(netns)
        c.close()

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    kernel_before = srv.kernel_hits()
    write_config(conf, hot_after=0, max_header_size=200)
    log = srv.reload()
    time.sleep(1)
    stop.set()
    for t in threads:
        t.join()
    assert "BPF programs rebuilt" in log and "reloaded: max_header_size" in log, log
    assert failures == [] and answers[0] > 50, (failures[:5], answers)
    after = filter_ids(netns)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}  # same filter, in place
    assert all(after[k][1] != before[k][1] for k in before)  # running new programs
    assert srv.kernel_hits() > kernel_before + 50  # the kernel answered before, during and after
    assert body_of(early.get("/hot.txt")) == SITE_FILES["hot.txt"]  # cached files and the connection carried over
    # The new limit holds in both parsers: the kernel passes, userspace (llhttp) answers 400.
    hits = srv.kernel_hits()
    fresh = RawClient(netns)
    resp = fresh.get("/hot.txt", extra="X-Big: " + "b" * 300 + "\r\n")
    assert resp.split(b"\r\n")[0].endswith(b" 400 Bad Request"), resp[:60]
    assert srv.kernel_hits() == hits
    assert srv.stop() == 0
    assert "fileserver" not in tc_filters(netns)


def test_reload_changes_root_and_hot_policy(netns: NetNS, site: Path, tmp_path: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    other = tmp_path / "other"
    other.mkdir()
    (other / "hot.txt").write_bytes(b"the other root\n")
    conf = tmp_path / "fileserver.toml"
    write_config(conf, root=str(site), hot_after=0)
    srv = server_factory(site, "--config", str(conf), "--root", str(site))  # the command line wins...
    c = RawClient(netns)
    assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]
    write_config(conf, root=str(other), hot_after=0)
    assert "reload: nothing changed" in srv.reload()  # ...over the file, also on reload
    srv.stop()

    srv = server_factory(None, "--config", str(conf))  # the root from the file alone
    c = RawClient(netns)
    assert body_of(c.get("/hot.txt")) == b"the other root\n"
    write_config(conf, root=str(site), hot_after=0)
    log = srv.reload()
    assert "reloaded: root" in log and "BPF programs rebuilt" not in log, log
    hits = srv.kernel_hits()
    assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]  # same connection, new root
    assert body_of(c.get("/style.css")) == SITE_FILES["style.css"]
    assert srv.kernel_hits() == hits + 2  # the new root's files were pushed to the kernel
    (site / "hot.txt").write_bytes(b"changed after the reload\n")  # the watcher follows the new root
    time.sleep(1.5)
    assert body_of(RawClient(netns).get("/hot.txt")) == b"changed after the reload\n"

    # A bad file changes nothing; a setting that needs a restart is named.
    conf.write_text("root = [unclosed\n")
    assert "reload failed, still running the previous configuration" in srv.reload()
    write_config(conf, root=str(site), hot_after=0, kernel_connections=16)
    log = srv.reload()
    assert "kernel_connections changed but only take(s) effect at a restart" in log, log
    assert body_of(RawClient(netns).get("/style.css")) == SITE_FILES["style.css"]


def test_reload_attaches_and_detaches_interfaces(veth, site: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    conf = tmp_path / "fileserver.toml"
    write_config(conf, hot_after=0, interface=["lo"])
    srv = Server(veth.server, site, "--config", str(conf))
    try:
        assert "fileserver:8080" in tc_filters(veth.server, "lo") and "fileserver" not in tc_filters(veth.server, veth.server_if)
        write_config(conf, hot_after=0, interface=[veth.server_if])
        log = srv.reload()
        assert "reloaded: interfaces" in log, log
        assert "fileserver:8080" in tc_filters(veth.server, veth.server_if)
        assert "fileserver" not in tc_filters(veth.server, "lo")
        hits = srv.kernel_hits()
        c = RawClient(veth.client, host="192.0.2.1")
        assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]
        assert srv.kernel_hits() == hits + 1  # answered on the new interface
    finally:
        assert srv.stop() == 0
    assert "fileserver" not in tc_filters(veth.server, veth.server_if)


def test_header_timeout_closes_slow_heads_only(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory(site, "--hot-after", "0", "--header-timeout", "1", "--keepalive-timeout", "30")
    with netns.entered():
        silent = socket.create_connection(("127.0.0.1", 8080), timeout=5)
        partial = socket.create_connection(("127.0.0.1", 8080), timeout=5)
    partial.sendall(b"GET /nope HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    idle = RawClient(netns)
    assert idle.get("/nope").startswith(b"HTTP/1.1 404")  # a complete exchange, then idle
    start = time.monotonic()
    for _ in range(4):  # a byte now and then does not reset the clock
        time.sleep(0.3)
        partial.sendall(b"a")
    reply = partial.recv(200)
    assert reply.startswith(b"HTTP/1.1 408 Request Timeout"), reply
    assert partial.recv(200) == b""
    assert 0.9 < time.monotonic() - start < 5
    assert silent.recv(10) == b""  # nothing sent at all: closed, without a response
    time.sleep(1)
    assert idle.get("/nope").startswith(b"HTTP/1.1 404")  # idle between requests is not a slow head
    assert srv.metrics()["fileserver_header_timeouts_total"] == 2


def test_unprivileged_user_can_give_up_every_capability(netns: NetNS) -> None:
    """As the systemd unit runs it: a plain user with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON as
    ambient capabilities; with --drop-all-capabilities nothing is left after start-up, SIGHUP still
    reloads the files, and `fileserver detach` (ExecStopPost) removes the filters after stop."""
    from fileserver.privileges import thread_capabilities

    root = Path(tempfile.mkdtemp(prefix="fs-user-"))
    try:
        os.chmod(root, 0o755)
        for name in ("hot.txt", "style.css"):
            (root / name).write_bytes(SITE_FILES[name])
            os.chmod(root / name, 0o644)
        conf = root / "fileserver.toml"
        write_config(conf, hot_after=0)
        os.chmod(conf, 0o644)
        srv = Server(netns, root, "--config", str(conf), "--drop-all-capabilities",
                     user="nobody", ambient_caps="bpf,net_admin,perfmon")
        try:
            assert body_of(RawClient(netns).get("/hot.txt")) == SITE_FILES["hot.txt"]
            assert srv.kernel_hits() == 1
            pid = int(netns.run("ip", "netns", "pids", netns.name).stdout.split()[0])
            assert open(f"/proc/{pid}/status").read().count("Uid:\t65534") == 1
            for which in ("CapEff", "CapPrm", "CapAmb", "CapInh"):
                assert set(thread_capabilities(pid, which).values()) == {0}, which
            write_config(conf, hot_after=0, max_header_size=4000)
            log = srv.reload()
            assert "need the capabilities given up by --drop-all-capabilities" in log, log
            assert body_of(RawClient(netns).get("/style.css")) == SITE_FILES["style.css"]
        finally:
            assert srv.stop() == 0
        assert "leaving the TC filters to `fileserver detach`" in srv.log()
        assert "fileserver:8080" in tc_filters(netns)
        out = netns.run(sys.executable, "-m", "fileserver", "--port", "8080", "detach", cwd=str(REPO))
        assert "removed 2 filter(s)" in out.stdout
        assert "fileserver" not in tc_filters(netns)
    finally:
        shutil.rmtree(root)
