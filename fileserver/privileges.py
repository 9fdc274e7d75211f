"""Drop capabilities once the BPF programs are loaded and attached.

Loading needs CAP_BPF (and CAP_PERFMON for the verifier's privileged pointer rules), attaching needs
CAP_NET_ADMIN. Serving needs none: the maps are used through file descriptors already open. We keep
CAP_NET_ADMIN alone, so that a clean stop can remove our TC filters itself.

Capabilities belong to threads on Linux: this must run in every thread that exists at the time
(the caller arranges that: see kernel.start_kernel_path), and threads created later inherit it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

CAP_NET_ADMIN = 12
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


def drop_capabilities(keep: frozenset[int] = frozenset({CAP_NET_ADMIN})) -> None:
    """Keep only `keep` in this thread's effective and permitted sets; clear ambient and
    inheritable; shrink the bounding set when allowed to (needs CAP_SETPCAP, as root)."""
    libc = _libc()
    for cap in range(_CAP_LAST + 1):
        if cap not in keep and libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            if ctypes.get_errno() not in (errno.EPERM, errno.EINVAL):
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    for word in range(2):
        mask = sum(1 << (c - 32 * word) for c in keep if 32 * word <= c < 32 * (word + 1))
        data[word].effective &= mask
        data[word].permitted &= mask
        data[word].inheritable = 0
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def effective_capabilities(pid: int | str = "self") -> dict[str, int]:
    """CapEff of every thread of a process (for tests and `fileserver doctor`-style checks)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    out[tid] = int(line.split()[1], 16)
    return out
