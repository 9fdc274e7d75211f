"""Map a request target to a file inside the document root, or say why not.

The sandbox: the path is percent-decoded exactly once, NUL bytes are refused, `..` segments and
hidden files are refused, and the final path (symlinks resolved) must stay under the root.
"""

from __future__ import annotations

import enum
import os
import string
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote_to_bytes

INDEX_FILE = "index.html"
# Characters a canonical URL path may contain without escaping (RFC 3986 unreserved plus '/').
# Only canonical paths are ever pushed into the kernel cache, so anything else simply misses there.
CANONICAL_CHARS = frozenset(string.ascii_letters + string.digits + "-._~/")
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


def is_canonical(raw_path: str) -> bool:
    """True if the raw request path is its own canonical form (what the kernel cache may hold)."""
    if not raw_path.startswith("/") or "//" in raw_path:
        return False
    if not set(raw_path) <= CANONICAL_CHARS:
        return False
    return all(seg not in (".", "..") and not seg.startswith(".") for seg in raw_path.split("/"))


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
                location = "/" + "".join(quote(seg) + "/" for seg in segments)
                return Resolved(Outcome.REDIRECT, location=location)
            index = os.path.join(real, INDEX_FILE)
            if os.path.isfile(index) and os.path.realpath(index).startswith(self._root_str + os.sep):
                return Resolved(Outcome.FILE, Path(os.path.realpath(index)))
            return Resolved(Outcome.DIRECTORY, Path(real))
        if os.path.isfile(real):
            return Resolved(Outcome.FILE, Path(real))
        return Resolved(Outcome.NOT_FOUND)
