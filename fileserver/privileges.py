"""Drop capabilities once the BPF programs are loaded and attached.

Loading needs CAP_BPF (and CAP_PERFMON for the verifier's privileged pointer rules), attaching needs
CAP_NET_ADMIN. Serving needs none: the maps are used through file descriptors already open. So the
effective set is emptied; the three stay in the permitted set only, raised in one thread for the
moments that need them (a SIGHUP reload that swaps the programs, detaching at stop), unless
--drop-all-capabilities empties the permitted set too.

Capabilities belong to threads on Linux: this must run in every thread that exists at the time
(the caller arranges that: see kernel.start_kernel_path), and threads created later inherit it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
from collections.abc import Iterator

CAP_NET_ADMIN = 12
CAP_PERFMON = 38
CAP_BPF = 39
KERNEL_PATH_CAPS = frozenset({CAP_NET_ADMIN, CAP_PERFMON, CAP_BPF})
CAP_NAMES = {CAP_NET_ADMIN: "CAP_NET_ADMIN", CAP_PERFMON: "CAP_PERFMON", CAP_BPF: "CAP_BPF"}
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAP_LAST = 40


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _get() -> tuple[ctypes.CDLL, _Header, ctypes.Array[_Data]]:
    libc = _libc()
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    return libc, header, data


def _mask(caps: frozenset[int], word: int) -> int:
    return sum(1 << (c - 32 * word) for c in caps if 32 * word <= c < 32 * (word + 1))


def drop_capabilities(keep_permitted: frozenset[int] = KERNEL_PATH_CAPS) -> None:
    """Empty this thread's effective set; keep only `keep_permitted` in the permitted set; clear
    ambient and inheritable; shrink the bounding set when allowed to (needs CAP_SETPCAP, as root)."""
    libc = _libc()
    for cap in range(_CAP_LAST + 1):
        if cap not in keep_permitted and libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            if ctypes.get_errno() not in (errno.EPERM, errno.EINVAL):
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    libc, header, data = _get()
    for word in range(2):
        data[word].effective = 0
        data[word].permitted &= _mask(keep_permitted, word)
        data[word].inheritable = 0
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def missing_effective(caps: frozenset[int] = KERNEL_PATH_CAPS) -> list[str]:
    """Names of the capabilities in `caps` this thread does not have in effect now."""
    _, _, data = _get()
    return [CAP_NAMES[c] for c in sorted(caps) if not data[c // 32].effective >> (c % 32) & 1]


def permitted(caps: frozenset[int] = KERNEL_PATH_CAPS) -> bool:
    """Whether this thread may raise all of `caps`."""
    _, _, data = _get()
    return all(data[c // 32].permitted >> (c % 32) & 1 for c in caps)


@contextlib.contextmanager
def raised(caps: frozenset[int] = KERNEL_PATH_CAPS) -> Iterator[None]:
    """Make `caps` effective in this thread for the duration (they must be permitted)."""
    libc, header, data = _get()
    for word in range(2):
        data[word].effective |= _mask(caps, word) & data[word].permitted
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")
    try:
        yield
    finally:
        libc, header, data = _get()
        for word in range(2):
            data[word].effective = 0
        libc.capset(ctypes.byref(header), data)


def thread_capabilities(pid: int | str = "self", which: str = "CapEff") -> dict[str, int]:
    """One capability set (CapEff, CapPrm, ...) of every thread of a process, by thread id."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith(which + ":"):
                    out[tid] = int(line.split()[1], 16)
    return out
