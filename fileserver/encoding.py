"""Content codings: precompressed siblings (`x.css.br`, `x.css.zst`, `x.css.gz`) chosen by the
request's Accept-Encoding, as nginx's gzip_static and Caddy's `precompressed` serve them.

`choose` reads Accept-Encoding as RFC 9110 section 12.5.3 says (tokens case-blind, q-values, `*`,
`identity;q=0`) and picks the available coding with the highest q, ties going to the server's
preference (br, zstd, gzip); no header, or nothing acceptable, gets the file itself. The kernel
knows only the exact values browsers and curl send (abi.AE_FORMS, mirrored in bpf/parse_http.h):
userspace registers, for each, the answer `choose` gives for that very string, so the two paths
agree by construction, and any other value passes to userspace (reason `encoding`).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from fileserver.http_semantics import is_compressible
from fileserver.snapshot import MemoryCache, Snapshot

# Server preference, best first, and the sibling suffix of each.
CODINGS = ("br", "zstd", "gzip")
SUFFIX = {"br": ".br", "zstd": ".zst", "gzip": ".gz"}


# Files up to this size get the strongest settings; larger ones faster ones (brotli's best takes
# about 1.4 ms per KiB here, and runs in the server's event loop once per version of a file).
STRONG_UP_TO = 64 * 1024


def _compressors() -> dict[str, Callable[[bytes], bytes]]:
    """What --compress can make, deterministic (the same bytes for the same file, every time):
    gzip always, brotli and zstd when their packages are installed."""
    out: dict[str, Callable[[bytes], bytes]] = {"gzip": lambda b: gzip.compress(b, compresslevel=9, mtime=0)}
    try:
        import brotli  # type: ignore[import-not-found]

        out["br"] = lambda b: brotli.compress(b, quality=11 if len(b) <= STRONG_UP_TO else 5)
    except ImportError:
        pass
    try:
        import zstandard  # type: ignore[import-not-found]

        # (a compressor per call: they are not thread-safe)
        out["zstd"] = lambda b: zstandard.ZstdCompressor(level=19 if len(b) <= STRONG_UP_TO else 9).compress(b)
    except ImportError:
        pass
    return out


COMPRESSORS = _compressors()


def acceptable(value: str) -> dict[str, float]:
    """The q-value of each coding token in an Accept-Encoding value (lower case; `*` included)."""
    out: dict[str, float] = {}
    for item in value.split(","):
        token, *params = (p.strip() for p in item.split(";"))
        if not token:
            continue
        q = 1.0
        for param in params:
            name, _, v = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(1.0, max(0.0, float(v.strip())))
                except ValueError:
                    q = 0.0  # a malformed weight: treat the coding as not acceptable
        out.setdefault(token.lower(), q)
    return out


def choose(accept_encoding: str | None, available: tuple[str, ...]) -> str | None:
    """The coding to send (one of `available`), or None for the file itself."""
    if accept_encoding is None or not available:
        return None
    q = acceptable(accept_encoding)
    star = q.get("*", 0.0)
    best, best_q = None, 0.0
    for coding in CODINGS:  # preference order: a later one must be strictly better
        if coding in available:
            weight = q.get(coding, star)
            if weight > best_q:
                best, best_q = coding, weight
    return best


def siblings(path: Path, root: Path) -> tuple[str, ...]:
    """The codings that have a precompressed sibling next to path: a regular file that is, with
    symlinks resolved, inside root too (resolve.py's sandbox holds for siblings as well)."""
    inside = str(root) + os.sep
    found = []
    for c in CODINGS:
        s = sibling(path, c)
        if s.is_file() and os.path.realpath(s).startswith(inside):
            found.append(c)
    return tuple(found)


def sibling(path: Path, coding: str) -> Path:
    return path.with_name(path.name + SUFFIX[coding])


def sibling_names(path: str) -> tuple[str, ...]:
    """Where the siblings of the file at path would be (for file events)."""
    return tuple(path + suffix for suffix in SUFFIX.values())


@dataclass(frozen=True)
class Offer:
    """What one file can be sent as: itself, or one of its precompressed siblings."""

    path: Path
    available: tuple[str, ...]   # codings it can be sent in, by sibling or compressed here
    vary: bool                   # its answers carry Vary: Accept-Encoding
    generated: tuple[str, ...] = ()  # those of available compressed here (--compress), not a sibling

    def pick(self, accept_encoding: str | None) -> str:
        """The coding this Accept-Encoding value calls for ("" for the file itself)."""
        return choose(accept_encoding, self.available) or ""

    def body_path(self, coding: str) -> Path:
        return sibling(self.path, coding) if coding and coding not in self.generated else self.path

    def snapshot(self, memcache: MemoryCache, coding: str) -> tuple[str, Snapshot | None]:
        """The representation sent for coding: (the coding it really has, its snapshot with that
        coding's validators, or None when it is too large to hold and goes by sendfile from
        body_path). A file compressed here that does not get smaller is sent as itself. Both
        paths call this, so they send the same bytes. Raises OSError."""
        if coding in self.generated:
            snap = memcache.get_coded(self.path, coding, COMPRESSORS[coding])
            if snap is not None:
                return coding, snap
            coding = ""
        snap = memcache.get(self.body_path(coding))
        if snap is not None and coding:
            snap = replace(snap, validators=replace(snap.validators, coding=coding))
        return coding, snap


def offer(path: Path, root: Path, enabled: bool, compress: bool = False) -> Offer:
    """The offer for the file at path (inside root). With precompressed siblings switched off,
    the file alone and no Vary; otherwise Vary on every answer of a file with siblings, and of
    every text type (a cache between must not hand a compressed answer to a client that did not
    ask for one, whether or not this server compresses that file today). With compress, a text
    type can also be sent in every coding it has no sibling for, compressed here once per
    version of the file."""
    if not enabled:
        return Offer(path, (), False)
    found = siblings(path, root)
    made = tuple(c for c in CODINGS if c in COMPRESSORS and c not in found) \
        if compress and is_compressible(path.name) else ()
    available = tuple(c for c in CODINGS if c in found or c in made)
    return Offer(path, available, bool(found) or is_compressible(path.name), made)
