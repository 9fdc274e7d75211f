"""The kernel cache policy: which files live in file_cache, and keeping them coherent.

A small file becomes hot after `hot_after` userspace hits (or at start with --hot-after 0) and is
pushed: its full 200 response, built by the same code as the userspace response, goes into a body
map of its size class under a fresh id, then file_cache is pointed at it, then the old body is
deleted. Readers therefore see one whole version or miss. The number of entries is bounded; the
least recently hit entry (kernel or userspace) is evicted to make room.

A path that does not exist gets a negative entry once it is as hot (`/favicon.ico`,
`/robots.txt`: browsers ask for them on every site): the kernel then answers its 404, the same
bytes as userspace's. At most a NEGATIVE_SHARE of the entries are negative (a scan of random paths
evicts only other negative entries), and one is dropped, or replaced by the file's entry, the
moment a file event names its path, as files' entries are refreshed.

A replaced or dropped body is deleted only RESEND_GRACE_S later: a kernel answer of several
segments may have to send a lost one again, with the bytes of the version it started with (without
them the kernel resets that connection rather than mix versions).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fileserver.abi import AE_FORMS, DATE_SLOT_OFFSET
from fileserver.config import Config
from fileserver.encoding import Offer, offer, sibling_names
from fileserver.maps import NO_BODY, BodyRef, Maps
from fileserver.http_semantics import Validators, not_found_response, not_modified_head, response_head
from fileserver.resolve import INDEX_FILE, Outcome, Resolver, canonical_spelling, decode_path, is_canonical
from fileserver.snapshot import FileChanging, MemoryCache, Snapshot

log = logging.getLogger("fileserver.kcache")

RESEND_GRACE_S = 30.0     # longer than a client's retransmission backoff takes to give up on a loss burst
MAX_RETIRED = 256         # retired bodies kept at most (each holds a slot of its size class)
NEGATIVE_SHARE = 8        # at most 1/NEGATIVE_SHARE of the entries are negative (at least MIN_NEGATIVE)
MIN_NEGATIVE = 16


@dataclass
class Entry:
    url_path: str
    file: Path  # for a negative entry, where the file would be
    validators: Validators | None  # None: a negative entry (the path's 404)
    body_id: int  # the answer without Accept-Encoding (the file itself, or the 404)
    cls: int
    size: int  # response bytes, all bodies
    user_hit_ns: int
    # Every representation pushed, by coding ("" the file itself), and the bodies of the
    # precompressed ones as (class, body id): the Accept-Encoding forms the kernel knows point there.
    variants: dict[str, Validators] = field(default_factory=dict)
    coded: list[tuple[int, int]] = field(default_factory=list)
    # What else the stored bytes and pointers depend on: the coding each Accept-Encoding form gets
    # (None: userspace's, a representation too large to hold) and whether answers carry Vary.
    forms: tuple[str | None, ...] = ()
    vary: bool = False
    available: tuple[str, ...] = ()   # Offer.available: none, and any Accept-Encoding gets the file itself

    @property
    def bodies(self) -> list[tuple[int, int]]:
        return [(self.cls, self.body_id), *self.coded]

    @property
    def negative(self) -> bool:
        return self.validators is None


@dataclass(frozen=True)
class _Body:
    """One answer to put in a body map: the 200 (its head head_len bytes) and its 304."""

    cls: int
    response: bytes
    head_len: int
    not_modified: bytes
    etag: bytes
    date_slot: int = DATE_SLOT_OFFSET


@dataclass
class CacheStats:
    entries: int = 0
    bytes: int = 0
    evictions: int = 0
    updates_hot: int = 0
    updates_modified: int = 0
    updates_deleted: int = 0
    updates_missing: int = 0  # negative entries pushed (a missing path's 404)


class KernelCache:
    def __init__(
        self, maps: Maps, resolver: Resolver, memcache: MemoryCache, config: Config, date: Callable[[], str]
    ) -> None:
        self.maps = maps
        self.resolver = resolver
        self.memcache = memcache
        self.config = config
        self.date = date
        self.entries: dict[str, Entry] = {}
        self.stats = CacheStats()
        self._hits: Counter[str] = Counter()
        self._misses: Counter[str] = Counter()
        self._next_id = 1
        self._lock = threading.RLock()
        self._retired: list[tuple[float, int, int]] = []   # (delete after, class, body id)

    # -- policy -----------------------------------------------------------------------------------

    def eligible(self, snap: Snapshot) -> bool:
        return snap.validators.size <= self.config.max_kernel_file_size

    def on_user_served(self, url_path: str, snap: Snapshot) -> None:
        """Called by the userspace handler after a full 200 GET of a small file (or of one of its
        precompressed siblings: snap.validators.coding)."""
        cause = self.refresh_due(url_path, snap)
        if cause is not None:
            self.refresh(url_path, cause=cause)

    def refresh_due(self, url_path: str, snap: Snapshot) -> str | None:
        """Count a userspace answer (on_user_served's arguments); the cause of the refresh it calls
        for ("hot", "modified"), or None. Cheap: the refresh itself reads and may compress the
        file, which a caller on the event loop does elsewhere."""
        if not self.eligible(snap):
            return None
        with self._lock:
            entry = self.entries.get(url_path)
            if entry is not None:
                entry.user_hit_ns = time.monotonic_ns()
                if snap.validators in entry.variants.values():
                    return None  # already cached (this request just raced the push or was ineligible in BPF)
            self._hits[url_path] += 1
            if self._hits[url_path] < self.config.hot_after and entry is None:
                return None
        return "hot" if entry is None else "modified"

    def on_user_missing(self, url_path: str) -> None:
        """Called by the userspace handler after a 404 for a path that does not exist."""
        with self._lock:
            entry = self.entries.get(url_path)
            if entry is not None:
                entry.user_hit_ns = time.monotonic_ns()
                if entry.negative:
                    return  # already there (this request raced the push)
            self._misses[url_path] += 1
            if self._misses[url_path] >= max(1, self.config.hot_after):
                self._misses.pop(url_path, None)
                if entry is None:
                    self._push_negative(url_path)

    def preload(self) -> int:
        """--hot-after 0: push every eligible file under the root at start."""
        pushed = 0
        for dirpath, dirnames, filenames in os.walk(self.resolver.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = os.path.relpath(dirpath, self.resolver.root)
            base = "/" if rel == "." else "/" + rel.replace(os.sep, "/") + "/"
            for name in sorted(filenames):
                try:
                    urls = [canonical_spelling(u) for u in [base + name] + ([base] if name == INDEX_FILE else [])]
                except UnicodeEncodeError:
                    continue  # a name that is not UTF-8: no URL spells it, userspace 404s it
                for url in urls:
                    if len(self.entries) >= self.config.kernel_cache_entries:
                        return pushed
                    if is_canonical(url) and self.refresh(url, cause="hot"):  # (canonical: UTF-8 names only)
                        pushed += 1
        return pushed

    # -- coherence --------------------------------------------------------------------------------

    def refresh(self, url_path: str, cause: str = "modified") -> bool:
        """Rebuild or drop the entry for url_path from what the filesystem says now."""
        resolved = self.resolver.resolve(url_path)
        if resolved.outcome is Outcome.NOT_FOUND:
            with self._lock:
                entry = self.entries.get(url_path)
                if entry is not None and entry.negative:
                    return True  # still missing: its 404 stands
        if resolved.outcome is not Outcome.FILE or resolved.path is None:
            self.drop(url_path)
            return False
        choice = offer(resolved.path, self.resolver.root, self.config.precompressed, self.config.compress)
        try:
            reps = self._representations(choice)
        except (OSError, FileChanging):
            self.drop(url_path)
            return False
        if reps is None:
            self.drop(url_path)
            return False
        snaps, _ = reps
        with self._lock:
            entry = self.entries.get(url_path)
            # Unchanged only if every byte and pointer would be: a sibling that came but is too
            # large to hold changes no variant, yet adds Vary and sends its forms to userspace.
            if entry is not None and entry.file == resolved.path and \
                    entry.variants == {c: s.validators for c, s in snaps.items()} and \
                    entry.forms == _form_codings(choice, reps) and entry.vary == choice.vary and \
                    entry.available == choice.available:
                return True
            if self._push(url_path, choice, reps, cause=cause):
                return True
        # Not pushed (a full map, a 304 over its region): the old version must not stay.
        self.drop(url_path)
        return False

    def _representations(self, choice: Offer) -> tuple[dict[str, Snapshot], dict[str, str]] | None:
        """The snapshot of every representation some request may get (the file itself, and what
        each Accept-Encoding form the kernel knows calls for), by the coding it really has
        (Offer.snapshot), and for each coding called for, the one sent; None if the file itself
        is not eligible. A representation too large to hold is left out: the forms that get it
        are userspace's."""
        snaps: dict[str, Snapshot] = {}
        sent: dict[str, str] = {}
        for coding in sorted({"", *(choice.pick(form) for form in AE_FORMS)}):
            sent[coding], snap = choice.snapshot(self.memcache, coding)
            if snap is not None and self.eligible(snap):
                snaps[sent[coding]] = snap
            elif not coding:
                return None
        return snaps, sent

    def on_paths_changed(self, paths: list[str]) -> None:
        """Filesystem events (watchdog thread): refresh every entry whose file may be affected."""
        with self._lock:
            targets = set()
            for changed in paths:
                for url, entry in self.entries.items():
                    f = str(entry.file)
                    if f == changed or f.startswith(changed.rstrip(os.sep) + os.sep) or \
                            changed in sibling_names(f):   # a sibling came, changed or went
                        targets.add(url)
        for url in targets:
            self.refresh(url)

    def sweep(self) -> None:
        """Revalidate every entry (safety net for events inotify cannot report, e.g. symlinks)."""
        with self._lock:
            urls = list(self.entries)
        for url in urls:
            self.refresh(url)

    # -- map updates ------------------------------------------------------------------------------

    def _push_negative(self, url_path: str) -> bool:
        """A negative entry: the path's 404, answered by the kernel until a file appears there."""
        response, head_len, date_slot = not_found_response(self.date())
        cls = self.maps.size_class(len(response))
        if cls is None:
            return False
        with self._lock:
            negatives = [e for e in self.entries.values() if e.negative]
            if len(negatives) >= max(MIN_NEGATIVE, self.config.kernel_cache_entries // NEGATIVE_SHARE):
                self.drop(self._least_recent(negatives).url_path, evicted=True)
            elif len(self.entries) >= self.config.kernel_cache_entries:
                self._evict_one()
            # (whatever the Accept-Encoding, the same 404)
            placed = self._store(url_path, [_Body(cls, response, head_len, b"", b"", date_slot)], [0] * len(AE_FORMS),
                                 any_encoding=True)
            if placed is None:
                return False
            where = Path(self.resolver.root, *[s for s in (decode_path(url_path) or "").split("/") if s])
            self.entries[url_path] = Entry(url_path, where, None, placed[0][1], cls, len(response), time.monotonic_ns())
            self.stats.bytes += len(response)
            self.stats.entries = len(self.entries)
            self.stats.updates_missing += 1
        log.debug("kernel cache: 404 for %s", url_path)
        return True

    def _push(self, url_path: str, choice: Offer, reps: tuple[dict[str, Snapshot], dict[str, str]], cause: str) -> bool:
        """Push every representation of a file (_representations: the snapshots by coding, ""
        the file itself, and which is sent for each coding called for) and point its entry at
        them: the file itself without Accept-Encoding, and for each form the kernel knows the one
        userspace would send for it (encoding.py)."""
        snaps, sent = reps
        cache_control = self.config.cache_control_policy.for_file(
            "/" + choice.path.relative_to(self.resolver.root).as_posix())
        codings = sorted(snaps, key=lambda c: c != "")  # the file itself first
        bodies = []
        for coding in codings:
            v, date = snaps[coding].validators, self.date()
            head = response_head(choice.path.name, v, date, cache_control, choice.vary)
            response = head + snaps[coding].body
            cls = self.maps.size_class(len(response))
            if cls is None:
                return False
            bodies.append(_Body(cls, response, len(head), not_modified_head(v, date, cache_control, choice.vary),
                                v.etag.encode()))
        forms = _form_codings(choice, reps)
        by_form = [-1 if c is None else codings.index(c) for c in forms]
        with self._lock:
            old = self.entries.get(url_path)
            if old is None and len(self.entries) >= self.config.kernel_cache_entries:
                self._evict_one()
            placed = self._store(url_path, bodies, by_form, any_encoding=not choice.available)
            if placed is None:
                return False
            if old is not None:
                for cls, body_id in old.bodies:
                    self._retire(cls, body_id)
                self.stats.bytes -= old.size
            size = sum(len(b.response) for b in bodies)
            self.entries[url_path] = Entry(url_path, choice.path, snaps[""].validators, placed[0][1], placed[0][0], size,
                                           time.monotonic_ns(), {c: snaps[c].validators for c in codings}, placed[1:],
                                           forms, choice.vary, choice.available)
            self.stats.bytes += size
            self.stats.entries = len(self.entries)
            if cause == "hot" and old is None:
                self.stats.updates_hot += 1
            else:
                self.stats.updates_modified += 1
            self._hits.pop(url_path, None)
        log.debug("kernel cache: %s %s (%s, %d bytes)", cause, url_path, ", ".join(c or "identity" for c in codings), size)
        return True

    def _store(self, url_path: str, bodies: list["_Body"], by_form: list[int],
               any_encoding: bool = False) -> list[tuple[int, int]] | None:
        """Put each body under a fresh id, then point url_path's file_cache entry at them: bodies[0]
        answers a request without Accept-Encoding (and with any value, if any_encoding), bodies[by_form[n]]
        one with AE_FORMS[n] (-1: none, userspace answers). Returns the (class, id) of each body, or None, leaving nothing
        behind, if a map refused (a full map or an oversized key: userspace serves the path)."""
        placed: list[tuple[int, int]] = []
        try:
            for b in bodies:
                body_id = self._next_id
                self._next_id = (self._next_id % 0xFFFFFFFF) + 1
                self._put_body(b.cls, body_id, b.response, b.head_len, b.not_modified, b.etag, b.date_slot)
                placed.append((b.cls, body_id))
            refs = [BodyRef(body_id, cls, len(b.response), b.head_len) for (cls, body_id), b in zip(placed, bodies)]
            self.maps.set_ref(url_path, refs[0], [refs[i] if i >= 0 else NO_BODY for i in by_form], any_encoding)
        except Exception as e:  # bcc raises plain Exception for a full map
            log.debug("could not push %s to the kernel cache: %s", url_path, e)
            for cls, body_id in placed:
                self.maps.delete_body(cls, body_id)
            return None
        return placed

    def drop(self, url_path: str, evicted: bool = False) -> None:
        """Remove an entry: its file is gone or ineligible, or (evicted) to make room."""
        with self._lock:
            entry = self.entries.pop(url_path, None)
            if entry is None:
                return
            self.maps.delete_ref(url_path)
            for cls, body_id in entry.bodies:
                self._retire(cls, body_id)
            self.stats.bytes -= entry.size
            self.stats.entries = len(self.entries)
            if evicted:
                self.stats.evictions += 1
            else:
                self.stats.updates_deleted += 1
        log.debug("kernel cache: %s %s", "evicted" if evicted else "dropped", url_path)

    def _put_body(self, cls: int, body_id: int, response: bytes, head_len: int, not_modified: bytes, etag: bytes,
                  date_slot: int = DATE_SLOT_OFFSET) -> None:
        args = (response, head_len, not_modified, etag, date_slot)
        try:
            self.maps.put_body(cls, body_id, *args)
        except Exception:
            # The class's map may be full of retired bodies: give up the oldest one's grace.
            oldest = next((r for r in self._retired if r[1] == cls), None)
            if oldest is None:
                raise
            self._retired.remove(oldest)
            self.maps.delete_body(cls, oldest[2])
            self.maps.put_body(cls, body_id, *args)

    def _retire(self, cls: int, body_id: int) -> None:
        """No reference points at this body any more; delete it after the grace period."""
        self._retired.append((time.monotonic() + RESEND_GRACE_S, cls, body_id))
        while len(self._retired) > MAX_RETIRED:
            _, c, b = self._retired.pop(0)
            self.maps.delete_body(c, b)

    def reap(self, now: float | None = None) -> int:
        """Delete the retired bodies whose grace period is over; how many."""
        now = time.monotonic() if now is None else now
        with self._lock:
            due = [r for r in self._retired if r[0] <= now]
            self._retired = [r for r in self._retired if r[0] > now]
            for _, cls, body_id in due:
                self.maps.delete_body(cls, body_id)
        return len(due)

    def _least_recent(self, entries: list[Entry]) -> Entry:
        kernel_hits = self.maps.entry_hits()
        return min(entries, key=lambda e: max(e.user_hit_ns, kernel_hits.get(e.url_path, (0, 0))[1]))

    def _evict_one(self) -> None:
        self.drop(self._least_recent(list(self.entries.values())).url_path, evicted=True)

    def reconfigure(self, resolver: Resolver, config: Config) -> None:
        """A reload: if it changed the root, the hot policy or the Cache-Control rules (part of the
        stored bytes), start over from the new ones (the kernel misses, and userspace answers,
        until files are pushed again)."""
        old = self.config
        if (config.root, config.hot_after, config.max_kernel_file_size, config.cache_control_policy,
                config.precompressed, config.compress) == (old.root, old.hot_after, old.max_kernel_file_size,
                                                           old.cache_control_policy, old.precompressed, old.compress):
            with self._lock:
                self.resolver, self.config = resolver, config
            return
        with self._lock:
            self.clear()
            self._hits.clear()
            self.resolver, self.config = resolver, config
        self.fill()

    def fill(self) -> None:
        """--hot-after 0 means every eligible file at once; otherwise files come as they get hot."""
        if self.config.hot_after == 0:
            log.info("pushed %d files into the kernel cache", self.preload())

    def hot_files(self, n: int) -> list[dict[str, object]]:
        """The n entries the kernel answered most from: path, kernel answers, response bytes."""
        hits = self.maps.entry_hits()
        with self._lock:
            entries = list(self.entries.values())
        rows = [{"path": e.url_path, "kernel_hits": hits.get(e.url_path, (0, 0))[0], "bytes": e.size} for e in entries]
        rows.sort(key=lambda r: (-int(r["kernel_hits"]), str(r["path"])))  # type: ignore[call-overload]
        return rows[:n]

    def clear(self) -> None:
        with self._lock:
            for url in list(self.entries):
                self.drop(url)


def _form_codings(choice: Offer, reps: tuple[dict[str, Snapshot], dict[str, str]]) -> tuple[str | None, ...]:
    """For each Accept-Encoding form the kernel knows (AE_FORMS), the coding of the representation
    it is answered with, or None when that one is too large to hold (the form is userspace's)."""
    snaps, sent = reps
    return tuple(c if c in snaps else None for c in (sent[choice.pick(f)] for f in AE_FORMS))
