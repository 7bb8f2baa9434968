"""How an area describes its routes for `GET /openapi.json`.

An endpoint carries its description as an attribute set by `@operation(...)`; the document
is generated from the live route table, so a route without a description still appears
(path, method and path parameters), and nothing is kept in a second, hand-written list.

    @operation(summary="List ports", response=PortList)
    async def list_ports(request: Request) -> JSONResponse: ...

    @operation("GET", summary="Read a file", query=DownloadQuery, response=bytes)
    @operation("DELETE", summary="Delete a file", query=DeleteQuery, status=204)
    async def files(request: Request) -> Response: ...   # one Route serving GET and DELETE
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

F = TypeVar("F", bound=Callable[..., Any])

ATTRIBUTE = "__openapi_operations__"
ANY_METHOD = "*"

# A response body: a pydantic model, `list[Model]`, `bytes` (binary), `str` (text), a
# ready JSON Schema dict, or None (no body).
Body = Any


@dataclass(frozen=True)
class Operation:
    """What the route table cannot tell: models, status, words for people."""

    summary: str | None = None
    description: str | None = None
    tags: tuple[str, ...] = ()
    # Query parameters as a model: one parameter per field (alias = wire name).
    query: type[BaseModel] | None = None
    # Further parameters as ready OpenAPI parameter objects (headers, or inferred ones).
    parameters: tuple[dict[str, Any], ...] = ()
    # JSON request body model; `body_required=False` when an empty body is accepted.
    request: type[BaseModel] | None = None
    body_required: bool = True
    # Binary or multipart request bodies, as a content-type -> JSON Schema mapping.
    request_content: dict[str, dict[str, Any]] | None = None
    response: Body = None
    status: int = 200
    # Other documented responses: status -> description (bodies are ErrorResponse).
    errors: dict[int, str] = field(default_factory=dict)
    websocket: bool = False
    operation_id: str | None = None
    # Set on operations a fuzzer must not call (e.g. ones that would stop the daemon).
    extensions: dict[str, Any] = field(default_factory=dict)


def operation(method: str = ANY_METHOD, /, **fields: Any) -> Callable[[F], F]:
    """Attach an `Operation` to an endpoint, for one HTTP method or all of them."""
    described = Operation(**fields)

    def attach(endpoint: F) -> F:
        table: dict[str, Operation] = dict(getattr(endpoint, ATTRIBUTE, {}))
        table[method.upper()] = described
        setattr(endpoint, ATTRIBUTE, table)
        return endpoint

    return attach


def operations_of(obj: object) -> dict[str, Operation]:
    return dict(getattr(obj, ATTRIBUTE, {}) or {})


def lookup(endpoint: object, method: str) -> Operation | None:
    table = operations_of(endpoint)
    return table.get(method.upper()) or table.get(ANY_METHOD)
