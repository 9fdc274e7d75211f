"""SYN cookies for every connection of the network namespace, for --socketless-close.

The kernel path answers a connection that ends with its first request without any server socket
(bpf/nosock.h) only if the kernel keeps nothing of a handshake: with net.ipv4.tcp_syncookies=2 it
answers every SYN with a cookie and creates the socket only from an ACK carrying a valid one. The
setting belongs to the whole namespace (every listener in it then uses cookies; a client without
TCP timestamps loses window scaling and SACK on such connections, which the cookie cannot carry),
so it is set only when asked for, and the previous value is put back at stop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("fileserver.syncookies")

SYSCTL = Path("/proc/sys/net/ipv4/tcp_syncookies")
ALWAYS = 2  # Documentation/networking/ip-sysctl.rst: "2 - unconditionally generate syncookies"


def read(path: Path = SYSCTL) -> int | None:
    """The namespace's setting, or None if it cannot be read (no SYN cookies in this kernel)."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


@dataclass
class AlwaysCookies:
    """net.ipv4.tcp_syncookies held at 2 while the server runs; restore() puts the old value back."""

    path: Path
    previous: int

    @classmethod
    def set(cls, path: Path = SYSCTL) -> "AlwaysCookies":
        previous = read(path)
        if previous is None:
            raise OSError(f"{path} is not readable: this kernel has no SYN cookies (CONFIG_SYN_COOKIES)")
        if previous != ALWAYS:
            path.write_text(f"{ALWAYS}\n")
            log.info("net.ipv4.tcp_syncookies: %d -> %d for --socketless-close (put back at stop)", previous, ALWAYS)
        return cls(path, previous)

    def active(self) -> bool:
        """Still 2 (someone may have changed it since): the kernel path may keep handshakes."""
        return read(self.path) == ALWAYS

    def restore(self) -> None:
        if self.previous == ALWAYS or read(self.path) != ALWAYS:
            return  # (it was 2 before us, or someone has changed it since: theirs)
        try:
            self.path.write_text(f"{self.previous}\n")
        except OSError as e:
            log.warning("could not put net.ipv4.tcp_syncookies back to %d: %s (sysctl -w net.ipv4.tcp_syncookies=%d)",
                        self.previous, e, self.previous)
