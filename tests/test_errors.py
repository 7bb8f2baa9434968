"""The daemon's one error model: OS errors map to the SDK's codes, 5xx are logged with their cause.

The wire shape through a real daemon is covered by test_files_http.py (ENOSPC is a 507,
EACCES a 403, ...); these pin the mapping and the logging on an in-process app.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from toolbox.errors import EXCEPTION_HANDLERS, Code, DaemonError, bad_request, os_errors


@pytest.mark.parametrize(
    ("number", "code", "status"),
    [
        (errno.ENOENT, Code.FILE_NOT_FOUND, 404),
        (errno.EACCES, Code.FILE_ACCESS_DENIED, 403),
        (errno.EROFS, Code.FILE_ACCESS_DENIED, 403),
        (errno.ENOSPC, Code.INSUFFICIENT_STORAGE, 507),
        (errno.EDQUOT, Code.INSUFFICIENT_STORAGE, 507),
        (errno.EEXIST, Code.CONFLICT, 409),
        (errno.ENOTDIR, Code.BAD_REQUEST, 400),
        (errno.ELOOP, Code.BAD_REQUEST, 400),
        (errno.EIO, Code.INTERNAL_SERVER_ERROR, 500),
    ],
)
def test_os_errors_maps_errno_to_code_and_status(number: int, code: Code, status: int) -> None:
    with pytest.raises(DaemonError) as caught, os_errors("dir/file.txt"):
        raise OSError(number, os.strerror(number), "/abs/host/path")
    assert (caught.value.code, caught.value.status) == (code, status)
    assert "dir/file.txt" in caught.value.message and "/abs/host/path" not in caught.value.message
    assert isinstance(caught.value.__cause__, OSError)  # kept for the log


def test_os_errors_lets_other_errors_through() -> None:
    with pytest.raises(DaemonError) as caught, os_errors("x"):
        raise bad_request("not a directory: x")
    assert caught.value.code == Code.BAD_REQUEST and caught.value.__cause__ is None
    with pytest.raises(ValueError), os_errors("x"):
        raise ValueError("not ours to map")


def test_os_errors_without_path_uses_the_errors_filename() -> None:
    with pytest.raises(DaemonError) as caught, os_errors():
        os.stat("/nonexistent-i17/file")
    assert caught.value.message == "file not found: /nonexistent-i17/file"


def _app() -> Starlette:
    async def full(request: Request) -> Response:
        with os_errors("tiny/keep.txt"):
            raise OSError(errno.ENOSPC, "No space left on device")

    async def missing(request: Request) -> Response:
        with os_errors("nope.txt"):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory")

    async def bug(request: Request) -> Response:
        raise KeyError("a bug of ours")

    routes = [Route("/full", full), Route("/missing", missing), Route("/bug", bug)]
    return Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS)


def _get(path: str) -> httpx.Response:
    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(_app(), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://toolbox") as client:
            return await client.get(path)

    return asyncio.run(get())


def test_5xx_is_logged_with_its_cause_and_4xx_is_not(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="toolbox"):
        missing = _get("/missing")
        assert caplog.records == []
        full = _get("/full")
        [record] = caplog.records
        assert record.levelno == logging.WARNING  # the machine's problem, not a bug of ours
        assert "OSError: [Errno 28] No space left on device" in caplog.text  # the cause
        caplog.clear()
        bug = _get("/bug")
        [bug_record] = caplog.records
    assert missing.status_code == 404 and missing.json()["code"] == "FILE_NOT_FOUND"
    body = full.json()
    assert full.status_code == 507 and body["code"] == "INSUFFICIENT_STORAGE"
    assert body["source"] == "DAYTONA_DAEMON" and body["path"] == "/full" and body["method"] == "GET"
    assert "no space left on device while writing tiny/keep.txt" in body["message"]
    assert "GET /full answered 507 INSUFFICIENT_STORAGE" in record.getMessage()
    assert bug.status_code == 500 and bug.json()["message"] == "KeyError: 'a bug of ours'"
    assert bug_record.levelno == logging.ERROR
    assert bug_record.exc_info is not None and "a bug of ours" in bug_record.getMessage()


def test_timestamps_are_utc_with_a_z() -> None:
    from datetime import datetime, timedelta, timezone

    from toolbox.timestamps import iso_utc

    assert iso_utc(0) == "1970-01-01T00:00:00Z"
    assert iso_utc(1.5) == "1970-01-01T00:00:01.500000Z"
    two_hours_east = datetime(2026, 12, 2, 16, 0, tzinfo=timezone(timedelta(hours=2)))
    assert iso_utc(two_hours_east) == "2026-12-02T14:00:00Z"
    assert iso_utc().endswith("Z") and "+" not in iso_utc()
