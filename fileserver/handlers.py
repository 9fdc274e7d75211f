"""The userspace static file handler (aiohttp).

Filesystem work is a few stat calls and, on a cache miss, one read of a small file, so it runs
inline; compressing a file (--compress: brotli at quality 11 takes tens of milliseconds for a
large text file) runs in a thread, once per version; large files are sent with sendfile.
"""

from __future__ import annotations

import asyncio
import html
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from multidict import CIMultiDict

from fileserver.http_semantics import (
    NOT_FOUND_TEXT,
    Precondition,
    RangeUnsatisfiable,
    Validators,
    common_headers,
    evaluate_preconditions,
    file_headers,
    http_date,
    if_range_allows,
    not_modified_headers,
    parse_range,
    simple_headers,
)
from fileserver.cache_control import CacheControl
from fileserver.encoding import offer
from fileserver.resolve import Outcome, Resolver, is_canonical, origin_form
from fileserver.snapshot import FileChanging, MemoryCache, Snapshot
from fileserver.userstats import UserStats

log = logging.getLogger(__name__)

ALLOWED_METHODS = "GET, HEAD"

# Called after userspace served a whole small file with 200: (canonical request path, snapshot).
ServedHook = Callable[[str, Snapshot], None]
MissingHook = Callable[[str], None]  # a GET or HEAD of a canonical path that does not exist: its 404


