"""Open-file limit: enough descriptors for --max-connections.

systemd starts services with LimitNOFILE=1024:524288 (soft:hard, systemd 240+), so a server that
keeps the soft limit can hold about a thousand connections while --max-connections promises ten
thousand: accept() then fails with EMFILE. Like nginx (worker_rlimit_nofile) and uvicorn's users,
raise the soft limit to the hard one at start; an unprivileged process may, up to the hard limit.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("fileserver")

# Descriptors besides connections: listening and metrics sockets, BPF maps and programs, inotify,
# netlink, the event loop's own, workers' channels, files being sent.
RESERVED_FDS = 256


def raise_open_files(max_connections: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; warn if even that cannot hold
    max_connections. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)  # (the kernel's nr_open default)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, hard, e)
    needed = max_connections + RESERVED_FDS
    if soft < needed:
        log.warning("the open-files limit is %d, so about %d connections fit, not --max-connections %d: raise "
                    "the hard limit (LimitNOFILE= in the systemd unit, ulimit -Hn) or lower --max-connections",
                    soft, max(0, soft - RESERVED_FDS), max_connections)
    return soft
