"""JSON responses whose big string fields are streamed, never held in memory whole.

Command output has no size limit, yet it travels inside a JSON document. A field value may
be an async iterator of raw bytes: it is decoded incrementally (invalid UTF-8 becomes
U+FFFD, as Go's encoder does), escaped chunk by chunk and written as one JSON string.
Small documents are joined and sent with a Content-Length; large ones are streamed.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, Union

from starlette.responses import Response, StreamingResponse

ByteChunks = AsyncIterator[bytes]
# A field value: plain JSON, a byte stream rendered as a string, or a callable producing
# either (evaluated only when the field is reached, so it may depend on earlier fields).
FieldValue = Union[Any, ByteChunks, Callable[[], Any]]

SMALL_DOCUMENT = 1024 * 1024
OMIT = object()  # a field callable returning this leaves the field out


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


async def escaped_text(chunks: ByteChunks) -> ByteChunks:
    """The inside of a JSON string (no quotes) for the UTF-8 text in `chunks`."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    async for chunk in chunks:
        text = decoder.decode(chunk)
        if text:
            yield _dumps(text)[1:-1]
    text = decoder.decode(b"", final=True)
    if text:
        yield _dumps(text)[1:-1]


async def json_object(fields: Iterable[tuple[str, FieldValue]]) -> ByteChunks:
    yield b"{"
    first = True
    for name, value in fields:
        if callable(value):
            value = value()
            if value is OMIT:
                continue
        prefix = (b"" if first else b",") + _dumps(name) + b":"
        first = False
        if hasattr(value, "__aiter__"):
            yield prefix + b'"'
            async for part in escaped_text(value):
                yield part
            yield b'"'
        else:
            yield prefix + _dumps(value)
    yield b"}"


async def json_response(
    fields: Iterable[tuple[str, FieldValue]],
    *,
    size_hint: int,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """`size_hint` is about how many raw bytes the streamed fields hold in total."""
    body = json_object(fields)
    if size_hint <= SMALL_DOCUMENT:
        data = b"".join([part async for part in body])
        return Response(data, status_code=status_code, headers=headers, media_type="application/json")
    return StreamingResponse(body, status_code=status_code, headers=headers, media_type="application/json")
