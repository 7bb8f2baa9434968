"""The daemon's shared context: settings, the lifecycle hooks of its services, and the
task group that owns their background work (toolbox/tasks.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from toolbox.config import Settings
from toolbox.tasks import BackgroundTask, TaskOwner

Hook = Callable[[], Awaitable[None]]


@dataclass
class Daemon:
    """Handed to every area's `build()`; services register start/stop hooks here.

    Hooks run in the order they were registered: a startup hook when its turn comes, a
    shutdown hook is pushed on an exit stack at its place. So shutdown hooks run in reverse
    order when the daemon stops (a service stops before the ones it was built on), and when
    a startup hook fails, exactly the shutdown hooks registered before it run: what was
    started is unwound. A service registers its shutdown hook after its startup hook (a
    startup hook that fails cleans up after itself).
    """

    settings: Settings
    hooks: list[tuple[str, Hook]] = field(default_factory=list)
    # The daemon's Starlette app, set by create_app: for in-process calls (the terminal).
    app: Any = None
    tasks: TaskOwner = field(default_factory=TaskOwner)

    def on_startup(self, hook: Hook) -> None:
        self.hooks.append(("startup", hook))

    def on_shutdown(self, hook: Hook) -> None:
        self.hooks.append(("shutdown", hook))

    def spawn(self, coro: Coroutine[Any, Any, object], *, name: str) -> BackgroundTask:
        """Start background work owned by the daemon (see toolbox/tasks.py)."""
        return self.tasks.spawn(coro, name=name)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The daemon's lifetime (the app's lifespan): the task group, then the hooks."""
        async with AsyncExitStack() as stack:
            # Entered first, so it closes last: after every shutdown hook, what still runs
            # is cancelled and awaited.
            await stack.enter_async_context(self.tasks.running())
            for kind, hook in self.hooks:
                if kind == "startup":
                    await hook()
                else:
                    stack.push_async_callback(hook)
            yield
