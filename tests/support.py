"""Test support: network namespaces, a real server process inside one, and metric reading."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
_counter = itertools.count()


def rfc1071_sum(data: bytes) -> int:
    """The one's complement sum of 16-bit words in network byte order (RFC 1071), folded: the tests'
    own reference, independent of the production code's."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def tcp_segment(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int,
                payload: bytes = b"", window: int = 64240) -> bytes:
    """An IPv4 TCP segment without options, with a correct checksum (the kernel adds the IP
    header when it is sent on a raw socket: inject)."""
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, window, 0, 0)
    seg = hdr + payload
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(seg))
    return seg[:16] + struct.pack("!H", ~rfc1071_sum(pseudo + seg) & 0xFFFF) + seg[18:]


def raw_tcp_socket(ns: NetNS) -> socket.socket:
    """A raw IPv4 TCP socket in ns, for segments the test writes itself."""
    with ns.entered():
        return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)


def inject(ns: NetNS, segment: bytes, dst: str) -> None:
    """Send a TCP segment from inside ns as if from the client."""
    s = raw_tcp_socket(ns)
    try:
        s.sendto(segment, (dst, 0))
    finally:
        s.close()


TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_QUEUE_SEQ = 19, 20, 21
TCP_RECV_QUEUE, TCP_SEND_QUEUE = 1, 2
TCP_REPAIR_ON, TCP_REPAIR_OFF_NO_WP = 1, -1


