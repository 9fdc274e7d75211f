"""`make soak`: a bounded soak of the kernel path over a real topology, against userspace alone.

Client, router and server in network namespaces (tests/conftest.py's RoutedPath: a 1400-byte hop
on the way, IPv4), a seeded share of the server's data segments dropped at the client and another
share reordered (the test-only dropper queues it again behind the rest of its burst), and a mixed load in rounds: ab with and without keep-alive, wrk, pipelined
h2load (--h1 -m 8), and browser-shaped requests whose bytes are checked. The same soak runs once
with the kernel path and once with --no-kernel-cache; the summary compares them: requests,
failures, wrong bytes, connections left half-closed, resets and the TCP counters that loss
repair moves. Every load is bounded in time (SOAK_SECONDS in all, default 600).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import RoutedPath  # noqa: E402
from tests.kernel.lossy import Dropper  # noqa: E402
from tests.support import NetNS, Server, nstat  # noqa: E402

SECONDS = int(os.environ.get("SOAK_SECONDS", "600"))
LOSS = float(os.environ.get("SOAK_LOSS", "0.015"))
REORDER = float(os.environ.get("SOAK_REORDER", "0.01"))
SEED = int(os.environ.get("SOAK_SEED", "20261202"))
BROWSER_HEADERS = ("Host: x\r\nConnection: keep-alive\r\nAccept: text/html,application/xhtml+xml,*/*;q=0.8\r\n"
                   "Accept-Language: en-US,en;q=0.9\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) soak\r\n")
HALF_CLOSED = ("CLOSE-WAIT", "LAST-ACK", "FIN-WAIT-1", "FIN-WAIT-2", "CLOSING")
NSTAT_KEYS = ("TcpOutRsts", "TcpEstabResets", "TcpRetransSegs", "TcpExtTCPLossProbes", "TcpExtTCPSACKDiscard",
              "TcpExtTCPDSACKIgnoredNoUndo", "TcpExtTCPChallengeACK", "TcpExtPAWSEstab", "TcpInCsumErrors",
              "TcpExtTCPOFOQueue")


def site() -> dict[str, bytes]:
    rng = random.Random(SEED)
    return {"small.txt": b"small file for the soak\n" * 20, "page.html": b"<!doctype html><p>soak</p>\n" * 60,
            "asset.bin": bytes(rng.getrandbits(8) for _ in range(14000))}


def ab(ns: NetNS, url: str, seconds: int, keepalive: bool) -> dict[str, int]:
    r = ns.run("ab", *(["-k"] if keepalive else []), "-q", "-t", str(seconds), "-n", "5000000", "-c", "10", "-s", "10",
               url, check=False, timeout=seconds + 60)
    def field(name: str) -> int:
        m = re.search(rf"{name}:\s+(\d+)", r.stdout)
        return int(m.group(1)) if m else -1
    return {"requests": field("Complete requests"), "failed": field("Failed requests")}


def wrk(ns: NetNS, url: str, seconds: int) -> dict[str, int]:
    r = ns.run("wrk", "-t1", "-c20", f"-d{seconds}s", "--timeout", "10s", url, check=False, timeout=seconds + 60)
    m = re.search(r"(\d+) requests in", r.stdout)
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", r.stdout))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", r.stdout)
    return {"requests": int(m.group(1)) if m else -1, "failed": errors + (int(non2xx.group(1)) if non2xx else 0)}


def h2load(ns: NetNS, url: str, seconds: int) -> dict[str, int]:
    r = ns.run("h2load", "--h1", "-m", "8", "-c", "10", "-D", str(seconds), url, check=False, timeout=seconds + 60)
    m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", r.stdout)
    if not m:
        return {"requests": -1, "failed": -1}
    return {"requests": int(m.group(2)), "failed": int(m.group(3)) + int(m.group(4))}


def browser(ns: NetNS, host: str, files: dict[str, bytes], seconds: int) -> dict[str, int]:
    """Keep-alive connections with browsers' request shapes, every body compared byte for byte."""
    from tests.support import RawClient, body_of

    done = wrong = failed = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            c = RawClient(ns, host=host, timeout=10)
            for name in ("page.html", "small.txt", "asset.bin", "missing.ico"):
                c.send(f"GET /{name} HTTP/1.1\r\n{BROWSER_HEADERS}\r\n".encode())
                body = body_of(c.read_response())
                done += 1
                if name in files and body != files[name]:
                    wrong += 1
            c.close()
        except OSError:
            failed += 1
    return {"requests": done, "failed": failed, "wrong_bytes": wrong}


