"""The BPF side, owned by one object: a map set and one build of the programs over it.

Compiling and loading is bpf_build.py's job, typed map access maps.py's, the connection tables
conns.py's. Datapath ties their lifetimes together: close it to release what it owns (the TC
filters are tc.py's job).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from fileserver.abi import NR_PROGS, SHARED_MAPS
from fileserver.bpf_build import (
    MAIN_SOURCE,
    DatapathError,
    cflags,
    compile_text,
    expand_source,
    load_programs,
    rename_maps,
    tail_call_slots,
)
from fileserver.config import ParserLimits
from fileserver.conns import Connections
from fileserver.maps import Maps
from fileserver.progcache import (
    Program,
    ProgramCache,
    cache_enabled,
    cache_key,
    create_prog_array,
    fill_prog_array,
    load_cached,
    store,
)

log = logging.getLogger("fileserver.datapath")


class Datapath:
    """Loaded programs and the maps they use.

    The maps are built once (bpf/maps.c) and shared by every build of the programs: `rebuilt`
    compiles and loads a new build over the same maps for a reload, and hands the maps to it.
    """

    def __init__(self, port: int, cache_entries: int, verbose: bool = False, source: Path = MAIN_SOURCE,
                 connections: int = 65536, limits: ParserLimits = ParserLimits(), maps: Maps | None = None,
                 use_cache: bool = True) -> None:
        """use_cache: False compiles even if the program cache holds this build (`fileserver doctor`)."""
        try:
            import bcc  # type: ignore[import-not-found]  # noqa: F401
        except ImportError as e:
            raise DatapathError(f"bcc is not installed ({e}): run `make setup` (Debian package python3-bpfcc)") from None
        self.port, self.cache_entries, self.connections, self.verbose = port, cache_entries, connections, verbose
        self.source, self.limits = source, limits
        flags = cflags(port, cache_entries, connections, limits)
        t0 = time.monotonic()
        self.bpf: object | None = None
        # Whose maps these are: a rebuild borrows them, and takes them over once it has loaded
        # (a failed rebuild must leave them to the running build).
        self.maps = maps if maps is not None else Maps(flags, verbose)
        self._owns_maps = maps is None
        self._progs_fd = -1
        self.programs: dict[str, object] = {}
        text = rename_maps(expand_source(source), self.maps.suffix)
        key = cache_key(text, flags)
        cache = ProgramCache() if use_cache and cache_enabled() else None
        entry = cache.read(key) if cache is not None else None
        how = "compiled and loaded"
        try:
            if entry is not None and self._load_cached(entry, verbose):
                how = "loaded from the program cache"
            else:
                self.bpf = compile_text(text, flags, verbose)
                self.programs = load_programs(self.bpf, verbose)
                if cache is not None:
                    store(cache, key, self.bpf, list(self.programs), {fd: name for name, fd in self._map_fds().items()})
        except DatapathError:
            self.close()
            raise
        self.conns = Connections(self.maps)
        log.info("BPF programs %s in %.1f s", how, time.monotonic() - t0)

    def _map_fds(self) -> dict[str, int]:
        """The descriptors a build's instructions name: the shared maps (a compiled build's own
        duplicates of them: bcc dups an extern table's descriptor) and its tail-call array."""
        from bcc import libbcc  # type: ignore[import-not-found]

        if self.bpf is not None:
            module = self.bpf.module  # type: ignore[attr-defined]
            return {name: int(libbcc.lib.bpf_table_fd(module, (name if name == "progs" else name + self.maps.suffix).encode()))
                    for name in (*SHARED_MAPS, "progs")}
        return {**{name: self.maps.fd(name) for name in SHARED_MAPS}, "progs": self._progs_fd}

    def _load_cached(self, entry: dict[str, object], verbose: bool) -> bool:
        """Load a cached build (progcache.py) over these maps; False (and nothing left open) if the
        kernel refuses it, so that it is compiled instead."""
        try:
            self._progs_fd = create_prog_array("progs", NR_PROGS)
            self.programs = dict(load_cached(entry, self._map_fds(), verbose))
            fill_prog_array(self._progs_fd, tail_call_slots(self.programs))
        except (OSError, KeyError) as e:
            log.warning("compiling the BPF programs: their cached build did not load (%s)", e)
            self._close_cached()
            return False
        return True

    def _close_cached(self) -> None:
        for prog in self.programs.values():
            if isinstance(prog, Program):
                os.close(prog.fd)
        self.programs = {}
        if self._progs_fd >= 0:
            os.close(self._progs_fd)
            self._progs_fd = -1

    def rebuilt(self, limits: ParserLimits) -> "Datapath":
        """A new build of the programs (with these limits) over the same maps. The maps pass to it:
        close this one once no filter points at its programs any more."""
        new = Datapath(self.port, self.cache_entries, self.verbose, self.source, self.connections, limits,
                       maps=self.maps)
        new._owns_maps, self._owns_maps = self._owns_maps, False
        return new

    def close(self) -> None:
        if self.bpf is not None:
            self.bpf.cleanup()  # type: ignore[attr-defined]
            self.bpf = None
        self._close_cached()
        if self._owns_maps:
            self.maps.close()
            self._owns_maps = False

    def fd(self, name: str) -> int:
        return self.programs[name].fd  # type: ignore[attr-defined,no-any-return]
