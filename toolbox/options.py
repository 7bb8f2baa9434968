"""Command-line options that also read an environment variable."""

from __future__ import annotations

import os


def env(name: str, default: str | None = None) -> str | None:
    """The variable's value, or `default` when it is unset or empty."""
    value = os.environ.get(name)
    return value if value not in (None, "") else default
