"""The maps outlive program builds (reload) and map sets stay apart (in-process, real BPF)."""

from __future__ import annotations

from fileserver.config import ParserLimits
from fileserver.datapath import Datapath
from fileserver.maps import BodyRef
from tests.support import require_root


def test_rebuild_shares_maps_and_map_sets_stay_apart() -> None:
    require_root()
    first = Datapath(8080, 16)
    try:
        first.maps.set_ref("/a", BodyRef(1, 0, 0, 0))
        rebuilt = first.rebuilt(ParserLimits(100, 100, 10))
        first.close()  # the old build goes; the maps stay with the new one
        assert set(rebuilt.maps.entry_hits()) == {"/a"}
        other = Datapath(8081, 16)  # a second set in this process: its own maps (and names)
        try:
            assert other.maps.entry_hits() == {}
            other.maps.set_ref("/b", BodyRef(2, 0, 0, 0))
            assert set(rebuilt.maps.entry_hits()) == {"/a"}
        finally:
            other.close()
        rebuilt.close()
    finally:
        first.close()
