"""Typed access to the map set the programs share: the file cache and its bodies, the clock, the
per-interface tables and the counters.

The maps are created once (bpf/maps.c) and outlive every build of the programs, so a reload keeps
cached files and connections. Keys and values are bcc's ctypes types of each map (`Key`, `Leaf`):
fields by name, never by offset.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import itertools
import struct
import time
from dataclasses import dataclass, field
from typing import NamedTuple

from fileserver.abi import (
    BODY_MAPS,
    COUNTER_FIELDS,
    DATE_SLOT_LEN,
    DATE_SLOT_OFFSET,
    ETH_HLEN_,
    IF_COUNTER_FIELDS,
    IMF_FIXDATE_LEN,
    MAX_FRAME,
    NM_DATE_SLOT_OFFSET,
    NM_REGION,
    NR_AE_FORMS,
    NR_VARIANTS,
    KernelError,
    Kind,
    PassReason,
    Variant,
)
from fileserver.bpf_build import MAPS_SOURCE, compile_text, expand_source, rename_maps
from fileserver.http_semantics import as_variant

class BodyRef(NamedTuple):
    """struct body_ref: a body, its class, and the lengths of its 200 and of its head."""

    id: int
    cls: int
    len: int
    head_len: int


NO_BODY = BodyRef(0, 0, 0, 0)   # a form whose answer is userspace's

# bcc's exported tables live in one process-wide registry keyed by name, and exporting a name again
# keeps the first (closed) entry: every map set after the first in a process gets its own names.
_map_sets = itertools.count()


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


@dataclass
class Counters:
    """The per-CPU counters map summed over CPUs: read once per scrape or snapshot. The scalar
    fields are struct counters' (abi.COUNTER_FIELDS), by name."""

    hits: int = 0
    hit_bytes: int = 0
    retransmits: int = 0
    xlate_in: int = 0
    xlate_out: int = 0
    csum_partial: int = 0
    csum_full: int = 0
    sack_blanked: int = 0
    sack_translated: int = 0
    returns: int = 0
    segments: int = 0
    resent: int = 0
    acks: int = 0
    probes: int = 0
    held: int = 0
    path_mtu: int = 0
    races: int = 0
    freed: int = 0
    socketless: int = 0
    passes: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


