"""Compiling and loading the BPF programs with bcc.

bcc compiles bpf/main.c at start-up. Its local includes are expanded into one text first (bcc
rewrites map calls like `file_cache.lookup()` only in its main file), with #line markers so compiler
and verifier messages name the real file and line. Settings are passed as -D flags. Compiler and
verifier output goes to fd 2: it is captured, summarised in one line, and logged in full with -v.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fileserver.abi import (
    ENTRY_PROGRAMS,
    PARSE_PROGRAMS,
    PROG_PARSE0,
    PROG_SEG0,
    PROG_SEND0,
    SEG_PROGRAMS,
    SEND_PROGRAMS,
    SHARED_MAPS,
)
from fileserver.config import ParserLimits

log = logging.getLogger("fileserver.datapath")

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"
MAIN_SOURCE = BPF_DIR / "main.c"
MAPS_SOURCE = BPF_DIR / "maps.c"
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


def rename_maps(text: str, suffix: str) -> str:
    """The source with every shared map's name suffixed (a second map set in one process)."""
    if not suffix:
        return text
    return re.sub(r"\b(" + "|".join(SHARED_MAPS) + r")\b", rf"\1{suffix}", text)


def cflags(port: int, cache_entries: int, connections: int, limits: ParserLimits) -> list[str]:
    """The -D settings (bpf/consts.h's tunables) and the warnings bcc's rewriting provokes."""
    return [
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


def compile_text(text: str, flags: list[str], verbose: bool) -> object:
    """A bcc BPF object for C source text (its maps created, no program loaded yet)."""
    from bcc import BPF  # type: ignore[import-not-found]

    with _captured_stderr(witness=True) as out:
        try:
            bpf = BPF(text=text.encode(), cflags=flags)
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


def load_programs(bpf: object, verbose: bool) -> dict[str, object]:
    """Load every program of a build into the kernel and fill its tail-call array `progs`."""
    from bcc import BPF

    programs: dict[str, object] = {}
    for name in (*ENTRY_PROGRAMS, *PARSE_PROGRAMS, *SEND_PROGRAMS, *SEG_PROGRAMS):
        with _captured_stderr() as out:
            try:
                programs[name] = bpf.load_func(name.encode(), BPF.SCHED_CLS)  # type: ignore[attr-defined]
                err = None
            except Exception as e:
                err = e
        if err is not None:
            detail = out[0] if out else ""
            if verbose:
                log.debug("verifier log for %s:\n%s", name, detail)
            if isinstance(err, PermissionError) or "Operation not permitted" in str(err):
                raise DatapathError("not allowed to load BPF programs: run as root (or with CAP_BPF and CAP_NET_ADMIN)")
            raise DatapathError(f"the kernel rejected BPF program {name}: {_summarise(detail)} (run with -v for the verifier log)")
    progs = bpf[b"progs"]  # type: ignore[index]
    for slot, fd in tail_call_slots(programs).items():
        progs[ct.c_int(slot)] = ct.c_int(fd)
    return programs


def tail_call_slots(programs: dict[str, object]) -> dict[int, int]:
    """Each tail-call target's slot in `progs` and its program's descriptor (PROG_* in consts.h)."""
    return {first + i: programs[name].fd  # type: ignore[attr-defined]
            for first, names in ((PROG_PARSE0, PARSE_PROGRAMS), (PROG_SEND0, SEND_PROGRAMS), (PROG_SEG0, SEG_PROGRAMS))
            for i, name in enumerate(names)}
