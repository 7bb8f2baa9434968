"""Build the OpenAPI 3.1 document from the live route table plus each route's `Operation`."""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.convertors import FloatConvertor, IntegerConvertor
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

from toolbox.openapi.models import ErrorResponse
from toolbox.openapi.infer import infer
from toolbox.openapi.registry import Operation, lookup

REF_TEMPLATE = "#/components/schemas/{model}"
ERROR_REF = {"$ref": REF_TEMPLATE.format(model="ErrorResponse")}
_CONVERTER = re.compile(r"{([^}:]+)(:[^}]+)?}")


@dataclass(frozen=True)
class Endpoint:
    """One method+path the daemon serves, with whatever the area said about it."""

    method: str
    path: str  # OpenAPI form: `/port/{port}/in-use`
    route: BaseRoute
    operation: Operation | None
    websocket: bool = False


def _handler(endpoint: Any, method: str) -> Any:
    # Class-based endpoints (HTTPEndpoint) keep their description on the method function.
    if inspect.isclass(endpoint):
        return getattr(endpoint, method.lower(), None)
    return endpoint


def iter_endpoints(routes: Sequence[BaseRoute], prefix: str = "") -> Iterator[Endpoint]:
    for route in routes:
        if isinstance(route, Mount):
            yield from iter_endpoints(route.routes, prefix + route.path)
        elif isinstance(route, WebSocketRoute):
            path = _CONVERTER.sub(r"{\1}", prefix + route.path)
            yield Endpoint("GET", path, route, _described(route.endpoint, "GET"), websocket=True)
        elif isinstance(route, Route) and route.include_in_schema:
            path = _CONVERTER.sub(r"{\1}", prefix + route.path)
            for method in sorted(route.methods or {"GET"}):
                if method == "HEAD":
                    continue
                yield Endpoint(method, path, route, _described(_handler(route.endpoint, method), method))


def _described(handler: Any, method: str) -> Operation | None:
    """The area's own description, else what the handler's code shows (see infer.py)."""
    found = lookup(handler, method)
    if found is None and handler is not None and callable(handler):
        found = infer(handler)
    return found


def _path_parameters(route: BaseRoute) -> list[dict[str, Any]]:
    convertors = getattr(route, "param_convertors", {}) or {}
    params = []
    for name, convertor in convertors.items():
        if isinstance(convertor, IntegerConvertor):
            schema: dict[str, Any] = {"type": "integer", "minimum": 0}
        elif isinstance(convertor, FloatConvertor):
            schema = {"type": "number", "minimum": 0}
        else:
            schema = {"type": "string", "minLength": 1}
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    return params


def _models_of(body: Any) -> list[type[BaseModel]]:
    if inspect.isclass(body) and issubclass(body, BaseModel):
        return [body]
    return [m for arg in typing.get_args(body) for m in _models_of(arg)]


