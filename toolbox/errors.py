"""Daytona's error model: every error leaves the daemon as an `ErrorResponse`.

The SDK picks its precise exception class (`DaytonaFileNotFoundError`, ...) only when the
body carries both `source: "DAYTONA_DAEMON"` and a known `code`, so every failure path goes
through `DaemonError` and `error_body`.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response

from toolbox.timestamps import iso_utc

log = logging.getLogger("toolbox")

SOURCE = "DAYTONA_DAEMON"


class Code(str, Enum):
    """DaemonErrorCode values (toolbox-api.md §3.2) with their fixed HTTP statuses."""

    BAD_REQUEST = "BAD_REQUEST"
    INVALID_REQUEST_BODY = "INVALID_REQUEST_BODY"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    CONFLICT = "CONFLICT"
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
    GONE = "GONE"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    UNPROCESSABLE_ENTITY = "UNPROCESSABLE_ENTITY"
    INSUFFICIENT_STORAGE = "INSUFFICIENT_STORAGE"
    INTERNAL_SERVER_ERROR = "INTERNAL_SERVER_ERROR"
    BAD_GATEWAY = "BAD_GATEWAY"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    GIT_AUTH_FAILED = "GIT_AUTH_FAILED"
    GIT_REPO_NOT_FOUND = "GIT_REPO_NOT_FOUND"
    GIT_BRANCH_NOT_FOUND = "GIT_BRANCH_NOT_FOUND"
    GIT_BRANCH_EXISTS = "GIT_BRANCH_EXISTS"
    GIT_PUSH_REJECTED = "GIT_PUSH_REJECTED"
    GIT_DIRTY_WORKTREE = "GIT_DIRTY_WORKTREE"
    GIT_MERGE_CONFLICT = "GIT_MERGE_CONFLICT"
    GIT_TRANSPORT_FAILED = "GIT_TRANSPORT_FAILED"
    GIT_REMOTE_REJECTED = "GIT_REMOTE_REJECTED"
    FILE_NOT_FOUND = "FILE_NOT_FOUND"
    FILE_ACCESS_DENIED = "FILE_ACCESS_DENIED"
    INVALID_FILE_PATH = "INVALID_FILE_PATH"
    FILE_READ_FAILED = "FILE_READ_FAILED"
    LSP_SERVER_NOT_INITIALIZED = "LSP_SERVER_NOT_INITIALIZED"
    PROCESS_EXECUTION_TIMEOUT = "PROCESS_EXECUTION_TIMEOUT"
    PROCESS_NOT_FOUND = "PROCESS_NOT_FOUND"
    SESSION_ENDED = "SESSION_ENDED"
    COMMAND_ALREADY_COMPLETED = "COMMAND_ALREADY_COMPLETED"
    A11Y_UNAVAILABLE = "A11Y_UNAVAILABLE"
    RECORDING_STILL_ACTIVE = "RECORDING_STILL_ACTIVE"
    RECORDING_FFMPEG_NOT_FOUND = "RECORDING_FFMPEG_NOT_FOUND"


STATUS_OF: dict[Code, int] = {
    Code.BAD_REQUEST: 400,
    Code.INVALID_REQUEST_BODY: 400,
    Code.UNAUTHORIZED: 401,
    Code.FORBIDDEN: 403,
    Code.NOT_FOUND: 404,
    Code.METHOD_NOT_ALLOWED: 405,
    Code.CONFLICT: 409,
    Code.REQUEST_TIMEOUT: 408,
    Code.GONE: 410,
    Code.PAYLOAD_TOO_LARGE: 413,
    Code.UNPROCESSABLE_ENTITY: 422,
    Code.INSUFFICIENT_STORAGE: 507,
    Code.INTERNAL_SERVER_ERROR: 500,
    Code.BAD_GATEWAY: 502,
    Code.SERVICE_UNAVAILABLE: 503,
    Code.GIT_AUTH_FAILED: 401,
    Code.GIT_REPO_NOT_FOUND: 404,
    Code.GIT_BRANCH_NOT_FOUND: 404,
    Code.GIT_BRANCH_EXISTS: 409,
    Code.GIT_PUSH_REJECTED: 409,
    Code.GIT_DIRTY_WORKTREE: 409,
    Code.GIT_MERGE_CONFLICT: 409,
    Code.GIT_TRANSPORT_FAILED: 502,
    Code.GIT_REMOTE_REJECTED: 422,
    Code.FILE_NOT_FOUND: 404,
    Code.FILE_ACCESS_DENIED: 403,
    Code.INVALID_FILE_PATH: 400,
    Code.FILE_READ_FAILED: 500,
    Code.LSP_SERVER_NOT_INITIALIZED: 400,
    Code.PROCESS_EXECUTION_TIMEOUT: 408,
    Code.PROCESS_NOT_FOUND: 404,
    Code.SESSION_ENDED: 410,
    Code.COMMAND_ALREADY_COMPLETED: 410,
    Code.A11Y_UNAVAILABLE: 503,
    Code.RECORDING_STILL_ACTIVE: 409,
    Code.RECORDING_FFMPEG_NOT_FOUND: 503,
}

# Daytona's typed common errors prefix their message (toolbox-api.md §3.1).
_PREFIX_OF_STATUS = {
    400: "bad request: ",
    401: "unauthorized: ",
    403: "forbidden: ",
    404: "not found: ",
    408: "request timeout: ",
    409: "conflict: ",
    410: "gone: ",
    422: "unprocessable entity: ",
    500: "internal server error: ",
}

_CODE_OF_STATUS = {
    400: Code.BAD_REQUEST,
    401: Code.UNAUTHORIZED,
    403: Code.FORBIDDEN,
    404: Code.NOT_FOUND,
    405: Code.METHOD_NOT_ALLOWED,
    408: Code.REQUEST_TIMEOUT,
    409: Code.CONFLICT,
    410: Code.GONE,
    413: Code.PAYLOAD_TOO_LARGE,
    422: Code.UNPROCESSABLE_ENTITY,
    502: Code.BAD_GATEWAY,
    503: Code.SERVICE_UNAVAILABLE,
    507: Code.INSUFFICIENT_STORAGE,
}


class DaemonError(Exception):
    """An error with a Daytona error code; the HTTP status follows from the code."""

    def __init__(self, code: Code, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or STATUS_OF.get(code, 500)


def bad_request(message: str) -> DaemonError:
    return DaemonError(Code.BAD_REQUEST, message)


def not_found(message: str) -> DaemonError:
    return DaemonError(Code.NOT_FOUND, message)


def conflict(message: str) -> DaemonError:
    return DaemonError(Code.CONFLICT, message)


def from_os_error(exc: OSError, path: str | None = None) -> DaemonError:
    """Map an OS error on a client path to the code the SDK expects."""
    where = path or exc.filename or ""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOENT:
        return DaemonError(Code.FILE_NOT_FOUND, f"file not found: {where}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return DaemonError(Code.FILE_ACCESS_DENIED, f"permission denied: {where}: {reason}")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DaemonError(
            Code.INSUFFICIENT_STORAGE,
            f"no space left on device while writing {where}: free some disk space and retry",
        )
    if exc.errno == errno.EEXIST:
        return DaemonError(Code.CONFLICT, f"already exists: {where}")
    if exc.errno in (errno.ENOTDIR, errno.EISDIR, errno.ENOTEMPTY, errno.EINVAL,
                     errno.ENAMETOOLONG, errno.ELOOP, errno.EXDEV, errno.EBUSY):
        return DaemonError(Code.BAD_REQUEST, f"{reason}: {where}")
    return DaemonError(Code.INTERNAL_SERVER_ERROR, f"{reason}: {where}")


@contextmanager
def os_errors(path: str | None = None) -> Iterator[None]:
    """An `OSError` in the block leaves as the `DaemonError` the SDK expects for `path`
    (as httpx's `map_httpcore_exceptions` maps transport errors); the OS error stays as
    its `__cause__`, which the log shows for a 5xx."""
    try:
        yield
    except OSError as exc:
        raise from_os_error(exc, path) from exc


def error_body(
    status: int, message: str, code: Code | str, path: str, method: str | None = None,
    cause: BaseException | None = None,
) -> dict[str, object]:
    """The ErrorResponse. A 5xx is logged here, where every error reply passes, with `cause`
    (and what caused that): a 500 is a fault of ours (ERROR); the others are the machine's
    or an upstream's (a full disk, a port nobody listens on: WARNING)."""
    if status >= 500:
        log.log(logging.ERROR if status == 500 else logging.WARNING, "%s %s answered %d %s: %s",
                method or "", path, status, code.value if isinstance(code, Code) else code, message,
                exc_info=cause)
    # Only Daytona's generic errors carry the prefix; domain codes have their own wording.
    generic = code in _CODE_OF_STATUS.values() and code != Code.INVALID_REQUEST_BODY
    prefix = _PREFIX_OF_STATUS.get(status, "") if generic else ""
    body: dict[str, object] = {
        "statusCode": status,
        "message": message if message.startswith(prefix) else prefix + message,
        "code": code.value if isinstance(code, Code) else code,
        "source": SOURCE,
        "timestamp": iso_utc(),
        "path": path,
    }
    if method:
        body["method"] = method
    return body


def error_response(conn: HTTPConnection, exc: DaemonError) -> JSONResponse:
    method = conn.scope.get("method")
    return JSONResponse(
        error_body(exc.status, exc.message, exc.code, conn.url.path, method, cause=exc),
        status_code=exc.status,
    )


async def handle_daemon_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DaemonError)
    return error_response(request, exc)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _CODE_OF_STATUS.get(exc.status_code, Code.INTERNAL_SERVER_ERROR)
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route for {request.method} {request.url.path}"
    return error_response(request, DaemonError(code, message, exc.status_code))


async def handle_os_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OSError)
    error = from_os_error(exc)
    error.__cause__ = exc
    return error_response(request, error)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    error = DaemonError(Code.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}")
    error.__cause__ = exc  # logged by error_body with the traceback
    return error_response(request, error)


EXCEPTION_HANDLERS = {
    DaemonError: handle_daemon_error,
    HTTPException: handle_http_exception,
    OSError: handle_os_error,
    Exception: handle_unexpected,
}
