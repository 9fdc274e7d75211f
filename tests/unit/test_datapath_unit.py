"""Pure parts of the datapath modules: source expansion, checksums, addresses, the Date slots, the GC's view of sockets."""

from fileserver import abi, bpf_build, conn_gc, conns, maps
from fileserver.http_semantics import DATE_LEN, DATE_OFFSET
from tests.support import rfc1071_sum


def test_expand_source_inlines_each_header_once() -> None:
    text = bpf_build.expand_source(bpf_build.MAIN_SOURCE)
    assert '#include "' not in text
    assert text.count("struct conn_state {") == 1
    assert '#line 1 "parse_http.h"' in text


def test_le_checksum_is_byte_swapped_rfc1071() -> None:
    for data in (b"", b"a", b"hello world", bytes(range(256)) * 3):
        le = maps.internet_checksum_le(data)
        assert ((le >> 8) | (le & 0xFF) << 8) == rfc1071_sum(data)


def test_body_checksum_ignores_date_slot() -> None:
    a = b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nX: y\r\n\r\nbody"
    b = a.replace(b"08:49:37", b"09:00:00")
    assert maps.body_checksum(a) == maps.body_checksum(b)
    assert maps.body_checksum(a) != maps.body_checksum(a.replace(b"body", b"bodx"))


def test_date_slots_match_the_header_blocks() -> None:
    from fileserver.http_semantics import NM_DATE_OFFSET, Validators, http_date, not_modified_head, response_head

    v = Validators(10, 1_700_000_000_000_000_000, 1, 1)
    date = http_date(0)
    slot = b" " + date.encode() + b"\r\n"
    head = response_head("a.txt", v, date)
    nm = not_modified_head(v, date)
    assert head[abi.DATE_SLOT_OFFSET : abi.DATE_SLOT_OFFSET + abi.DATE_SLOT_LEN] == slot
    assert nm[abi.NM_DATE_SLOT_OFFSET : abi.NM_DATE_SLOT_OFFSET + abi.DATE_SLOT_LEN] == slot
    assert NM_DATE_OFFSET == abi.NM_DATE_SLOT_OFFSET + 1
    assert abi.DATE_SLOT_OFFSET == DATE_OFFSET - 1 and abi.DATE_SLOT_LEN == DATE_LEN + 3
    assert abi.DATE_SLOT_OFFSET % 2 == 0 and abi.NM_DATE_SLOT_OFFSET % 2 == 0  # 16-bit aligned for the sums
    # (that these agree with bpf/ is tests/unit/test_abi.py's business)


def test_addresses_take_conn_keys_form() -> None:
    """struct conn_key holds IPv6 addresses, IPv4 ones IPv4-mapped; each address has one spelling
    on both sides (close events and the connection registry)."""
    assert conns.address_bytes("10.0.0.1") == bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 1])
    assert conns.address_bytes("::1") == bytes(15) + b"\x01"
    assert conns.address_text(conns.address_bytes("10.0.0.1")) == "10.0.0.1"
    assert conns.canonical_address("::ffff:127.0.0.1") == "127.0.0.1"
    assert conns.canonical_address("fe80::1%veth0") == "fe80::1"
    assert conns.canonical_address("FD77:0::1") == "fd77::1"


def test_live_connections_reads_ipv4_and_ipv6() -> None:
    """The conn_state GC keeps entries of live sockets: it must read both /proc tables in the form
    the keys hold (a miss here would delete a live connection's translation)."""
    import socket

    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family) as listener:
            listener.bind((host, 0))
            listener.listen()
            port = listener.getsockname()[1]
            with socket.create_connection((host, port)) as client:
                server, _ = listener.accept()
                with server:
                    live = conn_gc.live_connections(port)
                    key = (conns.address_bytes(host), socket.htons(client.getsockname()[1]),
                           conns.address_bytes(host))
                    assert key in live, (host, live)
