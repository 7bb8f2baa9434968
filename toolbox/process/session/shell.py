"""One long-lived session shell and the running of one command inside it.

Each command is *sourced* into the shell (`. cmd.sh`), so `cd`, `export`, variables and
functions persist. Its stdout and stderr go to two FIFOs the daemon reads, labelling every
chunk with its stream marker; stdin is /dev/null for synchronous commands and a FIFO the
daemon holds open for asynchronous ones (so `input` can feed it). After the command the
shell prints a status line (with a per-shell nonce) on its own stdout, the control pipe.

The daemon also holds a write end of each output FIFO until that status line arrives, so
a reader never sees a premature EOF; once it arrives, the command's own output is entirely
in the pipe buffers (the command has exited), so draining until "would block" takes all of
it before the exit code is recorded (Daytona bug #4422). Background children that still
hold the FIFOs afterwards are drained and their later output discarded, never blocked.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shlex
import subprocess
from pathlib import Path

import anyio
import anyio.abc

from toolbox.process import groups
from toolbox.process.output import OutputStore
from toolbox.process.session.logs import STDERR, STDOUT
from toolbox.tasks import Spawn

log = logging.getLogger("toolbox.process")

READ_SIZE = 64 * 1024


def _open_fifo_pair(path: Path) -> tuple[int, int]:
    """(read end, daemon-held write end) of a fresh FIFO; neither blocks."""
    os.mkfifo(path, 0o600)
    read_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    write_fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    return read_fd, write_fd


def _close(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


class SessionShell:
    """The shell process of a session: started once, fed one command at a time."""

    def __init__(self, process: anyio.abc.Process, spawn: Spawn, shell: str = "sh") -> None:
        self.process = process
        self._spawn = spawn  # for drains that outlive a command (background children)
        # POSIX shells (dash, bash --posix) exit on a syntax error in a `.` file; `command .`
        # takes away `.`'s special-builtin status, so a bad command cannot end the session.
        # zsh's `command` means "external command", and its `.` does not exit anyway.
        self._source = "." if os.path.basename(shell).startswith("zsh") else "command ."
        self.pid = process.pid
        self._nonce = secrets.token_hex(8)
        self._buffer = b""
        self.exit_code: int | None = None  # set once the shell itself has exited

    @classmethod
    async def start(cls, cwd: Path, env: dict[str, str], spawn: Spawn) -> "SessionShell":
        shell = groups.default_shell()
        process = await groups.open_group_process(
            [shell],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=str(cwd),
            env=env,
        )
        return cls(process, spawn, shell)

    @property
    def alive(self) -> bool:
        return self.exit_code is None

    async def _status(self, cmd_id: str) -> int:
        """Wait for this command's status line; the shell's exit code if it exits first."""
        assert self.process.stdout is not None
        tag = f"{self._nonce}:{cmd_id}:".encode()
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                if line.startswith(tag):
                    try:
                        return int(line[len(tag) :])
                    except ValueError:
                        pass
                elif line.strip():
                    log.debug("session shell %s said: %r", self.pid, line[:200])
            try:
                self._buffer += await self.process.stdout.receive(READ_SIZE)
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                code = await self.process.wait()
                # As a shell reports it: 128 + signal number for a signal death.
                self.exit_code = code if code >= 0 else 128 - code
                return self.exit_code

    async def run(
        self,
        cmd_id: str,
        command: str,
        workdir: Path,
        output: OutputStore,
        stdin_fifo: Path | None,
    ) -> int:
        """Run `command` to completion, appending labelled output to `output`.

        `stdin_fifo`, when given, must already exist and be held open by the caller.
        """
        script = workdir / "cmd.sh"
        script.write_text(command + "\n")
        out_r = out_w = err_r = err_w = None
        try:
            out_r, out_w = _open_fifo_pair(workdir / "stdout")
            err_r, err_w = _open_fifo_pair(workdir / "stderr")
            stdin = shlex.quote(str(stdin_fifo)) if stdin_fifo else "/dev/null"
            q = shlex.quote
            wrapper = (
                f"{{ {self._source} {q(str(script))}\n}} < {stdin} > {q(str(workdir / 'stdout'))} "
                f"2> {q(str(workdir / 'stderr'))}\n"
                f"printf '\\n%s:%s:%d\\n' '{self._nonce}' {q(cmd_id)} \"$?\"\n"
            )
            assert self.process.stdin is not None
            try:
                await self.process.stdin.send(wrapper.encode())
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass  # the shell is gone: _status() reports its exit code
            async with anyio.create_task_group() as tg:
                tg.start_soon(_pump, out_r, STDOUT, output)
                tg.start_soon(_pump, err_r, STDERR, output)
                code = await self._status(cmd_id)
                tg.cancel_scope.cancel()
            # The command has exited: what it wrote is in the pipe buffers now.
            _close(out_w)
            _close(err_w)
            out_w = err_w = None
            out_open = _drain(out_r, STDOUT, output)
            err_open = _drain(err_r, STDERR, output)
            for fd, still_open in ((out_r, out_open), (err_r, err_open)):
                if still_open:
                    self._discard_later(fd)
                else:
                    _close(fd)
            out_r = err_r = None
            return code
        finally:
            for leftover in (out_r, out_w, err_r, err_w):
                _close(leftover)
            for name in ("stdout", "stderr", "cmd.sh"):
                try:
                    os.unlink(workdir / name)
                except OSError:
                    pass

    def _discard_later(self, fd: int) -> None:
        try:
            self._spawn(_discard(fd), name=f"discard what background children of shell {self.pid} write")
        except RuntimeError:  # the daemon is stopping: no one is left to block
            _close(fd)

    async def kill(self, grace: float = groups.DEFAULT_GRACE) -> None:
        await groups.kill_tree(self.pid, grace)
        if self.process.stdin is not None:
            try:
                await self.process.stdin.aclose()
            except (anyio.BrokenResourceError, OSError):
                pass


async def _pump(fd: int, marker: bytes, output: OutputStore) -> None:
    """Copy a FIFO into the store, each chunk behind its stream marker, until EOF."""
    while True:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            await anyio.wait_readable(fd)
            continue
        if not data:
            return
        output.append(marker + data)


def _drain(fd: int, marker: bytes, output: OutputStore) -> bool:
    """Read what is buffered now; True if writers still hold the FIFO open."""
    while True:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return True
        except OSError as exc:
            if exc.errno == errno.EINTR:
                continue
            return False
        if not data:
            return False
        output.append(marker + data)


async def _discard(fd: int) -> None:
    """Keep reading (and dropping) a FIFO that a background child still writes to, so it
    never blocks or dies of SIGPIPE; closed at EOF (the child exited or was killed) or
    when the daemon stops."""
    try:
        while True:
            try:
                if not os.read(fd, READ_SIZE):
                    return
            except BlockingIOError:
                await anyio.wait_readable(fd)
            except OSError:
                return
    finally:
        _close(fd)

