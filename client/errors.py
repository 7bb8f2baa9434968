"""One error type for every failed call: Daytona's error shape (status, message, code)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

UNREACHABLE = 0  # `status` of an error raised before any HTTP answer (connection refused, timeout)


class ApiError(Exception):
    """A call that failed: `status` is the HTTP status (0 when the server was not reached),
    `message` Daytona's human-readable message, `code` its machine code when it sent one
    (`NOT_FOUND`, `FILE_NOT_FOUND`, ...), `path` the request path."""

    def __init__(self, status: int, message: str, code: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.path = path

    def __str__(self) -> str:
        return self.message if self.status == UNREACHABLE else f"{self.message} (HTTP {self.status})"

    def wire(self) -> dict[str, Any]:
        """Daytona's envelope fields, for `--format json` and tool results."""
        return {"statusCode": self.status, "message": self.message, "code": self.code, "path": self.path}

    @classmethod
    def from_response(cls, response: httpx.Response, body: bytes | None = None) -> ApiError:
        """Reads the control plane's envelope `{statusCode, message, code, ...}`, the daemon's
        `{statusCode, message, code}` and the proxy's; anything else keeps its text."""
        raw = response.content if body is None else body
        message, code = "", None
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        if isinstance(data, dict):
            found = data.get("message") or data.get("error")
            if isinstance(found, list):  # NestJS validation lists
                found = "; ".join(str(item) for item in found)
            message = str(found) if found else ""
            code = data.get("code") if isinstance(data.get("code"), str) else None
        if not message:
            text = raw.decode("utf-8", "replace").strip() if raw else ""
            message = text[:500] or response.reason_phrase or "request failed"
        return cls(response.status_code, message, code, response.request.url.path)

    @classmethod
    def unreachable(cls, url: str, exc: Exception) -> ApiError:
        reason = str(exc) or type(exc).__name__
        return cls(UNREACHABLE, f"cannot reach {url}: {reason} (is the server running, and DAYTONA_API_URL right?)",
                   "UNREACHABLE", None)
