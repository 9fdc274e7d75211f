"""The BPF side, owned by one object: compile and load with bcc, typed map access, counters.

bcc compiles bpf/main.c at start-up. Its local includes are expanded into one text first (bcc
rewrites map calls like `file_cache.lookup()` only in its main file), with #line markers so compiler
and verifier messages name the real file and line. Settings are passed as -D flags.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import ipaddress
import itertools
import logging
import os
import re
import socket
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fileserver.abi import (
    BODY_MAPS,
    CLOSE_ABORT,
    CLOSE_NOW,
    COUNTER_FIELDS,
    DATE_SLOT_LEN,
    DATE_SLOT_OFFSET,
    ENTRY_PROGRAMS,
    ETH_HLEN_,
    IF_COUNTER_FIELDS,
    MAX_FRAME,
    NM_DATE_SLOT_OFFSET,
    NM_REGION,
    NR_VARIANTS,
    PARSE_PROGRAMS,
    PROG_PARSE0,
    PROG_SEG0,
    PROG_SEND0,
    SEG_PROGRAMS,
    SEND_PROGRAMS,
    SHARED_MAPS,
    CloseEventC,
    KernelError,
    Kind,
    PassReason,
    Variant,
)
from fileserver.config import ParserLimits
from fileserver.http_semantics import as_variant

log = logging.getLogger("fileserver.datapath")

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"
MAIN_SOURCE = BPF_DIR / "main.c"
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


class DatapathError(RuntimeError):
    """The kernel path cannot run; the message says why and what to do."""


def expand_source(path: Path, seen: set[Path] | None = None) -> str:
    """Inline local `#include "x"` files (once each), keeping file/line numbers with #line."""
    seen = set() if seen is None else seen
    out = [f'#line 1 "{path.name}"']
    for n, line in enumerate(path.read_text().splitlines(), 1):
        m = _INCLUDE.match(line)
        if m:
            dep = (path.parent / m.group(1)).resolve()
            if dep not in seen:
                seen.add(dep)
                out.append(expand_source(dep, seen))
            out.append(f'#line {n + 1} "{path.name}"')
        elif line.strip() == "#pragma once":
            out.append("")
        else:
            out.append(line)
    return "\n".join(out)


