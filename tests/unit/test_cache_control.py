"""Cache-Control rules: which value a file gets, what is refused, and how the config file spells them."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from fileserver.cache_control import CacheControl, CacheControlError, parse_rule
from fileserver.cli import config_from_options, main
from fileserver.config import Config, ConfigError
from fileserver.http_semantics import Validators, not_modified_head, response_head

V = Validators(size=10, mtime_ns=1_700_000_000_000_000_000, inode=1, device=1)
DATE = "Sun, 06 Nov 1994 08:49:37 GMT"


def test_first_matching_rule_wins_then_the_default() -> None:
    cc = CacheControl.parse("no-store", ("/assets/*=public, max-age=31536000, immutable", "*.html=no-cache",
                                         "/assets/*.html=never-reached"))
    assert cc.for_file("/assets/app.1f2e.js") == "public, max-age=31536000, immutable"
    assert cc.for_file("/assets/page.html") == "public, max-age=31536000, immutable"
    assert cc.for_file("/docs/deep/index.html") == "no-cache"   # a name pattern matches at any depth
    assert cc.for_file("/index.html") == "no-cache"
    assert cc.for_file("/img/logo.png") == "no-store"
    assert CacheControl().for_file("/a.css") == ""


@pytest.mark.parametrize("rule", ["*.html", "=no-cache", "*.html=no-cache\r\nSet-Cookie: x=1", "*.js=" + "x" * 97])
def test_bad_rules_are_refused(rule: str) -> None:
    with pytest.raises(CacheControlError):
        parse_rule(rule)


def test_the_value_is_in_the_200_and_the_304() -> None:
    head = response_head("a.css", V, DATE, "max-age=60")
    assert b"\r\nAccept-Ranges: bytes\r\nCache-Control: max-age=60\r\n\r\n" in head
    assert b"\r\nCache-Control: max-age=60\r\n\r\n" in not_modified_head(V, DATE, "max-age=60")
    assert b"Cache-Control" not in response_head("a.css", V, DATE) + not_modified_head(V, DATE)


def test_the_longest_304_fits_the_kernels_region() -> None:
    """The kernel holds a file's 304 in NM_REGION bytes: with the longest value allowed, Vary and
    the longest entity-tag a cached file can have (a coding's), it must still fit, or the file
    would silently be userspace's (the push fails). At 256 bytes it did not (316)."""
    from fileserver.abi import CLASS_DATA, NM_REGION
    from fileserver.cache_control import MAX_VALUE_LEN
    from fileserver.encoding import CODINGS

    coding = max(CODINGS, key=len)
    v = Validators(size=CLASS_DATA[-1], mtime_ns=2**64 - 1, inode=1, device=1, coding=coding)
    assert len(not_modified_head(v, DATE, "x" * MAX_VALUE_LEN, vary=True)) <= NM_REGION


def test_config_refuses_a_header_injection(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot hold"):
        Config(root=tmp_path, cache_control="no-cache\nX: y", kernel_cache=False).validated()


def test_config_file_table_keeps_its_order(tmp_path: Path) -> None:
    conf = tmp_path / "f.toml"
    conf.write_text(f'root = "{tmp_path}"\ncache-control = "no-cache"\n[cache-control-rules]\n'
                    '"/assets/*" = "max-age=31536000"\n"*.css" = "max-age=60"\n')
    with main.make_context("fileserver", ["--config", str(conf), "--no-kernel-cache"]) as ctx:
        config = config_from_options(ctx.params)
    assert config.cache_control_policy == CacheControl("no-cache", (("/assets/*", "max-age=31536000"),
                                                                    ("*.css", "max-age=60")))
    with main.make_context("fileserver", ["--config", str(conf), "--no-kernel-cache",
                                          "--cache-control-rule", "*=private"]) as ctx:
        assert config_from_options(ctx.params).cache_control_policy.rules == (("*", "private"),)   # the command line wins
    conf.write_text('[cache-control-rules]\n"a=b" = "x"\n')
    with pytest.raises(click.BadParameter, match="cannot contain"):
        main.make_context("fileserver", ["--config", str(conf)])
