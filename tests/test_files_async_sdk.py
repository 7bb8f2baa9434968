"""The async SDK's `AsyncFileSystem` transfers: aiohttp multipart uploads, the hand-built
multipart of async-source streams, and aiohttp-parsed bulk downloads (they differ from
the sync client's httpx code paths)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from daytona.common.errors import DaytonaFileNotFoundError
from daytona.common.filesystem import FileDownloadRequest, FileUpload

from tests.helpers import RunningDaemon


async def _chunks(data: bytes, size: int = 100_000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _scenario(daemon: RunningDaemon, tmp_path: Path) -> None:
    from daytona._async.filesystem import AsyncFileSystem
    from daytona.internal.toolbox_api_client_proxy import ToolboxApiClientProxy
    from daytona_toolbox_api_client_async import ApiClient, Configuration, FileSystemApi

    assert daemon.sandbox_id
    api_client = ApiClient(Configuration(host=daemon.url))
    fs = AsyncFileSystem(FileSystemApi(ToolboxApiClientProxy(api_client, daemon.sandbox_id, daemon.url)))
    try:
        await fs.create_folder("async", "755")  # first REST call opens the shared aiohttp session
        local = tmp_path / "local.bin"
        payload = os.urandom(3 * 1024 * 1024 + 5)
        local.write_bytes(payload)
        await fs.upload_files([FileUpload(b"bytes", "async/a.txt"), FileUpload(str(local), "async/b.bin")])
        await fs.upload_file_stream(_chunks(payload), "async/streamed.bin")

        results = await fs.download_files(
            [FileDownloadRequest("async/a.txt"), FileDownloadRequest("async/b.bin", str(tmp_path / "b.bin")),
             FileDownloadRequest("async/missing")]
        )
        assert results[0].result == b"bytes"
        assert (tmp_path / "b.bin").read_bytes() == payload
        assert results[2].error_details is not None and results[2].error_details.code == "FILE_NOT_FOUND"
        streamed = b"".join([chunk async for chunk in await fs.download_file_stream("async/streamed.bin")])
        assert streamed == payload
        with pytest.raises(DaytonaFileNotFoundError):
            await fs.download_file("async/missing")
        assert [f.name for f in await fs.list_files("async")] == ["a.txt", "b.bin", "streamed.bin"]
    finally:
        await api_client.close()


def test_async_filesystem_transfers(daemon: RunningDaemon, tmp_path: Path) -> None:
    asyncio.run(_scenario(daemon, tmp_path))
