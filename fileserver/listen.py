"""Listening on a port for an aiohttp runner, with one clear message when that is not possible."""

from __future__ import annotations

import errno

from aiohttp import web

from fileserver.portinfo import who_listens


class StartupError(RuntimeError):
    """The server cannot start; the message says why and what to do."""


async def start_site(runner: web.BaseRunner, host: str, port: int, what: str, backlog: int = 128) -> None:
    """Listen on host:port for runner, with that listen backlog; `what` names the port in the error
    ("HTTP", "metrics")."""
    site = web.TCPSite(runner, host, port, reuse_address=True, backlog=backlog)
    try:
        await site.start()
    except OSError as e:
        raise startup_error(e, what, host, port) from None


def startup_error(e: OSError, what: str, host: str, port: int) -> Exception:
    """The StartupError for a failed bind or listen (or e itself, if it is none we can explain)."""
    if e.errno == errno.EADDRINUSE:
        holder = who_listens(port)
        return StartupError(
            f"{what} port {port} is already in use" + (f" by {holder}" if holder else "") + ": pick another port")
    if e.errno == errno.EACCES:
        return StartupError(f"not allowed to listen on {what} port {port}: use a port above 1023 or run as root")
    if e.errno == errno.EADDRNOTAVAIL:
        return StartupError(f"cannot bind to {host}: no such local address (check --bind)")
    return e
