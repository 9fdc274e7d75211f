"""The kernel path's lifetime as the server sees it: start it if possible, else say why not.

KernelPath owns the loaded programs (Datapath), the TC attachments, the cache policy, the watcher
and a maintenance thread (Date/heartbeat every second, coherence sweep, connection-table GC).
Any failure to start leaves userspace serving and is reported as one reason string.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fileserver.config import Config
from fileserver.conns import CloseEvent
from fileserver.datapath import Datapath
from fileserver.maps import Counters
from fileserver.handlers import DateCache
from fileserver.privileges import (
    CAP_BPF,
    CAP_NET_ADMIN,
    KERNEL_PATH_CAPS,
    drop_capabilities,
    missing_effective,
    permitted,
    raised,
)
from fileserver.resolve import Resolver
from fileserver.snapshot import MemoryCache, Snapshot
from fileserver.syncookies import AlwaysCookies

log = logging.getLogger("fileserver.kernel")

GC_INTERVAL_S = 5.0


class KernelPath:
    """Userspace's handle on the kernel path; a disabled one answers every query with zeros."""

    def __init__(self, off_reason: str | None = None) -> None:
        self.off_reason = off_reason
        self.interfaces: list[str] = []

    @property
    def enabled(self) -> bool:
        return self.off_reason is None

    def describe(self) -> str:
        return f"on ({', '.join(self.interfaces)})" if self.enabled else f"off: {self.off_reason}"

    def on_user_served(self, path: str, snap: Snapshot) -> None:
        pass

    def on_user_missing(self, path: str) -> None:
        pass

    def set_close_handler(self, handler: Callable[[list[CloseEvent]], None]) -> None:
        """Where to send the connections the kernel ended, in batches (called in the event loop's
        thread)."""

    def user_idle(self, addresses: tuple[str, int, str, int], consumed: int, written: int) -> None:
        """Userspace has answered all it read from a connection: the kernel may take it back."""

    def seconds_since_segment(self, addresses: tuple[str, int, str, int]) -> float | None:
        """How long ago the kernel path last saw a segment of this connection, if it has answered
        requests on it (None otherwise)."""
        return None

    def closes_lost(self) -> int:
        """How many close events the programs could not write so far (a full ring)."""
        return 0

    def kernel_closing(self, addresses: tuple[str, int, str, int]) -> CloseEvent | None:
        """The close event a connection's kernel state implies (its last answer ended it), if any."""
        return None

    def counters(self) -> Counters:
        return Counters()

    def cache_stats(self) -> dict[str, int]:
        return {}

    def conn_usage(self) -> tuple[int, int]:
        return 0, 0

    def interface_stats(self) -> dict[str, dict[str, int]]:
        return {}

    def hot_files(self, n: int = 10) -> list[dict[str, object]]:
        return []

    def reconfigure(self, config: Config, resolver: Resolver) -> Config:
        """Apply a reloaded configuration; return it as applied (a disabled path applies nothing)."""
        return config

    def stop(self) -> None:
        pass


