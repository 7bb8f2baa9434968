"""What the CLI prints: aligned tables and key/value blocks for people, JSON for scripts,
colour only on a terminal (and never with NO_COLOR), progress on stderr only when it is a
terminal."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any

COLOURS = {"green": "32", "yellow": "33", "red": "31", "dim": "2", "bold": "1", "cyan": "36"}
STATE_COLOURS = {"started": "green", "stopped": "yellow", "archived": "dim", "error": "red",
                 "build_failed": "red", "destroyed": "dim", "ready": "green", "active": "green"}


def use_colour(stream: IO[str]) -> bool:
    if "NO_COLOR" in os.environ or os.environ.get("TERM") == "dumb":
        return False
    return stream.isatty()


def paint(text: str, colour: str | None, stream: IO[str]) -> str:
    if not colour or not use_colour(stream):
        return text
    return f"\x1b[{COLOURS[colour]}m{text}\x1b[0m"


def print_json(data: Any, stream: IO[str] | None = None) -> None:
    out = stream or sys.stdout
    out.write(json.dumps(data, indent=2) + "\n")
    out.flush()


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], colour_column: int | None = None,
          stream: IO[str] | None = None) -> None:
    """Columns padded to their widest cell (padding applied before colour, so escape codes
    never shift a column); the last column is not padded."""
    out = stream or sys.stdout
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = ["  ".join(paint(h.ljust(widths[i]) if i < len(headers) - 1 else h, "bold", out)
                       for i, h in enumerate(headers))]
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            padded = cell.ljust(widths[i]) if i < len(row) - 1 else cell
            colour = STATE_COLOURS.get(cell) if i == colour_column else None
            cells.append(paint(padded, colour, out))
        lines.append("  ".join(cells).rstrip())
    out.write("\n".join(lines) + "\n")
    out.flush()


def block(pairs: Sequence[tuple[str, str]], colour_key: str | None = "State", stream: IO[str] | None = None) -> None:
    out = stream or sys.stdout
    width = max(len(k) for k, _ in pairs) + 1
    for key, value in pairs:
        colour = STATE_COLOURS.get(value) if key == colour_key else None
        out.write(f"{paint((key + ':').ljust(width), 'bold', out)} {paint(value, colour, out)}\n")
    out.flush()


def age(iso: str | None, now: float | None = None) -> str:
    """`3m ago` from an ISO time; the raw text if it does not parse."""
    if not iso:
        return "-"
    try:
        when = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = max(0, int((now or time.time()) - when.timestamp()))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


class Progress:
    """A one-line spinner with the elapsed time on stderr, redrawn by a thread; nothing at
    all when stderr is not a terminal (logs and scripts stay clean)."""

    FRAMES = "|/-\\"

    def __init__(self, message: str, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.message = message
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()

    def update(self, message: str) -> None:
        self.message = message

    def _run(self) -> None:
        frame = 0
        while True:  # drawn at once, then every 0.1 s: even a quick operation shows what it did
            elapsed = time.monotonic() - self._started
            self.stream.write(f"\r\x1b[2K{self.FRAMES[frame % 4]} {self.message} ({elapsed:.1f} s)")
            self.stream.flush()
            frame += 1
            if self._stop.wait(0.1):
                return

    def __enter__(self) -> Progress:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


@contextmanager
def progress(message: str) -> Iterator[Progress]:
    with Progress(message) as shown:
        yield shown
