"""Daytona's API error envelope.

Every failure leaves the control plane as
``{statusCode, error, message, path, timestamp, source: "DAYTONA_API", code}``; the SDK
maps the status to its exception class (400 `DaytonaValidationError`, 404
`DaytonaNotFoundError`, 409 `DaytonaConflictError`, ...) and shows `message`.
Services raise `ApiError` (they know nothing of HTTP beyond the status number).
"""

from __future__ import annotations

import logging
import time
from http import HTTPStatus

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response

from controlplane.wire import iso

log = logging.getLogger("controlplane")

SOURCE = "DAYTONA_API"


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or HTTPStatus(status).name


class BadRequest(ApiError):
    def __init__(self, message: str, code: str = "BAD_REQUEST") -> None:
        super().__init__(400, message, code)


class Unauthorized(ApiError):
    def __init__(self, message: str = "Invalid credentials") -> None:
        super().__init__(401, message, "UNAUTHORIZED")


class NotFound(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(404, message, "NOT_FOUND")


class Conflict(ApiError):
    def __init__(self, message: str, code: str = "CONFLICT") -> None:
        super().__init__(409, message, code)


class NotImplementedYet(ApiError):
    def __init__(self, message: str, code: str = "NOT_IMPLEMENTED") -> None:
        super().__init__(501, message, code)


def envelope(status: int, message: str, code: str, path: str) -> dict[str, object]:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    return {
        "statusCode": status,
        "error": reason,
        "message": message,
        "code": code,
        "source": SOURCE,
        "path": path,
        "timestamp": iso(time.time()),
    }


def error_response(conn: HTTPConnection, status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse(envelope(status, message, code, conn.url.path), status_code=status)


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(request, exc.status, exc.message, exc.code)


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"Cannot {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return error_response(request, exc.status_code, message, HTTPStatus(exc.status_code).name)


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(request, 500, f"Internal error: {type(exc).__name__}", "INTERNAL_SERVER_ERROR")


HANDLERS = {
    ApiError: api_error_handler,
    HTTPException: http_exception_handler,
    Exception: unexpected_error_handler,
}
