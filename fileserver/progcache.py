"""A cache of compiled BPF programs: start without compiling what has not changed.

bcc compiles bpf/main.c with clang at every start: about 10 s of CPU here, most of the time a
server takes to attach (a balancer's health checks meanwhile see it serve from userspace alone,
issue 18). What clang produces depends only on the expanded source, the -D flags, bcc (its
clang and its rewriter) and the kernel headers it compiled against; the one thing in it that
belongs to the process is the map descriptors bcc wrote into its `ld_imm64` instructions
(src_reg BPF_PSEUDO_MAP_FD, as libbpf's relocations do for ELF objects). So after a compile the
instructions of each program are stored with those immediates replaced by map names, and a later
start with the same key patches in its own descriptors and loads them with bcc_prog_load. The
kernel's verifier checks every load, cached or not: a cache can make a start faster, never a
program the kernel would refuse.

A program loaded into the kernel runs with the kernel's privileges, so the cache is trusted only
if this user owns it and no one else can write to it (directory 0700, files 0600, checked at each
read); anything else is ignored with a warning and the programs are compiled.
"""

from __future__ import annotations

import ctypes as ct
import hashlib
import json
import logging
import os
import stat
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("fileserver.datapath")

FORMAT = 1
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_MAP_TYPE_PROG_ARRAY = 3
_LD_IMM64 = 0x18               # BPF_LD | BPF_IMM | BPF_DW: two instruction slots
_PSEUDO_MAP_FD = 1             # src_reg of an ld_imm64 whose immediate is a map descriptor
_INSN = struct.Struct("<BBhi")  # code, dst_reg:4 | src_reg:4, off, imm


def default_dir() -> Path:
    """systemd's CacheDirectory= ($CACHE_DIRECTORY), else FILESERVER_CACHE_DIR, else
    /var/cache/fileserver."""
    return Path(os.environ.get("CACHE_DIRECTORY") or os.environ.get("FILESERVER_CACHE_DIR") or "/var/cache/fileserver")


def cache_enabled() -> bool:
    """FILESERVER_CACHE_DIR=off compiles at every start (and caches nothing)."""
    return os.environ.get("FILESERVER_CACHE_DIR", "") != "off"


def cache_key(text: str, flags: list[str]) -> str:
    """What the compiled instructions depend on: source, flags, bcc and its clang, the kernel."""
    import bcc  # type: ignore[import-not-found]

    libbcc = Path(bcc.libbcc.lib._name)
    try:
        lib_id = f"{libbcc.resolve()}:{libbcc.stat().st_size}:{libbcc.stat().st_mtime_ns}"
    except OSError:
        lib_id = str(libbcc)
    h = hashlib.sha256()
    for part in (str(FORMAT), getattr(bcc, "__version__", "?"), lib_id, os.uname().release, *flags, text):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


@dataclass
class Program:
    """A loaded program: its name and descriptor (what bcc's BPF.Function offers us)."""

    name: str
    fd: int


def relocatable(insns: bytes, names_by_fd: dict[int, str]) -> list[tuple[int, str]] | None:
    """The (instruction index, map name) of every map descriptor in insns; None if one names a map
    that is not ours or another kind of pseudo immediate appears (then nothing is cached)."""
    out = []
    i = 0
    while i < len(insns) // 8:
        code, regs, _, imm = _INSN.unpack_from(insns, i * 8)
        if code == _LD_IMM64:
            src = regs >> 4
            if src == _PSEUDO_MAP_FD:
                if imm not in names_by_fd:
                    return None
                out.append((i, names_by_fd[imm]))
            elif src != 0:
                return None
            i += 2
            continue
        i += 1
    return out


def patched(insns: bytes, relocations: list[tuple[int, str]], fds: dict[str, int]) -> bytes:
    buf = bytearray(insns)
    for index, name in relocations:
        code, regs, off, _ = _INSN.unpack_from(buf, index * 8)
        _INSN.pack_into(buf, index * 8, code, regs, off, fds[name])
    return bytes(buf)


