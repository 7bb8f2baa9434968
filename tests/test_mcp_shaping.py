"""The MCP tools' result shaping (mcpserver/shaping.py): cuts, binary sniffing, log pages
and the head and tail of a JSON string read without its middle. Pure functions, so tested
directly, on every cut position where a cut can go wrong."""

from __future__ import annotations

import json

from mcpserver import shaping


def test_cut_keeps_head_and_tail_and_says_how_to_read_more() -> None:
    text = "".join(f"{n}\n" for n in range(100_000))
    out = shaping.cut(text, limit=1000, how_to_read_more="use read_file")
    assert out.startswith("0\n1\n2\n") and "99999\n" in out and out.endswith("use read_file]")
    assert "characters omitted" in out and len(out) < 1200
    assert shaping.cut("short") == "short"


def test_binary_is_recognised_and_text_is_not() -> None:
    assert shaping.looks_binary(b"\x89PNG\r\n\x1a\n\x00\x00")
    assert shaping.looks_binary(b"ok\xff\xfe then more text after it")
    assert not shaping.looks_binary("héllo wörld ✓\n".encode() * 100)
    # A character cut by the sniffing window is still text.
    assert not shaping.looks_binary(("a" * (shaping.SNIFF - 1) + "é").encode())
    assert "PNG image" in shaping.binary_refusal("x.png", 10, b"\x89PNG\r\n")


def test_safe_utf8_end_never_splits_a_character() -> None:
    data = "aé✓😀".encode()
    for end in range(len(data) + 1):
        cut = data[:end][: shaping.safe_utf8_end(data[:end])]
        cut.decode("utf-8")  # raises if a character was split
        assert data.startswith(cut) and len(cut) >= end - 3


def test_pages_of_a_session_log_split_into_streams() -> None:
    from client.streams import STDERR_MARK, STDOUT_MARK
    from mcpserver.sandboxes import _demux

    log = b"".join(STDOUT_MARK + f"out {n}\n".encode() + STDERR_MARK + f"err {n}\n".encode() for n in range(50))
    assert _demux(log) == ("".join(f"out {n}\n" for n in range(50)), "".join(f"err {n}\n" for n in range(50)))
    # Pages end on line ends, so joined they are the log and each starts on a marker.
    position, pages = 0, []
    while position < len(log):
        end = shaping.page_end(log[position:], 100)
        assert 0 < end <= 100
        pages.append(log[position:position + end])
        position += end
    assert b"".join(pages) == log and all(p.startswith((STDOUT_MARK, STDERR_MARK)) for p in pages)
    # A page cut inside one huge line goes on as the stream it was in (stdout when unknown).
    assert _demux(b"rest of a long line\n" + STDERR_MARK + b"e\n") == ("rest of a long line\n", "e\n")


def test_json_string_head_and_tail_at_every_cut() -> None:
    text = "line one\n\"quoted\" back\\slash tab\t é ✓ 😀 \x01 end\nsecond line\nthird ✓ line\n" * 3
    inside = json.dumps(text, ensure_ascii=False)[1:-1].encode()
    longest = 0
    for cut in range(len(inside) + 1):
        head = shaping.json_string_head(inside[:cut])
        assert text.startswith(head), (cut, head)
        assert len(head) >= longest  # a longer prefix never decodes to less
        longest = len(head)
        tail = shaping.json_string_tail(inside[cut:])
        assert text.endswith(tail), (cut, tail)
    assert shaping.json_string_head(inside) == text
    # The tail starts after a line break once there is one, so it loses at most a line.
    assert shaping.json_string_tail(inside[5:]).startswith("\"quoted\"")


def test_head_tail_holds_only_its_limits() -> None:
    kept = shaping.HeadTail(10, 10)
    for n in range(1000):
        kept.feed(f"{n:04d}".encode())
    assert kept.head == b"0000000100"
    assert bytes(kept.tail) == b"".join(f"{n:04d}".encode() for n in range(1000))[-10:]
    assert len(kept.tail) == 10 and kept.total == 4000 and not kept.whole
    small = shaping.HeadTail(10, 10)
    small.feed(b"0123456789abcde")
    assert small.whole and bytes(small.head + small.tail) == b"0123456789abcde"
