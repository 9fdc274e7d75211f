"""Pure HTTP semantics shared by both paths: header blocks, validators, conditionals, ranges.

`response_head` builds the exact status line and headers of a 200 response for a file. The
userspace handler sends these headers through aiohttp and the kernel cache stores the same bytes,
so both paths answer byte for byte alike (tests compare them).
"""

from __future__ import annotations

import enum
import mimetypes
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime

from fileserver import SERVER_NAME
from fileserver.abi import VERSION_DIGIT_OFFSET, Variant

# IMF-fixdate is always 29 characters ("Sun, 06 Nov 1994 08:49:37 GMT", RFC 9110 section 5.6.7),
# which lets the kernel patch the Date header in place at a fixed offset.
DATE_LEN = 29
STATUS_LINE_200 = b"HTTP/1.1 200 OK\r\n"
# Offset of the Date value in every header block built here (the Date header comes first).
DATE_OFFSET = len(STATUS_LINE_200) + len(b"Date: ")

_TEXT_TYPES = ("text/", "application/javascript", "application/json", "application/xml", "image/svg+xml")
mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/javascript", ".mjs")
mimetypes.add_type("application/json", ".json")
mimetypes.add_type("image/svg+xml", ".svg")
mimetypes.add_type("image/webp", ".webp")
mimetypes.add_type("font/woff2", ".woff2")
mimetypes.add_type("application/wasm", ".wasm")


def http_date(ts: float | None = None) -> str:
    return formatdate(time.time() if ts is None else ts, usegmt=True)


def content_type(name: str) -> str:
    ctype, encoding = mimetypes.guess_type(name, strict=False)
    if ctype is None or encoding is not None:
        # Unknown type, or a compressed file (.gz): never let a client guess or decompress it.
        return "application/octet-stream"
    if ctype.startswith(_TEXT_TYPES):
        return f"{ctype}; charset=utf-8"
    return ctype


@dataclass(frozen=True)
class Validators:
    """What identifies one version of a file: used for ETag, Last-Modified and cache coherence."""

    size: int
    mtime_ns: int
    inode: int
    device: int
    mode: int = 0  # a chmod changes no content but may change who may read it
    coding: str = ""  # a precompressed sibling's content coding (encoding.py); "" for the file itself

    @classmethod
    def from_stat(cls, st: os.stat_result, coding: str = "") -> "Validators":
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, st.st_mode, coding)

    @property
    def etag(self) -> str:
        # Each coding is its own representation, with its own entity-tag (RFC 9110 section 8.8.3).
        return f'"{self.mtime_ns:x}-{self.size:x}{"-" + self.coding if self.coding else ""}"'

    @property
    def last_modified(self) -> str:
        return http_date(self.mtime_ns / 1e9)


def is_compressible(name: str) -> bool:
    """Text types, which a server may send compressed (and so always with Vary, encoding.py)."""
    return content_type(name).startswith(_TEXT_TYPES)


def file_headers(name: str, v: Validators, cache_control: str = "", vary: bool = False) -> list[tuple[str, str]]:
    """The representation headers of a file (or of its precompressed sibling, v.coding), in wire
    order without Date and Server; then Vary if its answer depends on Accept-Encoding, and its
    Cache-Control if it has one (cache_control.py)."""
    return [
        ("Content-Type", content_type(name)),
        ("Content-Length", str(v.size)),
        ("Last-Modified", v.last_modified),
        ("ETag", v.etag),
        ("Accept-Ranges", "bytes"),
        *([("Content-Encoding", v.coding)] if v.coding else []),
    ] + _cache_headers(cache_control, vary)


def _cache_headers(cache_control: str, vary: bool) -> list[tuple[str, str]]:
    """What a cache must know, in a 200 and in its 304 alike (RFC 9110 section 15.4.5)."""
    return ([("Vary", "Accept-Encoding")] if vary else []) + ([("Cache-Control", cache_control)] if cache_control else [])


def common_headers(date: str) -> list[tuple[str, str]]:
    """Date first (fixed offset for the kernel), then Server."""
    return [("Date", date), ("Server", SERVER_NAME)]


def serialize_head(status_line: bytes, headers: list[tuple[str, str]]) -> bytes:
    return status_line + b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers) + b"\r\n"


STATUS_LINE_304 = b"HTTP/1.1 304 Not Modified\r\n"
# Offset of the Date value in a 304 header block (Date comes first there too).
NM_DATE_OFFSET = len(STATUS_LINE_304) + len(b"Date: ")


def not_modified_headers(v: Validators, date: str, cache_control: str = "", vary: bool = False) -> list[tuple[str, str]]:
    """Headers of a 304 (RFC 9110 section 15.4.5): the validators and the Vary and Cache-Control
    a 200 would carry, no representation metadata."""
    return common_headers(date) + [("Last-Modified", v.last_modified), ("ETag", v.etag)] + \
        _cache_headers(cache_control, vary)


def not_modified_head(v: Validators, date: str, cache_control: str = "", vary: bool = False) -> bytes:
    """A 304 response exactly as sent on the wire (it has no body)."""
    head = serialize_head(STATUS_LINE_304, not_modified_headers(v, date, cache_control, vary))
    assert head[NM_DATE_OFFSET : NM_DATE_OFFSET + DATE_LEN] == date.encode()
    return head


