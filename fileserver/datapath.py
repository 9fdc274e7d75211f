"""The BPF side, owned by one object: a map set and one build of the programs over it.

Compiling and loading is bpf_build.py's job, typed map access maps.py's, the connection tables
conns.py's. Datapath ties their lifetimes together: close it to release what it owns (the TC
filters are tc.py's job).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from fileserver.bpf_build import MAIN_SOURCE, DatapathError, cflags, compile_text, expand_source, load_programs, rename_maps
from fileserver.config import ParserLimits
from fileserver.conns import Connections
from fileserver.maps import Maps

log = logging.getLogger("fileserver.datapath")


class Datapath:
    """Loaded programs and the maps they use.

    The maps are built once (bpf/maps.c) and shared by every build of the programs: `rebuilt`
    compiles and loads a new build over the same maps for a reload, and hands the maps to it.
    """

    def __init__(self, port: int, cache_entries: int, verbose: bool = False, source: Path = MAIN_SOURCE,
                 connections: int = 65536, limits: ParserLimits = ParserLimits(), maps: Maps | None = None) -> None:
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
        try:
            self.bpf = compile_text(rename_maps(expand_source(source), self.maps.suffix), flags, verbose)
            self.programs = load_programs(self.bpf, verbose)
        except DatapathError:
            self.close()
            raise
        self.conns = Connections(self.maps)
        log.debug("BPF programs compiled and loaded in %.1f s", time.monotonic() - t0)

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
        if self._owns_maps:
            self.maps.close()
            self._owns_maps = False

    def fd(self, name: str) -> int:
        return self.programs[name].fd  # type: ignore[attr-defined,no-any-return]
