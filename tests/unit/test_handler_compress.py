"""--compress makes a file's compressed form in a thread, not in the event loop (brotli at quality
11 takes tens of milliseconds for a large text file, during which no other request would move),
and only once per version."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request

from fileserver import encoding
from fileserver.handlers import StaticHandler
from fileserver.userstats import UserStats
from fileserver.resolve import Resolver
from fileserver.snapshot import MemoryCache


def test_compression_runs_off_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "app.css").write_bytes(b"body { color: #333; }\n" * 200)
    threads: list[threading.Thread] = []
    real = encoding.COMPRESSORS["gzip"]

    def recording(body: bytes) -> bytes:
        threads.append(threading.current_thread())
        return real(body)

    monkeypatch.setitem(encoding.COMPRESSORS, "gzip", recording)
    handler = StaticHandler(Resolver(tmp_path), MemoryCache(1 << 20, 1 << 20), UserStats(), compress=True)

    async def get() -> tuple[int, str | None]:
        request = make_mocked_request("GET", "/app.css", headers={"Accept-Encoding": "gzip"})
        response = await handler(request)
        return response.status, response.headers.get("Content-Encoding")

    async def both() -> list[tuple[int, str | None]]:
        return [await get(), await get()]

    assert asyncio.run(both()) == [(200, "gzip"), (200, "gzip")]
    assert len(threads) == 1 and threads[0] is not threading.main_thread()  # once, in a worker thread
