"""The artifact protocol of code runs (toolbox-api.md §7.1), applied to a byte stream.

Lines that start with `dtn_artifact_k39fd2:` carry a JSON artifact; they are removed from
the output and charts are collected. Like Daytona, the output is split on "\\n" and the
kept lines re-joined with "\\n". Lines are never buffered whole (a 1 GiB line streams);
only artifact lines are collected, up to MAX_ARTIFACT_BYTES in total (charts carry PNGs;
the rest is dropped rather than letting a run grow the daemon's memory without bound).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

MARKER = b"dtn_artifact_k39fd2:"
MAX_ARTIFACT_BYTES = 64 * 1024 * 1024

log = logging.getLogger("toolbox.process")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def clean_chart(chart: Any) -> dict[str, Any] | None:
    """A chart the 0.226.1 client can parse, or None (bar values are strings there,
    points and ticks numbers; one bad chart must not break the whole response)."""
    if not isinstance(chart, dict):
        return None
    for key in ("x_ticks", "y_ticks"):
        ticks = chart.get(key)
        if ticks is not None and not (isinstance(ticks, list) and all(_number(t) for t in ticks)):
            return None
    elements = chart.get("elements")
    if elements is None:
        return chart
    if not isinstance(elements, list):
        return None
    cleaned = []
    for element in elements:
        if not isinstance(element, dict):
            return None
        if chart.get("type") == "composite_chart":
            sub = clean_chart(element)
            if sub is None:
                return None
            cleaned.append(sub)
            continue
        element = dict(element)
        if "value" in element and element["value"] is not None and not isinstance(element["value"], str):
            element["value"] = str(element["value"])
        points = element.get("points")
        if points is not None and not (
            isinstance(points, list)
            and all(isinstance(p, list) and all(_number(v) for v in p) for p in points)
        ):
            return None
        cleaned.append(element)
    return {**chart, "elements": cleaned}


class ArtifactFilter:
    """Feed output chunks through `filter()`; afterwards `charts` holds the charts found."""

    def __init__(self) -> None:
        self.charts: list[dict[str, Any]] = []
        self._head = b""  # start of the current line, until we know if it is an artifact
        self._artifact: bytearray | None = None  # the current artifact line being collected
        self._kept_any = False  # a kept line was already emitted (so the next needs "\n")
        self._passing = False  # inside a kept line whose start was already emitted
        self._budget = MAX_ARTIFACT_BYTES  # artifact bytes we may still collect
        self._overflow = False  # the current artifact line did not fit: dropped

    async def filter(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            out = self._feed(chunk)
            if out:
                yield out
        out = self._finish()
        if out:
            yield out

    def _feed(self, data: bytes) -> bytes:
        out = bytearray()
        while data:
            if self._passing:
                newline = data.find(b"\n")
                if newline < 0:
                    out += data
                    return bytes(out)
                out += data[:newline]
                data = data[newline + 1 :]
                self._passing = False
                continue
            if self._artifact is not None:
                newline = data.find(b"\n")
                piece = data if newline < 0 else data[:newline]
                if len(piece) <= self._budget and not self._overflow:
                    self._artifact += piece
                    self._budget -= len(piece)
                else:
                    self._overflow = True
                if newline < 0:
                    return bytes(out)
                self._take_artifact()
                data = data[newline + 1 :]
                continue
            # At a line start: decide once enough bytes are known.
            self._head += data
            data = b""
            newline = self._head.find(b"\n")
            decided = newline >= 0 or len(self._head) >= len(MARKER)
            if not decided:
                return bytes(out)
            head, self._head = self._head, b""
            if head.startswith(MARKER):
                self._artifact = bytearray()
                data = head[len(MARKER) :]
                continue
            if self._kept_any:
                out += b"\n"
            self._kept_any = True
            self._passing = True
            data = head
        return bytes(out)

    def _finish(self) -> bytes:
        """The last line (after the final "\\n", possibly empty) is a line too."""
        if self._artifact is not None:
            self._take_artifact()
            return b""
        if self._passing:
            return b""
        head, self._head = self._head, b""
        if head.startswith(MARKER):
            self._artifact = bytearray(head[len(MARKER) :])
            self._take_artifact()
            return b""
        out = (b"\n" if self._kept_any else b"") + head
        self._kept_any = True
        return out

    def _take_artifact(self) -> None:
        raw, self._artifact = bytes(self._artifact or b""), None
        if self._overflow:
            self._overflow = False
            log.info("dropped an artifact: artifacts of this run exceed %d bytes", MAX_ARTIFACT_BYTES)
            return
        try:
            artifact = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return  # unparseable artifact lines are dropped silently, as Daytona does
        if isinstance(artifact, dict) and artifact.get("type") == "chart":
            chart = clean_chart(artifact.get("value"))
            if chart is not None:
                self.charts.append(chart)
            else:
                log.info("dropped a chart the SDK could not parse")