def socket_sequences(s: socket.socket) -> tuple[int, int]:
    """The socket's next send sequence number and rcv_nxt, read in repair mode (CAP_NET_ADMIN),
    left without the window probe a plain TCP_REPAIR_OFF sends."""
    s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON)
    try:
        s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        snd = s.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ)
        s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
        rcv = s.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ)
    finally:
        s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)
    return snd & 0xFFFFFFFF, rcv & 0xFFFFFFFF


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, why: str) -> None:
    """Skip locally with the reason, but fail in CI: a test that cannot run must say so loudly."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"cannot run in CI: {why}")
    pytest.skip(why)


def require_root() -> None:
    require(os.geteuid() == 0, "needs root (network namespaces, BPF and TC); run `sudo make test`")


def require_tool(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"{name} is not installed; run `make setup`")
    assert path is not None
    return path


class NetNS:
    """A network namespace of our own, with lo up; removed (and its processes killed) on close."""

    def __init__(self, prefix: str = "fst") -> None:
        self.name = f"{prefix}-{os.getpid()}-{next(_counter)}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.run("ip", "link", "set", "lo", "up")

    def run(self, *cmd: str, check: bool = True, timeout: float = 120, **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *cmd], check=check, capture_output=True, text=True, timeout=timeout, **kw
        )

    def popen(self, *cmd: str, **kw: object) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], text=True, **kw)

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Run the block with this thread inside the namespace (sockets made there stay there)."""
        from pyroute2 import netns as pr_netns

        with open("/proc/self/ns/net") as original:
            pr_netns.setns(self.name)
            try:
                yield
            finally:
                _setns_fd(original.fileno())

    def close(self) -> None:
        pids = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def _setns_fd(fd: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
        raise OSError(ctypes.get_errno(), "setns failed")


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, its output captured."""
    return subprocess.run([sys.executable, "-m", "fileserver", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """The real CLI as a subprocess inside a namespace, with its log captured."""

    def __init__(self, ns: NetNS, root: Path | None, *args: str, port: int = 8080, metrics_port: int = 9180,
                 expect_kernel: bool | None = True, user: str | None = None, ambient_caps: str = "",
                 prefix: list[str] | None = None) -> None:
        """prefix: a command that execs the server (prlimit ... --)."""
        self.ns = ns
        self.root = root
        self.port = port
        self.metrics_port = metrics_port
        # A temporary file, not next to the root: the root may be the repository's own www/.
        self._log = tempfile.NamedTemporaryFile("w", prefix=f"fileserver-{port}-", suffix=".log", delete=False)
        self.log_path = Path(self._log.name)
        self._final_log: str | None = None
        self.args = [
            sys.executable, "-m", "fileserver", *(["--root", str(root)] if root else []), "--port", str(port),
            "--metrics-port", str(metrics_port), *args,
        ]
        # As systemd runs the unit: an unprivileged user, with only the ambient capabilities given.
        plus = ",".join("+" + c for c in ambient_caps.split(",")) if ambient_caps else ""
        caps = [f"--inh-caps={plus}", f"--ambient-caps={plus}"] if plus else ["--inh-caps=-all"]
        setpriv = ["setpriv", f"--reuid={user}", "--regid=65534", "--clear-groups", *caps] if user else []
        self.proc = ns.popen(*(prefix or []), *setpriv, *self.args, stdout=self._log, stderr=subprocess.STDOUT, cwd=str(REPO))
        self._wait_ready(expect_kernel)

    def log(self) -> str:
        if self._final_log is not None:
            return self._final_log
        return self.log_path.read_text()

    def _wait_ready(self, expect_kernel: bool | None, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            ready = [ln for ln in text.splitlines(keepends=True) if "fileserver: serving " in ln and ln.endswith("\n")]
            if ready:
                if expect_kernel is True:
                    assert "kernel path: on" in ready[0], f"kernel path did not start:\n{text}"
                elif expect_kernel is False:
                    assert "kernel path: off" in ready[0], text
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.1)
        raise AssertionError(f"server did not start within {timeout}s:\n{self.log()}")

    def wait_log(self, *texts: str, timeout: float = 60) -> str:
        """Wait until the log holds one of texts; return the one found."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            for text in texts:
                if text in log:
                    return text
            time.sleep(0.1)
        raise AssertionError(f"none of {texts} in the log within {timeout}s:\n{self.log()}")

    def reload(self, timeout: float = 60) -> str:
        """SIGHUP, then wait for the outcome line; returns the new part of the log."""
        before = len(self.log())
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            new = self.log()[before:]
            if any(t in new for t in ("fileserver: reloaded:", "reload failed", "reload: nothing changed")):
                return new
            time.sleep(0.1)
        raise AssertionError(f"reload did not finish within {timeout}s:\n{self.log()}")

    def metrics(self) -> dict[str, float]:
        """Samples by `name{label=value,...}`."""
        out = self.ns.run("curl", "-s", "--max-time", "5", f"http://127.0.0.1:{self.metrics_port}/metrics").stdout
        samples = {}
        for fam in text_string_to_metric_families(out):
            for s in fam.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return samples

    def kernel_hits(self) -> int:
        return int(self.metrics()["fileserver_requests_total{path=kernel}"])

    def user_hits(self) -> int:
        return int(self.metrics()["fileserver_requests_total{path=user}"])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        if self._final_log is None:
            self._final_log = self.log_path.read_text()
            self.log_path.unlink(missing_ok=True)
        return self.proc.returncode


def tc_filters(ns: NetNS, dev: str = "lo") -> str:
    out = ""
    for hook in ("ingress", "egress"):
        out += ns.run("tc", "filter", "show", "dev", dev, hook, check=False).stdout
    return out


def nstat(ns: NetNS) -> dict[str, int]:
    out = ns.run("nstat", "-az", check=False).stdout
    values = {}
    for line in out.splitlines():
        m = re.match(r"(\w+)\s+(\d+)", line)
        if m:
            values[m.group(1)] = int(m.group(2))
    return values


class RawClient:
    """One keep-alive connection that returns each response's exact bytes."""

    def __init__(self, ns: NetNS, host: str = "127.0.0.1", port: int = 8080, timeout: float = 5, nodelay: bool = True,
                 rcvbuf: int = 0) -> None:
        """rcvbuf: a receive buffer set before connecting (so the window it scales to is small)."""
        with ns.entered():
            if rcvbuf:
                self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
                self.sock.settimeout(timeout)
                self.sock.connect((host, port))
            else:
                self.sock = socket.create_connection((host, port), timeout=timeout)
        if nodelay:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def get(self, path: str, extra: str = "") -> bytes:
        self.send(f"GET {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n".encode())
        return self.read_response()

    def read_response(self, head_only: bool = False) -> bytes:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        end = self.buf.index(b"\r\n\r\n") + 4
        head = self.buf[:end].decode("latin-1")
        m = re.search(r"(?im)^content-length:\s*(\d+)", head)
        length = 0 if head_only or m is None or " 304 " in head.split("\r\n")[0] else int(m.group(1))
        while len(self.buf) < end + length:
            self._fill()
        resp, self.buf = self.buf[: end + length], self.buf[end + length :]
        return resp

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("connection closed by the server")
        self.buf += chunk

    def close(self) -> None:
        self.sock.close()


def split_response(resp: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = resp.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return lines[0], headers, body


def without_date(resp: bytes) -> bytes:
    return re.sub(rb"Date: [^\r]*\r\n", b"Date: X\r\n", resp, count=1)


def body_of(resp: bytes) -> bytes:
    return split_response(resp)[2]