class ActiveKernelPath(KernelPath):
    def __init__(self, config: Config, resolver: Resolver, memcache: MemoryCache) -> None:
        super().__init__(None)
        from fileserver import tc
        from fileserver.kcache import KernelCache
        self.config = config
        self.dates = DateCache()
        self.dp = Datapath(config.port, config.kernel_cache_entries, verbose=config.verbose,
                           connections=config.kernel_connections, limits=config.parser_limits)
        # The map set and its connection tables outlive every rebuild of the programs.
        self.maps, self.conns = self.dp.maps, self.dp.conns
        self.attachments: list[tc.Attachment] = []
        self._mtus: dict[int, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()  # the maintenance thread against a reload
        # Refreshes that userspace answers call for run here, one at a time, off the event loop: a
        # refresh reads the file and, with --compress, compresses it in every coding (brotli's
        # best quality takes tens of milliseconds for 16 KiB). Created lazily, from the event
        # loop's thread, after the capabilities were dropped there.
        self._refresher: ThreadPoolExecutor | None = None
        self._refreshing: set[str] = set()
        self._refresh_lock = threading.Lock()  # (not _lock: a reload holds that for seconds)
        self.cookies: AlwaysCookies | None = None
        try:
            if config.socketless_close:
                try:
                    self.cookies = AlwaysCookies.set()
                except OSError as e:
                    log.warning("--socketless-close is off: %s; every connection gets a socket", e)
            self.maps.refresh_clock(self.dates.now(), self._socketless())
            self._refresh_mtus()
            for ifname in config.interfaces:
                self._attach(ifname)
            self.cache = KernelCache(self.maps, resolver, memcache, config, self.dates.now)
            self.cache.fill()
            self.root = str(resolver.root)
        except BaseException:
            self._teardown()
            raise

    def run(self) -> None:
        """Start the threads (after privileges are dropped, so that they never hold any; watchdog
        starts its inotify reader thread as soon as a watch is scheduled)."""
        self._start_watcher()
        self._thread = threading.Thread(target=self._maintain, name="fileserver-kernel", daemon=True)
        self._thread.start()

    def set_close_handler(self, handler: Callable[[list[CloseEvent]], None]) -> None:
        self.conns.open_close_events()
        loop = asyncio.get_running_loop()
        self._closer = threading.Thread(target=self._read_close_events, args=(loop, handler),
                                        name="fileserver-close", daemon=True)
        self._closer.start()

    def user_idle(self, addresses: tuple[str, int, str, int], consumed: int, written: int) -> None:
        try:
            self.conns.mark_user_idle(*addresses, consumed, written)
        except (OSError, ValueError):  # not an IP address (a Unix socket), or the map refused: it stays in userspace
            pass

    def seconds_since_segment(self, addresses: tuple[str, int, str, int]) -> float | None:
        try:
            seen = self.conns.kernel_last_seen_ns(*addresses)
        except (OSError, ValueError):  # not an IP address
            return None
        return None if seen is None else (time.monotonic_ns() - seen) / 1e9

    def closes_lost(self) -> int:
        return self.conns.closes_lost()

    def kernel_closing(self, addresses: tuple[str, int, str, int]) -> CloseEvent | None:
        try:
            return self.conns.kernel_closing(*addresses)
        except (OSError, ValueError):  # not an IP address
            return None

    def _read_close_events(self, loop: asyncio.AbstractEventLoop,
                           handler: Callable[[list[CloseEvent]], None]) -> None:
        """The kernel's close_events ring buffer wakes this thread; the handler runs in the loop."""
        while not self._stop.is_set():
            try:
                events = self.conns.poll_close_events(200)
                if events:
                    loop.call_soon_threadsafe(handler, events)
            except Exception:
                log.exception("reading close events failed")
                self._stop.wait(1.0)

    def _start_watcher(self) -> None:
        from fileserver.watcher import RootWatcher

        self.watcher = RootWatcher(self.root, self.cache.on_paths_changed)
        self.watcher.startup()

    def _fds(self) -> dict[str, int]:
        return {"ingress": self.dp.fd("fs_ingress"), "egress": self.dp.fd("fs_egress")}

    def _attach(self, ifname: str) -> None:
        from fileserver import tc

        self.attachments.append(tc.attach(ifname, self.config.port, self._fds()))
        self.interfaces.append(ifname)

    def _refresh_mtus(self) -> None:
        """Largest frame per interface: bpf_skb_change_tail does not check the MTU and veth drops
        oversized frames silently, so a change at run time must reach the kernel quickly (a frame
        lost meanwhile is recovered: the client retransmits and the request then passes)."""
        from pyroute2 import IPRoute

        from fileserver import tc

        with IPRoute() as ipr:
            for ifname in self.config.interfaces:
                found = ipr.link_lookup(ifname=ifname)
                if not found:
                    raise tc.TcError(f"no interface named {ifname!r} (see `ip link`)")
                mtu = ipr.get_links(found[0])[0].get_attr("IFLA_MTU")
                if self._mtus.get(found[0]) != mtu:
                    self.maps.set_max_frame(found[0], mtu)
                    if found[0] in self._mtus:
                        log.info("MTU of %s is now %d", ifname, mtu)
                    self._mtus[found[0]] = mtu

    def _maintain(self) -> None:
        """Every second, on the second: fresh Date and heartbeat, MTUs, and a coherence sweep."""
        last_gc = time.monotonic()
        while not self._stop.is_set():
            try:
                self.maps.refresh_clock(self.dates.now(), self._socketless())  # the heartbeat first, even during a reload
                with self._lock:
                    self._refresh_mtus()
                    self.cache.sweep()
                    self.cache.reap()
                if time.monotonic() - last_gc > GC_INTERVAL_S:
                    last_gc = time.monotonic()
                    removed = self.conns.collect_garbage(self.config.port)
                    if removed:
                        log.debug("removed %d closed connections from conn_state", removed)
            except Exception:
                log.exception("kernel path maintenance failed")
            self._stop.wait(1.0 - (time.time() % 1.0) + 0.001)

    def _socketless(self) -> bool:
        """Whether handshakes may end in the kernel now (bpf/nosock.h): asked for, and every SYN
        still answered with a cookie (read once a second: someone may set it back)."""
        return self.cookies is not None and self.cookies.active()

    def _teardown(self) -> None:
        from fileserver import tc

        self._stop.set()
        if self.cookies is not None:
            self.maps.refresh_clock(self.dates.now(), False)  # (no handshake kept from here on)
        watcher = getattr(self, "watcher", None)
        if watcher is not None and hasattr(self, "_thread"):
            watcher.shutdown()
        if self.attachments and not permitted(frozenset({CAP_NET_ADMIN})):
            log.info("leaving the TC filters to `fileserver detach` (capabilities dropped); they pass all "
                     "traffic once the heartbeat stops")
            self.attachments.clear()
        with contextlib.ExitStack() as privileges:
            if self.attachments:
                privileges.enter_context(raised(frozenset({CAP_NET_ADMIN})))
            for att in self.attachments:
                try:
                    tc.detach(att)
                except Exception as e:  # keep going: detach what we can
                    log.error("could not detach from %s: %s (run `fileserver detach -i %s -p %d`)", att.ifname, e, att.ifname, att.port)
        self.attachments.clear()
        self.dp.close()
        # Last: a handshake kept until now still completes from its request's cookie, which the
        # kernel checks only while cookies are on (cookie_v4_check).
        if self.cookies is not None:
            self.cookies.restore()
            self.cookies = None

    def stop(self) -> None:
        self._stop.set()
        with self._refresh_lock:
            refresher = self._refresher
        if refresher is not None:
            refresher.shutdown(wait=True, cancel_futures=True)
        for name in ("_thread", "_closer"):
            if hasattr(self, name):
                getattr(self, name).join(timeout=5)
        self._teardown()

    # -- reload -----------------------------------------------------------------------------------

    def reconfigure(self, config: Config, resolver: Resolver) -> Config:
        """SIGHUP: swap the programs in place if the parser limits changed, attach to new interfaces
        and detach from dropped ones, and refill the cache for a new root or hot policy. Runs in a
        worker thread. Returns the configuration applied: without capabilities the limits and
        interfaces stay as they were (userspace must keep the limits the kernel enforces)."""
        from fileserver import tc

        old = self.config
        if config.socketless_close != old.socketless_close:
            log.warning("reload: --socketless-close changes only at a restart (it sets a sysctl); keeping it %s",
                        "on" if old.socketless_close else "off")
            config = dataclasses.replace(config, socketless_close=old.socketless_close)
        swap = config.parser_limits != old.parser_limits
        added = [i for i in config.interfaces if i not in old.interfaces]
        removed = [a for a in self.attachments if a.ifname not in config.interfaces]
        if (swap or added or removed) and not permitted(KERNEL_PATH_CAPS):
            log.warning("reload: parser limits and interfaces need the capabilities given up by "
                        "--drop-all-capabilities; keeping them as they were (restart to change them)")
            config = dataclasses.replace(config, interfaces=old.interfaces, max_url_length=old.max_url_length,
                                         max_header_size=old.max_header_size, max_headers=old.max_headers)
            swap, added, removed = False, [], []
        built = None
        if swap:
            t0 = time.monotonic()
            with raised(KERNEL_PATH_CAPS):  # compiling takes seconds: outside the lock, the heartbeat goes on
                built = self.dp.rebuilt(config.parser_limits)
            log.info("reload: BPF programs rebuilt in %.1f s", time.monotonic() - t0)
        with self._lock:
            if built or added or removed:
                with raised(KERNEL_PATH_CAPS):
                    if built:
                        self._swap_programs(built)
                    for att in removed:
                        tc.detach(att)
                        self.attachments.remove(att)
                        self.interfaces.remove(att.ifname)
                    for ifname in added:
                        self._attach(ifname)
            self.config = config
            self._mtus.clear()
            self._refresh_mtus()
            self.cache.reconfigure(resolver, config)
        if config.root != old.root:
            self.watcher.shutdown()
            self.root = str(resolver.root)
            self._start_watcher()
        return config

    def _swap_programs(self, new: Datapath) -> None:
        """Point every filter at a new build of the programs, in place (RTM_NEWTFILTER on the
        existing handle: the kernel swaps the program under RCU, so each packet meets the old or
        the new program, never none). Cached files and connection state live in the shared maps
        and carry over. The old build is closed once no filter uses it."""
        from fileserver import tc

        fds = {"ingress": new.fd("fs_ingress"), "egress": new.fd("fs_egress")}
        for att in self.attachments:
            tc.replace(att, fds)
        old, self.dp = self.dp, new
        old.close()
        log.info("reload: filters on %s now run the new programs", ", ".join(self.interfaces))

    # -- queries ----------------------------------------------------------------------------------

    def on_user_served(self, path: str, snap: Snapshot) -> None:
        """Count a userspace answer towards hotness and hand the refresh it calls for to the
        refresher thread; never let the kernel cache fail that answer."""
        try:
            cause = self.cache.refresh_due(path, snap)
        except Exception:
            log.exception("kernel cache update for %s failed (the file is still served from userspace)", path)
            return
        if cause is None or self._stop.is_set():
            return
        with self._refresh_lock:
            if path in self._refreshing:
                return  # (already on its way: the same file's other requests meanwhile)
            if self._refresher is None:
                self._refresher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fileserver-refresh")
            self._refreshing.add(path)
            try:
                self._refresher.submit(self._refresh, path, cause)
            except RuntimeError:
                self._refreshing.discard(path)  # (stopping: the executor is shut down)

    def _refresh(self, path: str, cause: str) -> None:
        try:
            self.cache.refresh(path, cause=cause)
        except Exception:
            log.exception("kernel cache update for %s failed (the file is still served from userspace)", path)
        finally:
            with self._refresh_lock:
                self._refreshing.discard(path)

    def on_user_missing(self, path: str) -> None:
        """Count a userspace 404 of a missing path towards a negative entry; never fail it."""
        try:
            self.cache.on_user_missing(path)
        except Exception:
            log.exception("kernel cache update for the missing %s failed (its 404 still comes from userspace)", path)

    def counters(self) -> Counters:
        return self.maps.counters()

    def cache_stats(self) -> dict[str, int]:
        return dataclasses.asdict(self.cache.stats)

    def conn_usage(self) -> tuple[int, int]:
        return self.conns.entries(), self.conns.capacity

    def interface_stats(self) -> dict[str, dict[str, int]]:
        return {att.ifname: self.maps.interface_counters(att.ifindex) for att in self.attachments}

    def hot_files(self, n: int = 10) -> list[dict[str, object]]:
        return self.cache.hot_files(n)


def _privilege_problem() -> str | None:
    if os.geteuid() == 0:
        return None
    try:
        missing = missing_effective(frozenset({CAP_BPF, CAP_NET_ADMIN}))
    except OSError:
        return "not running as root"
    if missing:
        return "not root and lacking CAP_BPF/CAP_NET_ADMIN (run as root, or via the systemd unit)"
    return None


def _drop_everywhere(loop: asyncio.AbstractEventLoop, keep: frozenset[int]) -> None:
    """Drop capabilities in this (the event loop's) thread and retire the default executor, whose
    threads may predate the drop (getaddrinfo for the listening socket runs there)."""
    drop_capabilities(keep)
    old = getattr(loop, "_default_executor", None)
    loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix="fileserver-io"))
    if old is not None:
        old.shutdown(wait=False)


