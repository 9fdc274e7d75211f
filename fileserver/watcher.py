"""Watch the document root (watchdog) and tell the kernel cache what changed, at once."""

from __future__ import annotations

import logging
from collections.abc import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger("fileserver.watcher")


class _Handler(FileSystemEventHandler):
    def __init__(self, on_change: Callable[[list[str]], None]) -> None:
        self.on_change = on_change

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return  # reads do not change anything
        paths = [str(event.src_path)]
        dest = getattr(event, "dest_path", "")
        if dest:
            paths.append(str(dest))
        try:
            self.on_change(paths)
        except Exception:  # never let one bad event stop the observer thread
            log.exception("handling filesystem event %s failed", event)


class RootWatcher:
    """Runs a watchdog observer thread over the root; startup/shutdown like uvicorn's reloader."""

    def __init__(self, root: str, on_change: Callable[[list[str]], None]) -> None:
        self._observer = Observer()
        self._observer.schedule(_Handler(on_change), root, recursive=True)

    def startup(self) -> None:
        self._observer.start()

    def shutdown(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)
