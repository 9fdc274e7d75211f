"""One connection's segments on both CPUs at once.

The TC programs run wherever a segment is processed: a client's request in the softirq of the CPU
that sent it, the socket's own segments on the CPU its process runs on. A retransmission or a
duplicate (a client's timer on another CPU, a network that duplicates, RPS, several NIC queues)
can then be in fs_ingress on one CPU while the original is on the other. Both see the request in
sync; if both answered, the connection's deltas would count the answer twice and every later
segment would be translated wrongly: the connection hangs.

Here every request of one keep-alive connection arrives twice at the same moment: once from the
client's socket on CPU 0, once as an exact copy from a raw socket in a process spinning on CPU 1.
Requests alternate between kernel hits and misses that userspace answers, so the socket's own
segments (egress) and the way back to the kernel are in the mix. (How many hits the kernel answers
here depends on the scheduler: after a userspace answer, a client this fast often sends its next
request before userspace has said it owes nothing, and that request goes to userspace too.) Timestamps are off in the client
namespace so the copy can be written byte for byte without them. The same load runs against
--no-kernel-cache: TCP itself treats the copies as duplicates.
"""

from __future__ import annotations

import mmap
import os
import socket
import struct
import time
from pathlib import Path

import pytest

from tests.conftest import SITE_FILES
from tests.kernel.kernel_path import assert_no_tcp_trouble
from tests.support import RawClient, Server, body_of, nstat, raw_tcp_socket, require, socket_sequences, tcp_segment

PSH_ACK = 0x18
CONNECTIONS, ROUNDS = 4, 1000

HIT = b"GET /hot.txt HTTP/1.1\r\nHost: x\r\n\r\n"
MISS = b"GET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n"


def spin_and_inject(mm: mmap.mmap, raw: socket.socket, dst: str) -> None:
    """The copier, on CPU 1: wait (spinning, to be on time) for the next segment and send it."""
    os.sched_setaffinity(0, {1})
    last = 0
    while True:
        gen, n = struct.unpack_from("II", mm, 0)
        if gen == last:
            continue
        if n == 0:
            os._exit(0)
        raw.sendto(mm[8 : 8 + n], (dst, 0))
        last = gen


def stuck_report(veth, srv: Server, conn: int, i: int) -> str:  # type: ignore[no-untyped-def]
    """What a connection that stopped getting answers looked like: both sockets and the counters."""
    m = {k: v for k, v in srv.metrics().items() if v and k.startswith("fileserver_kernel")}
    sockets = [ns.run("ss", "-tniH", "state", "all", "( sport = :8080 or dport = :8080 )").stdout for ns in (veth.client, veth.server)]
    return f"no answer on connection {conn}, round {i}\nclient: {sockets[0]}\nserver: {sockets[1]}\n{m}"


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "no-kernel-cache"])
def test_duplicates_on_two_cpus_at_once(veth, site: Path, kernel: bool) -> None:  # type: ignore[no-untyped-def]
    require(len(os.sched_getaffinity(0)) >= 2, "this test needs two CPUs to run one connection on both")
    veth.client.run("sysctl", "-qw", "net.ipv4.tcp_timestamps=0")
    srv = Server(veth.server, site, "--hot-after", "0", "--interface", veth.server_if,
                 *([] if kernel else ["--no-kernel-cache"]), expect_kernel=kernel)
    mm = mmap.mmap(-1, 4096)
    raw = raw_tcp_socket(veth.client)
    affinity = os.sched_getaffinity(0)
    child = 0
    try:
        child = os.fork()
        if child == 0:
            try:
                spin_and_inject(mm, raw, "192.0.2.1")
            finally:
                os._exit(1)
        os.sched_setaffinity(0, {0})
        gen = 0
        for conn in range(CONNECTIONS):  # (fresh ones: a race is likeliest while the kernel answers)
            c = RawClient(veth.client, host="192.0.2.1", timeout=10)
            (src, sport), (dst, dport) = c.sock.getsockname(), c.sock.getpeername()
            seq, ack = socket_sequences(c.sock)
            for i in range(ROUNDS):
                req = MISS if i % 4 == 3 else HIT
                seg = tcp_segment(src, dst, sport, dport, seq, ack, PSH_ACK, req)
                mm[8 : 8 + len(seg)] = seg
                gen += 1
                struct.pack_into("II", mm, 0, gen, len(seg))   # the copier sends it now ...
                c.send(req)                                     # ... and so does the client
                try:
                    resp = c.read_response()
                except TimeoutError:
                    raise AssertionError(stuck_report(veth, srv, conn, i)) from None
                if req is HIT:
                    assert body_of(resp) == SITE_FILES["hot.txt"], (conn, i)
                else:
                    assert resp.startswith(b"HTTP/1.1 404 "), (conn, i, resp[:40])
                seq, ack = (seq + len(req)) & 0xFFFFFFFF, (ack + len(resp)) & 0xFFFFFFFF
            time.sleep(0.1)
            assert socket_sequences(c.sock) == (seq, ack), conn  # every byte and nothing else
            # The connection's state is intact: with the copier quiet, every hit comes from the
            # kernel again (a miss ended the loop; userspace has since said it owes nothing).
            before = srv.kernel_hits()
            for _ in range(5):
                assert body_of(c.get("/hot.txt")) == SITE_FILES["hot.txt"], conn
            assert srv.kernel_hits() - before == (5 if kernel else 0), conn
            c.close()
        m = srv.metrics()
        print("kernel answers", m["fileserver_requests_total{path=kernel}"], "races",
              m.get("fileserver_kernel_races_total", 0))
        # The copy is sent the moment the client is about to send: now and then it overtakes the
        # client's own segment, and the answer to it, which acknowledges the request, reaches the
        # client before its TCP has sent those bytes. Linux answers an ACK of unsent data with a
        # challenge ACK and drops the segment (RFC 5961 section 5.2; tcp_ack), then gets the answer
        # again for its own request: seen once in 4,000 rounds. The kernel path answers at once,
        # so it meets this more often than the socket, whose ACK comes later; a mistake in the
        # kernel's acknowledgements would make one a round.
        assert_no_tcp_trouble(veth.client, duplicates=True, challenge_acks=CONNECTIONS * ROUNDS // 400)
        assert nstat(veth.server).get("TcpExtTCPAbortOnData", 0) == 0
    finally:
        if child:
            struct.pack_into("II", mm, 0, 0xFFFFFFFF, 0)
            os.waitpid(child, 0)
        os.sched_setaffinity(0, affinity)
        raw.close()
        srv.stop()
