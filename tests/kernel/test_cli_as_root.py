"""The command line's root-only commands: detach removes only our port's filters; doctor."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import NetNS, Server, run_cli, tc_filters


def test_detach_removes_only_our_port(netns: NetNS, site: Path) -> None:
    srv = Server(netns, site, "--hot-after", "0")
    try:
        srv.proc.kill()  # a crash: filters stay behind
        srv.proc.wait()
        assert "fileserver:8080" in tc_filters(netns)
        r = netns.run(sys.executable, "-m", "fileserver", "--port", "8081", "detach")
        assert "removed 0" in r.stdout
        r = netns.run(sys.executable, "-m", "fileserver", "--port", "8080", "detach")
        assert "removed 2" in r.stdout
        assert "fileserver" not in tc_filters(netns)
    finally:
        srv.stop()


def test_doctor_as_root() -> None:
    from tests.support import require_root

    require_root()
    r = run_cli("doctor", timeout=120)  # (a real compile: tens of seconds on a loaded 2-core machine)
    assert r.returncode == 0, r.stdout
    for name in ("kernel version", "kernel headers for bcc", "bcc", "capabilities", "clsact and cls_bpf",
                 "BPF programs load"):
        assert f"[ok  ] {name}" in r.stdout, (name, r.stdout)


def test_doctor_without_privileges_says_what_to_fix() -> None:
    from tests.support import require_root

    require_root()
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                        sys.executable, "-m", "fileserver", "doctor"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "[FAIL] capabilities: missing CAP_NET_ADMIN, CAP_PERFMON, CAP_BPF" in r.stdout
    assert "AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_PERFMON" in r.stdout
