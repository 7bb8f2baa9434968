"""The daemon's shared context: settings plus the lifecycle hooks of its services."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from toolbox.config import Settings

Hook = Callable[[], Awaitable[None]]


@dataclass
class Daemon:
    """Handed to every area's `build()`; services register start/stop hooks here.

    Startup hooks run in order when the server starts; shutdown hooks run in reverse
    order when it stops, so a service stops before the ones it was built on.
    """

    settings: Settings
    startup: list[Hook] = field(default_factory=list)
    shutdown: list[Hook] = field(default_factory=list)
    # The daemon's Starlette app, set by create_app: for in-process calls (the terminal).
    app: Any = None

    def on_startup(self, hook: Hook) -> None:
        self.startup.append(hook)

    def on_shutdown(self, hook: Hook) -> None:
        self.shutdown.append(hook)
