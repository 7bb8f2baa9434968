"""The toolbox's session logs: one byte stream where `\\x01\\x01\\x01` switches to stdout and
`\\x02\\x02\\x02` to stderr (toolbox-api.md §8.5). Frames may split a marker anywhere."""

from __future__ import annotations

from collections.abc import Iterator

STDOUT_MARK = b"\x01\x01\x01"
STDERR_MARK = b"\x02\x02\x02"
STDOUT, STDERR = 1, 2


class Demux:
    """Feed raw chunks, get `(stream, bytes)` pieces; bytes before the first marker are
    dropped, as the SDK drops them. Holds back at most two bytes that might start a marker."""

    def __init__(self) -> None:
        self._pending = b""
        self._stream: int | None = None

    def feed(self, chunk: bytes) -> Iterator[tuple[int, bytes]]:
        data = self._pending + chunk
        self._pending = b""
        start = 0
        while True:
            out_at, err_at = data.find(STDOUT_MARK, start), data.find(STDERR_MARK, start)
            hits = [i for i in (out_at, err_at) if i >= 0]
            if not hits:
                break
            at = min(hits)
            if at > start and self._stream is not None:
                yield self._stream, data[start:at]
            self._stream = STDOUT if at == out_at else STDERR
            start = at + 3
        tail = data[start:]
        keep = 0
        for size in (2, 1):  # a marker's first bytes at the very end: wait for the rest
            if len(tail) >= size and tail[-size:] in (STDOUT_MARK[:size], STDERR_MARK[:size]):
                keep = size
                break
        body = tail[:len(tail) - keep]
        self._pending = tail[len(tail) - keep:]
        if body and self._stream is not None:
            yield self._stream, body

    def flush(self) -> Iterator[tuple[int, bytes]]:
        if self._pending and self._stream is not None:
            yield self._stream, self._pending
        self._pending = b""
