"""--workers N: one supervisor and N forked userspace workers on SO_REUSEPORT sockets.

The supervisor owns everything there is one of: the BPF programs and maps (compiled, loaded and
attached once, before the first fork, so every worker inherits the same map descriptors), the
kernel cache and its hot-file counting, the close-event ring, the metrics endpoint and the
signals. Each worker is an aiohttp server on its own listening sockets (one per bind address, in
the port's reuseport group: the kernel spreads new connections over them by their 4-tuple, so a
connection and any later one with the same addresses land on the same worker). The supervisor
keeps every worker's sockets open, so a worker that dies loses none of its queued connections: its
replacement accepts them.

Between them, one SOCK_SEQPACKET pair per worker (`Channel`):
- worker -> supervisor: a small file it served (hot-file counting) or a path it did not find
  (negative entries), readiness, a reload applied;
- supervisor -> worker: the kernel's close events, in batches, to every worker (the owner closes its
  socket; a close that may precede the accept is kept briefly, as in one process), and a reloaded
  configuration.
A worker writes its idle notes (user_idle) and reads conn_state through the inherited map
descriptors itself; its userspace counters live in its slot of a shared mapping (userstats.py).
README ("Workers") compares this with nginx's master/worker model.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import errno
import logging
import os
import pickle
import signal
import socket
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from fileserver.config import Config
from fileserver.conns import CloseEvent
from fileserver.kernel import KernelPath, start_kernel_path
from fileserver.listen import StartupError, startup_error
from fileserver.privileges import drop_capabilities
from fileserver.reload import Reloader
from fileserver.resolve import Resolver
from fileserver.snapshot import MemoryCache, Snapshot
from fileserver.userspace import Userspace, ready_reason
from fileserver.userstats import SharedStats, UserStats

log = logging.getLogger("fileserver.workers")

_PR_SET_PDEATHSIG = 1
MESSAGE_MAX = 1 << 18          # largest message on a channel (a batch of close events, a Config)
CLOSE_BATCH = 512              # close events per message
QUEUE_MAX = 65536              # messages queued for a worker that does not read before it counts as lost
RESTART_DELAY_S = (0.2, 5.0)   # after a worker's death: at once-ish, or slower if it died young
STOP_GRACE_S = 2.0             # beyond --shutdown-timeout, before a worker that will not drain is killed


class Channel:
    """One end of a worker's SOCK_SEQPACKET pair: pickled messages, sent without blocking (queued
    while the peer's buffer is full, flushed when it drains), received by a reader callback."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop,
                 on_message: Callable[[tuple[Any, ...]], None], on_eof: Callable[[], None]) -> None:
        self.sock, self.loop, self.on_message, self.on_eof = sock, loop, on_message, on_eof
        self._queue: collections.deque[bytes] = collections.deque()
        self.lost = 0
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._readable)

    def send(self, *message: Any) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        if self._queue:
            self._enqueue(data)
            return
        try:
            self.sock.send(data)
        except BlockingIOError:
            self._enqueue(data)
            self.loop.add_writer(self.sock.fileno(), self._flush)
        except OSError:
            self.lost += 1  # (the peer is gone: its replacement gets a channel of its own)

    def _enqueue(self, data: bytes) -> None:
        if len(self._queue) >= QUEUE_MAX:
            self.lost += 1
            return
        self._queue.append(data)

    def _flush(self) -> None:
        while self._queue:
            try:
                self.sock.send(self._queue[0])
            except BlockingIOError:
                return
            except OSError:
                self.lost += len(self._queue)
                self._queue.clear()
                break
            self._queue.popleft()
        self.loop.remove_writer(self.sock.fileno())

    def _readable(self) -> None:
        for _ in range(64):  # (then let the loop run other callbacks)
            try:
                data = self.sock.recv(MESSAGE_MAX)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.close()
                self.on_eof()
                return
            self.on_message(pickle.loads(data))

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())
            self.loop.remove_writer(self.sock.fileno())
            self.sock.close()


# -- listening sockets -----------------------------------------------------------------------------