def internet_checksum_le(data: bytes) -> int:
    """16-bit one's complement sum of data as bpf_csum_diff computes it on a little-endian CPU."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"<{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def body_checksum(response: bytes, date_slot: int = DATE_SLOT_OFFSET) -> int:
    """Checksum of a cached response with the Date slot zeroed (the kernel adds the fresh Date)."""
    masked = response[:date_slot] + bytes(DATE_SLOT_LEN) + response[date_slot + DATE_SLOT_LEN :]
    return internet_checksum_le(masked)


@contextlib.contextmanager
def _exit_witness(saved_stderr: int, capture: int) -> Iterator[None]:
    """LLVM ends the whole process with exit(1) on some backend errors (the BPF stack limit, for
    one) while fd 2 is captured, so the process would vanish without a word. A forked witness
    waits on a pipe: if it closes without our "done" (the process died), it copies the captured
    text to the real stderr. (A C exit hook cannot call back into a finalized interpreter.)"""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the witness: only raw system calls until _exit
        try:
            os.close(w)
            said = b""
            while chunk := os.read(r, 16):
                said += chunk
            if said != b"done":
                os.lseek(capture, 0, os.SEEK_SET)
                text = b""
                while chunk := os.read(capture, 1 << 16):
                    text += chunk
                os.write(saved_stderr, b"fileserver: the BPF compiler ended the process:\n" + text + b"\n")
        finally:
            os._exit(0)
    os.close(r)
    try:
        yield
    finally:
        os.write(w, b"done")
        os.close(w)
        os.waitpid(pid, 0)


@contextlib.contextmanager
def _captured_stderr(witness: bool = False) -> Iterator[list[str]]:
    """bcc and libbpf print compiler errors and verifier logs on fd 2: capture them (with a
    witness for the compiler, which may end the process)."""
    captured: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            with _exit_witness(saved, tmp.fileno()) if witness else contextlib.nullcontext():
                yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.append(tmp.read().decode(errors="replace"))


def _summarise(log_text: str) -> str:
    lines = [ln for ln in log_text.splitlines() if ln.strip()]
    for ln in lines:
        if "error:" in ln or "fatal" in ln:
            return ln.strip()
    return lines[-1].strip() if lines else "no details"


@dataclass
class Counters:
    """The per-CPU counters map summed over CPUs: read once per scrape or snapshot."""

    hits: int = 0
    hit_bytes: int = 0
    retransmits: int = 0
    xlate_in: int = 0
    xlate_out: int = 0
    csum_partial: int = 0
    csum_full: int = 0
    sack_blanked: int = 0
    returns: int = 0
    segments: int = 0
    resent: int = 0
    acks: int = 0
    held: int = 0
    passes: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


MAPS_SOURCE = BPF_DIR / "maps.c"
# bcc's exported tables live in one process-wide registry keyed by name, and exporting a name again
# keeps the first (closed) entry: every map set after the first in a process gets its own names.
_map_sets = itertools.count()


def _rename_maps(text: str, suffix: str) -> str:
    if not suffix:
        return text
    return re.sub(r"\b(" + "|".join(SHARED_MAPS) + r")\b", rf"\1{suffix}", text)


def _compile(text: str, cflags: list[str], verbose: bool) -> object:
    from bcc import BPF  # type: ignore[import-not-found]

    with _captured_stderr(witness=True) as out:
        try:
            bpf = BPF(text=text.encode(), cflags=cflags)
        except Exception:
            bpf = None
    if bpf is None:
        detail = out[0] if out else ""
        if verbose:
            log.debug("bcc compiler output:\n%s", detail)
        raise DatapathError(
            f"bcc could not compile the BPF program ({_summarise(detail)}); kernel headers missing? run `make setup`"
        )
    return bpf


class Datapath:
    """Loaded programs and their maps. Close it to release them (the filters are tc.py's job).

    The maps are built once (bpf/maps.c) and shared by every build of the programs: `rebuilt`
    compiles and loads a new build over the same maps for a reload, and hands the maps to it.
    """

    def __init__(self, port: int, cache_entries: int, verbose: bool = False, source: Path = MAIN_SOURCE,
                 connections: int = 65536, limits: ParserLimits = ParserLimits(),
                 maps: object | None = None, map_suffix: str | None = None) -> None:
        try:
            from bcc import BPF  # type: ignore[import-not-found]
        except ImportError as e:
            raise DatapathError(f"bcc is not installed ({e}): run `make setup` (Debian package python3-bpfcc)") from None
        self.port, self.cache_entries, self.connections, self.verbose = port, cache_entries, connections, verbose
        self.source, self.limits = source, limits
        cflags = [
            f"-DSERVER_PORT={port}",
            f"-DCACHE_ENTRIES={cache_entries}",
            f"-DCONN_ENTRIES={connections}",
            f"-DLIMIT_URL_LENGTH={limits.url_length}",
            f"-DLIMIT_HEADER_SIZE={limits.header_size}",
            f"-DLIMIT_HEADERS={limits.headers}",
            "-Wno-unused-value",
            "-Wno-pointer-sign",
            "-Wno-compare-distinct-pointer-types",
            "-Wno-incompatible-pointer-types-discards-qualifiers",
        ]
        t0 = time.monotonic()
        self.bpf = None
        borrowed = maps is not None  # a failed rebuild must leave the maps to the running build
        if maps is None:
            n = next(_map_sets)
            map_suffix = f"_{n}" if n else ""
            maps = _compile(_rename_maps(expand_source(MAPS_SOURCE), map_suffix), cflags, verbose)
        self.maps: object | None = maps
        self.map_suffix = map_suffix or ""
        try:
            self.bpf = _compile(_rename_maps(expand_source(source), self.map_suffix), cflags, verbose)
        except DatapathError:
            self._close_after_failure(borrowed)
            raise
        self.programs: dict[str, object] = {}
        for name in (*ENTRY_PROGRAMS, *PARSE_PROGRAMS, *SEND_PROGRAMS, *SEG_PROGRAMS):
            with _captured_stderr() as out:
                try:
                    self.programs[name] = self.bpf.load_func(name.encode(), BPF.SCHED_CLS)  # type: ignore[attr-defined]
                    err = None
                except Exception as e:
                    err = e
            if err is not None:
                detail = out[0] if out else ""
                if verbose:
                    log.debug("verifier log for %s:\n%s", name, detail)
                self._close_after_failure(borrowed)
                if isinstance(err, PermissionError) or "Operation not permitted" in str(err):
                    raise DatapathError("not allowed to load BPF programs: run as root (or with CAP_BPF and CAP_NET_ADMIN)")
                raise DatapathError(f"the kernel rejected BPF program {name}: {_summarise(detail)} (run with -v for the verifier log)")
        progs = self.bpf[b"progs"]  # type: ignore[index]
        for first, names in ((PROG_PARSE0, PARSE_PROGRAMS), (PROG_SEND0, SEND_PROGRAMS), (PROG_SEG0, SEG_PROGRAMS)):
            for i, name in enumerate(names):
                progs[ct.c_int(first + i)] = ct.c_int(self.programs[name].fd)  # type: ignore[attr-defined]
        self.file_cache = self._map("file_cache")
        self.bodies = [self._map(name) for name in BODY_MAPS]
        # Room for a 200 response in each class: struct body<n>'s data less the 304 region.
        self.class_sizes = [m.Leaf.data.size - NM_REGION for m in self.bodies]
        self.conn_state = self._map("conn_state")
        self.conn_capacity = int(self.conn_state.max_entries)
        self.counters_map = self._map("counters")
        self.clock = self._map("clock")
        self.if_max_frame = self._map("if_max_frame")
        self.if_stats = self._map("if_stats")
        self.if_stats_size = int(self.if_stats.max_entries)
        log.debug("BPF programs compiled and loaded in %.1f s", time.monotonic() - t0)

    def _map(self, name: str):  # type: ignore[no-untyped-def]
        return self.maps[(name + self.map_suffix).encode()]  # type: ignore[index]

    def rebuilt(self, limits: ParserLimits) -> "Datapath":
        """A new build of the programs (with these limits) over the same maps. The maps pass to it:
        close this one once no filter points at its programs any more."""
        new = Datapath(self.port, self.cache_entries, self.verbose, self.source, self.connections, limits,
                       maps=self.maps, map_suffix=self.map_suffix)
        self.maps = None
        return new

    # -- lifetime ---------------------------------------------------------------------------------

    def close(self) -> None:
        if self.bpf is not None:
            self.bpf.cleanup()  # type: ignore[attr-defined]
            self.bpf = None
        if self.maps is not None:
            self.maps.cleanup()  # type: ignore[attr-defined]
            self.maps = None

    def _close_after_failure(self, borrowed: bool) -> None:
        if borrowed:
            self.maps = None
        self.close()

    def fd(self, name: str) -> int:
        return self.programs[name].fd  # type: ignore[attr-defined,no-any-return]

    # -- configuration and heartbeat --------------------------------------------------------------

    def set_max_frame(self, ifindex: int, mtu: int) -> None:
        self.if_max_frame[ct.c_int(ifindex)] = ct.c_uint(min(mtu + ETH_HLEN_, MAX_FRAME))

    def refresh_clock(self, date: str) -> None:
        """Write the Date slot bytes and the heartbeat (one atomic hash-map update)."""
        leaf = self.clock.Leaf()
        leaf.updated_ns = time.monotonic_ns()  # CLOCK_MONOTONIC, as bpf_ktime_get_ns
        slot = b" " + date.encode() + b"\r\n"
        assert len(slot) == DATE_SLOT_LEN
        ct.memmove(leaf.date, slot, DATE_SLOT_LEN)
        self.clock[ct.c_uint(0)] = leaf

    # -- the cache --------------------------------------------------------------------------------

    def size_class(self, length: int) -> int | None:
        for cls, size in enumerate(self.class_sizes):
            if length <= size:
                return cls
        return None

    def _path_key(self, url_path: str) -> object:
        key = self.file_cache.Key()
        raw = url_path.encode()
        if len(raw) >= ct.sizeof(key):
            raise ValueError(f"path too long for the kernel cache: {url_path}")
        ct.memmove(ct.addressof(key), raw, len(raw))
        return key

    def put_body(self, cls: int, body_id: int, response: bytes, head_len: int, not_modified: bytes, etag: bytes) -> None:
        """One version of a file: the whole 200 response (its first head_len bytes answer a HEAD)
        and the 304 response, which contains the ETag the kernel compares If-None-Match with."""
        if len(not_modified) > NM_REGION:
            raise ValueError("304 response larger than its region")
        table = self.bodies[cls]
        leaf = table.Leaf()
        h = leaf.h
        h.len = len(response)
        h.csum = body_checksum(response)
        h.head_len = head_len
        h.head_csum = body_checksum(response[:head_len])
        h.nm_len = len(not_modified)
        h.nm_csum = body_checksum(not_modified, NM_DATE_SLOT_OFFSET)
        h.etag_off = not_modified.index(b"ETag: " + etag + b"\r\n") + len(b"ETag: ")
        h.etag_len = len(etag)
        # The other variants' sums, per kind of answer.
        kinds = {Kind.FULL: (response, head_len, DATE_SLOT_OFFSET), Kind.HEAD: (response[:head_len], head_len, DATE_SLOT_OFFSET),
                 Kind.NM: (not_modified, len(not_modified), NM_DATE_SLOT_OFFSET)}
        for kind, (data, hlen, slot) in kinds.items():
            for variant in Variant:
                if variant != Variant.KEEP11:
                    h.vcsum[kind * (NR_VARIANTS - 1) + variant - 1] = body_checksum(as_variant(data, hlen, variant), slot)
        data = ct.addressof(leaf.data)
        ct.memmove(data, not_modified, len(not_modified))
        ct.memmove(data + NM_REGION, response, len(response))
        table[ct.c_uint(body_id)] = leaf

    def delete_body(self, cls: int, body_id: int) -> None:
        with contextlib.suppress(KeyError):
            del self.bodies[cls][ct.c_uint(body_id)]

    def set_ref(self, url_path: str, body_id: int, cls: int) -> None:
        leaf = self.file_cache.Leaf()
        leaf.id = body_id
        leaf.cls = cls
        leaf.last_hit_ns = 0
        leaf.hits = 0
        self.file_cache[self._path_key(url_path)] = leaf

    def delete_ref(self, url_path: str) -> None:
        with contextlib.suppress(KeyError):
            del self.file_cache[self._path_key(url_path)]

    def entry_hits(self) -> dict[str, tuple[int, int]]:
        """URL path -> (kernel answers from the entry, bpf_ktime_get_ns of the last one or 0)."""
        out = {}
        for k, v in self.file_cache.items():
            out[bytes(k.path).rstrip(b"\0").decode()] = (int(v.hits), int(v.last_hit_ns))
        return out

    def interface_counters(self, ifindex: int) -> dict[str, int]:
        if ifindex >= self.if_stats_size:
            return {}
        per_cpu = self.if_stats[ct.c_int(ifindex)]
        return {f: sum(getattr(c, f) for c in per_cpu) for f in IF_COUNTER_FIELDS}

    # -- counters and connections -----------------------------------------------------------------

    def counters(self) -> Counters:
        per_cpu = self.counters_map[ct.c_int(0)]
        mask = (1 << 64) - 1

        def total(field: str) -> int:
            return sum(getattr(c, field) for c in per_cpu) & mask

        # The C field is named `pass`, a Python keyword: reach it with getattr.
        passes = {r.label: sum(getattr(c, "pass")[r] for c in per_cpu) & mask for r in PassReason}
        errors = {e.label: sum(c.errors[e] for c in per_cpu) & mask for e in KernelError}
        return Counters(**{f: total(f) for f in COUNTER_FIELDS}, passes=passes, errors=errors)

    def on_close_events(self, callback: Callable[[CloseEvent], None]) -> None:
        """Deliver close_events records to callback from poll_close_events (one reader thread)."""

        def raw(_ctx: object, data: int, _size: int) -> None:
            ev = ct.cast(data, ct.POINTER(CloseEventC)).contents
            key = ev.key
            callback(CloseEvent(address_text(bytes(key.client_ip)), socket.ntohs(key.client_port),
                                address_text(bytes(key.server_ip)), socket.ntohs(key.server_port), ev.kind == CLOSE_NOW,
                                ev.kind == CLOSE_ABORT))

        self._map("close_events").open_ring_buffer(raw)

    def mark_user_idle(self, client_ip: str, client_port: int, server_ip: str, server_port: int,
                       consumed: int, written: int) -> None:
        """Userspace has answered everything it read from this connection (`consumed` bytes read,
        `written` written in all): the kernel may take it back once the client has acknowledged
        all of it (back_to_kernel)."""
        table = self._map("user_idle")
        key = _conn_key(table, client_ip, client_port, server_ip, server_port)
        leaf = table.Leaf()
        leaf.consumed, leaf.written = consumed, written
        table[key] = leaf

    def kernel_last_seen_ns(self, client_ip: str, client_port: int, server_ip: str, server_port: int) -> int | None:
        """bpf_ktime_get_ns (CLOCK_MONOTONIC) of the last segment of a connection the kernel has
        answered requests on; None for any other."""
        try:
            leaf = self.conn_state[_conn_key(self.conn_state, client_ip, client_port, server_ip, server_port)]
        except KeyError:
            return None
        return int(leaf.last_seen_ns) if leaf.delta_in else None

    def poll_close_events(self, timeout_ms: int) -> None:
        self.maps.ring_buffer_poll(timeout_ms)  # type: ignore[attr-defined]

    def conn_entries(self) -> int:
        return sum(1 for _ in self.conn_state.keys())

    def gc_connections(self, port: int, idle_ns: int = 10 * 1_000_000_000) -> int:
        """Delete conn_state entries of connections that no longer exist (and were idle a while)."""
        live = _live_connections(port)
        now = time.monotonic_ns()
        dead = []
        for k, v in self.conn_state.items():
            tup = (bytes(k.client_ip), k.client_port, bytes(k.server_ip))
            if tup not in live and now - v.last_seen_ns > idle_ns:
                dead.append(k)
        for k in dead:
            with contextlib.suppress(KeyError):
                del self.conn_state[k]
        return len(dead)


@dataclass(frozen=True)
class CloseEvent:
    """The kernel answered a request that ends its connection (Connection: close, HTTP/1.0):
    userspace must close the server socket; `acked`: the client has the whole answer. `abort`: a
    multi-segment answer lost a segment whose version is gone: reset the connection instead."""

    client_ip: str
    client_port: int
    server_ip: str
    server_port: int
    acked: bool
    abort: bool = False


def address_bytes(text: str) -> bytes:
    """An address as struct conn_key holds it: 16 bytes in network order, IPv4 as IPv4-mapped
    (::ffff:a.b.c.d), which is also how a dual-stack socket names an IPv4 peer."""
    ip = ipaddress.ip_address(text.split("%")[0])  # (a link-local peer's name carries its scope)
    if isinstance(ip, ipaddress.IPv4Address):
        ip = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
    return ip.packed


def address_text(packed: bytes) -> str:
    """The inverse of address_bytes, and the one spelling of an address on both sides: dotted
    for IPv4 (mapped or not), compressed IPv6 otherwise."""
    ip = ipaddress.IPv6Address(packed)
    return str(ip.ipv4_mapped or ip)


def canonical_address(text: str) -> str:
    """A socket's name for an address in the spelling close events use (see address_text)."""
    return address_text(address_bytes(text))


def _conn_key(table: object, client_ip: str, client_port: int, server_ip: str, server_port: int) -> object:
    """A struct conn_key (as the programs build it) for a table keyed by it."""
    key = table.Key()  # type: ignore[attr-defined]
    ct.memmove(key.client_ip, address_bytes(client_ip), 16)
    ct.memmove(key.server_ip, address_bytes(server_ip), 16)
    key.client_port, key.server_port = socket.htons(client_port), socket.htons(server_port)
    return key


# TIME_WAIT, CLOSE and LISTEN (hex, as /proc/net/tcp prints them): no segment of these needs translating.
_GONE_STATES = {"06", "07", "0A"}


def _proc_address(hexaddr: str) -> bytes:
    """An address as /proc/net/tcp{,6} prints it (each 32-bit word as a native u32 in hex) in
    struct conn_key's form."""
    words = b"".join(struct.pack("=I", int(hexaddr[i:i + 8], 16)) for i in range(0, len(hexaddr), 8))
    return words if len(words) == 16 else b"\0" * 10 + b"\xff\xff" + words


def _live_connections(port: int) -> set[tuple[bytes, int, bytes]]:
    """(client address, client port, server address) of TCP sockets on our port, IPv4 and IPv6, as
    the maps store them (addresses as in struct conn_key, ports in network order as a native u16)."""
    live = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                parts = line.split()
                if parts[3] in _GONE_STATES:
                    continue
                laddr, lport = parts[1].split(":")
                raddr, rport = parts[2].split(":")
                if int(lport, 16) != port:
                    continue
                live.add((_proc_address(raddr), socket.htons(int(rport, 16)), _proc_address(laddr)))
    return live