class ProgramCache:
    def __init__(self, directory: Path | None = None) -> None:
        self.dir = directory or default_dir()

    def _trusted(self, path: Path) -> bool:
        st = path.lstat()
        return (st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
                and not stat.S_ISLNK(st.st_mode))

    def read(self, key: str) -> dict[str, object] | None:
        path = self.dir / f"{key}.json"
        try:
            if self.dir.lstat().st_uid != os.geteuid():
                log.debug("not using the BPF program cache %s: another user's", self.dir)
                return None
            if not (self._trusted(self.dir) and self._trusted(path)):
                log.warning("ignoring the BPF program cache %s: not owned by this user or writable by others", path)
                return None
            with open(path, "rb") as f:
                entry = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("ignoring the BPF program cache %s: %s", path, e)
            return None
        return entry if entry.get("format") == FORMAT and entry.get("key") == key else None

    def write(self, key: str, entry: dict[str, object]) -> None:
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self.dir.lstat().st_uid != os.geteuid():
                return
            if not self._trusted(self.dir):
                log.warning("not caching the BPF programs in %s: not owned by this user or writable by others", self.dir)
                return
            tmp = self.dir / f".{key}.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({**entry, "format": FORMAT, "key": key}, f)
            os.replace(tmp, self.dir / f"{key}.json")
            self._prune(keep=key)
        except OSError as e:
            log.debug("not caching the BPF programs in %s: %s", self.dir, e)

    def _prune(self, keep: str, most: int = 8) -> None:
        """Keep the newest few builds (other ports or limits), drop older ones."""
        files = sorted(self.dir.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in files[most:]:
            if old.stem != keep:
                old.unlink(missing_ok=True)


def store(cache: ProgramCache, key: str, bpf: object, names: list[str], maps_by_fd: dict[int, str]) -> None:
    """Cache the instructions of a build bcc has just compiled (and the kernel accepted)."""
    from bcc import libbcc  # type: ignore[import-not-found]

    lib = libbcc.lib
    module = bpf.module  # type: ignore[attr-defined]
    programs = {}
    for name in names:
        raw = name.encode()
        insns = ct.string_at(lib.bpf_function_start(module, raw), lib.bpf_function_size(module, raw))
        relocations = relocatable(insns, maps_by_fd)
        if relocations is None:
            log.debug("not caching the BPF programs: %s holds an immediate that is not one of our maps", name)
            return
        programs[name] = {"insns": insns.hex(), "relocations": relocations}
    cache.write(key, {"license": lib.bpf_module_license(module).decode(),
                      "kern_version": lib.bpf_module_kern_version(module), "programs": programs})


def _lib() -> ct.CDLL:
    from bcc import libbcc

    lib = libbcc.lib
    lib.bcc_prog_load.restype = ct.c_int
    lib.bcc_prog_load.argtypes = [ct.c_int, ct.c_char_p, ct.c_void_p, ct.c_int, ct.c_char_p, ct.c_uint,
                                  ct.c_int, ct.c_char_p, ct.c_uint]
    lib.bcc_create_map.restype = ct.c_int
    lib.bcc_create_map.argtypes = [ct.c_int, ct.c_char_p, ct.c_int, ct.c_int, ct.c_int, ct.c_int]
    return lib  # type: ignore[no-any-return]


def create_prog_array(name: str, entries: int) -> int:
    fd = _lib().bcc_create_map(BPF_MAP_TYPE_PROG_ARRAY, name.encode(), 4, 4, entries, 0)
    if fd < 0:
        raise OSError(ct.get_errno(), f"creating the tail-call array {name}: {os.strerror(ct.get_errno())}")
    return fd


def fill_prog_array(fd: int, slots: dict[int, int]) -> None:
    lib = _lib()
    for slot, prog_fd in slots.items():
        key, value = ct.c_int(slot), ct.c_int(prog_fd)
        if lib.bpf_update_elem(fd, ct.byref(key), ct.byref(value), 0) != 0:
            raise OSError(ct.get_errno(), f"filling tail-call slot {slot}: {os.strerror(ct.get_errno())}")


def load_cached(entry: dict[str, object], fds: dict[str, int], verbose: bool) -> dict[str, Program]:
    """Load every program of a cached build with these map descriptors; OSError if the kernel
    refuses one (the caller compiles instead: the verifier log then comes from bcc). The verifier
    takes most of a start (millions of instructions for the senders): programs are loaded on as
    many threads as there are CPUs (each thread inherits its creator's capabilities; ctypes lets
    go of the GIL in the call)."""
    lib = _lib()
    license = str(entry["license"]).encode()

    def load(item: tuple[str, dict[str, object]]) -> Program:
        name, prog = item
        insns = patched(bytes.fromhex(str(prog["insns"])), [tuple(r) for r in prog["relocations"]], fds)  # type: ignore[attr-defined,misc]
        buf = ct.create_string_buffer(insns)
        log_buf = ct.create_string_buffer(1 << 16) if verbose else None
        fd = lib.bcc_prog_load(BPF_PROG_TYPE_SCHED_CLS, name[:15].encode(), buf, len(insns), license,
                               int(entry["kern_version"]), 1 if verbose else 0, log_buf,  # type: ignore[call-overload]
                               len(log_buf) if log_buf else 0)
        if fd < 0:
            err = ct.get_errno()
            detail = log_buf.value.decode(errors="replace")[-2000:] if log_buf else ""
            raise OSError(err, f"the kernel refused cached program {name}: {os.strerror(err)} {detail}".strip())
        return Program(name, fd)

    items = list(entry["programs"].items())  # type: ignore[attr-defined]
    with ThreadPoolExecutor(max_workers=max(1, min(len(items), len(os.sched_getaffinity(0)))),
                            thread_name_prefix="fileserver-verify") as pool:
        futures = [pool.submit(load, item) for item in items]
    loaded = {f.result().name: f.result() for f in futures if f.exception() is None}
    failed = next((f.exception() for f in futures if f.exception() is not None), None)
    if failed is not None:
        for p in loaded.values():
            os.close(p.fd)
        raise failed
    return {name: loaded[name] for name, _ in items}
