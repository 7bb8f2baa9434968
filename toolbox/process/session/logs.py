"""Session log framing: stream markers in the raw log and their demultiplexing.

The raw log of a session command is a byte stream in which `\\x01\\x01\\x01` switches to
stdout and `\\x02\\x02\\x02` to stderr (toolbox-api.md §8.1). The daemon writes one marker
in front of every chunk it reads, so output streams as it comes, not per complete line.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

STDOUT = b"\x01\x01\x01"
STDERR = b"\x02\x02\x02"
_MARKERS = {STDOUT: 1, STDERR: 2}


class Demuxer:
    """Splits raw log bytes into (stream, payload) pieces; markers may span chunk borders.

    Bytes before the first marker belong to no stream and are dropped, as the SDK does.
    """

    def __init__(self) -> None:
        self.stream = 0  # 0 = before the first marker, 1 = stdout, 2 = stderr
        self._carry = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        data = self._carry + data
        self._carry = b""
        pieces: list[tuple[int, bytes]] = []
        start = 0
        i = 0
        end = len(data)
        while i < end:
            byte = data[i]
            if byte in (1, 2):
                if i + 3 > end:
                    # Maybe a marker cut by the chunk border: decide with the next chunk.
                    if data[i:] == bytes([byte]) * (end - i):
                        if i > start and self.stream:
                            pieces.append((self.stream, data[start:i]))
                        self._carry = data[i:]
                        return pieces
                elif data[i : i + 3] in _MARKERS:
                    if i > start and self.stream:
                        pieces.append((self.stream, data[start:i]))
                    self.stream = _MARKERS[data[i : i + 3]]
                    i += 3
                    start = i
                    continue
                i += 1
                continue
            # Jump to the next possible marker byte.
            n1 = data.find(b"\x01", i)
            n2 = data.find(b"\x02", i)
            candidates = [n for n in (n1, n2) if n >= 0]
            i = min(candidates) if candidates else end
        if start < end and self.stream:
            pieces.append((self.stream, data[start:end]))
        return pieces

    def flush(self) -> list[tuple[int, bytes]]:
        carry, self._carry = self._carry, b""
        return [(self.stream, carry)] if carry and self.stream else []


async def only_stream(chunks: AsyncIterator[bytes], stream: int) -> AsyncIterator[bytes]:
    """The payload of one stream (1 = stdout, 2 = stderr) out of raw log chunks."""
    demux = Demuxer()
    async for chunk in chunks:
        out = b"".join(p for s, p in demux.feed(chunk) if s == stream)
        if out:
            yield out
    out = b"".join(p for s, p in demux.flush() if s == stream)
    if out:
        yield out
