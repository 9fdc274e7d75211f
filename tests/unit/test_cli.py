"""The command line: options, environment fallbacks, errors as one clear line, detach."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from fileserver import __version__
from fileserver.cli import main
from fileserver.config import Config, ConfigError
from tests.support import NetNS, Server, tc_filters


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fileserver", *args], capture_output=True, text=True, env=env, timeout=30)


def test_version() -> None:
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and __version__ in r.output


def test_bad_values_are_one_line(tmp_path: Path) -> None:
    for args, words in ((["--root", str(tmp_path / "missing")], "does not exist"),
                        (["--root", str(tmp_path), "--port", "70000"], "not a valid TCP port"),
                        (["--root", str(tmp_path), "--hot-after", "-1"], "--hot-after"),
                        (["--root", str(tmp_path), "--max-kernel-file-size", "99999"], "--max-kernel-file-size"),
                        (["--root", str(tmp_path), "--metrics-port", "8080"], "must differ")):
        r = run_cli(*args)
        assert r.returncode != 0
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and words in lines[0], r.stderr


def test_env_fallbacks(tmp_path: Path) -> None:
    import os

    env = dict(os.environ, FILESERVER_ROOT=str(tmp_path / "nope"))
    r = run_cli(env=env)
    assert "nope" in r.stderr and "does not exist" in r.stderr


def test_config_validation(tmp_path: Path) -> None:
    cfg = Config(root=tmp_path).validated()
    assert cfg.root.is_absolute()
    try:
        Config(root=tmp_path, interfaces=()).validated()
    except ConfigError as e:
        assert "--interface" in str(e)
    else:
        raise AssertionError("no interface with the kernel path on must be refused")


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
    r = run_cli("doctor")
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
