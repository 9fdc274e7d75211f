"""Every test here needs root: real BPF programs, TC filters and network namespaces (marked
`kernel`, so that `-m "not kernel"` runs the unit tests alone)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.kernel)
