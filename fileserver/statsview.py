"""`fileserver stats`: a live terminal view of a running server, read from its /stats.json."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import click


class NoServer(click.ClickException):
    pass


def fetch(url: str, timeout: float = 3.0) -> dict[str, Any]:
    target = url.rstrip("/") + "/stats.json"
    try:
        with urllib.request.urlopen(target, timeout=timeout) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise NoServer(
            f"no fileserver answering at {target} ({reason}): is it running, and is --metrics-port the one in --url?"
        ) from None
    except json.JSONDecodeError:
        raise NoServer(f"{target} did not return fileserver stats (wrong --url?)") from None


def _uptime(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 86400}d {s % 86400 // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def render(snap: dict[str, Any], prev: dict[str, Any] | None) -> str:
    req = snap["requests"]
    total = req["kernel"] + req["user"]
    share = 100.0 * req["kernel"] / total if total else 0.0
    lines = []
    k = snap["kernel"]
    mode = "on (" + ", ".join(k["interfaces"]) + ")" if k["enabled"] else f"off: {k['reason']}"
    lines.append(f"fileserver {snap['version']}   uptime {_uptime(snap['uptime_seconds'])}   kernel path {mode}")
    if prev is not None:
        dt = max(snap["time"] - prev["time"], 1e-6)
        rk = (req["kernel"] - prev["requests"]["kernel"]) / dt
        ru = (req["user"] - prev["requests"]["user"]) / dt
        lines.append(f"requests/s   kernel {rk:10.1f}   user {ru:10.1f}   total {rk + ru:10.1f}")
    lines.append(f"requests     kernel {req['kernel']:10d}   user {req['user']:10d}   kernel share {share:5.1f} %")
    c = snap["cache"]
    lines.append(
        f"cache        {c.get('entries', 0)} entries, {c.get('bytes', 0)} bytes, {c.get('evictions', 0)} evictions   "
        f"conn_state {snap['conn_state']['entries']}/{snap['conn_state']['capacity']}"
    )
    if snap["hot_files"]:
        lines.append("")
        lines.append(f"{'hot file':40s} {'kernel hits':>12s} {'bytes':>8s}")
        for row in snap["hot_files"]:
            lines.append(f"{row['path'][:40]:40s} {row['kernel_hits']:12d} {row['bytes']:8d}")
    if snap["passes"]:
        lines.append("")
        lines.append("passed to userspace: " + ", ".join(f"{r} {v}" for r, v in sorted(snap["passes"].items(), key=lambda x: -x[1])))
    if snap["errors"]:
        lines.append("kernel errors: " + ", ".join(f"{r} {v}" for r, v in snap["errors"].items()))
    return "\n".join(lines)


def run(url: str, once: bool, as_json: bool, interval: float) -> None:
    if as_json:
        click.echo(json.dumps(fetch(url), indent=2, sort_keys=True))
        return
    if once:
        click.echo(render(fetch(url), None))
        return
    prev = None
    try:
        while True:
            snap = fetch(url)
            click.echo("\x1b[H\x1b[2J" + render(snap, prev), nl=True)
            prev = snap
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
