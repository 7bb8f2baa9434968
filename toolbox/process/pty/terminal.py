"""One PTY: a shell on a pseudo-terminal, its output in an OutputStore, input funnelled in.

The master fd is read on the event loop (`add_reader`, non-blocking), never in a thread.
Output goes to an `OutputStore` (bounded memory tail = scrollback); attached clients follow
the store at their own pace. Flow control: while even the fastest attached client is more
than `HIGH_WATER` bytes behind, the terminal stops reading, so the program blocks on its own
writes exactly as in a real terminal instead of the daemon buffering without bound. One
stuck client cannot stall the others: it falls behind in the store and is dropped once its
next byte is no longer retained.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from toolbox.process.output import OutputStore
from toolbox.process.pty.spawn import default_shell, kill_session, set_window_size, spawn_on_pty
from toolbox.timestamps import iso_utc

READ_SIZE = 64 * 1024
# Per wake-up, drain at most this much before yielding to the loop (keeps echo latency low
# for other PTYs while one floods output).
READ_BUDGET = 256 * 1024
HIGH_WATER = 512 * 1024
LOW_WATER = 128 * 1024
MAX_PENDING_INPUT = 1024 * 1024
SCROLLBACK_MEMORY = 1024 * 1024


def exit_reason(code: int) -> str | None:
    """Daytona's wording for an exit code (toolbox-api.md §9.3)."""
    if code == 0:
        return None
    if code == 130:
        return "Ctrl+C"
    if code == 137:
        return "SIGKILL"
    if code == 143:
        return "SIGTERM"
    if code > 128:
        return f"signal {code - 128}"
    return "non-zero exit"


@dataclass(eq=False)
class Reader:
    """An attached client's position in the output, for flow control."""

    offset: int = 0


