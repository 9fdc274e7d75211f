"""Metric names, labels and exact counts after a known number of kernel and user requests."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import SITE_FILES
from tests.support import NetNS, RawClient, split_response


def test_metric_families_and_exact_counts(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory(site, "--hot-after", "0")
    c = RawClient(netns)
    for _ in range(7):
        assert split_response(c.get("/hot.txt"))[2] == SITE_FILES["hot.txt"]
    c.close()
    u = RawClient(netns)
    for i in range(3):  # (three paths: a second 404 of one would come from its negative entry)
        u.get(f"/nope{i}")
    u.close()
    m = srv.metrics()
    assert m["fileserver_requests_total{path=kernel}"] == 7
    assert m["fileserver_requests_total{path=user}"] == 3
    # After a 404 the connection may come back to the kernel (which then misses again) or, if this
    # quick client beats userspace's note that it is idle, stay with userspace: 3 passes either way.
    passes = m["fileserver_kernel_passes_total{reason=miss}"] + m.get("fileserver_kernel_passes_total{reason=user_owned}", 0)
    assert passes == 3 and m["fileserver_kernel_returns_total"] == m["fileserver_kernel_passes_total{reason=miss}"] - 1
    assert m["fileserver_kernel_enabled{reason=}"] == 1
    assert m["fileserver_kernel_cache_entries"] >= 6
    assert m["fileserver_kernel_cache_updates_total{cause=missing}"] == 3
    assert m["fileserver_kernel_cache_updates_total{cause=hot}"] + 3 == m["fileserver_kernel_cache_entries"]
    assert m["fileserver_conn_state_capacity"] == 65536
    assert m["fileserver_user_request_duration_seconds_count"] == 3
    assert m["fileserver_build_info{version=0.1.0}"] == 1
    assert "process_cpu_seconds_total" in m
    for name in ("fileserver_kernel_errors_total{kind=xlate}", "fileserver_kernel_retransmits_total",
                 "fileserver_kernel_translated_segments_total{direction=in}", "fileserver_kernel_checksums_total{mode=offload}",
                 "fileserver_kernel_cache_evictions_total", "fileserver_conn_state_entries"):
        assert name in m, name


def test_response_bytes_are_exact(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory(site, "--hot-after", "0")
    c = RawClient(netns)
    kernel_bytes = sum(len(c.get("/style.css")) for _ in range(3))
    user_resp = c.get("/nope")
    c.close()
    m = srv.metrics()
    assert m["fileserver_response_bytes_total{path=kernel}"] == kernel_bytes
    assert m["fileserver_response_bytes_total{path=user}"] == len(user_resp)


def test_disabled_kernel_reports_reason(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory(site, "--no-kernel-cache", expect_kernel=False)
    m = srv.metrics()
    assert m["fileserver_kernel_enabled{reason=switched off by --no-kernel-cache}"] == 0
    assert m["fileserver_requests_total{path=kernel}"] == 0


def test_grafana_dashboard_uses_real_metrics(netns: NetNS, site: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    import json
    import re

    from tests.support import REPO

    srv = server_factory(site, "--hot-after", "0")
    RawClient(netns).get("/hot.txt")
    exposed = {re.sub(r"\{.*", "", k) for k in srv.metrics()}  # sample names: _total, _bucket, ...
    dash = json.loads((REPO / "deploy" / "grafana" / "fileserver-dashboard.json").read_text())
    assert dash["panels"]
    for panel in dash["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"\b(fileserver_[a-z_]+|process_[a-z_]+)", target["expr"]):
                assert name in exposed, (panel["title"], name)
