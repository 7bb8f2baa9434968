"""Tool results sized for a model: long text cut with a note saying how to read more,
binary content recognised and refused, session logs cut into pages on line ends.

Pure functions, no I/O: the tools (`mcpserver/sandboxes.py`) decide what the note says.
"""

from __future__ import annotations

import json

# About 5-6k tokens: a model sees enough to act and the context window survives a noisy
# command. Callers that can page (read_file, read_command_logs) use their own limits.
MAX_TEXT = 20_000
# Of a cut output, the head and the tail are kept: the command line and its first error
# are often at the top, the summary and the exit reason at the bottom.
HEAD_SHARE = 0.25
MAX_LINE = 2_000
SNIFF = 8192



def cut(text: str, limit: int = MAX_TEXT, how_to_read_more: str = "") -> str:
    """`text` itself when it fits; else its head and tail with the omitted size in between
    and, at the end, how to get the whole of it."""
    if len(text) <= limit:
        return text
    head = int(limit * HEAD_SHARE)
    tail = limit - head
    omitted = len(text) - head - tail
    note = f"\n[... {omitted} characters omitted ...]\n"
    footer = f"\n[output cut to {limit} of {len(text)} characters"
    footer += f"; {how_to_read_more}]" if how_to_read_more else "]"
    return text[:head] + note + text[-tail:] + footer


def cut_huge(head: str, tail: str, total_bytes: int, limit: int = MAX_TEXT, how_to_read_more: str = "") -> str:
    """Like `cut` for an output of `total_bytes` of which only `head` and `tail` were read."""
    keep_head = int(limit * HEAD_SHARE)
    note = f"\n[... most of {total_bytes} bytes omitted ...]\n"
    footer = f"\n[output cut to its first {keep_head} and last {limit - keep_head} characters"
    footer += f"; {how_to_read_more}]" if how_to_read_more else "]"
    return head[:keep_head] + note + tail[-(limit - keep_head):] + footer


def looks_binary(data: bytes) -> bool:
    """A NUL byte or bytes that are not UTF-8 in the first `SNIFF` bytes (a character cut at
    the end of the sample does not count)."""
    sample = data[:SNIFF]
    if b"\x00" in sample:
        return True
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start < len(sample) - 3  # a multi-byte character cut at the sample's end
    return False


def binary_refusal(path: str, size: int | None, head: bytes) -> str:
    kind = sniff_kind(head)
    sized = f"{size} bytes" if size is not None else "size unknown"
    return (f"{path} is a binary file ({kind}, {sized}); binary content is not returned as text. "
            "Inspect it with execute_command instead (e.g. `file`, `xxd -l 256`, `base64 -w0` of a small file), "
            "or get_file_info for its size and mode.")


_MAGIC = [
    (b"\x89PNG", "PNG image"), (b"\xff\xd8\xff", "JPEG image"), (b"GIF8", "GIF image"), (b"%PDF", "PDF document"),
    (b"PK\x03\x04", "zip archive"), (b"\x1f\x8b", "gzip data"), (b"\x7fELF", "ELF executable"),
    (b"SQLite format 3", "SQLite database"),
]


def sniff_kind(head: bytes) -> str:
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return "not UTF-8 text"


def safe_utf8_end(data: bytes) -> int:
    """The length of the longest prefix of `data` that does not end inside a UTF-8 character."""
    end = len(data)
    back = 0
    while back < 4 and end - back > 0 and (data[end - back - 1] & 0xC0) == 0x80:
        back += 1
    if end - back > 0:
        lead = data[end - back - 1]
        need = 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4 if lead >> 3 == 0b11110 else 1
        if need > back + 1:
            return end - back - 1
    return end


def page_end(raw: bytes, limit: int) -> int:
    """Where a page of at most `limit` bytes of a session log ends: after its last complete
    line when there is one (so a marker is never split), else on a character boundary."""
    if len(raw) <= limit:
        return len(raw)
    newline = raw.rfind(b"\n", 0, limit)
    if newline >= 0:
        return newline + 1
    return safe_utf8_end(raw[:limit])


def clip_line(line: str, limit: int = MAX_LINE) -> str:
    if len(line) <= limit:
        return line
    return line[:limit] + f" [... line cut, {len(line) - limit} more characters]"


class HeadTail:
    """The first `head` and the last `tail` bytes of a stream of any length, and its size:
    what a model is shown of a huge output, read without holding the middle."""

    def __init__(self, head: int, tail: int) -> None:
        self.head_limit, self.tail_limit = head, tail
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > self.tail_limit:
                del self.tail[: len(self.tail) - self.tail_limit]

    @property
    def whole(self) -> bool:
        return self.total == len(self.head) + len(self.tail)


def json_string_head(raw: bytes) -> str:
    """The text of the start of a JSON string's inside (`raw` cut anywhere, even inside a
    character or an escape)."""
    text = raw[: safe_utf8_end(raw)].decode("utf-8", "replace")
    for drop in range(13):  # the longest escape: a surrogate pair, \\uD83D\\uDE00
        try:
            return _clean(json.loads('"' + text[: len(text) - drop] + '"'))
        except ValueError:
            continue
    return ""


def json_string_tail(raw: bytes) -> str:
    """The text of the end of a JSON string's inside (`raw` starts anywhere): decoding
    starts after the first line break, so it never starts inside an escape."""
    start = raw.find(b"\\n")
    while start >= 0 and _escaped(raw, start):
        start = raw.find(b"\\n", start + 1)
    piece = raw[start + 2:] if start >= 0 else raw[min(len(raw), 12):]
    text = piece.decode("utf-8", "replace")
    try:
        return _clean(json.loads('"' + text + '"'))
    except ValueError:
        return ""


def _escaped(raw: bytes, backslash: int) -> bool:
    """Whether the backslash at `backslash` is itself escaped (an odd run of them before it)."""
    run = 0
    while backslash - run - 1 >= 0 and raw[backslash - run - 1] == 0x5C:
        run += 1
    return run % 2 == 1


def _clean(text: str) -> str:
    # A surrogate pair cut in half decodes to a lone surrogate, which UTF-8 cannot carry.
    return text.encode("utf-8", "replace").decode("utf-8")
