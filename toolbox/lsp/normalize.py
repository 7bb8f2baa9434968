"""Language-server answers reshaped into the exact models the 0.226.1 SDK validates.

The SDK's models are strict (toolbox-api.md §12, §20.3): `CompletionItem.documentation`
must be an object, `LspSymbol` needs `kind`, `name` and a full `location`.
"""

from __future__ import annotations

from typing import Any

MAX_COMPLETION_ITEMS = 1000
ZERO_RANGE = {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 0}}


def _position(value: Any) -> dict[str, int]:
    value = value if isinstance(value, dict) else {}
    return {"line": int(value.get("line") or 0), "character": int(value.get("character") or 0)}


def _range(value: Any) -> dict[str, dict[str, int]]:
    if not isinstance(value, dict):
        return {"start": dict(ZERO_RANGE["start"]), "end": dict(ZERO_RANGE["end"])}
    return {"start": _position(value.get("start")), "end": _position(value.get("end"))}


def _documentation(value: Any) -> dict[str, str]:
    if isinstance(value, dict):
        return {"kind": str(value.get("kind") or "plaintext"), "value": str(value.get("value") or "")}
    return {"kind": "plaintext", "value": value if isinstance(value, str) else ""}


def completion_item(item: dict[str, Any]) -> dict[str, Any]:
    label = str(item.get("label") or "")
    edit = item.get("textEdit")
    insert_text = item.get("insertText")
    if not isinstance(insert_text, str):
        insert_text = edit.get("newText") if isinstance(edit, dict) and isinstance(edit.get("newText"), str) else label
    kind = item.get("kind")
    return {
        "label": label,
        "kind": kind if isinstance(kind, int) and not isinstance(kind, bool) else 1,  # 1 = Text
        "detail": item.get("detail") if isinstance(item.get("detail"), str) else "",
        "documentation": _documentation(item.get("documentation")),
        "sortText": item.get("sortText") if isinstance(item.get("sortText"), str) else label,
        "filterText": item.get("filterText") if isinstance(item.get("filterText"), str) else label,
        "insertText": insert_text,
    }


def completion_list(result: Any) -> dict[str, Any]:
    """`CompletionList`: from a list, a CompletionList or null; at most 1000 items."""
    if isinstance(result, dict):
        items, incomplete = result.get("items") or [], bool(result.get("isIncomplete"))
    elif isinstance(result, list):
        items, incomplete = result, False
    else:
        items, incomplete = [], False
    items = [i for i in items if isinstance(i, dict)]
    if len(items) > MAX_COMPLETION_ITEMS:
        items, incomplete = items[:MAX_COMPLETION_ITEMS], True
    return {"isIncomplete": incomplete, "items": [completion_item(i) for i in items]}


def symbols(result: Any, document_uri: str | None = None) -> list[dict[str, Any]]:
    """`LspSymbol[]` from SymbolInformation[], WorkspaceSymbol[] or hierarchical DocumentSymbol[].

    DocumentSymbols carry no location: they get the document's uri and their own range
    (Daytona's daemon sends an empty uri and a zero range), children flattened after them.
    """
    out: list[dict[str, Any]] = []
    pending = list(result) if isinstance(result, list) else []
    while pending:
        symbol = pending.pop(0)
        if not isinstance(symbol, dict):
            continue
        location = symbol.get("location")
        if isinstance(location, dict):
            uri, range_ = str(location.get("uri") or ""), _range(location.get("range"))
        else:
            uri, range_ = document_uri or "", _range(symbol.get("range"))
        kind = symbol.get("kind")
        out.append({
            "name": str(symbol.get("name") or ""),
            "kind": kind if isinstance(kind, int) and not isinstance(kind, bool) else 13,  # 13 = Variable
            "location": {"uri": uri, "range": range_},
        })
        children = symbol.get("children")
        if isinstance(children, list):
            pending[0:0] = children
    return out
