"""--workers N: one supervisor with the BPF programs, N forked userspace workers on SO_REUSEPORT
sockets, exact sums in one /metrics, reload, restart, drain, privileges; /ready; the open-files
limit under systemd's defaults."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path

from tests.conftest import SITE_FILES
from tests.kernel.kernel_path import assert_no_tcp_trouble
from tests.support import NetNS, RawClient, body_of, split_response, tc_filters


def workers_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def established_by_pid(ns: NetNS, port: int = 8080) -> dict[int, int]:
    """Established server sockets of the port, by the pid holding them."""
    out = ns.run("ss", "-Htnp", "state", "established", f"( sport = :{port} )").stdout
    counts: dict[int, int] = {}
    for pid in re.findall(r"pid=(\d+)", out):
        counts[int(pid)] = counts.get(int(pid), 0) + 1
    return counts


def capabilities(pid: int, which: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(ln for ln in f if ln.startswith(which + ":")).split()[1], 16)


def ready(ns: NetNS, port: int = 9180) -> tuple[int, str]:
    out = ns.run("curl", "-s", "--max-time", "5", "-w", "\n%{http_code}", f"http://127.0.0.1:{port}/ready").stdout
    body, _, code = out.rpartition("\n")
    return int(code), body.strip()


def test_two_workers_share_the_port_the_maps_and_the_counts(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory(site, "--workers", "2")
    pids = workers_of(srv.proc.pid)
    assert len(pids) == 2, srv.log()
    assert ready(netns) == (200, "ready")
    # Privileges: nothing effective in the supervisor, nothing at all in a worker.
    assert capabilities(srv.proc.pid, "CapEff") == 0
    for pid in pids:
        assert capabilities(pid, "CapPrm") == 0 and capabilities(pid, "CapEff") == 0, pid

    # 40 connections, each with a file too large for the kernel (userspace's, always), then
    # /hot.txt: its first three answers are userspace's, counted towards hotness (in the
    # supervisor) by whichever worker served them; then it is the kernel's.
    clients = [RawClient(netns) for _ in range(40)]
    owners = established_by_pid(netns)
    assert set(owners) == set(pids) and all(n >= 5 for n in owners.values()), owners  # both accept
    for c in clients:
        assert body_of(c.get("/big.bin")) == SITE_FILES["big.bin"]
    for c in clients[:3]:
        assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]
    time.sleep(0.5)  # (the refresh runs in the supervisor's refresher thread)
    before = srv.kernel_hits()
    for c in clients:
        assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]
    m = srv.metrics()
    assert m["fileserver_requests_total{path=kernel}"] - before == 40  # every connection, either worker's
    # The sums of both workers' slots, exact: 40 big.bin and 3 hot.txt from userspace.
    assert m["fileserver_requests_total{path=user}"] == 43
    assert m["fileserver_user_request_duration_seconds_count"] == 43

    # Close events reach the worker that holds the socket: a closing hit on every connection.
    for c in clients:
        c.send(b"GET /hot.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    for c in clients:
        assert body_of(c.read_response()) == SITE_FILES["hot.txt"]
        c.sock.settimeout(5)
        assert c.sock.recv(1) == b""  # our FIN: the owner closed its socket at the kernel's word
        c.close()
    deadline = time.monotonic() + 5
    while established_by_pid(netns) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not established_by_pid(netns)
    leftovers = netns.run("ss", "-Htn", "state", "close-wait", "state", "last-ack", "state", "fin-wait-1",
                          "( sport = :8080 )").stdout
    assert leftovers.strip() == "", leftovers
    assert_no_tcp_trouble(netns)

    # SIGTERM drains both workers and detaches.
    assert srv.stop() == 0
    assert "fileserver" not in tc_filters(netns)
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}"), pid


def test_a_dead_worker_is_replaced_and_loses_no_queued_connection(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory(site, "--workers", "2", "--hot-after", "0")
    victim = workers_of(srv.proc.pid)[0]
    os.kill(victim, signal.SIGSTOP)  # its accept queue fills while it is stopped ...
    with netns.entered():
        queued = [socket.create_connection(("127.0.0.1", 8080), timeout=10) for _ in range(30)]
    for s in queued:
        s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")  # (userspace's)
    os.kill(victim, signal.SIGKILL)  # ... and it dies with it full
    os.kill(victim, signal.SIGCONT)
    srv.wait_log("worker 0 (pid", timeout=10)
    # Connections queued at the dead worker's socket are accepted by its replacement (the
    # supervisor holds the socket); those the dead worker had accepted are lost with it, as
    # with any server process killed with -9.
    answered = 0
    for s in queued:
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        answered += data.startswith(b"HTTP/1.1 200") and data.endswith(SITE_FILES["big.bin"])
        s.close()
    assert answered >= 1
    deadline = time.monotonic() + 10
    while len(workers_of(srv.proc.pid)) < 2 or ready(netns)[0] != 200:
        assert time.monotonic() < deadline, (workers_of(srv.proc.pid), ready(netns), srv.log())
        time.sleep(0.1)
    assert victim not in workers_of(srv.proc.pid)
    # The kernel path went on meanwhile and goes on: hits from the kernel, the rest from either worker.
    before = srv.metrics()
    for _ in range(20):
        c = RawClient(netns)
        assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]
        assert body_of(c.get("/big.bin")) == SITE_FILES["big.bin"]
        c.close()
    after = srv.metrics()
    assert after["fileserver_requests_total{path=kernel}"] - before["fileserver_requests_total{path=kernel}"] == 20
    assert after["fileserver_requests_total{path=user}"] - before["fileserver_requests_total{path=user}"] == 20
    assert srv.stop() == 0
    assert "fileserver" not in tc_filters(netns)


def test_reload_reaches_every_worker(netns: NetNS, site: Path, server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    conf = tmp_path / "fileserver.toml"
    conf.write_text('cache-control = "max-age=60"\n')
    srv = server_factory(site, "--workers", "2", "--config", str(conf))
    conf.write_text('cache-control = "no-cache"\nautoindex = true\n')
    assert "fileserver: reloaded:" in srv.reload()
    seen = set()
    for _ in range(16):  # new connections, spread over both workers by their ports
        c = RawClient(netns)
        seen.update(p for p, n in established_by_pid(netns).items() if n)
        status, headers, _ = split_response(c.get("/sub/"))  # (index.html: userspace's or the kernel's)
        assert headers.get("cache-control") == "no-cache", headers
        status, headers, body = split_response(c.get("/nothing-here/"))
        assert status.endswith("404 Not Found")
        c.close()
    assert seen == set(workers_of(srv.proc.pid)), seen


def test_ready_and_live_with_workers_and_no_kernel_path(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    """/ready is 200 once every worker serves (no kernel path asked for), 503 while draining;
    /live is 200. (Not ready with the kernel path off: test_lifecycle's unprivileged server.)"""
    srv = server_factory(site, "--no-kernel-cache", "--workers", "2", expect_kernel=False)
    assert ready(netns) == (200, "ready")
    assert netns.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:9180/live").stdout == "200"
    assert len(workers_of(srv.proc.pid)) == 2
    assert srv.stop() == 0


def test_thousands_of_connections_under_systemds_open_files_limit(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    """systemd's default LimitNOFILE=1024:524288 (the hard limit here is this machine's if lower:
    raising it needs CAP_SYS_RESOURCE): the server raises its soft limit to the hard one and holds
    3000 concurrent keep-alive connections (with 1024 it could not)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = min(hard, 524288)
    assert limit >= 4000, f"the hard open-files limit here ({hard}) is too low for this test"
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))  # (the client's own)
    srv = server_factory(site, "--no-kernel-cache", "--workers", "1", expect_kernel=False,
                         prefix=["prlimit", f"--nofile=1024:{limit}", "--"])
    try:
        with open(f"/proc/{srv.proc.pid}/limits") as f:
            line = next(ln for ln in f if ln.startswith("Max open files"))
        assert line.split()[3] == str(limit), line
        with netns.entered():
            conns = [socket.create_connection(("127.0.0.1", 8080), timeout=20) for _ in range(3000)]
        for s in conns:
            s.sendall(b"GET /hot.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        for s in conns:
            data = b""
            while not data.endswith(SITE_FILES["hot.txt"]):
                chunk = s.recv(65536)
                assert chunk, "closed"
                data += chunk
            assert data.startswith(b"HTTP/1.1 200 OK")
        assert len(established_by_pid(netns)) == 1 and sum(established_by_pid(netns).values()) == 3000
        for s in conns:
            s.close()
        assert "open-files limit" not in srv.log()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_close_events_lost_to_a_full_ring_still_close_their_sockets(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    """The supervisor reads close_events; stopped for a moment, it lets the ring (64 pages, about
    5,400 records) fill under 4,000 closing kernel answers (two records each). The records lost
    are counted, and the workers find those connections in conn_state and close them: every
    client gets our FIN within seconds, not after the keep-alive timeout."""
    import select

    srv = server_factory(site, "--workers", "2", "--hot-after", "0", "--keepalive-timeout", "60")
    request = b"GET /hot.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    ep = select.epoll()
    conns: dict[int, socket.socket] = {}
    os.kill(srv.proc.pid, signal.SIGSTOP)  # (under the heartbeat's 3 s: the kernel path goes on)
    try:
        with netns.entered():
            for _ in range(4000):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", 8080))
                conns[s.fileno()] = s
                ep.register(s.fileno(), select.EPOLLOUT)
        pending = set(conns)

        def send_requests(seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while pending and time.monotonic() < deadline:
                for fd, _ in ep.poll(0.1):
                    if fd in pending:
                        conns[fd].send(request)
                        pending.discard(fd)
                        ep.modify(fd, select.EPOLLIN)

        send_requests(1.5)
        time.sleep(0.3)
    finally:
        os.kill(srv.proc.pid, signal.SIGCONT)
    send_requests(10)  # (connections whose SYN met a full accept queue complete a second late)
    assert not pending, f"{len(pending)} connections did not complete"
    lost = srv.metrics().get("fileserver_kernel_errors_total{kind=close_lost}", 0)
    assert lost > 0, "the ring did not fill: this test proves nothing"
    open_ = set(conns)
    deadline = time.monotonic() + 10  # (the keep-alive timeout is 60 s)
    while open_ and time.monotonic() < deadline:
        for fd, _ in ep.poll(0.2):
            try:
                while data := conns[fd].recv(65536):
                    pass
            except BlockingIOError:
                continue
            except ConnectionError:
                pass
            open_.discard(fd)  # EOF (our FIN), or an error: no longer waiting
            ep.unregister(fd)
    for s in conns.values():
        s.close()
    ep.close()
    assert not open_, f"{len(open_)} of 4000 connections still open 10 s on ({lost:.0f} close events lost)"
    assert "close-event ring was full" in srv.log()