def soak(kernel: bool, root: Path, files: dict[str, bytes]) -> dict[str, object]:
    path = RoutedPath()
    srv = Server(path.server, root, "--hot-after", "0", "--interface", path.server_if,
                 *([] if kernel else ["--no-kernel-cache"]), expect_kernel=kernel)
    dropper = Dropper(path.client, path.client_if, 8080, share=LOSS, seed=SEED, reorder=REORDER)
    host = RoutedPath.SERVER4
    url = f"http://{host}:8080"
    loads = ["ab -k", "ab", "wrk", "browser"] + (["h2load -m8"] if shutil.which("h2load") else [])
    each = max(5, SECONDS // 2 // (len(loads) * 2))  # half of the time each for both runs, in two rounds
    totals: dict[str, dict[str, int]] = {name: {} for name in loads}
    try:
        for _ in range(2):
            for name in loads:
                if name == "ab -k":
                    got = ab(path.client, f"{url}/asset.bin", each, True)
                elif name == "ab":
                    got = ab(path.client, f"{url}/small.txt", each, False)
                elif name == "wrk":
                    got = wrk(path.client, f"{url}/page.html", each)
                elif name == "h2load -m8":
                    got = h2load(path.client, f"{url}/small.txt", each)
                else:
                    got = browser(path.client, host, files, each)
                for k, v in got.items():
                    totals[name][k] = totals[name].get(k, 0) + v
        time.sleep(3)  # closes finish
        states = path.server.run("ss", "-tanH", "sport", "= :8080").stdout.split()
        client_states = path.client.run("ss", "-tanH", "dport", "= :8080").stdout.split()
        m = srv.metrics()
        return {
            "loads": totals,
            "half_closed": sum(states.count(s) + client_states.count(s) for s in HALF_CLOSED),
            "kernel_answers": int(m.get("fileserver_requests_total{path=kernel}", 0)),
            "user_answers": int(m.get("fileserver_requests_total{path=user}", 0)),
            "dropped": dropper.stats()[1],
            "reordered": dropper.reordered(),
            "server": {k: nstat(path.server).get(k, 0) for k in NSTAT_KEYS},
            "client": {k: nstat(path.client).get(k, 0) for k in NSTAT_KEYS},
        }
    finally:
        dropper.close()
        srv.stop()
        path.close()


def main() -> int:
    files = site()
    root = Path(tempfile.mkdtemp(prefix="fileserver-soak-"))
    for name, data in files.items():
        (root / name).write_bytes(data)
    print(f"soak: {SECONDS} s in all, {LOSS:.1%} of server data segments dropped and {REORDER:.1%} reordered "
          f"(seed {SEED}), router hop 1400",
          flush=True)
    results = {}
    for kernel in (True, False):
        label = "kernel" if kernel else "userspace"
        started = time.monotonic()
        results[label] = soak(kernel, root, files)
        print(f"{label}: {time.monotonic() - started:.0f} s", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    print(f"\n{'load':<12} {'kernel path':>24} {'userspace only':>24}")
    bad = 0
    for name in results["kernel"]["loads"]:  # type: ignore[union-attr]
        row = []
        for label in ("kernel", "userspace"):
            t = results[label]["loads"][name]  # type: ignore[index]
            row.append(f"{t.get('requests', 0)} ok, {t.get('failed', 0)} failed" +
                       (f", {t['wrong_bytes']} wrong" if "wrong_bytes" in t else ""))
            bad += max(0, t.get("failed", 0)) + t.get("wrong_bytes", 0) + (t.get("requests", 0) < 0)
        print(f"{name:<12} {row[0]:>24} {row[1]:>24}")
    for key in ("kernel_answers", "user_answers", "dropped", "reordered", "half_closed"):
        print(f"{key:<12} {results['kernel'][key]:>24} {results['userspace'][key]:>24}")
        if key == "half_closed":
            bad += int(results["kernel"][key]) + int(results["userspace"][key])  # type: ignore[call-overload]
    for side in ("server", "client"):
        for k in NSTAT_KEYS:
            a, b = results["kernel"][side][k], results["userspace"][side][k]  # type: ignore[index]
            print(f"{side} {k:<28} {a:>10} {b:>14}")
    print("\nsoak: " + ("clean" if bad == 0 else f"{bad} failures, wrong bodies or half-closed connections"))
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
