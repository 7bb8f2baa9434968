"""The daemon's background work, all of it owned by one task group.

Work that outlives the request that started it (a session's worker, an interpreter run, a
reaper, a drain of a FIFO a background child still writes to) is started with `spawn()`
inside the task group the daemon opens for its lifetime (anyio's model: nothing runs
loose). When the daemon stops, whatever still runs is cancelled and awaited before the
event loop closes, so no task is left pending and no exception goes unreported.

The group is asyncio's own TaskGroup, not anyio's: anyio cancels level-triggered (every
await inside a cancelled scope raises again), and the services' clean-up awaits after a
cancel (a kill with a grace period, closing an event ring), which must still run. One
failing job is logged and ends alone: it must not cancel every other session and run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

log = logging.getLogger("toolbox.tasks")

T = TypeVar("T")


class BackgroundTask:
    """A handle on one piece of spawned work: cancel it, or wait until it has ended."""

    def __init__(self, task: asyncio.Task[None]) -> None:
        self._task = task

    @property
    def name(self) -> str:
        return self._task.get_name()

    @property
    def task(self) -> asyncio.Task[None]:
        """The asyncio task itself, for a library that wants one back (engine.io)."""
        return self._task

    def cancel(self) -> None:
        """Ask it to stop (it may still be unwinding when this returns: `wait()` for that)."""
        self._task.cancel()

    def done(self) -> bool:
        return self._task.done()

    async def wait(self) -> None:
        """Until it has ended. Cancelling the waiter does not cancel the work."""
        await asyncio.wait([self._task])

    def __repr__(self) -> str:
        return f"<BackgroundTask {self.name!r} {'ended' if self.done() else 'running'}>"


class Spawn(Protocol):
    """What services are handed instead of the task group itself."""

    def __call__(self, coro: Coroutine[Any, Any, object], *, name: str) -> BackgroundTask: ...


async def _report_failure(coro: Coroutine[Any, Any, object], name: str) -> None:
    try:
        await coro
    except Exception:  # noqa: BLE001 - logged here, never a cancellation of every other job
        log.exception("background task %r failed", name)


class TaskOwner:
    """Opens the task group (`running()`) and starts work in it (`spawn()`)."""

    def __init__(self) -> None:
        self._group: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The daemon's lifetime: on the way out, cancel what still runs and await it."""
        error: BaseException | None = None
        async with asyncio.TaskGroup() as group:
            self._group = group
            try:
                yield
            except BaseException as exc:  # re-raised as it is below, not in an ExceptionGroup
                error = exc
            finally:
                self._group = None
                for task in list(self._tasks):
                    task.cancel()
        if error is not None:
            raise error

    def spawn(self, coro: Coroutine[Any, Any, object], *, name: str) -> BackgroundTask:
        """Run `coro` in the background until it returns, fails or the daemon stops."""
        if self._group is None:
            coro.close()  # never started: no "coroutine was never awaited" warning
            raise RuntimeError(f"cannot start {name!r}: the daemon is not running (or is stopping)")
        task = self._group.create_task(_report_failure(coro, name), name=name)
        self._tasks.add(task)

        def ended(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            coro.close()  # a no-op once it ran; cancelled before its first step, it never did

        task.add_done_callback(ended)
        return BackgroundTask(task)


async def finish_in_thread(fn: Callable[..., T], *args: object,
                           undo: Callable[[T], object] | None = None) -> T:
    """`fn(*args)` in a worker thread that runs to its end even when the caller is cancelled
    (a thread cannot be stopped): the cancel is raised once `fn` has returned, after
    `undo(result)` (also in a thread), so nothing `fn` made or did outlives a caller that
    has moved on to unwind. The thread's future is awaited on every path: owned by the call."""
    loop = asyncio.get_running_loop()
    work = loop.run_in_executor(None, functools.partial(fn, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait([work])  # a second cancel while waiting leaves it to the thread
        if undo is not None and work.exception() is None:
            with contextlib.suppress(Exception):
                await loop.run_in_executor(None, undo, work.result())
        raise


def sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """What a task group raised, unwrapped when it is a single exception (anyio wraps even
    its host's own one in a group) so that callers can catch it by type; several stay
    grouped, so that none of them is dropped."""
    leaves: list[BaseException] = []

    def collect(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                collect(inner)
        else:
            leaves.append(exc)

    collect(group)
    return leaves[0] if len(leaves) == 1 else group