class _Schemas:
    """Collects every model used anywhere, then renders them once into components."""

    def __init__(self, endpoints: list[Endpoint]) -> None:
        wanted: set[tuple[type[BaseModel], JsonSchemaMode]] = {(ErrorResponse, "serialization")}
        for endpoint in endpoints:
            op = endpoint.operation
            if op is None:
                continue
            for model in _models_of(op.request) + _models_of(op.query):
                wanted.add((model, "validation"))
            for model in _models_of(op.response):
                wanted.add((model, "serialization"))
        keys = sorted(wanted, key=lambda k: (k[0].__module__, k[0].__qualname__, k[1]))
        self.refs, top = models_json_schema(keys, by_alias=True, ref_template=REF_TEMPLATE)
        self.components: dict[str, Any] = dict(top.get("$defs", {}))

    def ref(self, model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        return dict(self.refs[(model, mode)])

    def resolve(self, ref: dict[str, Any]) -> dict[str, Any]:
        name = ref["$ref"].rsplit("/", 1)[-1]
        return self.components[name]

    def body(self, body: Any, mode: JsonSchemaMode) -> dict[str, Any] | None:
        """`content` of a request/response body, or None for no body."""
        if body is None:
            return None
        if body is bytes:
            return {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
        if body is str:
            return {"text/plain": {"schema": {"type": "string"}}}
        if isinstance(body, dict):
            return {"application/json": {"schema": body}}
        return {"application/json": {"schema": self.schema(body, mode)}}

    def schema(self, body: Any, mode: JsonSchemaMode) -> dict[str, Any]:
        if inspect.isclass(body) and issubclass(body, BaseModel):
            return self.ref(body, mode)
        origin, args = typing.get_origin(body), typing.get_args(body)
        if origin in (list, Sequence, tuple) and args:
            return {"type": "array", "items": self.schema(args[0], mode)}
        if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            return {"anyOf": [self.schema(a, mode) for a in args]}
        if body is type(None):
            return {"type": "null"}
        return {}


def _query_parameters(model: type[BaseModel], schemas: _Schemas) -> list[dict[str, Any]]:
    definition = schemas.resolve(schemas.ref(model, "validation"))
    required = set(definition.get("required", []))
    params = []
    for name, schema in definition.get("properties", {}).items():
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": schema}
        if "description" in schema:
            param["description"] = schema["description"]
        params.append(param)
    return params


def _operation_id(endpoint: Endpoint, used: set[str]) -> str:
    explicit = endpoint.operation.operation_id if endpoint.operation else None
    base = explicit or re.sub(r"[^A-Za-z0-9]+", "_", f"{endpoint.method.lower()}{endpoint.path}").strip("_")
    candidate, n = base, 2
    while candidate in used:
        candidate, n = f"{base}_{n}", n + 1
    used.add(candidate)
    return candidate


def _render(endpoint: Endpoint, schemas: _Schemas, used_ids: set[str]) -> dict[str, Any]:
    op = endpoint.operation
    area = endpoint.path.strip("/").split("/", 1)[0] or "root"
    rendered: dict[str, Any] = {
        "operationId": _operation_id(endpoint, used_ids),
        "tags": list(op.tags) if op and op.tags else [area],
    }
    if op and op.summary:
        rendered["summary"] = op.summary
    if op and op.description:
        rendered["description"] = op.description
    parameters = _path_parameters(endpoint.route)
    if op and op.query is not None:
        parameters += _query_parameters(op.query, schemas)
    if op and op.parameters:
        taken = {p["name"] for p in parameters}
        parameters += [dict(p) for p in op.parameters if p["name"] not in taken]
    if parameters:
        rendered["parameters"] = parameters

    if op and (op.request is not None or op.request_content):
        content = dict(op.request_content or {})
        if op.request is not None:
            content["application/json"] = {"schema": schemas.ref(op.request, "validation")}
        rendered["requestBody"] = {"required": op.body_required, "content": content}

    responses: dict[str, Any] = {}
    if endpoint.websocket:
        rendered["x-websocket"] = True
        responses["101"] = {"description": "Switching Protocols: the WebSocket stream"}
    else:
        described = op is not None and not op.extensions.get("inferred")
        success: dict[str, Any] = {"description": "Success" if described else "Success (body not described)"}
        if op:
            body_content = schemas.body(op.response, "serialization")
            if body_content:
                success["content"] = body_content
        responses[str(op.status if op else 200)] = success
    for status, description in sorted((op.errors if op else {}).items()):
        responses[str(status)] = {"description": description, "content": {"application/json": {"schema": ERROR_REF}}}
    responses["4XX"] = {"$ref": "#/components/responses/ClientError"}
    responses["5XX"] = {"$ref": "#/components/responses/ServerError"}
    rendered["responses"] = responses
    if op and op.extensions:
        rendered.update({f"x-{k}" if not k.startswith("x-") else k: v for k, v in op.extensions.items()})
    return rendered


def build_document(routes: Sequence[BaseRoute], *, version: str, sandbox_id: str | None = None) -> dict[str, Any]:
    endpoints = list(iter_endpoints(routes))
    schemas = _Schemas(endpoints)
    paths: dict[str, dict[str, Any]] = {}
    used_ids: set[str] = set()
    for endpoint in endpoints:
        item = paths.setdefault(endpoint.path, {})
        method = endpoint.method.lower()
        if method in item:  # the same path+method twice: the first route wins, as in routing
            continue
        item[method] = _render(endpoint, schemas, used_ids)
    prefix_note = (
        f"Every route is also served behind the sandbox id: `/{sandbox_id}/<path>`."
        if sandbox_id
        else "Every route is also served behind one leading `/{sandboxId}` segment."
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Sandbox toolbox daemon",
            "version": version,
            "description": (
                "Daytona Toolbox API compatible daemon, generated from the routes it serves. "
                + prefix_note
                + " Operations marked `x-websocket` are WebSocket upgrades (GET)."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": schemas.components,
            "responses": {
                "ClientError": {"description": "Client error", "content": {"application/json": {"schema": ERROR_REF}}},
                "ServerError": {"description": "Server error", "content": {"application/json": {"schema": ERROR_REF}}},
            },
        },
    }
