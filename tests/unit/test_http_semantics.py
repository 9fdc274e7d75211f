import pytest

from fileserver import SERVER_NAME
from fileserver.http_semantics import (
    DATE_LEN,
    DATE_OFFSET,
    Precondition,
    RangeUnsatisfiable,
    Validators,
    Variant,
    as_variant,
    content_type,
    evaluate_preconditions,
    http_date,
    if_range_allows,
    parse_range,
    response_head,
)

V = Validators(size=1000, mtime_ns=1_700_000_000_123_456_789, inode=1, device=1)


def test_response_head_exact_bytes() -> None:
    date = "Sun, 06 Nov 1994 08:49:37 GMT"
    head = response_head("a.css", V, date)
    assert head == (
        b"HTTP/1.1 200 OK\r\n"
        b"Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
        + f"Server: {SERVER_NAME}\r\n".encode()
        + b"Content-Type: text/css; charset=utf-8\r\n"
        b"Content-Length: 1000\r\n"
        b"Last-Modified: Tue, 14 Nov 2023 22:13:20 GMT\r\n"
        b'ETag: "' + f"{V.mtime_ns:x}-3e8".encode() + b'"\r\n'
        b"Accept-Ranges: bytes\r\n\r\n"
    )
    assert head[DATE_OFFSET : DATE_OFFSET + DATE_LEN] == date.encode()


def test_date_is_fixed_width() -> None:
    for ts in (0, 1_000_000_000, 4_000_000_000):
        assert len(http_date(ts)) == DATE_LEN


@pytest.mark.parametrize(
    "name, ctype",
    [("a.html", "text/html; charset=utf-8"), ("a.css", "text/css; charset=utf-8"),
     ("a.js", "text/javascript; charset=utf-8"), ("a.json", "application/json; charset=utf-8"),
     ("a.svg", "image/svg+xml; charset=utf-8"), ("a.png", "image/png"), ("a.woff2", "font/woff2"),
     ("noext", "application/octet-stream"), ("a.tar.gz", "application/octet-stream")],
)
def test_content_type(name: str, ctype: str) -> None:
    assert content_type(name) == ctype


@pytest.mark.parametrize(
    "headers, result",
    [
        ({}, Precondition.PROCEED),
        ({"If-None-Match": V.etag}, Precondition.NOT_MODIFIED),
        ({"If-None-Match": f'"x", W/{V.etag}'}, Precondition.NOT_MODIFIED),
        ({"If-None-Match": "*"}, Precondition.NOT_MODIFIED),
        ({"If-None-Match": '"other"'}, Precondition.PROCEED),
        ({"If-Modified-Since": http_date(V.mtime_ns / 1e9)}, Precondition.NOT_MODIFIED),
        ({"If-Modified-Since": http_date(V.mtime_ns / 1e9 - 10)}, Precondition.PROCEED),
        ({"If-Modified-Since": "garbage"}, Precondition.PROCEED),
        # If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2 step 3 before 4)
        ({"If-None-Match": '"other"', "If-Modified-Since": http_date(V.mtime_ns / 1e9)}, Precondition.PROCEED),
        ({"If-Match": '"other"'}, Precondition.FAILED),
        ({"If-Match": V.etag}, Precondition.PROCEED),
        ({"If-Unmodified-Since": http_date(V.mtime_ns / 1e9 - 10)}, Precondition.FAILED),
    ],
)
def test_preconditions(headers: dict[str, str], result: Precondition) -> None:
    assert evaluate_preconditions(headers, V) is result


@pytest.mark.parametrize(
    "value, span",
    [
        (None, None),
        ("bytes=0-99", (0, 100)),
        ("bytes=900-", (900, 1000)),
        ("bytes=-100", (900, 1000)),
        ("bytes=-5000", (0, 1000)),
        ("bytes=990-2000", (990, 1000)),
        ("bytes=0-0", (0, 1)),
        ("bytes=0-1,5-6", None),  # several ranges: answered with the whole file
        ("items=0-1", None),
        ("bytes=abc", None),
        ("bytes=5-1", None),
    ],
)
def test_parse_range(value: str | None, span: tuple[int, int] | None) -> None:
    assert parse_range(value, 1000) == span


@pytest.mark.parametrize("value", ["bytes=1000-", "bytes=5000-6000", "bytes=-0"])
def test_unsatisfiable(value: str) -> None:
    with pytest.raises(RangeUnsatisfiable):
        parse_range(value, 1000)


def test_if_range() -> None:
    assert if_range_allows(None, V)
    assert if_range_allows(V.etag, V)
    assert not if_range_allows('"old"', V)
    assert if_range_allows(http_date(V.mtime_ns / 1e9), V)
    assert not if_range_allows(http_date(V.mtime_ns / 1e9 - 5), V)


def test_variants_change_only_the_version_digit_and_one_line() -> None:
    head = response_head("a.txt", V, "Sun, 06 Nov 1994 08:49:37 GMT")
    response = head + b"body"
    close11 = as_variant(response, len(head), Variant.CLOSE11)
    assert close11 == head[:-2] + b"Connection: close\r\n\r\nbody"
    assert as_variant(response, len(head), Variant.CLOSE10) == b"HTTP/1.0" + response[8:]
    keep10 = as_variant(response, len(head), Variant.KEEP10)
    assert keep10 == b"HTTP/1.0" + head[8:-2] + b"Connection: keep-alive\r\n\r\nbody"
    assert as_variant(response, len(head), Variant.KEEP11) == response
    assert as_variant(head, len(head), Variant.CLOSE11) == close11[:-4]  # a HEAD answer: the head alone
