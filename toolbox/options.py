"""Command-line options that also read an environment variable."""

from __future__ import annotations

import os
from typing import overload


@overload
def env(name: str, default: str) -> str: ...
@overload
def env(name: str, default: None = None) -> str | None: ...
def env(name: str, default: str | None = None) -> str | None:
    """The variable's value, or `default` when it is unset or empty."""
    value = os.environ.get(name)
    return value or default


def env_float(name: str, default: float) -> float:
    """A number from the environment; `default` when unset, empty or not a number."""
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        return default
