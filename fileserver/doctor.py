"""`fileserver doctor`: can the kernel path run here? Each check says what to fix."""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MIN_KERNEL = (5, 10)  # CAP_BPF (5.8), bounded loops, BPF_F_NO_PREALLOC hashes, clsact + direct action


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _kernel() -> Check:
    release = platform.release()
    m = re.match(r"(\d+)\.(\d+)", release)
    version = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    ok = version >= MIN_KERNEL
    return Check("kernel version", ok, release, "" if ok else f"needs Linux {MIN_KERNEL[0]}.{MIN_KERNEL[1]} or newer")


def _btf() -> Check:
    ok = Path("/sys/kernel/btf/vmlinux").exists()
    return Check("BTF", ok, "/sys/kernel/btf/vmlinux" if ok else "missing",
                 "" if ok else "not required by fileserver, but bpftool's richer output needs CONFIG_DEBUG_INFO_BTF")


def _headers() -> Check:
    mod = Path("/lib/modules") / platform.release()
    for sub in ("build", "source"):
        if (mod / sub / "include" / "linux" / "kconfig.h").exists():
            return Check("kernel headers for bcc", True, str((mod / sub).resolve()))
    return Check("kernel headers for bcc", False, f"nothing usable under {mod}",
                 "run `make setup` (installs linux-headers-amd64 and links build/source for bcc)")


def _bcc() -> Check:
    try:
        import bcc  # type: ignore[import-not-found]  # noqa: F401
    except ImportError as e:
        return Check("bcc", False, str(e), "run `make setup` (Debian package python3-bpfcc; the venv needs system site-packages)")
    return Check("bcc", True, "importable")


def _caps() -> Check:
    from fileserver.privileges import missing_effective

    try:
        missing = missing_effective()
    except OSError as e:
        return Check("capabilities", False, f"capget failed: {e}", "")
    if not missing:
        return Check("capabilities", True, "CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON")
    return Check("capabilities", False, "missing " + ", ".join(missing),
                 "run as root, or give the service AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_PERFMON")


def _clsact() -> Check:
    unshare, tc = shutil.which("unshare"), shutil.which("tc")
    if not unshare or not tc:
        return Check("clsact and cls_bpf", False, "unshare or tc missing", "install util-linux and iproute2")
    script = f"{tc} qdisc add dev lo clsact && {tc} filter add dev lo ingress bpf da bytecode '1,6 0 0 0,' 2>&1"
    r = subprocess.run([unshare, "-n", "sh", "-c", script], capture_output=True, text=True, timeout=20)
    if r.returncode == 0:
        return Check("clsact and cls_bpf", True, "a clsact qdisc and a bpf filter attach (in a scratch namespace)")
    return Check("clsact and cls_bpf", False, (r.stdout + r.stderr).strip()[:200],
                 "the kernel needs CONFIG_NET_SCH_INGRESS (clsact) and CONFIG_NET_CLS_BPF")


def _load() -> Check:
    from fileserver.datapath import Datapath, DatapathError

    try:
        dp = Datapath(port=1, cache_entries=16, use_cache=False)  # (a real compile, not the cache's build)
    except DatapathError as e:
        return Check("BPF programs load", False, str(e), "see the message; run the server with -v for the verifier log")
    dp.close()
    return Check("BPF programs load", True, "compiled by bcc and accepted by the verifier")


CHECKS: list[Callable[[], Check]] = [_kernel, _btf, _headers, _bcc, _caps, _clsact, _load]


def run_checks() -> list[Check]:
    results = []
    for check in CHECKS:
        c = check()
        results.append(c)
        if c.name in ("bcc", "capabilities") and not c.ok:
            break  # later checks need these
    return results


def report(results: list[Check]) -> tuple[str, bool]:
    lines = []
    for c in results:
        mark = "ok  " if c.ok else ("warn" if c.name == "BTF" else "FAIL")
        lines.append(f"[{mark}] {c.name}: {c.detail}" + (f"\n       fix: {c.fix}" if c.fix and not c.ok else ""))
    ok = all(c.ok or c.name == "BTF" for c in results) and len(results) == len(CHECKS)
    lines.append("the kernel path can run here" if ok else "the kernel path cannot run here: fix the FAIL lines above")
    return "\n".join(lines), ok


def main() -> int:
    text, ok = report(run_checks())
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
