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

import os
from dataclasses import dataclass
from pathlib import Path

from fileserver.http_semantics import is_compressible

# Server preference, best first, and the sibling suffix of each.
CODINGS = ("br", "zstd", "gzip")
SUFFIX = {"br": ".br", "zstd": ".zst", "gzip": ".gz"}


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
    available: tuple[str, ...]   # codings with a sibling
    vary: bool                   # its answers carry Vary: Accept-Encoding

    def pick(self, accept_encoding: str | None) -> str:
        """The coding to answer this Accept-Encoding value with ("" for the file itself)."""
        return choose(accept_encoding, self.available) or ""

    def body_path(self, coding: str) -> Path:
        return sibling(self.path, coding) if coding else self.path


def offer(path: Path, root: Path, enabled: bool) -> Offer:
    """The offer for the file at path (inside root). With precompressed siblings switched off,
    the file alone and no Vary; otherwise Vary on every answer of a file with siblings, and of
    every text type (a cache between must not hand a compressed answer to a client that did not
    ask for one, whether or not this server compresses that file today)."""
    if not enabled:
        return Offer(path, (), False)
    available = siblings(path, root)
    return Offer(path, available, bool(available) or is_compressible(path.name))
