"""Request parsing shared by every route: JSON bodies into wire models, typed query params,
the WebSocket subprotocol to echo.

Every helper raises `DaemonError` with a message a person can act on, so handlers stay thin.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from toolbox.errors import Code, DaemonError

M = TypeVar("M", bound=BaseModel)

SDK_VERSION_PROTOCOL_PREFIX = "X-Daytona-SDK-Version~"

# Request bodies are small JSON documents; anything larger is a client bug, not data.
MAX_JSON_BODY = 16 * 1024 * 1024


class WireModel(BaseModel):
    """Base for request/response models: field names exactly as on the wire."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", defer_build=True)

    def wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


async def read_json(request: Request) -> Any:
    """The JSON body, whatever the Content-Type (the SDK sends `/init` and `/env` without one)."""
    size = 0
    chunks = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_JSON_BODY:
            raise DaemonError(
                Code.INVALID_REQUEST_BODY,
                f"invalid body request: JSON body larger than {MAX_JSON_BODY} bytes",
                status=413,
            )
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise DaemonError(Code.INVALID_REQUEST_BODY, "invalid body request: body is empty")
    return _loads(raw)


def _loads(raw: bytes) -> Any:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DaemonError(
            Code.INVALID_REQUEST_BODY, f"invalid body request: body is not valid JSON ({exc})"
        ) from None
    except RecursionError:  # "[[[[..." a hundred thousand deep: Python's parser gives up
        raise DaemonError(Code.INVALID_REQUEST_BODY, "invalid body request: JSON nested too deeply") from None
    if b"\\u" in raw:
        # JSON may escape lone UTF-16 surrogates ("\ud800") that no file name, environment
        # variable or response can carry; refuse them here instead of failing deep inside.
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise DaemonError(
                Code.INVALID_REQUEST_BODY,
                "invalid body request: a string contains a lone UTF-16 surrogate (\\uD800-\\uDFFF), which is not valid Unicode",
            ) from None
    return data


async def parse_body(request: Request, model: type[M], *, optional: bool = False) -> M:
    """The JSON body validated into `model`; an empty body is allowed when `optional`."""
    if optional:
        raw = await request.body()
        if not raw.strip():
            return model()
        data = _loads(raw)
    else:
        data = await read_json(request)
    if not isinstance(data, dict):
        raise DaemonError(Code.INVALID_REQUEST_BODY, "invalid body request: expected a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise DaemonError(Code.INVALID_REQUEST_BODY, f"invalid body request: {_describe(exc)}") from None


def query_str(conn: HTTPConnection, name: str, *, required: bool = False, default: str | None = None) -> str | None:
    value = conn.query_params.get(name)
    if value is None or (required and value == ""):
        if required:
            raise DaemonError(Code.BAD_REQUEST, f"query parameter '{name}' is required")
        return default
    if "\x00" in value:
        raise DaemonError(Code.BAD_REQUEST, f"query parameter '{name}' contains a NUL byte")
    return value


def query_required(conn: HTTPConnection, name: str) -> str:
    value = query_str(conn, name, required=True)
    assert value is not None
    return value


def query_bool(conn: HTTPConnection, name: str, default: bool = False) -> bool:
    value = conn.query_params.get(name)
    if value is None or value == "":
        return default
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise DaemonError(Code.BAD_REQUEST, f"query parameter '{name}' must be true or false, got {value!r}")


def query_int(
    conn: HTTPConnection,
    name: str,
    default: int | None = None,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int | None:
    value = conn.query_params.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise DaemonError(Code.BAD_REQUEST, f"query parameter '{name}' must be an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise DaemonError(Code.BAD_REQUEST, f"query parameter '{name}' must be >= {minimum}")
    if maximum is not None and number > maximum:
        raise DaemonError(Code.BAD_REQUEST, f"query parameter '{name}' must be <= {maximum}")
    return number


def path_param(conn: HTTPConnection, name: str) -> str:
    value = conn.path_params.get(name)
    if not isinstance(value, str) or value == "":
        raise DaemonError(Code.BAD_REQUEST, f"path parameter '{name}' is required")
    return value


class _NameSafeJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            # A file name that is not UTF-8 (os.fsdecode's surrogate escapes): one U+FFFD per
            # bad byte, as Go's encoding/json answers for Daytona's daemon; never a 500.
            text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
            try:
                return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace").encode("utf-8")
            except UnicodeEncodeError:
                return text.encode("utf-8", "replace")


def json_response(content: Any, status_code: int = 200) -> JSONResponse:
    if isinstance(content, BaseModel):
        content = content.model_dump(by_alias=True, exclude_none=True)
    return _NameSafeJSONResponse(content, status_code=status_code)


def offered_subprotocols(websocket: WebSocket) -> list[str]:
    return list(websocket.scope.get("subprotocols", []))


def sdk_version_subprotocol(offered: list[str]) -> str | None:
    """The browser SDK's version token (`X-Daytona-SDK-Version~<v>`), echoed as Daytona does:
    browsers fail a handshake that offered subprotocols and got none back (the Python SDK
    offers none)."""
    return next((p for p in offered if p.startswith(SDK_VERSION_PROTOCOL_PREFIX)), None)