_VARIANT_LINES = {Variant.CLOSE11: b"Connection: close\r\n", Variant.KEEP10: b"Connection: keep-alive\r\n"}


def as_variant(response: bytes, head_len: int, variant: Variant) -> bytes:
    """A response (head_len bytes of head, ending in the blank line) in another variant."""
    hx = head_len - 2
    out = response[:hx] + _VARIANT_LINES.get(variant, b"") + response[hx:]
    if variant in (Variant.CLOSE10, Variant.KEEP10):
        out = out[:VERSION_DIGIT_OFFSET] + b"0" + out[VERSION_DIGIT_OFFSET + 1:]
    return out


STATUS_LINE_404 = b"HTTP/1.1 404 Not Found\r\n"
NOT_FOUND_TEXT = "404: Not Found\n"


def simple_headers(date: str, body_len: int, extra: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """Headers of the plain-text answers (404, 403, 301, ...), in wire order: Date and Server, the
    type, the caller's, then the length (where aiohttp would append it)."""
    return common_headers(date) + [("Content-Type", "text/plain; charset=utf-8"), *(extra or ()),
                                   ("Content-Length", str(body_len))]


def not_found_response(date: str) -> tuple[bytes, int, int]:
    """The 404 for a missing path exactly as sent on the wire: the bytes, the length of the head,
    and where its Date slot (" " + date + CRLF) starts."""
    body = NOT_FOUND_TEXT.encode()
    head = serialize_head(STATUS_LINE_404, simple_headers(date, len(body)))
    date_slot = len(STATUS_LINE_404) + len(b"Date:")
    assert head[date_slot + 1 : date_slot + 1 + DATE_LEN] == date.encode()
    return head + body, len(head), date_slot


def response_head(name: str, v: Validators, date: str, cache_control: str = "", vary: bool = False) -> bytes:
    """Status line and headers of the 200 response for a whole file, exactly as sent on the wire."""
    head = serialize_head(STATUS_LINE_200, common_headers(date) + file_headers(name, v, cache_control, vary))
    assert head[DATE_OFFSET : DATE_OFFSET + DATE_LEN] == date.encode()
    return head


# ---- conditional requests (RFC 9110 section 13) ----------------------------------------------


class Precondition(enum.Enum):
    PROCEED = 200
    NOT_MODIFIED = 304
    FAILED = 412


def _etag_list(value: str) -> list[str]:
    return [t.strip() for t in value.split(",") if t.strip()]


def _weak_match(a: str, b: str) -> bool:
    return a.removeprefix("W/") == b.removeprefix("W/")


def _parse_date(value: str) -> float | None:
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def evaluate_preconditions(headers: Mapping[str, str], v: Validators, is_get_or_head: bool = True) -> Precondition:
    """RFC 9110 section 13.2.2, steps 1 to 4, in that order."""
    etag = v.etag
    mtime = v.mtime_ns // 1_000_000_000
    if_match = headers.get("If-Match")
    if if_match is not None:  # step 1: strong comparison
        tags = _etag_list(if_match)
        if "*" not in tags and etag not in tags:
            return Precondition.FAILED
    else:  # step 2
        ius = headers.get("If-Unmodified-Since")
        if ius is not None:
            ts = _parse_date(ius)
            if ts is not None and mtime > ts:
                return Precondition.FAILED
    inm = headers.get("If-None-Match")
    if inm is not None:  # step 3: weak comparison
        tags = _etag_list(inm)
        if "*" in tags or any(_weak_match(t, etag) for t in tags):
            return Precondition.NOT_MODIFIED if is_get_or_head else Precondition.FAILED
    elif is_get_or_head:  # step 4
        ims = headers.get("If-Modified-Since")
        if ims is not None:
            ts = _parse_date(ims)
            if ts is not None and mtime <= ts:
                return Precondition.NOT_MODIFIED
    return Precondition.PROCEED


# ---- ranges (RFC 9110 section 14) ------------------------------------------------------------


class RangeUnsatisfiable(Exception):
    pass


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """One byte range as (start, end exclusive), None to send the whole file.

    Several ranges, other units or syntax errors are ignored (a server may always answer 200);
    a syntactically valid but unsatisfiable single range raises RangeUnsatisfiable (416).
    """
    if value is None:
        return None
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    first, last = first.strip(), last.strip()
    if first and not first.isdigit() or last and not last.isdigit() or not (first or last):
        return None
    if not first:  # suffix range: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise RangeUnsatisfiable
        return max(0, size - n), size
    start = int(first)
    end = int(last) + 1 if last else size
    if last and end <= start:
        return None  # invalid (last < first): ignore the header
    if start >= size:
        raise RangeUnsatisfiable
    return start, min(end, size)


def if_range_allows(value: str | None, v: Validators) -> bool:
    """RFC 9110 section 13.1.5: a Range applies only if If-Range matches the current version."""
    if value is None:
        return True
    value = value.strip()
    if value.startswith('"'):
        return value == v.etag
    ts = _parse_date(value)
    return ts is not None and v.mtime_ns // 1_000_000_000 == int(ts)

