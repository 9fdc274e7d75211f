"""The kernel cache's bookkeeping of bodies, with a fake datapath (no BPF needed)."""

from __future__ import annotations

import time
from pathlib import Path

from fileserver.config import Config
from fileserver.http_semantics import Validators
from fileserver.kcache import RESEND_GRACE_S, KernelCache
from fileserver.resolve import Resolver
from fileserver.snapshot import Snapshot


class FakeDatapath:
    """Body maps with a capacity per class, as the BPF hash maps have."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.bodies: dict[int, set[int]] = {0: set()}
        self.refs: dict[str, int] = {}

    def size_class(self, length: int) -> int | None:
        return 0

    def put_body(self, cls: int, body_id: int, *_: object) -> None:
        if len(self.bodies[cls]) >= self.capacity:
            raise Exception("Could not update table: Argument list too long")  # what bcc raises
        self.bodies[cls].add(body_id)

    def delete_body(self, cls: int, body_id: int) -> None:
        self.bodies[cls].discard(body_id)

    def set_ref(self, url_path: str, body_id: int, cls: int) -> None:
        self.refs[url_path] = body_id

    def delete_ref(self, url_path: str) -> None:
        self.refs.pop(url_path, None)

    def entry_hits(self) -> dict[str, tuple[int, int]]:
        return {}


def snapshot(tmp_path: Path, body: bytes, mtime_ns: int) -> Snapshot:
    return Snapshot(tmp_path / "a.txt", Validators(len(body), mtime_ns, 1, 1), body)


def test_replaced_bodies_are_kept_for_resends_then_deleted(tmp_path: Path) -> None:
    dp = FakeDatapath(capacity=8)
    cache = KernelCache(dp, Resolver(tmp_path), None, Config(root=tmp_path), lambda: "Sun, 22 Nov 2026 00:00:00 GMT")  # type: ignore[arg-type]
    assert cache._push("/a.txt", snapshot(tmp_path, b"one", 1), "hot")
    first = dp.refs["/a.txt"]
    assert cache._push("/a.txt", snapshot(tmp_path, b"two", 2), "modified")
    second = dp.refs["/a.txt"]
    assert second != first and dp.bodies[0] == {first, second}  # the old one stays for a while
    assert cache.reap(time.monotonic()) == 0
    assert cache.reap(time.monotonic() + RESEND_GRACE_S + 1) == 1
    assert dp.bodies[0] == {second}
    cache.drop("/a.txt")
    assert dp.refs == {} and dp.bodies[0] == {second}  # dropped: also kept for the grace period
    cache.reap(time.monotonic() + RESEND_GRACE_S + 1)
    assert dp.bodies[0] == set()


def test_retired_bodies_give_way_when_the_map_is_full(tmp_path: Path) -> None:
    dp = FakeDatapath(capacity=2)
    cache = KernelCache(dp, Resolver(tmp_path), None, Config(root=tmp_path), lambda: "Sun, 22 Nov 2026 00:00:00 GMT")  # type: ignore[arg-type]
    for version in range(1, 6):
        assert cache._push("/a.txt", snapshot(tmp_path, b"v%d" % version, version), "modified")
        assert len(dp.bodies[0]) <= 2 and dp.refs["/a.txt"] in dp.bodies[0]
