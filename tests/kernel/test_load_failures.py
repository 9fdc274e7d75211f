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


def test_compiler_that_ends_the_process_still_says_why() -> None:
    """LLVM calls exit(1) on some backend errors (here the BPF stack limit) while stderr is
    captured: the reason must still reach stderr."""
    import subprocess
    import sys

    require_root()
    code = (
        "from fileserver.bpf_build import compile_text\n"
        "compile_text('int f(struct __sk_buff *skb) { volatile char big[1024]; "
        "for (int i = 0; i < 1024; i++) big[i] = i; return big[skb->len & 1023]; }', [], False)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "the BPF compiler ended the process" in out.stderr and "stack limit" in out.stderr, out.stderr
    # ... and a process that compiles fine exits cleanly (the witness leaves no trace)
    ok = subprocess.run([sys.executable, "-c", "from fileserver.bpf_build import compile_text\n"
                         "compile_text('int f(struct __sk_buff *skb) { return 0; }', [], False)\n"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
