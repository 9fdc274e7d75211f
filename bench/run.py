"""`make bench`: the kernel path against its peers, measured in one run, in a network namespace.

Contenders (started in turn, same files, same client settings): fileserver with the kernel path,
fileserver --no-kernel-cache, nginx (1 worker, sendfile, no access log), aiohttp web.static and
python -m http.server. Clients: wrk -t1 -c50 (keep-alive), ab -k, ab without keep-alive (HTTP/1.0,
the seed's own command, at -c50 and -c10), wrk -H 'Connection: close' (a new connection per
request, HTTP/1.1), h2load --h1 -m 8 (8 requests pipelined per connection), and wrk -c1 for
latency. Each measurement is repeated in rounds that
alternate the contenders; ratios are computed pairwise within a round (this machine is noisy) and
reported as median with min-max. Output: bench/results/<date>.json, a Markdown table, PNG plots.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PORT = 18080
METRICS_PORT = 19180
SIZES = {"128B": 128, "1KiB": 1024, "4KiB": 4096, "12KiB": 12 * 1024, "1MiB": 1024 * 1024}
CONTENDERS = ("kernel", "socketless", "user", "user-2w", "nginx", "aiohttp-static", "http.server")
# socketless: fileserver with --socketless-close, measured on the rows of a new connection per
# request only (its keep-alive rows are the kernel contender's; README: what the option costs).
NEW_CONNECTION_CLIENTS = ("ab-c50", "ab-c10", "wrk-close-c50")
# user-2w: userspace alone with --workers 2 (the others run one worker, like nginx here), on the
# keep-alive wrk rows: how far a second worker takes the userspace path on this machine.
WORKERS_CLIENTS = ("wrk-c50",)
FILESERVER_ARGS = {"kernel": [], "socketless": ["--socketless-close"], "user": ["--no-kernel-cache"],
                   "user-2w": ["--no-kernel-cache"]}


# ---- the namespace and the contenders --------------------------------------------------------


class Namespace:
    def __init__(self) -> None:
        self.name = f"fsbench-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.cmd("ip", "link", "set", "lo", "up")

    def argv(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def cmd(self, *cmd: str, timeout: float = 600) -> str:
        return subprocess.run(self.argv(*cmd), check=True, capture_output=True, text=True, timeout=timeout).stdout

    def close(self) -> None:
        for pid in subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True).stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def make_files(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, size in SIZES.items():
        (root / f"{name}.bin").write_bytes(bytes((i * 7) & 0xFF for i in range(size)))


@dataclass
class Running:
    name: str
    proc: subprocess.Popen[bytes]
    tmp: Path

    def pids(self) -> list[int]:
        """The server process and its children (nginx's worker)."""
        out = subprocess.run(["pgrep", "-g", str(os.getpgid(self.proc.pid))], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()] or [self.proc.pid]

    def cpu_seconds(self) -> float:
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        return total

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(os.getpgid(self.proc.pid), signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(os.getpgid(self.proc.pid), signal.SIGKILL)
            self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def start(ns: Namespace, name: str, root: Path) -> Running:
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    py = sys.executable
    if name in FILESERVER_ARGS:
        argv = [py, "-m", "fileserver", "--root", str(root), "--port", str(PORT), "--metrics-port", str(METRICS_PORT),
                "--hot-after", "0", "--workers", "2" if name == "user-2w" else "1", *FILESERVER_ARGS[name]]
    elif name == "nginx":
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        conf = (HERE / "nginx.conf.in").read_text()
        conf = conf.replace("@DIR@", str(tmp)).replace("@PORT@", str(PORT)).replace("@ROOT@", str(root))
        (tmp / "nginx.conf").write_text(conf)
        argv = [nginx, "-c", str(tmp / "nginx.conf"), "-p", str(tmp)]
    elif name == "aiohttp-static":
        argv = [py, str(HERE / "static_app.py"), str(root), str(PORT)]
    elif name == "http.server":
        argv = [py, "-m", "http.server", str(PORT), "--bind", "127.0.0.1", "--directory", str(root)]
    else:
        raise ValueError(name)
    log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen(ns.argv(*argv), stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
    running = Running(name, proc, tmp)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited: {(tmp / 'server.log').read_text()[-2000:]}")
        ok = subprocess.run(ns.argv("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                    f"http://127.0.0.1:{PORT}/128B.bin"), capture_output=True, text=True).stdout
        log_text = (tmp / "server.log").read_text(errors="replace")
        if ok == "200" and (name not in ("kernel", "socketless") or "kernel path: on" in log_text):
            return running
        if name in ("kernel", "socketless") and "kernel path: off" in log_text:
            running.stop()
            raise RuntimeError(f"the kernel path did not start: {log_text[-500:]}")
        time.sleep(0.2)
    running.stop()
    raise RuntimeError(f"{name} did not start")


# ---- clients ------------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(value: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", value)
    assert m, value
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(ns: Namespace, url: str, conns: int, seconds: float, close: bool = False) -> dict[str, float]:
    headers = ["-H", "Connection: close"] if close else []
    return parse_wrk(ns.cmd("wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", *headers, url, timeout=seconds + 60))


def parse_wrk(out: str) -> dict[str, float]:
    """Requests, errors (socket errors and non-2xx/3xx), requests/s and latency from wrk's report."""
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "requests": requests,
        "errors": errors,
        "p50_ms": _ms(lat["50"]) if "50" in lat else float("nan"),
        "p99_ms": _ms(lat["99"]) if "99" in lat else float("nan"),
    }


def ab(ns: Namespace, url: str, n: int, conc: int, keepalive: bool) -> dict[str, float]:
    # -r: a connection the server resets is a failed request, not the end of the run (http.server does)
    args = ["ab", "-q", "-r", "-n", str(n), "-c", str(conc)] + (["-k"] if keepalive else []) + [url]
    out = ns.cmd(*args, timeout=600)
    failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"Non-2xx responses:\s+(\d+)", out)
    return {
        "rps": float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "requests": int(re.search(r"Complete requests:\s+(\d+)", out).group(1)),  # type: ignore[union-attr]
        "errors": failed + (int(m.group(1)) if m else 0),
    }


def h2load(ns: Namespace, url: str, conns: int, pipelined: int, seconds: float) -> dict[str, float]:
    # A server that reads one request per connection (http.server's HTTP/1.0) leaves the other
    # seven unanswered: h2load closes such a connection after 5 s without a byte (-N), counting them
    # as errors, rather than waiting for ever.
    try:
        out = ns.cmd("h2load", "--h1", "-t1", f"-c{conns}", f"-m{pipelined}", f"-D{seconds}", "-N5s", url,
                     timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        return {"rps": 0.0, "requests": 0, "errors": conns * pipelined}
    return parse_h2load(out)


def parse_h2load(out: str) -> dict[str, float]:
    """Requests/s, requests done and errors (failed, errored, timed out, or not 2xx/3xx) from h2load's report."""
    rps = float(re.search(r"finished in \S+, ([\d.]+) req/s", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored, "
                  r"(\d+) timeout", out)
    assert m, out
    codes = re.search(r"status codes: \d+ 2xx, \d+ 3xx, (\d+) 4xx, (\d+) 5xx", out)
    assert codes, out
    succeeded, failed, errored, timeout = (int(x) for x in m.groups())
    return {"rps": rps, "requests": succeeded, "errors": failed + errored + timeout + sum(int(x) for x in codes.groups())}


def softirq_seconds() -> float:
    """System-wide softirq time (on loopback the kernel path's work is charged here)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return int(fields[7]) / os.sysconf("SC_CLK_TCK")


def kernel_share(ns: Namespace) -> dict[str, float]:
    try:
        out = ns.cmd("curl", "-s", f"http://127.0.0.1:{METRICS_PORT}/stats.json")
        snap = json.loads(out)
    except (subprocess.CalledProcessError, json.JSONDecodeError):
        return {}
    return {"kernel": snap["requests"]["kernel"], "user": snap["requests"]["user"]}


def map_memory(pid_list: list[int]) -> int:
    """Kernel memory (memlock, from bpftool) of the BPF maps whose fds these processes hold."""
    ids = set()
    for pid in pid_list:
        with contextlib.suppress(OSError):
            for fdinfo in Path(f"/proc/{pid}/fdinfo").iterdir():
                with contextlib.suppress(OSError):
                    m = re.search(r"^map_id:\s*(\d+)", fdinfo.read_text(), re.M)
                    if m:
                        ids.add(int(m.group(1)))
    try:
        out = subprocess.run(["bpftool", "-j", "map", "show"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return 0
    return sum(int(m.get("bytes_memlock", 0)) for m in json.loads(out) if m.get("id") in ids)


# ---- the plan -----------------------------------------------------------------------------------


@dataclass
class Plan:
    rounds: int
    sizes: list[str]
    wrk_seconds: float
    ab_requests: int
    latency_seconds: float
    contenders: list[str] = field(default_factory=lambda: list(CONTENDERS))


def measurements(plan: Plan) -> Iterator[tuple[str, str, str]]:
    """(client, size, url path) for one contender in one round."""
    for size in plan.sizes:
        path = f"/{size}.bin"
        yield "wrk-c50", size, path
        if size != "1MiB":
            yield "ab-k-c50", size, path
            yield "ab-c50", size, path
            yield "ab-c10", size, path
            yield "wrk-close-c50", size, path
            yield "h2load-m8-c4", size, path
            yield "wrk-c1", size, path


def measure(ns: Namespace, running: Running, plan: Plan, client: str, path: str) -> dict[str, float]:
    url = f"http://127.0.0.1:{PORT}{path}"
    cpu0, soft0, share0 = running.cpu_seconds(), softirq_seconds(), kernel_share(ns)
    if client == "wrk-c50":
        r = wrk(ns, url, 50, plan.wrk_seconds)
    elif client == "wrk-close-c50":
        r = wrk(ns, url, 50, plan.wrk_seconds, close=True)
    elif client == "ab-c10":
        r = ab(ns, url, plan.ab_requests, 10, keepalive=False)
    elif client == "wrk-c1":
        r = wrk(ns, url, 1, plan.latency_seconds)
    elif client == "h2load-m8-c4":
        r = h2load(ns, url, 4, 8, plan.wrk_seconds)
    elif client == "ab-k-c50":
        r = ab(ns, url, plan.ab_requests, 50, keepalive=True)
    else:
        r = ab(ns, url, plan.ab_requests, 50, keepalive=False)
    n = max(r["requests"], 1)
    r["server_cpu_s_per_10k"] = (running.cpu_seconds() - cpu0) * 10_000 / n
    r["softirq_s_per_10k"] = (softirq_seconds() - soft0) * 10_000 / n
    share1 = kernel_share(ns)
    if share0 and share1:
        k = share1["kernel"] - share0["kernel"]
        u = share1["user"] - share0["user"]
        r["kernel_share"] = k / (k + u) if k + u else 0.0
    return r


def run(plan: Plan, out_dir: Path) -> dict[str, object]:
    if os.geteuid() != 0:
        sys.exit("bench: needs root (network namespace, BPF): run `sudo make bench`")
    for tool in ("wrk", "ab", "h2load", "curl", "nginx"):
        if shutil.which(tool) is None and not (tool == "nginx" and Path("/usr/sbin/nginx").exists()):
            sys.exit(f"bench: {tool} is missing: run `make setup`")
    ns = Namespace()
    root = Path(tempfile.mkdtemp(prefix="bench-root-"))
    os.chmod(root, 0o755)
    make_files(root)
    results: list[dict[str, object]] = []
    memory: dict[str, int] = {}
    try:
        for rnd in range(plan.rounds):
            order = plan.contenders if rnd % 2 == 0 else list(reversed(plan.contenders))
            for name in order:
                running = start(ns, name, root)
                try:
                    if name == "kernel":
                        memory["kernel_maps_bytes"] = map_memory(running.pids())
                    for client, size, path in measurements(plan):
                        if name == "socketless" and client not in NEW_CONNECTION_CLIENTS:
                            continue
                        if name == "user-2w" and client not in WORKERS_CLIENTS:
                            continue
                        r = measure(ns, running, plan, client, path)
                        results.append({"round": rnd, "contender": name, "client": client, "size": size, **r})
                        print(f"round {rnd} {name:15s} {client:9s} {size:6s} {r['rps']:10.0f} req/s  errors {r['errors']}",
                              flush=True)
                finally:
                    running.stop()
    finally:
        ns.close()
        shutil.rmtree(root, ignore_errors=True)
    report = summarise(results, plan)
    report["memory"] = memory
    report["machine"] = {"nproc": os.cpu_count(), "kernel": os.uname().release}
    stamp = time.strftime("%Y-%m-%dT%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stamp}.json").write_text(json.dumps({"plan": plan.__dict__, "results": results, **report}, indent=2))
    table = markdown(report)
    (out_dir / f"{stamp}.md").write_text(table)
    print(table)
    plots(results, out_dir, stamp)
    return report


def summarise(results: list[dict[str, object]], plan: Plan) -> dict[str, object]:
    """Median and min-max per (client, size, contender); ratios to nginx and to userspace computed
    within each round, then summarised."""
    cells: dict[str, dict[str, object]] = {}
    for client, size in sorted({(str(r["client"]), str(r["size"])) for r in results}):
        row: dict[str, object] = {}
        for name in plan.contenders:
            rs = [r for r in results if r["client"] == client and r["size"] == size and r["contender"] == name]
            if not rs:
                continue
            rps = [float(r["rps"]) for r in rs]  # type: ignore[arg-type]
            row[name] = {
                "rps_median": statistics.median(rps), "rps_min": min(rps), "rps_max": max(rps),
                "errors": sum(int(r["errors"]) for r in rs),  # type: ignore[call-overload]
                "p50_ms": statistics.median(float(r.get("p50_ms", float("nan"))) for r in rs),  # type: ignore[arg-type]
                "p99_ms": statistics.median(float(r.get("p99_ms", float("nan"))) for r in rs),  # type: ignore[arg-type]
                "server_cpu_s_per_10k": statistics.median(float(r["server_cpu_s_per_10k"]) for r in rs),  # type: ignore[arg-type]
                "softirq_s_per_10k": statistics.median(float(r["softirq_s_per_10k"]) for r in rs),  # type: ignore[arg-type]
            }
            if "kernel_share" in rs[0]:
                row[name]["kernel_share"] = statistics.median(float(r["kernel_share"]) for r in rs)  # type: ignore[index,arg-type]
        for who, base in (("kernel", "nginx"), ("kernel", "user"), ("socketless", "nginx"), ("user-2w", "user")):
            ratios = []
            for rnd in range(plan.rounds):
                k = [r for r in results if r["round"] == rnd and r["client"] == client and r["size"] == size]
                kr = {str(r["contender"]): float(r["rps"]) for r in k}  # type: ignore[arg-type]
                if who in kr and kr.get(base):
                    ratios.append(kr[who] / kr[base])
            if ratios:
                row[f"{who}_vs_{base}"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
        cells[f"{client} {size}"] = row
    by_contender = {name: sum(int(r["errors"]) for r in results if r["contender"] == name)  # type: ignore[call-overload]
                    for name in plan.contenders}
    # The run fails only if fileserver itself failed a request; the baselines' own errors are reported.
    ours = sum(v for k, v in by_contender.items() if k in FILESERVER_ARGS)
    return {"cells": cells, "failures": ours, "failures_by_contender": by_contender}


def markdown(report: dict[str, object]) -> str:
    cells = report["cells"]  # type: ignore[assignment]
    lines = ["| client, file | " + " | ".join(CONTENDERS) + " | kernel ÷ nginx | kernel ÷ user | socketless ÷ nginx |"
             " user-2w ÷ user |",
             "|---|" + "---|" * (len(CONTENDERS) + 4)]
    for key, row in cells.items():  # type: ignore[union-attr]
        parts = []
        for name in CONTENDERS:
            c = row.get(name)
            parts.append(f"{c['rps_median']:,.0f} ({c['rps_min']:,.0f}–{c['rps_max']:,.0f})" if c else "–")
        ratios = []
        for key2 in ("kernel_vs_nginx", "kernel_vs_user", "socketless_vs_nginx", "user-2w_vs_user"):
            r = row.get(key2)
            ratios.append(f"{r['median']:.2f}× ({r['min']:.2f}–{r['max']:.2f})" if r else "–")
        lines.append(f"| {key} | " + " | ".join(parts) + " | " + " | ".join(ratios) + " |")
    lines.append("")
    lines.append("Requests/s, median of the rounds (min–max). Ratios are computed within each round.")
    lat = ["", "| latency wrk -c1 (p50 / p99 ms) | " + " | ".join(CONTENDERS) + " |", "|---|" + "---|" * len(CONTENDERS)]
    cpu = ["", "| CPU s per 10k requests (server process + softirq) | " + " | ".join(CONTENDERS) + " |",
           "|---|" + "---|" * len(CONTENDERS)]
    for key, row in cells.items():  # type: ignore[union-attr]
        if key.startswith("wrk-c1"):
            lat.append(f"| {key} | " + " | ".join(
                f"{row[n]['p50_ms']:.3f} / {row[n]['p99_ms']:.3f}" if n in row else "–" for n in CONTENDERS) + " |")
        if key.startswith(("wrk-c50", "wrk-close-c50", "ab-c10")):   # keep-alive, and a connection per request
            cpu.append(f"| {key} | " + " | ".join(
                f"{row[n]['server_cpu_s_per_10k']:.2f} + {row[n]['softirq_s_per_10k']:.2f}" if n in row else "–"
                for n in CONTENDERS) + " |")
    share = [f"{k}: {v[who]['kernel_share']:.1%}" + (" (socketless)" if who == "socketless" else "")
             for k, v in cells.items() for who in ("kernel", "socketless")  # type: ignore[union-attr]
             if who in v and "kernel_share" in v[who]]
    failures = ", ".join(f"{k} {v}" for k, v in report["failures_by_contender"].items())  # type: ignore[union-attr]
    tail = ["", f"Failed or non-2xx requests (socket errors included), all runs: {failures}.",
            "Kernel share of the kernel contender's requests: " + ", ".join(share) + "."]
    memory = report.get("memory") or {}
    if memory.get("kernel_maps_bytes"):
        tail.append(f"Kernel memory of the kernel contender's BPF maps (bpftool memlock): "
                    f"{memory['kernel_maps_bytes'] / 1024:,.0f} KiB for 5 cached files.")
    return "\n".join(lines + lat + cpu + tail) + "\n"


def plots(results: list[dict[str, object]], out_dir: Path, stamp: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib not installed (pip install -e '.[bench]'); no plots")
        return
    sizes = [s for s in SIZES if any(r["size"] == s and r["client"] == "wrk-c50" for r in results)]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(CONTENDERS)
    def median_rps(name: str, size: str) -> float:
        rps = [float(r["rps"]) for r in results  # type: ignore[arg-type]
               if r["contender"] == name and r["size"] == size and r["client"] == "wrk-c50"]
        return statistics.median(rps) if rps else 0.0

    for i, name in enumerate(CONTENDERS):
        vals = [median_rps(name, s) for s in sizes]
        ax.bar([x + i * width for x in range(len(sizes))], vals, width, label=name)
    ax.set_xticks([x + width * (len(CONTENDERS) - 1) / 2 for x in range(len(sizes))], sizes)
    ax.set_ylabel("requests/s (wrk -t1 -c50, keep-alive)")
    ax.set_title("Throughput by contender and file size")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / f"{stamp}-throughput.png", dpi=110)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    lat = [r for r in results if r["client"] == "wrk-c1"]
    for i, name in enumerate(CONTENDERS):
        rs = [r for r in lat if r["contender"] == name]
        if rs:
            ax.bar([i - 0.2], [statistics.median(float(r["p50_ms"]) for r in rs)], 0.4, color="tab:blue",  # type: ignore[arg-type]
                   label="p50" if i == 0 else None)
            ax.bar([i + 0.2], [statistics.median(float(r["p99_ms"]) for r in rs)], 0.4, color="tab:orange",  # type: ignore[arg-type]
                   label="p99" if i == 0 else None)
    ax.set_xticks(range(len(CONTENDERS)), CONTENDERS)
    ax.set_ylabel("latency (ms), wrk -c1, all sizes")
    ax.set_title("Latency at concurrency 1")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / f"{stamp}-latency.png", dpi=110)


def main() -> None:
    # Ctrl-C or SIGTERM: unwind (stop the contender, delete the namespace) instead of dying mid-run.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench: interrupted"))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a one-minute subset")
    p.add_argument("--smoke", action="store_true", help="seconds-long run that only proves the harness works")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--report", type=Path, help="re-render the table and plots of a saved results JSON")
    args = p.parse_args()
    if args.report:
        saved = json.loads(args.report.read_text())
        plan = Plan(**saved["plan"])
        report = summarise(saved["results"], plan)
        report["memory"] = saved.get("memory", {})
        report["machine"] = saved.get("machine", {})
        saved.update(report)
        args.report.write_text(json.dumps(saved, indent=2))
        table = markdown(report)
        args.report.with_suffix(".md").write_text(table)
        plots(saved["results"], args.report.parent, args.report.stem)
        print(table)
        return
    if args.smoke:
        plan = Plan(rounds=1, sizes=["128B"], wrk_seconds=1, ab_requests=500, latency_seconds=1)
    elif args.quick:
        plan = Plan(rounds=1, sizes=["128B", "4KiB"], wrk_seconds=2, ab_requests=2000, latency_seconds=1)
    else:
        plan = Plan(rounds=3, sizes=list(SIZES), wrk_seconds=5, ab_requests=5000, latency_seconds=3)
    plan.contenders = args.contenders.split(",")
    report = run(plan, args.out)
    sys.exit(1 if report["failures"] else 0)


if __name__ == "__main__":
    main()
