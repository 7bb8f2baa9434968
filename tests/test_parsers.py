"""The pure parsers the servers trust with client bytes: session log markers, Range headers,
Cookie headers and preview hosts. Each is fed well-formed, edge-case and malformed input.
"""

from __future__ import annotations

import pytest

from proxy.auth import COOKIE_HTTP, COOKIE_HTTPS, split_cookies
from proxy.hosts import PreviewHost, parse_preview_host
from toolbox.files.download import ByteRange, RangeNotSatisfiable, parse_range
from toolbox.process.session.logs import STDERR, STDOUT, Demuxer

# -- Demuxer.feed -----------------------------------------------------------------------------


def _streams(pieces: list[tuple[int, bytes]]) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for stream, payload in pieces:
        assert stream in (1, 2) and payload, pieces  # never an empty piece or stream 0
        out[stream] = out.get(stream, b"") + payload
    return out


def _demux_in_chunks(data: bytes, size: int) -> dict[int, bytes]:
    demux = Demuxer()
    pieces: list[tuple[int, bytes]] = []
    for i in range(0, len(data), size):
        pieces += demux.feed(data[i : i + size])
    return _streams(pieces + demux.flush())


def test_demuxer_splits_stdout_and_stderr_in_order() -> None:
    pieces = Demuxer().feed(STDOUT + b"out 1\n" + STDERR + b"err\n" + STDOUT + b"out 2\n")
    assert pieces == [(1, b"out 1\n"), (2, b"err\n"), (1, b"out 2\n")]


def test_demuxer_drops_bytes_before_the_first_marker() -> None:
    assert Demuxer().feed(b"noise" + STDERR + b"e") == [(2, b"e")]
    assert Demuxer().feed(b"no marker at all") == []
    assert Demuxer().feed(b"") == []


def test_demuxer_joins_a_marker_cut_by_the_chunk_border() -> None:
    demux = Demuxer()
    assert demux.feed(STDOUT + b"ab\x02") == [(1, b"ab")]
    assert demux.feed(b"\x02\x02err") == [(2, b"err")]
    demux = Demuxer()
    assert demux.feed(b"\x01\x01") == []
    assert demux.feed(b"\x01out") == [(1, b"out")]


def test_demuxer_keeps_marker_bytes_that_are_not_a_marker() -> None:
    data = STDOUT + b"a\x01b\x02\x02c\x01\x02\x01d"
    assert _streams(Demuxer().feed(data)) == {1: b"a\x01b\x02\x02c\x01\x02\x01d"}
    demux = Demuxer()
    assert demux.feed(STDOUT + b"x\x01") == [(1, b"x")]  # maybe a marker: held back
    assert demux.feed(b"y") == [(1, b"\x01y")]  # it was not


def test_demuxer_flush_returns_a_held_back_tail() -> None:
    demux = Demuxer()
    assert demux.feed(STDERR + b"x\x02\x02") == [(2, b"x")]
    assert demux.flush() == [(2, b"\x02\x02")]
    assert demux.flush() == []
    before_any_marker = Demuxer()
    assert before_any_marker.feed(b"\x01") == []
    assert before_any_marker.flush() == []  # belongs to no stream


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7, 1000])
def test_demuxer_gives_the_same_streams_for_any_chunking(size: int) -> None:
    data = (b"lost" + STDOUT + b"o\x01\x011" + STDERR + STDERR + b"e\x02" + STDOUT + b"\x01o2" + STDERR + b"\x02")
    assert _demux_in_chunks(data, size) == {1: b"o\x01\x011\x01o2", 2: b"e\x02\x02"}


# -- parse_range -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-99", 1000, ByteRange(0, 99)),
        ("bytes=500-", 1000, ByteRange(500, 999)),
        ("bytes=-100", 1000, ByteRange(900, 999)),
        ("bytes=-2000", 1000, ByteRange(0, 999)),  # a suffix longer than the file: all of it
        ("bytes=0-5000", 1000, ByteRange(0, 999)),  # an end past the file is clipped
        ("bytes=999-999", 1000, ByteRange(999, 999)),
        ("  Bytes = 1 - 2 ", 1000, ByteRange(1, 2)),
    ],
)
def test_parse_range_satisfiable(header: str, size: int, expected: ByteRange) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    "header",
    ["", "bytes=", "bytes=-", "bytes=5-1", "bytes=0-1,5-6", "items=0-1", "bytes=a-b", "bytes=1.5-2", "bytes 0-1",
     "bytes=\u0661-2"],
)
def test_parse_range_ignores_malformed_headers(header: str) -> None:
    assert parse_range(header, 1000) is None  # the whole file is served (RFC 9110 allows it)


