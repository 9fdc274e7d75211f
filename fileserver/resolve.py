"""Map a request target to a file inside the document root, or say why not.

The sandbox: the path is percent-decoded exactly once, NUL bytes are refused, `..` segments and
hidden files are refused, and the final path (symlinks resolved) must stay under the root.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote_to_bytes

INDEX_FILE = "index.html"
# What a path segment may hold unescaped (RFC 3986 section 3.3, pchar: unreserved, sub-delims, ':'
# and '@'). The canonical spelling of a path escapes every other byte of its UTF-8 form with
# uppercase hex (section 2.1), which is what browsers send for non-ASCII and reserved characters
# (/%E6%96%87%E6%A1%A3.html, /a%20b.html). Only canonical spellings are pushed into the kernel
# cache, which compares bytes and never decodes: any other spelling of the same path simply
# misses there, and userspace decodes it.
PCHAR_SAFE = "!$&'()*+,;=:@"
ALLOWED_DOTFILES = frozenset({".well-known"})


class Outcome(enum.Enum):
    FILE = "file"
    DIRECTORY = "directory"  # a directory without an index file
    REDIRECT = "redirect"  # a directory requested without its trailing slash
    BAD_REQUEST = "bad_request"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"


@dataclass(frozen=True)
class Resolved:
    outcome: Outcome
    path: Path | None = None  # the file (FILE) or directory (DIRECTORY)
    location: str | None = None  # where to redirect (REDIRECT)


def origin_form(target: str) -> str:
    """The origin-form of a request target: an absolute-form one (`http://host/path`, which RFC
    9112 section 3.2.2 says a server must accept) loses its scheme and authority."""
    scheme, sep, rest = target.partition("://")
    if target.startswith("/") or not sep or scheme.lower() not in ("http", "https"):
        return target
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    path = rest[end:]
    return path if path.startswith("/") else "/" + path


def decode_path(raw_path: str) -> str | None:
    """Percent-decode the path part of a request target once; None if it is not a valid path."""
    path = raw_path.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        return None
    try:
        decoded = unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "\x00" in decoded:
        return None
    return decoded


def canonical_spelling(decoded: str) -> str:
    """The one spelling of a decoded path the kernel cache is keyed by (see PCHAR_SAFE)."""
    return quote(decoded, safe="/" + PCHAR_SAFE)


def is_canonical(raw_path: str) -> bool:
    """True if the raw request path is its own canonical form (what the kernel cache may hold): the
    canonical spelling of what it decodes to, with no empty, dot or hidden segment."""
    if not raw_path.startswith("/") or "//" in raw_path or "?" in raw_path or "#" in raw_path:
        return False
    decoded = decode_path(raw_path)
    if decoded is None or canonical_spelling(decoded) != raw_path or "//" in decoded:
        return False
    return all(seg not in (".", "..") and not seg.startswith(".") for seg in decoded.split("/"))


class Resolver:
    """Resolves request paths against one document root."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve(strict=True)
        self._root_str = str(self.root)

    def resolve(self, raw_path: str) -> Resolved:
        decoded = decode_path(raw_path)
        if decoded is None:
            return Resolved(Outcome.BAD_REQUEST)
        segments = [s for s in decoded.split("/") if s]
        for seg in segments:
            if seg in (".", ".."):
                return Resolved(Outcome.FORBIDDEN)
            if seg.startswith(".") and seg not in ALLOWED_DOTFILES:
                return Resolved(Outcome.NOT_FOUND)
        candidate = os.path.join(self._root_str, *segments)
        real = os.path.realpath(candidate)
        if real != self._root_str and not real.startswith(self._root_str + os.sep):
            # A symlink that leads out of the root: pretend it is not there.
            return Resolved(Outcome.NOT_FOUND)
        if os.path.isdir(real):
            if not decoded.endswith("/"):
                # Rebuilt from the segments, so "//host/x" can never become an off-site redirect.
                location = canonical_spelling("/" + "".join(seg + "/" for seg in segments))
                return Resolved(Outcome.REDIRECT, location=location)
            index = os.path.join(real, INDEX_FILE)
            if os.path.isfile(index) and os.path.realpath(index).startswith(self._root_str + os.sep):
                return Resolved(Outcome.FILE, Path(os.path.realpath(index)))
            return Resolved(Outcome.DIRECTORY, Path(real))
        if os.path.isfile(real):
            return Resolved(Outcome.FILE, Path(real))
        return Resolved(Outcome.NOT_FOUND)
