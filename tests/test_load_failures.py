"""Load failures are reported as one reason (and the details under -v), never as a crash."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fileserver.datapath import Datapath, DatapathError
from tests.support import require_root

REJECTED = r"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
BPF_ARRAY(small, __u32, 4);
int fs_ingress(struct __sk_buff *skb)
{
    int k = 0;
    __u32 *v = small.lookup(&k);
    if (!v)
        return TC_ACT_UNSPEC;
    return v[skb->len];    /* unbounded index: the verifier must refuse this */
}
"""


def test_verifier_rejection_is_one_clear_reason(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    require_root()
    src = tmp_path / "main.c"
    src.write_text(REJECTED)
    caplog.set_level(logging.DEBUG, logger="fileserver")
    with pytest.raises(DatapathError) as e:
        Datapath(8080, 16, verbose=True, source=src)
    msg = str(e.value)
    assert "rejected BPF program fs_ingress" in msg and "\n" not in msg
    assert "-v" in msg
    assert any("verifier log for fs_ingress" in r.message and "R" in r.message for r in caplog.records)


def test_compile_failure_is_one_clear_reason(tmp_path: Path) -> None:
    require_root()
    src = tmp_path / "main.c"
    src.write_text("this is not C;\n")
    with pytest.raises(DatapathError) as e:
        Datapath(8080, 16, source=src)
    assert "could not compile" in str(e.value) and "make setup" in str(e.value)