@dataclass
class Terminal:
    id: str
    cwd: Path
    envs: dict[str, str]
    cols: int
    rows: int
    lazy_start: bool = False
    created_at: str = field(default_factory=iso_utc)
    store: OutputStore = field(default_factory=lambda: OutputStore(memory_limit=SCROLLBACK_MEMORY))

    def __post_init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None
        self.readers: set[Reader] = set()
        self.last_activity = time.monotonic()
        self._master: int | None = None
        self._pidfd: int | None = None
        self._reading = False
        self._pending_input = bytearray()
        self._input_drained = anyio.Event()
        self._start_lock = anyio.Lock()
        self._finished = anyio.Event()
        self._exited = False
        self._eof = False
        self.on_finished: list[Callable[[Terminal], None]] = []

    # -- state -------------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self.process is not None

    @property
    def active(self) -> bool:
        return self.process is not None and self.exit_code is None

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    async def wait_finished(self) -> None:
        await self._finished.wait()

    def info(self) -> dict[str, object]:
        return {
            "id": self.id,
            "cwd": str(self.cwd),
            "envs": self.envs,
            "cols": self.cols,
            "rows": self.rows,
            "createdAt": self.created_at,
            "active": self.active,
            "lazyStart": self.lazy_start,
        }

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        async with self._start_lock:
            if self.process is not None or self.finished:
                return
            env = {**os.environ, **self.envs}
            argv = [default_shell(), "-i", "-l"]
            process, master = await anyio.to_thread.run_sync(
                spawn_on_pty, argv, self.cwd, env, self.cols, self.rows
            )
            if self.finished:  # killed while it was starting
                kill_session(process.pid)
                os.close(master)
                process.wait()  # SIGKILLed: immediate
                return
            self.process, self._master = process, master
            loop = asyncio.get_running_loop()
            self._pidfd = os.pidfd_open(process.pid)
            loop.add_reader(self._pidfd, self._on_process_exit)
            self._resume_reading()

    def resize(self, cols: int, rows: int) -> None:
        if self._master is not None and not self._exited:
            set_window_size(self._master, cols, rows)
        self.cols, self.rows = cols, rows

    def kill(self) -> None:
        """SIGKILL the whole session; the exit path then closes clients with 137."""
        if self.process is None:
            self._finish()
            return
        if self.exit_code is None:
            kill_session(self.process.pid)

    # -- output ------------------------------------------------------------------------------

    def _resume_reading(self) -> None:
        if not self._reading and self._master is not None:
            asyncio.get_running_loop().add_reader(self._master, self._on_readable)
            self._reading = True

    def _pause_reading(self) -> None:
        if self._reading and self._master is not None:
            asyncio.get_running_loop().remove_reader(self._master)
            self._reading = False

    def _on_readable(self) -> None:
        assert self._master is not None
        got = 0
        chunks: list[bytes] = []
        while got < READ_BUDGET:
            try:
                data = os.read(self._master, READ_SIZE)
            except BlockingIOError:
                break
            except OSError:  # EIO: every slave fd is closed; any other error ends the stream too
                data = b""
            if not data:
                self._pause_reading()
                if chunks:
                    self.store.append(b"".join(chunks))
                self._on_eof()
                return
            chunks.append(data)
            got += len(data)
        if chunks:
            self.store.append(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            self.last_activity = time.monotonic()
            self._update_flow()

    def _update_flow(self) -> None:
        """Pause reading while the fastest attached client lags too far; resume when it caught up."""
        if self._master is None or self._eof:
            return
        lag = self.store.size - max((r.offset for r in self.readers), default=self.store.size)
        if lag > HIGH_WATER and not self._exited:
            self._pause_reading()
        elif lag <= LOW_WATER:
            self._resume_reading()

    def attach(self, reader: Reader) -> None:
        self.readers.add(reader)
        self.last_activity = time.monotonic()

    def detach(self, reader: Reader) -> None:
        self.readers.discard(reader)
        self.last_activity = time.monotonic()
        self._update_flow()

    def progressed(self) -> None:
        """A client sent output up to its reader offset: maybe resume reading."""
        if not self._reading:
            self._update_flow()

    # -- input -------------------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        """Queue input for the PTY; waits while too much is pending (the program isn't reading)."""
        if self._master is None or self._exited:
            raise ProcessLookupError("PTY session is not running")
        self.last_activity = time.monotonic()
        self._pending_input += data
        self._flush_input()
        while len(self._pending_input) > MAX_PENDING_INPUT and not self._exited:
            drained = self._input_drained
            await drained.wait()

    def _flush_input(self) -> None:
        if self._master is None:
            return
        loop = asyncio.get_running_loop()
        try:
            while self._pending_input:
                written = os.write(self._master, self._pending_input[:READ_SIZE])
                del self._pending_input[:written]
        except BlockingIOError:
            pass
        except OSError:
            self._pending_input.clear()
        if self._pending_input:
            loop.add_writer(self._master, self._flush_input)
        else:
            loop.remove_writer(self._master)
            self._input_drained.set()
            self._input_drained = anyio.Event()

    # -- exit --------------------------------------------------------------------------------

    def _on_process_exit(self) -> None:
        assert self.process is not None and self._pidfd is not None
        returncode = self.process.poll()
        if returncode is None:
            return
        asyncio.get_running_loop().remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        self.exit_code = 128 - returncode if returncode < 0 else returncode
        self._exited = True
        # Output the shell wrote just before exiting may still be in flight in the pty
        # layer: keep reading until EOF (all slave fds closed), or give up shortly after if a
        # background job still holds the terminal open.
        self._resume_reading()
        asyncio.get_running_loop().call_later(0.5, self._on_eof)

    def _on_eof(self) -> None:
        self._eof = True
        if not self._exited:
            return  # the shell closed its terminal but lives on: wait for its exit
        self._finish()

    def _finish(self) -> None:
        if self._finished.is_set():
            return
        self._pause_reading()
        if self._master is not None:
            loop = asyncio.get_running_loop()
            loop.remove_writer(self._master)
            os.close(self._master)
            self._master = None
        if self.process is not None and self.exit_code is None:
            self.exit_code = 137
        if self.process is None and self.exit_code is None:
            self.exit_code = 137  # killed before it was ever started
        self._exited = True
        self._input_drained.set()
        self.store.close()
        self._finished.set()
        for callback in self.on_finished:
            callback(self)
