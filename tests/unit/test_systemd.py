"""The shipped unit renders and passes `systemd-analyze verify`, with the hardening we promise."""

from __future__ import annotations

import subprocess
from pathlib import Path

import click
import pytest

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
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"


def test_shipped_config_file_loads(tmp_path: Path) -> None:
    """The unit's settings file is what the CLI reads (and what SIGHUP reads again)."""
    from fileserver.cli import config_from_options, main

    conf = tmp_path / "fileserver.toml"
    conf.write_text((REPO / "systemd" / "fileserver.toml").read_text().replace("@ROOT@", str(REPO / "www")))
    with main.make_context("fileserver", ["--config", str(conf)]) as ctx:
        config = config_from_options(ctx.params)
    assert config.root == REPO / "www" and config.port == 8080 and config.interfaces == ("lo",)
    conf.write_text('root = "www"\nno-such-setting = 1\n')
    with pytest.raises(click.BadParameter, match="unknown setting"):
        main.make_context("fileserver", ["--config", str(conf)])