@pytest.mark.parametrize(("header", "size"), [("bytes=1000-", 1000), ("bytes=5000-6000", 1000), ("bytes=-0", 1000),
                                              ("bytes=-5", 0), ("bytes=0-0", 0)])
def test_parse_range_unsatisfiable_is_a_416_with_the_size(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as caught:
        parse_range(header, size)
    assert caught.value.status == 416 and caught.value.size == size
    assert f"for a file of {size} bytes" in caught.value.message


# -- split_cookies -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "ours", "rest"),
    [
        (b"a=1; sbx-preview-auth=tok; b=2", {COOKIE_HTTP: "tok"}, b"a=1; b=2"),
        (b"sbx-preview-auth=tok", {COOKIE_HTTP: "tok"}, None),
        (b"__Host-sbx-preview-auth=s; sbx-preview-auth=p", {COOKIE_HTTPS: "s", COOKIE_HTTP: "p"}, None),
        (b"", {}, None),
        (b";; ;  a=1;", {}, b"a=1"),
        (b"  a=1  ;b=2", {}, b"a=1; b=2"),
        (b"sbx-preview-auth=a=b", {COOKIE_HTTP: "a=b"}, None),  # only the first '=' separates
        (b"sbx-preview-auth", {COOKIE_HTTP: ""}, None),
        (b"flag; x=", {}, b"flag; x="),
        (b"SBX-PREVIEW-AUTH=x", {}, b"SBX-PREVIEW-AUTH=x"),  # cookie names are case-sensitive
        (b"sbx-preview-auth=1; sbx-preview-auth=2", {COOKIE_HTTP: "2"}, None),
        (b"sbx-preview-auth=\xff\x00", {COOKIE_HTTP: "\xff\x00"}, None),  # any byte, no crash
        (b"=v; a=1", {}, b"a=1"),  # a nameless pair is dropped
    ],
)
def test_split_cookies(header: bytes, ours: dict[str, str], rest: bytes | None) -> None:
    assert split_cookies(header) == (ours, rest)


# -- parse_preview_host ------------------------------------------------------------------------

DOMAIN = "preview.example"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("3000-abc123.preview.example", PreviewHost(3000, "abc123", "3000-abc123.preview.example")),
        ("3000-abc.preview.example:8080", PreviewHost(3000, "abc", "3000-abc.preview.example:8080")),
        ("8080-ABC.Preview.EXAMPLE", PreviewHost(8080, "abc", "8080-abc.preview.example")),
        ("1-abc.preview.example.", PreviewHost(1, "abc", "1-abc.preview.example.")),
        (" 65535-a-b-c.preview.example ", PreviewHost(65535, "a-b-c", "65535-a-b-c.preview.example")),
        ("1-" + "a" * 61 + ".preview.example", PreviewHost(1, "a" * 61, "1-" + "a" * 61 + ".preview.example")),
    ],
)
def test_parse_preview_host_accepts(host: str, expected: PreviewHost) -> None:
    assert parse_preview_host(host, DOMAIN) == expected


@pytest.mark.parametrize(
    "host",
    [
        "",
        "preview.example",
        ".preview.example",
        "3000.preview.example",  # no sandbox id
        "-abc.preview.example",  # no port
        "abc-def.preview.example",
        "0-abc.preview.example",
        "65536-abc.preview.example",
        "123456-abc.preview.example",
        "3000--abc.preview.example",
        "3000-abc-.preview.example",
        "3000-a_b.preview.example",
        "3000-\u00e4bc.preview.example",
        "3000-abc.evil.preview.example",  # one label only
        "3000-abc.preview.example.evil",
        "3000-abcpreview.example",
        "3000-abc.otherpreview.example",
        "10-" + "a" * 61 + ".preview.example",  # the label is 64 characters
        "3000-abc.preview.example:80:80",
        "[::1]:8080",
    ],
)
def test_parse_preview_host_refuses(host: str) -> None:
    assert parse_preview_host(host, DOMAIN) is None


def test_a_bounded_dict_forgets_everything_at_its_limit_but_not_on_an_update() -> None:
    from proxy.caches import BoundedDict

    cache: BoundedDict[str, int] = BoundedDict(3)
    for i, key in enumerate("abc"):
        cache[key] = i
    cache["a"] = 10  # a key it holds: an update, nothing forgotten
    assert cache == {"a": 10, "b": 1, "c": 2}
    cache["d"] = 3  # a fourth key: everything else goes
    assert cache == {"d": 3}