class Maps:
    """One map set: its bcc object (bpf/maps.c) and typed access to the tables in it."""

    def __init__(self, flags: list[str], verbose: bool) -> None:
        n = next(_map_sets)
        self.suffix = f"_{n}" if n else ""
        self.bpf: object | None = compile_text(rename_maps(expand_source(MAPS_SOURCE), self.suffix), flags, verbose)
        self.file_cache = self.table("file_cache")
        self.bodies = [self.table(name) for name in BODY_MAPS]
        # Room for a 200 response in each class: struct body<n>'s data less the 304 region.
        self.class_sizes = [m.Leaf.data.size - NM_REGION for m in self.bodies]
        self.counters_map = self.table("counters")
        self.clock = self.table("clock")
        self.if_max_frame = self.table("if_max_frame")
        self.if_stats = self.table("if_stats")
        self.if_stats_size = int(self.if_stats.max_entries)

    def table(self, name: str):  # type: ignore[no-untyped-def]
        """A map of this set by its name in bpf/maps.h."""
        return self.bpf[(name + self.suffix).encode()]  # type: ignore[index]

    def fd(self, name: str) -> int:
        """A map's descriptor by its name in bpf/maps.h (without building bcc's Table for it: bcc
        refuses per-CPU maps whose value is not 8-byte aligned, which the programs use as scratch)."""
        from bcc import libbcc  # type: ignore[import-not-found]

        fd = libbcc.lib.bpf_table_fd(self.bpf.module, (name + self.suffix).encode())  # type: ignore[attr-defined]
        if fd < 0:
            raise KeyError(name)
        return int(fd)

    def close(self) -> None:
        if self.bpf is not None:
            self.bpf.cleanup()  # type: ignore[attr-defined]
            self.bpf = None

    # -- configuration and heartbeat --------------------------------------------------------------

    def set_max_frame(self, ifindex: int, mtu: int) -> None:
        self.if_max_frame[ct.c_int(ifindex)] = ct.c_uint(min(mtu + ETH_HLEN_, MAX_FRAME))

    def refresh_clock(self, date: str, socketless: bool = False) -> None:
        """Write the Date slot bytes, the heartbeat and whether handshakes may end in the kernel
        (bpf/nosock.h), in one atomic hash-map update."""
        leaf = self.clock.Leaf()
        leaf.updated_ns = time.monotonic_ns()  # CLOCK_MONOTONIC, as bpf_ktime_get_ns
        leaf.socketless = int(socketless)
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

    def put_body(self, cls: int, body_id: int, response: bytes, head_len: int, not_modified: bytes, etag: bytes,
                 date_slot: int = DATE_SLOT_OFFSET) -> None:
        """One version of a file: the whole 200 response (its first head_len bytes answer a HEAD)
        and the 304 response, which contains the ETag the kernel compares If-None-Match with and
        the Last-Modified it compares If-Modified-Since with. A negative entry has no 304
        (not_modified and etag empty): its response is the 404, with its Date slot at date_slot."""
        if len(not_modified) > NM_REGION:
            raise ValueError("304 response larger than its region")
        table = self.bodies[cls]
        leaf = table.Leaf()
        h = leaf.h
        h.len = len(response)
        h.csum = body_checksum(response, date_slot)
        h.head_len = head_len
        h.head_csum = body_checksum(response[:head_len], date_slot)
        h.date_off = date_slot
        h.nm_len = len(not_modified)
        kinds = {Kind.FULL: (response, head_len, date_slot), Kind.HEAD: (response[:head_len], head_len, date_slot)}
        if not_modified:
            h.nm_csum = body_checksum(not_modified, NM_DATE_SLOT_OFFSET)
            h.etag_off = not_modified.index(b"ETag: " + etag + b"\r\n") + len(b"ETag: ")
            h.etag_len = len(etag)
            lm = not_modified.index(b"\r\nLast-Modified: ") + len(b"\r\nLast-Modified: ")
            if not_modified[lm + IMF_FIXDATE_LEN:lm + IMF_FIXDATE_LEN + 2] != b"\r\n":
                raise ValueError("Last-Modified is not an IMF-fixdate")
            h.lm_off = lm
            kinds[Kind.NM] = (not_modified, len(not_modified), NM_DATE_SLOT_OFFSET)
        # The other variants' sums, per kind of answer.
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

    def set_ref(self, url_path: str, plain: BodyRef, by_form: list[BodyRef] | None = None,
                any_encoding: bool = False) -> None:
        """Point url_path at `plain` (the answer without Accept-Encoding) and by_form[n] at the
        answer to AE_FORMS[n] (id 0: userspace's); by default the same body. any_encoding: every
        Accept-Encoding value, known to the kernel or not, gets `plain`."""
        leaf = self.file_cache.Leaf()
        leaf.last_hit_ns = 0
        leaf.hits = 0
        leaf.any_encoding = int(any_encoding)
        for ref, target in zip([plain, *(by_form or [plain] * NR_AE_FORMS)], [leaf.plain, *leaf.by_form]):
            target.id, target.cls, target.len, target.head_len = ref
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

    # -- counters ---------------------------------------------------------------------------------

    def interface_counters(self, ifindex: int) -> dict[str, int]:
        if ifindex >= self.if_stats_size:
            return {}
        per_cpu = self.if_stats[ct.c_int(ifindex)]
        return {f: sum(getattr(c, f) for c in per_cpu) for f in IF_COUNTER_FIELDS}

    def counters(self) -> Counters:
        per_cpu = self.counters_map[ct.c_int(0)]
        mask = (1 << 64) - 1

        def total(field: str) -> int:
            return sum(getattr(c, field) for c in per_cpu) & mask

        # The C field is named `pass`, a Python keyword: reach it with getattr.
        passes = {r.label: sum(getattr(c, "pass")[r] for c in per_cpu) & mask for r in PassReason}
        errors = {e.label: sum(c.errors[e] for c in per_cpu) & mask for e in KernelError}
        return Counters(**{f: total(f) for f in COUNTER_FIELDS}, passes=passes, errors=errors)
