"""One output store for every process API: bounded memory, spilled to disk, byte offsets.

Session commands, PTYs and interpreter runs append their output here. Readers address it
by absolute byte offset, so a client that lost its connection resumes exactly where it
stopped: nothing lost, nothing repeated. Memory holds only the most recent `memory_limit`
bytes; the whole stream goes to a spill file when one is given, so old output stays
readable (also after a daemon restart) while the daemon's memory stays flat.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio

DEFAULT_MEMORY_LIMIT = 256 * 1024
READ_CHUNK = 64 * 1024


class OutputStore:
    def __init__(self, spill_path: Path | None = None, memory_limit: int = DEFAULT_MEMORY_LIMIT) -> None:
        self.spill_path = spill_path
        self.memory_limit = memory_limit
        self._tail = bytearray()
        self._tail_start = 0  # absolute offset of self._tail[0]
        self._size = 0
        self._closed = False
        self._changed: anyio.Event | None = anyio.Event()
        self._fd: int | None = None
        if spill_path is not None:
            spill_path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(spill_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            existing = os.fstat(self._fd).st_size
            self._size = self._tail_start = existing

    @classmethod
    def reopen(cls, spill_path: Path) -> "OutputStore":
        """A finished store read back from its spill file (after a daemon restart)."""
        store = cls(spill_path=None)
        store.spill_path = spill_path
        store._size = store._tail_start = spill_path.stat().st_size
        store._closed = True
        store._changed = None
        return store

    # -- writing ---------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Offset just past the last byte written."""
        return self._size

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def first_offset(self) -> int:
        """Earliest offset still readable (0 when spilled to disk)."""
        return 0 if self.spill_path is not None else self._tail_start

    def append(self, data: bytes) -> None:
        if not data:
            return
        if self._closed:
            raise RuntimeError("output store is closed")
        if self._fd is not None:
            # A write to the page cache: microseconds, cheaper inline than a thread hop per chunk.
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        self._tail += data
        self._size += len(data)
        overflow = len(self._tail) - self.memory_limit
        if overflow > 0:
            del self._tail[:overflow]
            self._tail_start += overflow
        self._wake()

    def close(self) -> None:
        """No more output: followers drain what is left and stop."""
        if self._closed:
            return
        self._closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        # Wake followers; then no event at all: nothing changes any more, and a finished
        # store keeps no loop objects (a session may hold thousands of them).
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    def release_memory(self) -> None:
        """Drop the in-memory tail of a finished, spilled store: reads go to the file.

        Keeps a daemon with thousands of finished commands at constant memory.
        """
        if self._closed and self.spill_path is not None:
            self._tail = bytearray()
            self._tail_start = self._size

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
        self._changed = anyio.Event()

    # -- reading ---------------------------------------------------------------------------

    def tail(self, max_bytes: int | None = None) -> tuple[int, bytes]:
        """(offset, bytes) of the most recent output held in memory."""
        if max_bytes is not None and max_bytes <= 0:
            return self._size, b""  # (a [-0:] slice would be the whole tail)
        data = bytes(self._tail if max_bytes is None else self._tail[-max_bytes:])
        return self._size - len(data), data

    async def read(self, offset: int = 0, max_bytes: int = READ_CHUNK) -> tuple[int, bytes]:
        """Up to `max_bytes` from `offset`, as (actual offset, bytes).

        The actual offset is later than asked only when that output is no longer kept.
        """
        offset = max(offset, self.first_offset)
        if offset >= self._size:
            return self._size, b""
        if offset >= self._tail_start:
            start = offset - self._tail_start
            return offset, bytes(self._tail[start : start + max_bytes])
        assert self.spill_path is not None
        path = self.spill_path
        end = min(self._tail_start, offset + max_bytes)

        def read_file() -> bytes:
            with open(path, "rb") as fh:
                fh.seek(offset)
                return fh.read(end - offset)

        return offset, await anyio.to_thread.run_sync(read_file)

    async def read_all(
        self, offset: int = 0, end: int | None = None, chunk_size: int = READ_CHUNK
    ) -> AsyncIterator[tuple[int, bytes]]:
        """Everything written so far (or up to `end`) from `offset`, in chunks, without
        waiting for more."""
        end = self._size if end is None else min(end, self._size)
        while offset < end:
            offset, chunk = await self.read(offset, min(chunk_size, end - offset))
            if not chunk:
                return
            yield offset, chunk
            offset += len(chunk)

    async def follow(self, offset: int = 0, chunk_size: int = READ_CHUNK) -> AsyncIterator[tuple[int, bytes]]:
        """Output from `offset` on, waiting for new bytes, until the store is closed and drained.

        Yields (offset of the chunk, chunk); a consumer that remembers offset+len(chunk)
        can resume later with exactly the next byte.
        """
        while True:
            changed = self._changed
            if offset < self._size:
                offset, chunk = await self.read(offset, chunk_size)
                if chunk:
                    yield offset, chunk
                    offset += len(chunk)
                continue
            if self._closed or changed is None:
                return
            await changed.wait()


async def byte_chunks(store: OutputStore, start: int, end: int) -> AsyncIterator[bytes]:
    """The bytes of `store` in [start, end), without offsets (for encoders that need only bytes)."""
    async for _offset, chunk in store.read_all(start, end):
        yield chunk
