"""Several nodes behind a real load balancer: two fileserver nodes (namespaces of their own, each on
its own veth link to the balancer's namespace) behind HAProxy (Debian's) with HTTP health checks
on /ready and connection reuse. A client load through the balancer loses no request while one
node is restarted (SIGTERM drains it) and while the other is killed with -9, and each node's kernel
path answers its share, the restarted node's included."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.support import NetNS, Server, require_root, require_tool

HAPROXY_CFG = """
global
    maxconn 4096
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 10s
    # GET is idempotent: a request that met a node going away is sent to the other one.
    retries 3
    option redispatch 1
    retry-on all-retryable-errors
    http-reuse always
frontend web
    bind 127.0.0.1:8000
    default_backend nodes
backend nodes
    balance roundrobin
    option httpchk GET /ready
    http-check expect status 200
    default-server check port 9180 inter 300ms fall 1 rise 2
    server node1 198.51.100.2:8080
    server node2 198.51.100.6:8080
"""


class Nodes:
    """The balancer's namespace (HAProxy and the client) and one namespace per node."""

    def __init__(self) -> None:
        self.lb = NetNS("flb")
        self.nodes = [NetNS("fn1"), NetNS("fn2")]
        n = os.getpid() % 10000
        self.ifs = []
        for i, (ns, first) in enumerate(zip(self.nodes, (0, 4))):  # 198.51.100.0/30 and .4/30
            lb_if, node_if = f"lb{i}n{n}", f"nd{i}n{n}"
            subprocess.run(["ip", "link", "add", lb_if, "netns", self.lb.name, "type", "veth", "peer", "name",
                            node_if, "netns", ns.name], check=True)
            self.lb.run("ip", "addr", "add", f"198.51.100.{first + 1}/30", "dev", lb_if)
            ns.run("ip", "addr", "add", f"198.51.100.{first + 2}/30", "dev", node_if)
            self.lb.run("ip", "link", "set", lb_if, "up")
            ns.run("ip", "link", "set", node_if, "up")
            self.ifs.append(node_if)

    def close(self) -> None:
        for ns in (self.lb, *self.nodes):
            ns.close()


def start_node(nodes: Nodes, i: int, root: Path, kernel: bool) -> Server:
    return Server(nodes.nodes[i], root, "--bind", "0.0.0.0", "--metrics-bind", "0.0.0.0", "--interface",
                  nodes.ifs[i], "--hot-after", "0", *([] if kernel else ["--no-kernel-cache"]), expect_kernel=kernel)


def answered(server: Server, kernel: bool) -> int:
    """The node's answers on the path under test (the kernel's, or userspace's as the baseline)."""
    return server.kernel_hits() if kernel else server.user_hits()


def haproxy_state(lb: NetNS) -> str:
    return lb.run("curl", "-s", "--max-time", "2", "http://127.0.0.1:8000/hot.txt", check=False).stdout


def wait_until(what: str, check, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.2)


def node_ready(node: NetNS) -> bool:
    r = node.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "1",
                 "http://127.0.0.1:9180/ready", check=False)
    return r.stdout == "200"


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "no-kernel-cache"])
def test_two_nodes_behind_haproxy_survive_a_restart_and_a_kill(tmp_path: Path, kernel: bool) -> None:
    require_root()
    haproxy = require_tool("haproxy")
    ab = require_tool("ab")
    root = tmp_path / "www"
    root.mkdir()
    (root / "hot.txt").write_bytes(b"the same file on every node\n" * 20)  # (deployed alike to both)
    nodes = Nodes()
    servers: list[Server] = []
    cfg = Path(tempfile.mkdtemp(prefix="fs-haproxy-")) / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG)
    lb = None
    load = None
    try:
        servers = [start_node(nodes, 0, root, kernel), start_node(nodes, 1, root, kernel)]
        for ns in nodes.nodes:
            wait_until("node ready", lambda ns=ns: node_ready(ns))
        lb = nodes.lb.popen(haproxy, "-f", str(cfg), "-db", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until("HAProxy answers", lambda: haproxy_state(nodes.lb).startswith("the same file"))
        time.sleep(1.5)  # (both nodes up: rise 2 at 300 ms)

        # The load: keep-alive clients through the balancer for a bounded time and count.
        load = nodes.lb.popen(ab, "-k", "-q", "-c", "8", "-t", "30", "-n", "5000000", "-s", "10",
                              "http://127.0.0.1:8000/hot.txt", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(3)
        before = [answered(s, kernel) for s in servers]
        assert all(b > 0 for b in before), before  # both nodes' kernel paths answer their share

        # Node 1 restarted: SIGTERM drains it (/ready goes first, the balancer moves away), then
        # it comes back, gets its kernel path back and only then reports ready.
        assert servers[0].stop() == 0
        time.sleep(1)
        servers[0] = start_node(nodes, 0, root, kernel)
        wait_until("node 1 ready again", lambda: node_ready(nodes.nodes[0]))
        time.sleep(3)
        restarted_hits = answered(servers[0], kernel)
        assert restarted_hits > 0, servers[0].metrics()

        # Node 2 killed with -9, supervisor and workers at once: the balancer's retries and
        # health checks take it out.
        pids = [servers[1].proc.pid, *[int(p) for p in open(
            f"/proc/{servers[1].proc.pid}/task/{servers[1].proc.pid}/children").read().split()]]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        servers[1].proc.wait()
        time.sleep(2)

        out, _ = load.communicate(timeout=60)
        load = None
        failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
        complete = int(re.search(r"Complete requests:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
        assert failed == 0 and "Non-2xx" not in out, out
        assert complete > 10000, out
        # Node 1 after its restart answered in the kernel while node 2 was gone.
        assert answered(servers[0], kernel) > restarted_hits
        # The balancer opened its connections to the restarted node after it was ready, so the
        # kernel path saw their handshakes: every request there was the kernel's.
        if kernel:
            assert servers[0].user_hits() == 0, servers[0].metrics()
        assert servers[0].stop() == 0
    finally:
        if load is not None:
            load.kill()
            load.wait()
        if lb is not None:
            lb.terminate()
            lb.wait()
        for s in servers:
            s.stop()
        nodes.close()
