"""What an undescribed handler's own code says about its inputs.

A route whose area attached no `@operation` would otherwise be documented with only its
path parameters. Handlers read their inputs through the shared helpers of `toolbox.http`
(`query_str(request, "path")`, `parse_body(request, Model)`), so those calls, read from
the handler's source, give the query parameters and the body model. Only literal names and
models the handler can reach by name count; anything else is left out, never guessed.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from pydantic import BaseModel

from toolbox.openapi.registry import Operation

_QUERY_TYPES = {"query_str": "string", "query_required": "string", "query_bool": "boolean", "query_int": "integer"}


def _callee(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _constant(node: ast.expr | None) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        value = node.operand.value
        return -value if isinstance(value, (int, float)) else None
    return None


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _resolve(node: ast.expr, endpoint: Callable[..., Any]) -> Any:
    """`Model` or `models.Model`, looked up where the handler itself would look."""
    if isinstance(node, ast.Name):
        scopes = inspect.getclosurevars(endpoint)
        for scope in (scopes.nonlocals, scopes.globals, getattr(endpoint, "__globals__", {})):
            if node.id in scope:
                return scope[node.id]
        return None
    if isinstance(node, ast.Attribute):
        owner = _resolve(node.value, endpoint)
        return getattr(owner, node.attr, None) if owner is not None else None
    return None


def _query_parameter(call: ast.Call, helper: str) -> dict[str, Any] | None:
    name = _constant(call.args[1]) if len(call.args) > 1 else None
    if not isinstance(name, str):
        return None
    schema: dict[str, Any] = {"type": _QUERY_TYPES[helper]}
    if helper == "query_int":
        for bound in ("minimum", "maximum"):
            value = _constant(_keyword(call, bound))
            if isinstance(value, int):
                schema[bound] = value
    required = helper == "query_required" or _constant(_keyword(call, "required")) is True
    return {"name": name, "in": "query", "required": required, "schema": schema}


@lru_cache(maxsize=None)
def infer(endpoint: Callable[..., Any]) -> Operation | None:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(endpoint)))
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None
    parameters: dict[str, dict[str, Any]] = {}
    body: type[BaseModel] | None = None
    body_required = True
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        helper = _callee(node.func)
        if helper in _QUERY_TYPES:
            parameter = _query_parameter(node, helper)
            if parameter:
                known = parameters.get(parameter["name"])
                if known is None or parameter["required"]:
                    parameters[parameter["name"]] = parameter
        elif helper == "get" and isinstance(node.func, ast.Attribute) and _callee(node.func.value) == "query_params":
            name = _constant(node.args[0]) if node.args else None
            if isinstance(name, str) and name not in parameters:
                parameters[name] = {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
        elif helper == "parse_body" and len(node.args) > 1 and body is None:
            model = _resolve(node.args[1], endpoint)
            if inspect.isclass(model) and issubclass(model, BaseModel):
                body = model
                body_required = _constant(_keyword(node, "optional")) is not True
    if not parameters and body is None:
        return None
    return Operation(
        description="Inputs inferred from the handler; the area has not described this route.",
        request=body,
        body_required=body_required,
        parameters=tuple(parameters.values()),
        extensions={"inferred": True},
    )
