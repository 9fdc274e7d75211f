"""The kernel cache's bookkeeping of bodies, with a fake datapath (no BPF needed)."""

from __future__ import annotations

import time
from pathlib import Path

from fileserver.abi import AE_FORMS
from fileserver.config import Config
from fileserver.encoding import Offer
from fileserver.http_semantics import Validators
from fileserver.kcache import RESEND_GRACE_S, KernelCache
from fileserver.maps import BodyRef
from fileserver.resolve import Resolver
from fileserver.snapshot import Snapshot


class FakeDatapath:
    """Body maps with a capacity per class, as the BPF hash maps have."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.bodies: dict[int, set[int]] = {0: set()}
        self.refs: dict[str, int] = {}
        self.forms: dict[str, list[tuple[int, int]]] = {}

    def size_class(self, length: int) -> int | None:
        return 0

    def put_body(self, cls: int, body_id: int, *_: object) -> None:
        if len(self.bodies[cls]) >= self.capacity:
            raise Exception("Could not update table: Argument list too long")  # what bcc raises
        self.bodies[cls].add(body_id)

    def delete_body(self, cls: int, body_id: int) -> None:
        self.bodies[cls].discard(body_id)

    def set_ref(self, url_path: str, plain: BodyRef, by_form: list[BodyRef] | None = None,
                any_encoding: bool = False) -> None:
        self.refs[url_path] = plain.id
        self.forms[url_path] = [(r.id, r.cls) for r in by_form or []]

    def delete_ref(self, url_path: str) -> None:
        self.refs.pop(url_path, None)

    def entry_hits(self) -> dict[str, tuple[int, int]]:
        return {}


def snapshot(tmp_path: Path, body: bytes, mtime_ns: int, coding: str = "") -> dict[str, Snapshot]:
    return {coding: Snapshot(tmp_path / "a.txt", Validators(len(body), mtime_ns, 1, 1, coding=coding), body)}


def reps(snaps: dict[str, Snapshot]) -> tuple[dict[str, Snapshot], dict[str, str]]:
    """As KernelCache._representations gives them: each coding called for is sent as itself."""
    return snaps, {c: c for c in snaps}


def plain(tmp_path: Path) -> Offer:
    return Offer(tmp_path / "a.txt", (), False)


def test_replaced_bodies_are_kept_for_resends_then_deleted(tmp_path: Path) -> None:
    dp = FakeDatapath(capacity=8)
    cache = KernelCache(dp, Resolver(tmp_path), None, Config(root=tmp_path), lambda: "Sun, 22 Nov 2026 00:00:00 GMT")  # type: ignore[arg-type]
    assert cache._push("/a.txt", plain(tmp_path), reps(snapshot(tmp_path, b"one", 1)), "hot")
    first = dp.refs["/a.txt"]
    assert cache._push("/a.txt", plain(tmp_path), reps(snapshot(tmp_path, b"two", 2)), "modified")
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
        assert cache._push("/a.txt", plain(tmp_path), reps(snapshot(tmp_path, b"v%d" % version, version)), "modified")
        assert len(dp.bodies[0]) <= 2 and dp.refs["/a.txt"] in dp.bodies[0]


def test_each_accept_encoding_form_points_at_the_representation_userspace_picks(tmp_path: Path) -> None:
    dp = FakeDatapath(capacity=8)
    cache = KernelCache(dp, Resolver(tmp_path), None, Config(root=tmp_path), lambda: "Sun, 22 Nov 2026 00:00:00 GMT")  # type: ignore[arg-type]
    choice = Offer(tmp_path / "a.txt", ("br", "gzip"), True)
    snaps = {**snapshot(tmp_path, b"plain", 1), **snapshot(tmp_path, b"b", 1, "br"), **snapshot(tmp_path, b"g", 1, "gzip")}
    assert cache._push("/a.txt", choice, reps(snaps), "hot")
    entry = cache.entries["/a.txt"]
    ids = {"": entry.body_id, **{c: i for c, (_, i) in zip(("br", "gzip"), entry.coded)}}
    assert dp.refs["/a.txt"] == ids[""] and dp.bodies[0] == set(ids.values())
    picked = {form: next(c for c, i in ids.items() if i == body_id) for form, (body_id, _) in zip(AE_FORMS, dp.forms["/a.txt"])}
    assert picked["gzip, deflate, br, zstd"] == "br" and picked["gzip, deflate"] == "gzip"
    assert picked["identity"] == "" and picked["deflate, gzip, br"] == "br"
    cache.drop("/a.txt")
    cache.reap(time.monotonic() + RESEND_GRACE_S + 1)
    assert dp.bodies[0] == set()   # all three retired


def test_a_userspace_answer_says_which_refresh_it_calls_for_and_pushes_nothing(tmp_path: Path) -> None:
    """refresh_due runs on the event loop for every userspace answer of a small file: it counts
    and names the refresh due, and leaves the refresh (reading, compressing) to its caller's
    refresher thread."""
    dp = FakeDatapath(capacity=8)
    cache = KernelCache(dp, Resolver(tmp_path), None, Config(root=tmp_path, hot_after=2),  # type: ignore[arg-type]
                        lambda: "Sun, 22 Nov 2026 00:00:00 GMT")
    snap = snapshot(tmp_path, b"one", 1)[""]
    assert cache.refresh_due("/a.txt", snap) is None  # one answer of the two that make it hot
    assert cache.refresh_due("/a.txt", snap) == "hot"
    assert dp.refs == {}
    assert cache._push("/a.txt", plain(tmp_path), reps(snapshot(tmp_path, b"one", 1)), "hot")
    assert cache.refresh_due("/a.txt", snap) is None  # this version is cached
    assert cache.refresh_due("/a.txt", snapshot(tmp_path, b"two", 2)[""]) == "modified"