class DateCache:
    """The IMF-fixdate of the current second, formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second, self._value = second, http_date(second)
        return self._value


class StaticHandler:
    def __init__(
        self,
        resolver: Resolver,
        memcache: MemoryCache,
        stats: UserStats,
        *,
        autoindex: bool = False,
        cache_control: CacheControl = CacheControl(),
        precompressed: bool = True,
        compress: bool = False,
        on_served: ServedHook | None = None,
        on_missing: MissingHook | None = None,
    ) -> None:
        self.resolver = resolver
        self.memcache = memcache
        self.stats = stats
        self.autoindex = autoindex
        self.cache_control = cache_control
        self.precompressed = precompressed
        self.compress = compress
        self.on_served = on_served
        self.on_missing = on_missing
        self.dates = DateCache()

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        start = time.perf_counter()
        self.stats.requests += 1
        response = await self._respond(request)
        self.stats.response_bytes += _wire_size(response)
        self.stats.observe_latency(time.perf_counter() - start)
        return response

    # -- helpers that build complete responses --------------------------------------------------

    def _simple(self, status: int, text: str, extra: list[tuple[str, str]] | None = None) -> web.Response:
        body = text.encode()
        return web.Response(status=status, body=body, headers=CIMultiDict(simple_headers(self.dates.now(), len(body), extra)))

    async def _respond(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return self._simple(405, "405: Method Not Allowed\n", [("Allow", ALLOWED_METHODS)])
        raw_path = origin_form(request.raw_path)
        resolved = self.resolver.resolve(raw_path)
        outcome = resolved.outcome
        if outcome is Outcome.FILE:
            assert resolved.path is not None
            return await self._file(request, raw_path, resolved.path)
        if outcome is Outcome.REDIRECT:
            assert resolved.location is not None
            return self._simple(301, "301: Moved Permanently\n", [("Location", resolved.location)])
        if outcome is Outcome.DIRECTORY and self.autoindex:
            assert resolved.path is not None
            return self._listing(raw_path, resolved.path)
        if outcome is Outcome.BAD_REQUEST:
            return self._simple(400, "400: Bad Request\n")
        if outcome is Outcome.FORBIDDEN:
            return self._simple(403, "403: Forbidden\n")
        path = raw_path.split("?", 1)[0]
        if outcome is Outcome.NOT_FOUND and self.on_missing is not None and is_canonical(path):
            self.on_missing(path)
        return self._simple(404, NOT_FOUND_TEXT)

    async def _file(self, request: web.BaseRequest, raw_path: str, path: Path) -> web.StreamResponse:
        choice = offer(path, self.resolver.root, self.precompressed, self.compress)
        coding = choice.pick(request.headers.get("Accept-Encoding"))
        try:
            if coding in choice.generated and not self.memcache.coded_ready(path, coding):
                # (off the event loop; the snapshot below then finds the result cached)
                await asyncio.get_running_loop().run_in_executor(None, choice.snapshot, self.memcache, coding)
            try:
                coding, snap = choice.snapshot(self.memcache, coding)
            except FileNotFoundError:
                if not coding:
                    raise
                coding, snap = choice.snapshot(self.memcache, "")   # the sibling just went: the file itself
            body_path = choice.body_path(coding)
            v = snap.validators if snap is not None else Validators.from_stat(os.stat(body_path), coding)
        except FileNotFoundError:
            return self._simple(404, "404: Not Found\n")
        except PermissionError:
            return self._simple(403, "403: Forbidden\n")
        except FileChanging:
            log.warning("%s kept changing while being read; answering 503", path)
            return self._simple(503, "503: File is being modified, retry\n", [("Retry-After", "1")])

        cache_control = self.cache_control.for_file("/" + path.relative_to(self.resolver.root).as_posix())
        pre = evaluate_preconditions(request.headers, v)
        if pre is Precondition.NOT_MODIFIED:
            return web.Response(status=304, headers=CIMultiDict(
                not_modified_headers(v, self.dates.now(), cache_control, choice.vary)))
        headers = CIMultiDict(common_headers(self.dates.now()) + file_headers(path.name, v, cache_control, choice.vary))
        if pre is Precondition.FAILED:
            return self._simple(412, "412: Precondition Failed\n")

        try:
            span = parse_range(request.headers.get("Range"), v.size)
            if span is not None and not if_range_allows(request.headers.get("If-Range"), v):
                span = None
        except RangeUnsatisfiable:
            return self._simple(416, "416: Range Not Satisfiable\n", [("Content-Range", f"bytes */{v.size}")])

        if snap is None:  # a large file: sendfile, with our headers
            if span is not None:
                headers["Content-Range"] = f"bytes {span[0]}-{span[1] - 1}/{v.size}"
            return _LargeFileResponse(body_path, headers, span, coding)
        if span is not None:
            start, end = span
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{v.size}"
            headers["Content-Length"] = str(end - start)
            return web.Response(status=206, body=snap.body[start:end], headers=headers)
        if self.on_served is not None and request.method == "GET" and is_canonical(raw_path.split("?", 1)[0]):
            self.on_served(raw_path.split("?", 1)[0], snap)
        return web.Response(body=snap.body, headers=headers)

    def _listing(self, raw_path: str, directory: Path) -> web.Response:
        names = []
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            suffix = "/" if entry.is_dir() else ""
            names.append(f'<li><a href="{html.escape(entry.name + suffix)}">{html.escape(entry.name + suffix)}</a></li>')
        title = html.escape(raw_path.split("?", 1)[0])
        page = f"<!doctype html><title>Index of {title}</title><h1>Index of {title}</h1><ul>{''.join(names)}</ul>\n"
        headers = CIMultiDict(common_headers(self.dates.now()))
        headers["Content-Type"] = "text/html; charset=utf-8"
        return web.Response(body=page.encode(), headers=headers)


def _wire_size(response: web.StreamResponse) -> int:
    """Bytes of status line, headers and body as aiohttp will send them on an HTTP/1.1 keep-alive
    connection (it adds only Content-Length to what we set)."""
    status_line = len(f"HTTP/1.1 {response.status} {response.reason}\r\n")
    headers = sum(len(k) + len(v) + 4 for k, v in response.headers.items()) + 2
    if isinstance(response, web.Response):
        body = len(response.body) if isinstance(response.body, bytes) else 0
        if "Content-Length" not in response.headers:
            headers += len(f"Content-Length: {body}\r\n")
        return status_line + headers + (0 if response.status == 304 else body)
    length = response.headers.get("Content-Length", "")
    return status_line + headers + (int(length) if length.isdigit() else 0)


class _LargeFileResponse(web.FileResponse):
    """aiohttp's sendfile response, with our validators and an explicit single range."""

    def __init__(self, path: Path, headers: CIMultiDict[str], span: tuple[int, int] | None, coding: str = "") -> None:
        super().__init__(path)
        self._our_headers = headers
        self._span = span
        self._coding = coding

    async def prepare(self, request: web.BaseRequest):  # type: ignore[override]
        # Our own conditional and range logic already ran: send exactly what the headers say.
        import asyncio

        loop = asyncio.get_running_loop()
        fobj = await loop.run_in_executor(None, open, self._path, "rb")
        try:
            st = os.fstat(fobj.fileno())
            v = Validators.from_stat(st, self._coding)
            if self._our_headers["ETag"] != v.etag:
                # Replaced between stat and open: describe what we actually opened.
                self._our_headers["ETag"] = v.etag
                self._our_headers["Last-Modified"] = v.last_modified
                if self._span is None:
                    self._our_headers["Content-Length"] = str(v.size)
            start, end = self._span if self._span is not None else (0, v.size)
            end = min(end, v.size)
            self.set_status(206 if self._span is not None else 200)
            self.headers.clear()
            self.headers.extend(self._our_headers)
            self.headers["Content-Length"] = str(max(0, end - start))
            self._compression = False
            if request.method == "HEAD":
                return await web.StreamResponse.prepare(self, request)
            return await self._sendfile(request, fobj, start, max(0, end - start))
        finally:
            await loop.run_in_executor(None, fobj.close)
