"""The daemon's one timestamp format: RFC 3339 in UTC with a `Z`, as Daytona's Go daemon
writes `time.Time` (the SDK parses these fields as ISO 8601)."""

from __future__ import annotations

from datetime import datetime, timezone


def iso_utc(moment: datetime | float | None = None) -> str:
    """`moment` (an aware datetime or POSIX seconds; now if None) as `2026-12-02T14:03:00.123456Z`."""
    if moment is None:
        moment = datetime.now(timezone.utc)
    elif not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, timezone.utc)
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
