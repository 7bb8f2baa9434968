"""Upload orchestration: a body's chunks into `PendingFile`s or a `MultipartUpload`.

Knows nothing about HTTP: the routes hand in the body as an async iterable of chunks (and
the multipart boundary, if any) and turn the outcome into a reply. A client that leaves
mid-body shows up as whatever that iterable raises, after every temp file is removed.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc

from toolbox.errors import Code, DaemonError
from toolbox.files.journal import UploadJournal
from toolbox.files.upload import MultipartUpload, PendingFile, upload_errors
from toolbox.tasks import sole_exception

T = TypeVar("T")

# Upload bodies are handed to the worker thread in batches of about this size: one thread
# hop per MiB instead of one per 64 KiB network read.
UPLOAD_BATCH = 1024 * 1024


async def _run(func: Callable[..., T], *args: Any) -> T:
    return await anyio.to_thread.run_sync(func, *args)


async def pump(chunks: AsyncIterable[bytes], feed: Callable[[bytes], None], finish: Callable[[bytes], None],
               abort: Callable[[], None]) -> None:
    """Stream `chunks` into `feed` in ~1 MiB batches, each in a worker thread.

    While one batch is written the next is being received (uvicorn stops reading the
    socket while its body buffer is full, so doing both in turn halves throughput); at
    most two batches are in memory. Whatever goes wrong (client gone, cancelled, bad
    data), `abort` runs so no temp file is left behind.
    """
    sender, receiver = anyio.create_memory_object_stream[bytes](0)
    failures: list[Exception] = []
    batch: list[bytes] = []

    async def write_batches(group: anyio.abc.TaskGroup) -> None:
        async with receiver:
            async for data in receiver:
                try:
                    await _run(feed, data)
                except Exception as exc:
                    failures.append(exc)
                    group.cancel_scope.cancel()
                    return

    try:
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(write_batches, group)
                async with sender:
                    size = 0
                    async for chunk in chunks:
                        if not chunk:
                            continue
                        batch.append(chunk)
                        size += len(chunk)
                        if size >= UPLOAD_BATCH:
                            data = b"".join(batch)
                            batch.clear()
                            size = 0
                            await sender.send(data)
        except BaseExceptionGroup as group_error:
            # Only the receiving side raises here (the writer keeps its errors): the
            # client leaving or a bad body, which callers catch by type.
            raise sole_exception(group_error) from None
        if failures:
            raise failures[0]
        await _run(finish, b"".join(batch))
    except BaseException:
        with anyio.CancelScope(shield=True):
            await _run(abort)
        raise


@dataclass
class BulkOutcome:
    """What a bulk upload stored (`files`) and what it could not (`failures`)."""

    files: list[dict[str, object]] = field(default_factory=list)
    failures: list[DaemonError] = field(default_factory=list)


class UploadService:
    def __init__(self, resolve: Callable[[str], Path], journal: UploadJournal) -> None:
        self.resolve = resolve
        self.journal = journal

    async def bulk(self, boundary: bytes, chunks: AsyncIterable[bytes]) -> BulkOutcome:
        """Every `files[i].path`/`files[i].file` pair of a multipart body; one bad file
        does not stop the others, a malformed body stops all of them."""
        receiver = MultipartUpload(boundary, self.resolve, journal=self.journal)
        try:
            await pump(chunks, receiver.feed, receiver.finish, receiver.abort)
        except DaemonError as exc:
            return BulkOutcome(receiver.files, [exc])
        return BulkOutcome(receiver.files, receiver.failures)

    async def single(self, destination: Path, raw: str, boundary: bytes | None, chunks: AsyncIterable[bytes]) -> None:
        """One file: the whole body, or the part named `file` of a multipart body."""
        if boundary is None:
            await self._raw(destination, raw, chunks)
            return
        receiver = MultipartUpload(boundary, self.resolve, fixed=(destination, raw), journal=self.journal)
        await pump(chunks, receiver.feed, receiver.finish, receiver.abort)
        if receiver.failures:
            raise receiver.failures[0]
        if not receiver.files:
            raise DaemonError(Code.BAD_REQUEST, "multipart body has no part named 'file'")

    async def _raw(self, destination: Path, raw: str, chunks: AsyncIterable[bytes]) -> None:
        with upload_errors(raw):
            target = await _run(PendingFile, destination, self.journal)

        def write(data: bytes) -> None:
            with upload_errors(raw):  # pump() then aborts: the temp file goes
                target.write(data)

        def finish(data: bytes) -> None:
            with upload_errors(raw):
                target.write(data)
                target.commit()

        await pump(chunks, write, finish, target.abort)
