"""Not implemented yet: this area's routes land with their issue."""

from __future__ import annotations

from starlette.routing import BaseRoute

from toolbox.context import Daemon


def build(daemon: Daemon) -> list[BaseRoute]:
    return []
