"""The benchmark harness works end to end (numbers parsed, JSON written, no failures).

No timing is asserted here: performance is reported by `make bench`, never checked by tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support import REPO, require_root, require_tool


def test_bench_smoke(tmp_path: Path) -> None:
    require_root()
    for tool in ("wrk", "ab", "h2load", "nginx"):
        require_tool(tool)
    r = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--contenders", "kernel,socketless,user,nginx",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    reports = list(tmp_path.glob("*.json"))
    assert len(reports) == 1
    data = json.loads(reports[0].read_text())
    assert data["failures"] == 0
    clients = {(x["contender"], x["client"]) for x in data["results"]}
    assert {("kernel", "wrk-c50"), ("user", "ab-c50"), ("nginx", "wrk-c1"), ("kernel", "ab-c10"),
            ("nginx", "wrk-close-c50")} <= clients
    assert "kernel_vs_nginx" in data["cells"]["wrk-close-c50 128B"]
    # --socketless-close: the rows of a new connection per request only, every one from the kernel
    assert {c for n, c in clients if n == "socketless"} == {"ab-c50", "ab-c10", "wrk-close-c50"}
    assert data["cells"]["ab-c10 128B"]["socketless"]["kernel_share"] == 1.0
    assert "socketless_vs_nginx" in data["cells"]["ab-c10 128B"]
    for x in data["results"]:
        assert x["rps"] > 0 and x["requests"] > 0
    kernel_wrk = data["cells"]["wrk-c50 128B"]["kernel"]
    assert kernel_wrk["kernel_share"] == 1.0  # every wrk request to the kernel contender came from the kernel
    assert "kernel_vs_nginx" in data["cells"]["wrk-c50 128B"]
    # h2load --h1 -m 8: pipelined requests, answered by the kernel in batches
    assert data["cells"]["h2load-m8-c4 128B"]["kernel"]["kernel_share"] >= 0.9
    assert "kernel_vs_nginx" in data["cells"]["h2load-m8-c4 128B"]
    assert data["memory"]["kernel_maps_bytes"] > 0
    assert list(tmp_path.glob("*.md"))
