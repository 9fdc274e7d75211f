"""The Python mirrors of bpf/reasons.h must agree with the C enums, name for name."""

import re

from fileserver.reasons import KernelError, PassReason
from tests.support import REPO


def c_enum(name: str) -> list[str]:
    text = (REPO / "bpf" / "reasons.h").read_text()
    body = re.search(r"enum %s \{(.*?)\};" % name, text, re.S)
    assert body, name
    return [m.group(1) for m in re.finditer(r"^\s*([A-Z_0-9]+)\b", body.group(1), re.M)]


def test_pass_reasons_match() -> None:
    names = c_enum("pass_reason")
    assert names[-1] == "NR_PASS_REASONS"
    assert [n.removeprefix("PASS_") for n in names[:-1]] == [r.name for r in PassReason]


def test_kernel_errors_match() -> None:
    names = c_enum("kernel_error")
    assert names[-1] == "NR_KERNEL_ERRORS"
    assert [n.removeprefix("ERR_") for n in names[:-1]] == [e.name for e in KernelError]
