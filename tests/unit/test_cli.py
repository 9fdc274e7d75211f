"""The command line: options, environment fallbacks, errors as one clear line (detach and doctor:
tests/kernel/test_cli_as_root.py)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from fileserver import __version__
from fileserver.cli import main
from fileserver.config import Config, ConfigError
from tests.support import run_cli


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