@asynccontextmanager
async def start_kernel_path(config: Config, resolver: Resolver, memcache: MemoryCache) -> AsyncIterator[KernelPath]:
    """Yield an active kernel path, or a disabled one with the reason (logged once)."""
    from fileserver.datapath import DatapathError
    from fileserver.tc import TcError

    kernel: KernelPath
    if not config.kernel_cache:
        kernel = KernelPath("switched off by --no-kernel-cache")
    elif (problem := _privilege_problem()) is not None:
        kernel = KernelPath(problem)
    else:
        # Load and attach in a thread of its own (compiling takes seconds; userspace serves
        # meanwhile), then drop capabilities in that thread and in this one before any other
        # thread exists that could keep them.
        loop = asyncio.get_running_loop()
        privileged = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fileserver-load")
        kernel = KernelPath("start-up was interrupted")
        try:
            kernel = await loop.run_in_executor(privileged, ActiveKernelPath, config, resolver, memcache)
        except (DatapathError, TcError) as e:
            kernel = KernelPath(str(e))
        except Exception as e:  # netlink and bcc raise many kinds: never let them stop userspace
            log.debug("kernel path start-up failed", exc_info=True)
            kernel = KernelPath(f"{type(e).__name__}: {e}")
        finally:
            # Nothing is effective from here on. The kernel path's three capabilities stay permitted
            # (raised for a reload or the detach at stop) unless the user gave them up too.
            active = isinstance(kernel, ActiveKernelPath) and not config.drop_all_capabilities
            keep = KERNEL_PATH_CAPS if active else frozenset()
            await loop.run_in_executor(privileged, drop_capabilities, keep)
            privileged.shutdown(wait=True)
        _drop_everywhere(loop, keep)
        if isinstance(kernel, ActiveKernelPath):
            kernel.run()
            if keep:
                log.info("capabilities dropped after attaching: none effective; CAP_BPF, CAP_NET_ADMIN and "
                         "CAP_PERFMON stay permitted for a SIGHUP reload and the detach at stop")
            else:
                log.info("all capabilities dropped after attaching (--drop-all-capabilities): "
                         "`fileserver detach` removes the filters after stop")
    if not kernel.enabled:
        log.warning("kernel path off: %s; serving from userspace only", kernel.off_reason)
    try:
        yield kernel
    finally:
        await asyncio.get_running_loop().run_in_executor(None, kernel.stop)
