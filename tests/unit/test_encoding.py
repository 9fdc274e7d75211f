"""Accept-Encoding as RFC 9110 section 12.5.3 reads it, and which sibling a file is sent as."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fileserver.encoding import acceptable, choose, offer


@pytest.mark.parametrize(
    "value, available, chosen",
    [
        (None, ("br", "gzip"), None),                                 # no header: the file itself
        ("gzip, deflate, br, zstd", ("br", "zstd", "gzip"), "br"),    # ties: the server's preference
        ("gzip, deflate", ("br", "gzip"), "gzip"),
        ("gzip, deflate", ("br",), None),
        ("br;q=0.5, gzip;q=0.8", ("br", "gzip"), "gzip"),             # q-values decide
        ("BR", ("br",), "br"),                                        # tokens are case-blind
        ("*", ("zstd", "gzip"), "zstd"),
        ("*;q=0, gzip", ("br", "gzip"), "gzip"),
        ("gzip;q=0", ("gzip",), None),
        ("identity;q=0", ("gzip",), None),                            # nothing acceptable: the file itself
        ("gzip;q=abc, br", ("gzip", "br"), "br"),                     # a malformed weight refuses
        (" gzip ; q=0.9 ,br;q=1.0", ("gzip", "br"), "br"),
        ("", ("gzip",), None),
    ],
)
def test_choose(value: str | None, available: tuple[str, ...], chosen: str | None) -> None:
    assert choose(value, available) == chosen


def test_acceptable_keeps_the_first_weight() -> None:
    assert acceptable("gzip;q=0.2, gzip") == {"gzip": 0.2}


def test_offer_finds_siblings_inside_the_root_only(tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    (root / "a.css").write_text("a")
    (root / "a.css.br").write_bytes(b"b")
    (tmp_path / "outside.gz").write_bytes(b"secret")
    os.symlink(tmp_path / "outside.gz", root / "a.css.gz")      # leads out of the root: not a sibling
    (root / "a.css.zst").mkdir()                                  # not a regular file
    o = offer(root / "a.css", root, True)
    assert o.available == ("br",) and o.vary
    assert o.pick("gzip, deflate, br") == "br" and o.body_path("br") == root / "a.css.br"
    (root / "logo.png").write_bytes(b"png")
    assert not offer(root / "logo.png", root, True).vary           # no siblings, not a text type
    assert offer(root / "a.txt", root, True).vary                  # a text type: always Vary
    assert offer(root / "a.css", root, False) == type(o)(root / "a.css", (), False)


def test_compressed_here_once_per_version_and_only_when_smaller(tmp_path: Path) -> None:
    from fileserver.snapshot import MemoryCache

    root = tmp_path / "www"
    root.mkdir()
    (root / "a.css").write_bytes(b"body { margin: 0; }\n" * 50)
    (root / "a.css.gz").write_bytes(b"a sibling wins over compressing")
    (root / "tiny.txt").write_bytes(b"hi\n")
    cache = MemoryCache(1 << 20, 1 << 20)
    o = offer(root / "a.css", root, True, compress=True)
    assert o.available == ("br", "zstd", "gzip") and o.generated == ("br", "zstd")
    coding, snap = o.snapshot(cache, "br")
    assert coding == "br" and snap is not None and snap.validators.coding == "br"
    assert brotli_decompress(snap.body) == (root / "a.css").read_bytes()
    assert o.snapshot(cache, "br")[1] is snap                               # made once
    assert o.snapshot(cache, "gzip")[1].body == b"a sibling wins over compressing"  # type: ignore[union-attr]
    (root / "a.css").write_bytes(b"p { margin: 1px; }\n" * 50)
    assert o.snapshot(cache, "br")[1] is not snap                           # a new version, compressed again
    tiny = offer(root / "tiny.txt", root, True, compress=True)
    assert tiny.snapshot(cache, "br") == ("", cache.get(root / "tiny.txt"))  # not smaller: the file itself
    assert offer(root / "logo.png", root, True, compress=True).generated == ()


def brotli_decompress(data: bytes) -> bytes:
    import brotli

    return bytes(brotli.decompress(data))


def test_nothing_available_means_the_file_itself_whatever_the_value() -> None:
    """What the kernel's any_encoding relies on (set for files without any other representation):
    encoding.choose then picks the file itself for every value, the ones the kernel knows or not."""
    for value in ("br;q=1", "identity;q=0", "*;q=0", "", "zstd", "gzip, deflate, br", "*"):
        assert choose(value, ()) is None, value
