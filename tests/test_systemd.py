"""The shipped unit renders and passes `systemd-analyze verify`, with the hardening we promise."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support import REPO, require_tool


def render(tmp_path: Path) -> Path:
    text = (REPO / "systemd" / "fileserver.service").read_text()
    text = text.replace("@ROOT@", str(REPO / "www")).replace("@REPO@", str(REPO))
    text = text.replace("@BIN@", str(REPO / ".venv" / "bin" / "fileserver"))
    unit = tmp_path / "fileserver.service"
    unit.write_text(text)
    return unit


def test_unit_verifies(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    unit = render(tmp_path)
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    problems = [ln for ln in (r.stdout + r.stderr).splitlines() if "fileserver.service" in ln]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr


def test_unit_least_privilege(tmp_path: Path) -> None:
    text = render(tmp_path).read_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")
    )
    assert settings["AmbientCapabilities"].split() == ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]
    assert settings["CapabilityBoundingSet"] == settings["AmbientCapabilities"]
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                       "DynamicUser": "yes", "Restart": "on-failure"}.items():
        assert settings[key] == value
    assert settings["ProtectHome"] in ("yes", "read-only")
    assert settings["ReadOnlyPaths"] == str(REPO / "www")
    assert "detach" in settings["ExecStopPost"]
