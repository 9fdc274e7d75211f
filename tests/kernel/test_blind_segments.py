"""Blind RST and SYN segments (RFC 5961) on a keep-alive connection the kernel has answered on.

An off-path attacker, or a confused middlebox, sends a reset or a SYN with a sequence number it
guessed. A plain socket ignores it, or answers with a challenge ACK (RFC 5961 sections 3.2 and
4.2), and the connection goes on. The kernel path must survive it the same way: its translation
state may change only on segments the socket itself accepts. Each case runs against
--no-kernel-cache too, on the same topology: the baseline it must match.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from tests.conftest import SITE_FILES
from tests.support import NetNS, RawClient, body_of, inject, nstat, socket_sequences, tcp_segment

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "no-kernel-cache"])
@pytest.mark.parametrize("flags", [RST, RST | ACK, SYN], ids=["rst", "rst-ack", "syn"])
def test_blind_segment_leaves_the_connection_working(netns: NetNS, site: Path, server_factory,  # type: ignore[no-untyped-def]
                                                     kernel: bool, flags: int) -> None:
    srv = server_factory(site, "--hot-after", "0", *([] if kernel else ["--no-kernel-cache"]), expect_kernel=kernel)
    c = RawClient(netns)
    for _ in range(2):
        assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]
    (src, sport), (dst, dport) = c.sock.getsockname(), c.sock.getpeername()
    before = srv.kernel_hits()
    assert before == (2 if kernel else 0)
    rng = random.Random(flags)  # seeded: the same "guesses" every run
    for _ in range(8):
        seq, ack = rng.getrandbits(32), rng.getrandbits(32)
        inject(netns, tcp_segment(src, dst, sport, dport, seq, ack, flags), dst)
    time.sleep(0.3)
    for _ in range(3):  # the connection goes on: same bytes, and still from the kernel
        assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]
    assert srv.kernel_hits() == before + (3 if kernel else 0)
    assert body_of(c.get("/style.css")) == SITE_FILES["style.css"]
    c.close()
    counters = nstat(netns)
    assert counters.get("TcpExtTCPAbortOnData", 0) == 0, counters
    assert counters.get("TcpEstabResets", 0) == 0, counters


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "no-kernel-cache"])
def test_an_old_ack_draws_no_challenge_ack(netns: NetNS, site: Path, server_factory, kernel: bool) -> None:  # type: ignore[no-untyped-def]
    """A client's ACK that arrives late, acknowledging only up to the start of the last answer
    (reordered behind the ACK of that answer). The socket ignores an old ACK within the bytes it
    has had acknowledged, and challenges one older than that (RFC 5961 section 5.2). A socket
    the kernel answered for has had almost nothing acknowledged, so the ACK must reach it as what
    it means in the socket's space (everything before that answer), not translated below it."""
    srv = server_factory(site, "--hot-after", "0", *([] if kernel else ["--no-kernel-cache"]), expect_kernel=kernel)
    c = RawClient(netns)
    for _ in range(3):
        assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]
    last = len(c.get("/style.css"))  # the last answer's length
    (src, sport), (dst, dport) = c.sock.getsockname(), c.sock.getpeername()
    seq, ack = socket_sequences(c.sock)
    before = nstat(netns).get("TcpExtTCPChallengeACK", 0)
    inject(netns, tcp_segment(src, dst, sport, dport, seq, (ack - last) & 0xFFFFFFFF, ACK), dst)
    time.sleep(0.3)
    assert nstat(netns).get("TcpExtTCPChallengeACK", 0) == before
    assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"]
    assert srv.kernel_hits() == (5 if kernel else 0)
    c.close()
