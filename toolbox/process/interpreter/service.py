"""Interpreter contexts (one REPL worker each) and their FIFO executions.

An execution's frames go to an `OutputStore` (one JSON object per line, spilled to the
state dir) rather than straight to the socket: a slow client lags behind on disk instead
of stalling the worker or the daemon's memory, and the worker is never blocked by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from toolbox.config import Settings
from toolbox.errors import Code, DaemonError
from toolbox.process.interpreter.worker_process import WorkerProcess
from toolbox.process.output import OutputStore
from toolbox.tasks import BackgroundTask, Spawn
from toolbox.timestamps import iso_utc

DEFAULT_CONTEXT = "default"
DEFAULT_TIMEOUT = 600.0
INTERRUPT_GRACE = 2.0
# Frames the client has not received yet beyond which the worker is no longer read (it then
# blocks on its own prints): a flood runs at the client's pace instead of filling the disk.
SEND_WINDOW = 1024 * 1024
LANGUAGES = ("python",)
# Limits on workers (daemon environment, read when the service starts).
MAX_CONTEXTS_ENV = "TOOLBOX_INTERPRETER_MAX_CONTEXTS"
DEFAULT_MAX_CONTEXTS = 32
IDLE_TIMEOUT_ENV = "TOOLBOX_INTERPRETER_IDLE_TIMEOUT"
DEFAULT_IDLE_TIMEOUT = 3600.0
# The reaper looks this often at most; often enough that a context outlives its idle
# timeout by a small fraction of it.
REAP_INTERVAL = 30.0

# How an execution ended -> (WebSocket close code, reason) (toolbox-api.md §10.2).
COMPLETED = (1000, "")
TIMED_OUT = (4008, "execution timed out")
WORKER_ENDED = (1001, "worker process ended")
CONTEXT_SHUTDOWN = (1001, "context shutdown")


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        return max(0.0, float(raw)) if raw else default
    except ValueError:
        return default


def frame(kind: str, text: str = "", name: str = "", value: str = "", traceback: str = "") -> bytes:
    """One wire frame: every key present, unused ones empty (the SDK reads them blindly)."""
    body = {"type": kind, "text": text, "name": name, "value": value, "traceback": traceback}
    return json.dumps(body).encode("utf-8") + b"\n"


def _record(store: OutputStore, event: dict[str, str] | bytes) -> None:
    """Store an output or error event as the frame the client gets."""
    if isinstance(event, bytes):  # an output frame the worker built whole (worker_process.py)
        store.append(event + b"\n")
        return
    kind = event.get("type")
    if kind in ("stdout", "stderr"):
        store.append(frame(kind, text=event.get("text", "")))
    elif kind == "error":
        store.append(frame("error", name=event.get("name", ""), value=event.get("value", ""),
                           traceback=event.get("traceback", "")))


@dataclass(eq=False)
class Context:
    id: str
    cwd: Path
    language: str = "python"
    created_at: str = field(default_factory=iso_utc)

    def __post_init__(self) -> None:
        self.worker: WorkerProcess | None = None
        self.lock = asyncio.Lock()  # FIFO: executions run one at a time, in arrival order
        self.closed = False
        self.pending = 0  # executions queued or running: a busy context is never reaped
        self.last_used = time.monotonic()

    def idle_for(self, now: float) -> float:
        return 0.0 if self.pending else now - self.last_used

    @property
    def active(self) -> bool:
        return not self.closed

    def info(self) -> dict[str, object]:
        return {
            "id": self.id,
            "cwd": str(self.cwd),
            "createdAt": self.created_at,
            "active": self.active,
            "language": self.language,
        }

    async def ensure_worker(self) -> WorkerProcess:
        """The live worker, restarted (state lost) if it died."""
        if self.worker is None or not self.worker.alive:
            if self.worker is not None:
                await self.worker.stop()
            self.worker = await WorkerProcess.start(self.cwd)
        return self.worker

    async def close(self) -> None:
        self.closed = True
        if self.worker is not None:
            await self.worker.stop()


class Execution:
    """One `run_code` request: frames land in `store`; `close` is set when it is over."""

    def __init__(self, store: OutputStore) -> None:
        self.store = store
        self.close: tuple[int, str] = COMPLETED
        self._stop: anyio.CancelScope | None = None  # the running code's, while it runs
        self.abandoned = False
        self._holders = 2  # the running job and the connection streaming its frames
        self.sent = 0  # store offset up to which frames reached the client
        self._progress = asyncio.Event()

    def mark_sent(self, offset: int) -> None:
        self.sent = offset
        self._progress.set()
        self._progress = asyncio.Event()

    async def progress(self) -> None:
        """Until the client has taken more frames."""
        await self._progress.wait()

    @property
    def lagging(self) -> bool:
        return not self.abandoned and self.store.size - self.sent > SEND_WINDOW

    def release(self) -> None:
        """Called once by the job and once by the connection; the last one removes the spill file."""
        self._holders -= 1
        if self._holders == 0 and self.store.spill_path is not None:
            self.store.close()
            with contextlib.suppress(OSError):
                os.unlink(self.store.spill_path)

    def abandon(self) -> None:
        """The client went away: interrupt the code (nobody reads its output)."""
        self.abandoned = True
        if self._stop is not None:
            self._stop.cancel()


class InterpreterService:
    """Contexts and their runs.

    `max_contexts` caps the user-created contexts (each is a worker process; 0 = no cap);
    a context not used for `idle_timeout` seconds (0 = never) is deleted, except the
    implicit `default`, whose worker is only stopped (its state is lost; the next run
    starts a fresh one). Both default to the daemon's environment.
    """

    def __init__(
        self, settings: Settings, spawn: Spawn, max_contexts: int | None = None, idle_timeout: float | None = None
    ) -> None:
        self.settings = settings
        self.runs_dir = settings.state_dir / "interpreter"
        self.contexts: dict[str, Context] = {DEFAULT_CONTEXT: Context(DEFAULT_CONTEXT, settings.workdir)}
        # Runs outlive the request that submitted them: they, and the reaper, run in the
        # daemon's task group, which cancels and awaits them when it stops.
        self._spawn = spawn
        self._jobs: dict[Execution, BackgroundTask] = {}
        self.max_contexts = (
            int(_env_number(MAX_CONTEXTS_ENV, DEFAULT_MAX_CONTEXTS)) if max_contexts is None else max(0, max_contexts)
        )
        self.idle_timeout = _env_number(IDLE_TIMEOUT_ENV, DEFAULT_IDLE_TIMEOUT) if idle_timeout is None else idle_timeout
        self._starting = 0  # contexts whose worker is starting: they count against the cap
        self._reaper: BackgroundTask | None = None

    # -- contexts ----------------------------------------------------------------------------

    async def create_context(self, cwd: str | None, language: str | None) -> Context:
        language = language or "python"
        if language not in LANGUAGES:
            raise DaemonError(Code.BAD_REQUEST, f"unsupported language {language!r}: only 'python' is supported")
        workdir = self.settings.resolve(cwd) if cwd else self.settings.workdir
        if not workdir.is_dir():
            raise DaemonError(Code.BAD_REQUEST, f"cwd is not an existing directory: {workdir}")
        if self.max_contexts and len(self.contexts) - 1 + self._starting >= self.max_contexts:
            raise DaemonError(
                Code.CONFLICT,
                f"too many interpreter contexts (limit {self.max_contexts}, set by {MAX_CONTEXTS_ENV}): "
                "delete one you no longer need (DELETE /process/interpreter/context/{id}) and retry",
            )
        context = Context(str(uuid.uuid4()), workdir, language)
        self._starting += 1
        try:
            await context.ensure_worker()
        except OSError as exc:
            raise DaemonError(Code.INTERNAL_SERVER_ERROR, f"failed to start interpreter worker: {exc}") from exc
        finally:
            self._starting -= 1
        context.last_used = time.monotonic()
        self.contexts[context.id] = context
        return context

    def list_contexts(self) -> list[Context]:
        return [c for c in self.contexts.values() if c.id != DEFAULT_CONTEXT]

    def get(self, context_id: str) -> Context | None:
        return self.contexts.get(context_id)

    async def delete_context(self, context_id: str) -> None:
        if context_id == DEFAULT_CONTEXT:
            raise DaemonError(Code.BAD_REQUEST, "the default context cannot be deleted")
        context = self.contexts.pop(context_id, None)
        if context is None:
            raise DaemonError(Code.PROCESS_NOT_FOUND, f"context not found: {context_id}")
        await context.close()

    def remove_stale_runs(self) -> None:
        """Spill files of runs a previous daemon did not finish (it crashed or was killed)."""
        if self.runs_dir.is_dir():
            for stale in self.runs_dir.glob("*.jsonl"):
                with contextlib.suppress(OSError):
                    stale.unlink()

    def start_reaper(self) -> None:
        if self.idle_timeout > 0 and self._reaper is None:
            self._reaper = self._spawn(self._reap_forever(), name="interpreter context reaper")

    async def _reap_forever(self) -> None:
        interval = min(REAP_INTERVAL, max(0.05, self.idle_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            await self.reap_idle()

    async def reap_idle(self) -> None:
        """Deletes contexts idle for longer than `idle_timeout`; stops the idle default's worker."""
        now = time.monotonic()
        for context in list(self.contexts.values()):
            if context.pending or context.idle_for(now) < self.idle_timeout:
                continue
            if context.id == DEFAULT_CONTEXT:
                if context.worker is not None and not context.lock.locked():
                    async with context.lock:  # a run arriving meanwhile waits, then starts a new worker
                        if context.worker is not None:
                            await context.worker.stop()
                            context.worker = None
                continue
            # Removed before the first await: a run submitted from now on finds no context.
            self.contexts.pop(context.id, None)
            await context.close()

    async def shutdown(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for context in list(self.contexts.values()):
            await context.close()
        for job in list(self._jobs.values()):
            job.cancel()

    # -- executions --------------------------------------------------------------------------

    def submit(self, context: Context, code: str, envs: dict[str, str], timeout: float) -> Execution:
        """Queue `code` on the context (FIFO) and return at once; the run goes on in the background."""
        spill = self.runs_dir / f"{uuid.uuid4()}.jsonl"
        execution = Execution(OutputStore(spill_path=spill))
        context.pending += 1
        job = self._spawn(self._run(context, execution, code, envs, timeout), name=f"interpreter run in {context.id}")
        self._jobs[execution] = job
        return execution

    async def _run(self, context: Context, execution: Execution, code: str, envs: dict[str, str], timeout: float) -> None:
        try:
            async with context.lock:
                if execution.abandoned:
                    return
                if context.closed:
                    execution.close = CONTEXT_SHUTDOWN
                    return
                execution.close = await self._execute(context, execution, code, envs, timeout)
        except OSError as exc:
            execution.store.append(frame("error", name="WorkerError", value=f"interpreter worker failed: {exc}"))
            execution.close = WORKER_ENDED
        finally:
            context.pending -= 1
            context.last_used = time.monotonic()
            execution.store.close()
            execution.release()
            self._jobs.pop(execution, None)

    async def _execute(
        self, context: Context, execution: Execution, code: str, envs: dict[str, str], timeout: float
    ) -> tuple[int, str]:
        worker = await context.ensure_worker()
        while not worker.events.empty():  # leftovers of an earlier run (background threads)
            if worker.events.get_nowait() is None:
                worker = await context.ensure_worker()
        await worker.send({"code": code, "envs": envs})
        # Until the code is done, its deadline passes or its client leaves (abandon()
        # cancels the scope). Deadlines hold however much output the code floods.
        with anyio.move_on_after(timeout if timeout > 0 else None) as running:
            execution._stop = running
            if execution.abandoned:
                running.cancel()
            last = await self._take_events(worker, execution, keep_window=True)
        execution._stop = None
        timed_out = False
        if running.cancelled_caught:
            timed_out = not execution.abandoned
            worker.interrupt()  # KeyboardInterrupt: the state survives if the code stops in time
            with anyio.move_on_after(INTERRUPT_GRACE) as grace:
                last = await self._take_events(worker, execution, keep_window=False)
            if grace.cancelled_caught:  # the grace period is over: the state goes too
                await worker.stop()
                context.worker = None
                return TIMED_OUT if timed_out else COMPLETED
        if last is None:
            return CONTEXT_SHUTDOWN if context.closed else (TIMED_OUT if timed_out else WORKER_ENDED)
        # Output the code's subprocesses wrote to fds 1/2 may be a loop turn behind.
        for _ in range(3):
            await asyncio.sleep(0)
        while not worker.events.empty():
            late = worker.events.get_nowait()
            if isinstance(late, bytes) or (late is not None and late.get("type") in ("stdout", "stderr")):
                _record(execution.store, late)
        execution.store.append(frame("control", text=last.get("status", "completed")))
        return TIMED_OUT if timed_out else COMPLETED

    @staticmethod
    async def _take_events(worker: WorkerProcess, execution: Execution, keep_window: bool) -> dict[str, str] | None:
        """Store the worker's output until its `done` event (returned), or None when it has
        gone away. With `keep_window`, the worker is not read while the client lags behind."""
        while True:
            if keep_window and execution.lagging:
                await execution.progress()
                continue
            event = await worker.events.get()
            # Then whatever else is queued already, without waiting again for each.
            while True:
                if event is None or (isinstance(event, dict) and event.get("type") == "done"):
                    return event
                _record(execution.store, event)
                if (keep_window and execution.lagging) or worker.events.empty():
                    break
                event = worker.events.get_nowait()
