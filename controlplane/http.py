"""Request helpers shared by the routes: JSON bodies into strict wire models, and the
caller's organization from its API key."""

from __future__ import annotations

import json
from typing import TypeVar

import anyio
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from controlplane.auth import Keys, Principal, bearer
from controlplane.errors import BadRequest, Unauthorized

M = TypeVar("M", bound=BaseModel)


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


async def body(request: Request, model: type[M], *, empty_ok: bool = False) -> M:
    raw = await request.body()
    if not raw.strip():
        if empty_ok:
            return model()
        raise BadRequest("the request needs a JSON body", "INVALID_REQUEST_BODY")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"the request body is not JSON: {exc}", "INVALID_REQUEST_BODY") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object", "INVALID_REQUEST_BODY")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(f"invalid request body: {_describe(exc)}", "INVALID_REQUEST_BODY") from None


async def principal(request: Request) -> Principal:
    keys: Keys = request.app.state.keys
    key = bearer(request.headers.get("authorization"))
    found = await anyio.to_thread.run_sync(keys.authenticate, key)
    if found is None:
        raise Unauthorized("Invalid credentials: the API key is unknown")
    return found


def int_param(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, got {value!r}", "INVALID_PARAMETER") from None


def bool_param(value: str | None, name: str, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise BadRequest(f"{name} must be true or false, got {value!r}", "INVALID_PARAMETER")