def open_listeners(config: Config, workers: int) -> list[list[socket.socket]]:
    """Each worker's listening sockets (one per address of --bind), all in the port's reuseport
    group. A port some other socket holds fails here, before any TC filter is touched: SO_REUSEPORT
    alone would let a second server of the same user join the group silently."""
    infos = []
    for host in config.bind_addresses:
        try:
            found = socket.getaddrinfo(host, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as e:
            raise StartupError(f"cannot bind to {host}: {e.strerror} (check --bind)") from None
        for family, type_, proto, _, sockaddr in dict.fromkeys(found):
            infos.append((host, family, type_, proto, sockaddr))
    for host, family, type_, proto, sockaddr in infos:
        with socket.socket(family, type_, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(sockaddr)
            except OSError as e:
                raise startup_error(e, "HTTP", host, config.port) from None
    out: list[list[socket.socket]] = []
    try:
        for _ in range(workers):
            mine = []
            out.append(mine)
            for host, family, type_, proto, sockaddr in infos:
                s = socket.socket(family, type_, proto)
                mine.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:  # (as asyncio's create_server: :: is IPv6 only)
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    s.bind(sockaddr)
                except OSError as e:
                    raise startup_error(e, "HTTP", host, config.port) from None
                s.listen(config.backlog)
                s.setblocking(False)
    except BaseException:
        for mine in out:
            for s in mine:
                s.close()
        raise
    return out


# -- the supervisor --------------------------------------------------------------------------------

@dataclass
class Worker:
    index: int
    pid: int = 0
    started: float = 0.0
    ready: bool = False
    channel: Channel | None = None
    reload_waiter: asyncio.Future[None] | None = None


class Pool:
    """The workers, as the supervisor sees them: fork, watch, restart, message, stop."""

    def __init__(self, config: Config, listeners: list[list[socket.socket]], stats: SharedStats,
                 kernel: KernelPath) -> None:
        self.config, self.listeners, self.stats, self.kernel = config, listeners, stats, kernel
        self.loop = asyncio.get_running_loop()
        self.workers = [Worker(i) for i in range(len(listeners))]
        self.stopping = False
        self.restarts = 0
        self._all_ready = asyncio.Event()
        self._reaper: asyncio.Task[None] | None = None

    # lifecycle

    def start(self) -> None:
        for w in self.workers:
            self._fork(w)
        self.loop.add_signal_handler(signal.SIGCHLD, self._reap)

    async def wait_ready(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._all_ready.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def ready_reason(self) -> str | None:
        if self.stopping:
            return "draining"
        waiting = [w.index for w in self.workers if not w.ready]
        return f"worker(s) {', '.join(map(str, waiting))} starting" if waiting else None

    def _fork(self, w: Worker) -> None:
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        others = [other.channel.sock.fileno() for other in self.workers
                  if other.channel is not None and other is not w]
        pid = os.fork()
        if pid == 0:  # the worker: never returns
            parent_sock.close()
            _worker_main(self.config, w.index, self.listeners[w.index], child_sock, self.stats.slots[w.index],
                         self.kernel, others, os.getppid())
        child_sock.close()
        w.pid, w.started, w.ready = pid, time.monotonic(), False
        w.channel = Channel(parent_sock, self.loop, lambda m, w=w: self._from_worker(w, m),
                            lambda: None)
        log.info("worker %d started (pid %d)", w.index, pid)

    def _reap(self) -> None:
        for w in self.workers:
            if not w.pid:
                continue
            try:
                pid, status = os.waitpid(w.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = w.pid, 0
            if pid == 0:
                continue
            died_young = time.monotonic() - w.started < 5.0
            w.pid, w.ready = 0, False
            self._all_ready.clear()
            if w.channel is not None:
                w.channel.close()
                w.channel = None
            if w.reload_waiter is not None and not w.reload_waiter.done():
                w.reload_waiter.set_result(None)
            if self.stopping:
                continue
            how = (f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                   else f"exited with status {os.waitstatus_to_exitcode(status)}")
            delay = RESTART_DELAY_S[1] if died_young else RESTART_DELAY_S[0]
            log.error("worker %d (pid %d) %s; starting another in %.1f s (its queued connections wait for it)",
                      w.index, pid, how, delay)
            self.restarts += 1
            self.loop.call_later(delay, self._restart, w)

    def _restart(self, w: Worker) -> None:
        if not self.stopping and not w.pid:
            self._fork(w)

    async def stop(self) -> None:
        """SIGTERM to every worker (each drains: finishes its in-flight responses and closes), then
        wait; a worker still there after --shutdown-timeout (and a little) is killed."""
        self.stopping = True
        for w in self.workers:
            if w.pid:
                with contextlib.suppress(ProcessLookupError):  # (it exited meanwhile)
                    os.kill(w.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.shutdown_timeout + STOP_GRACE_S
        while any(w.pid for w in self.workers):
            self._reap()
            if time.monotonic() > deadline:
                for w in self.workers:
                    if w.pid:
                        log.error("worker %d (pid %d) did not drain in time: killing it", w.index, w.pid)
                        with contextlib.suppress(ProcessLookupError):  # (it exited meanwhile)
                            os.kill(w.pid, signal.SIGKILL)
                deadline = float("inf")
            await asyncio.sleep(0.05)
        self.loop.remove_signal_handler(signal.SIGCHLD)
        for mine in self.listeners:
            for s in mine:
                s.close()

    # messages

    def _from_worker(self, w: Worker, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "served":
            _, path, validators = message
            self.kernel.on_user_served(path, Snapshot(Path(), validators, b""))
        elif kind == "missing":
            self.kernel.on_user_missing(message[1])
        elif kind == "ready":
            w.ready = True
            if all(x.ready for x in self.workers):
                self._all_ready.set()
        elif kind == "reconfigured":
            if w.reload_waiter is not None and not w.reload_waiter.done():
                w.reload_waiter.set_result(None)

    def broadcast_close(self, events: list[CloseEvent]) -> None:
        """The kernel's close events to every worker: only the one holding the connection acts."""
        for i in range(0, len(events), CLOSE_BATCH):
            batch = events[i:i + CLOSE_BATCH]
            for w in self.workers:
                if w.channel is not None:
                    w.channel.send("close", batch)

    async def reconfigure(self, new: Config) -> None:
        """A reloaded configuration's userspace part, applied by every worker; returns once each
        has (or has died, or 10 s passed)."""
        self.config = new
        waiters = []
        for w in self.workers:
            if w.channel is not None:
                w.reload_waiter = self.loop.create_future()
                waiters.append(w.reload_waiter)
                w.channel.send("config", new)
        if waiters:
            done, pending = await asyncio.wait(waiters, timeout=10.0)
            if pending:
                log.warning("reload: %d worker(s) did not confirm the new configuration in 10 s", len(pending))

    def lost_messages(self) -> int:
        return sum(w.channel.lost for w in self.workers if w.channel is not None)


async def supervise(config: Config, ready: asyncio.Event | None,
                    reload: Callable[[], Config] | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stats = SharedStats(config.workers)
    listeners = open_listeners(config, config.workers)  # (before any TC filter is touched)
    resolver = Resolver(config.root)
    memcache = MemoryCache(config.memory_cache_bytes, config.max_memory_file_size)
    async with AsyncExitStack() as stack:
        try:
            kernel = await stack.enter_async_context(start_kernel_path(config, resolver, memcache))
        except BaseException:
            for mine in listeners:
                for s in mine:
                    s.close()
            raise
        pool = Pool(config, listeners, stats, kernel)
        pool.start()
        # Unwound before the kernel path stops: the workers close their connections under
        # translation.
        stack.push_async_callback(pool.stop)
        if kernel.enabled:
            kernel.set_close_handler(pool.broadcast_close)
        if not await pool.wait_ready(30.0):
            log.error("not every worker is serving after 30 s: %s", pool.ready_reason())

        def why_not_ready() -> str | None:
            return pool.ready_reason() or ready_reason(config, kernel)

        if config.metrics_port:
            from fileserver.metrics import Metrics, start_metrics

            metrics = Metrics(stats.total, kernel, why_not_ready)
            await stack.enter_async_context(start_metrics(config, metrics))
        logging.getLogger("fileserver").info(
            "serving %s on http://%s:%d/ with %d workers (kernel path: %s; metrics: %s)",
            config.root, config.bind, config.port, config.workers, kernel.describe(),
            f"http://{config.metrics_bind}:{config.metrics_port}/metrics" if config.metrics_port else "off",
        )
        if reload is not None:
            reloader = Reloader(config, reload, pool.reconfigure, kernel, resolver)
            loop.add_signal_handler(signal.SIGHUP, reloader.trigger)
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("shutting down: the workers finish their in-flight responses")
    log.info("stopped")


# -- a worker --------------------------------------------------------------------------------------

def _worker_main(config: Config, index: int, sockets: list[socket.socket], channel: socket.socket,
                 stats: UserStats, kernel: KernelPath, close_fds: list[int], supervisor: int) -> None:
    """The forked worker's life: forget the supervisor's event loop and signals, give up every
    capability, serve, and exit without running the supervisor's finalizers (os._exit)."""
    code = 1
    try:
        # The supervisor's loop is still "running" in this thread's state and its signal wake-up
        # fd is the supervisor's self-pipe: a signal here would wake the supervisor's loop.
        signal.set_wakeup_fd(-1)
        asyncio.events._set_running_loop(None)
        for sig in (signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        # Ctrl-C reaches the whole process group and SIGHUP is the supervisor's (it hands the
        # new configuration over): a worker stops on the supervisor's SIGTERM only.
        for sig in (signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != supervisor:  # (it died before the prctl)
            os._exit(0)
        drop_capabilities(frozenset())  # a worker needs none: its map descriptors are open already
        for fd in close_fds:
            with _closed_ok():
                os.close(fd)
        _close_foreign_listeners({s.fileno() for s in sockets})
        share = -(-config.max_connections // config.workers)
        code = asyncio.run(_worker_serve(config, index, sockets, channel, stats, kernel, share))
    except BaseException:
        log.exception("worker %d failed", index)
    finally:
        logging.shutdown()
        os._exit(code)


def _close_foreign_listeners(own: set[int]) -> None:
    """Close the listening sockets inherited from the supervisor that are not this worker's (the
    other workers' and the metrics endpoint's): a worker must neither hold a port after the
    supervisor is gone nor take a place in the reuseport group it would not accept from."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd in own:
            continue
        try:
            with socket.socket(fileno=os.dup(fd)) as s:
                listening = s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        except OSError:  # not a socket (or closed meanwhile)
            continue
        if listening:
            with _closed_ok():
                os.close(fd)


class _closed_ok:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, *_: object) -> bool:
        return isinstance(value, OSError) and value.errno == errno.EBADF


async def _worker_serve(config: Config, index: int, sockets: list[socket.socket], sock: socket.socket,
                        stats: UserStats, kernel: KernelPath, max_connections: int) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    user = Userspace(config, stats, max_connections)

    def on_message(message: tuple[Any, ...]) -> None:
        if message[0] == "close":
            user.http.close_for_kernel(message[1])
        elif message[0] == "config":
            task = loop.create_task(user.reconfigure(message[1]))
            task.add_done_callback(lambda t: channel.send("reconfigured") if not t.exception() else
                                   log.error("worker %d: reload failed: %s", index, t.exception()))

    channel = Channel(sock, loop, on_message, stop.set)  # (the supervisor gone: stop)
    if kernel.enabled:
        user.link_kernel(kernel, lambda path, snap: channel.send("served", path, snap.validators),
                         lambda path: channel.send("missing", path))
    await user.runner.setup()
    for s in sockets:
        await web.SockSite(user.runner, s, backlog=config.backlog).start()  # (it listens again)
    channel.send("ready")
    await stop.wait()
    await user.linger()
    return 0
