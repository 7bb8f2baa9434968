"""Small wire helpers the resource modules share: Daytona's timestamps and lists."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(when: float | None) -> str | None:
    """Unix seconds as the ISO 8601 UTC text Daytona's DTOs carry (None stays None)."""
    if when is None:
        return None
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
