"""Run a script in a fresh shell, in its own process group, output captured to a file.

The script goes to the shell's stdin (no ARG_MAX limit, like Daytona). stdout and stderr
share one anonymous temp file: the kernel interleaves them exactly as written, the daemon
copies nothing while the command runs, and output of any size costs disk, not memory.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio

from toolbox.errors import Code, DaemonError
from toolbox.process import groups

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
INLINE_READ = 256 * 1024  # read this much without a thread hop (page cache, microseconds)
READ_CHUNK = 1024 * 1024


def validate_env(envs: Mapping[str, str] | None) -> dict[str, str]:
    envs = dict(envs or {})
    for name, value in envs.items():
        if not ENV_NAME.match(name):
            raise DaemonError(Code.BAD_REQUEST, f"invalid environment variable name: '{name}'")
        if "\x00" in value:
            raise DaemonError(Code.BAD_REQUEST, f"environment variable '{name}' contains a NUL byte")
    return envs


def check_cwd(path: Path, given: str) -> Path:
    """The working directory, or an error that says what is wrong with it."""
    if "\x00" in given:
        raise DaemonError(Code.BAD_REQUEST, "working directory contains a NUL byte")
    try:
        if path.is_dir():
            return path
        exists = path.exists()
    except OSError as exc:
        raise DaemonError(Code.BAD_REQUEST, f"cannot use working directory {given!r}: {exc.strerror}") from None
    if exists:
        raise DaemonError(Code.BAD_REQUEST, f"working directory {given!r} is not a directory")
    raise DaemonError(Code.FILE_NOT_FOUND, f"working directory {given!r} does not exist")


class CapturedOutput:
    """The anonymous file a command wrote its output to; deleted when closed."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="toolbox-exec-")
        self.fd = self._file.fileno()

    @property
    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def read_small(self) -> bytes:
        return os.pread(self.fd, self.size, 0)

    async def chunks(self, end: int | None = None) -> AsyncIterator[bytes]:
        """The output from the start up to `end` (default: its size now), in chunks."""
        end = self.size if end is None else end
        offset = 0
        while offset < end:
            want = min(READ_CHUNK, end - offset)
            if end <= INLINE_READ:
                chunk = os.pread(self.fd, want, offset)
            else:
                chunk = await anyio.to_thread.run_sync(os.pread, self.fd, want, offset)
            if not chunk:
                return
            yield chunk
            offset += len(chunk)

    def close(self) -> None:
        self._file.close()


@dataclass
class Finished:
    exit_code: int
    output: CapturedOutput


async def run_script(
    script: str,
    *,
    cwd: Path,
    envs: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> Finished:
    """Run `script` with the default shell; raises 408 PROCESS_EXECUTION_TIMEOUT on timeout.

    The caller owns (and must close) the returned output.
    """
    env = dict(os.environ)
    env.update(envs or {})
    output = CapturedOutput()
    try:
        stdin_read, stdin_write = os.pipe2(os.O_CLOEXEC)
        try:
            try:
                child = groups.Child.spawn(
                    [groups.default_shell()],
                    stdin=stdin_read,
                    stdout=output.fd,
                    stderr=output.fd,
                    cwd=str(cwd),
                    env=env,
                )
            except OSError as exc:
                # Daytona answers 200 with exitCode -1 and the error text when the start fails.
                os.write(output.fd, f"failed to start shell: {exc}".encode())
                return Finished(-1, output)
            finally:
                os.close(stdin_read)
            os.set_blocking(stdin_write, False)

            async def feed() -> None:
                # An early `exit` leaves the rest unread: that is fine, not an error.
                nonlocal stdin_write
                await groups.write_all(stdin_write, script.encode())
                os.close(stdin_write)  # EOF: the shell runs what it has and exits
                stdin_write = -1

            limit = timeout if timeout else math.inf
            try:
                with anyio.move_on_after(limit) as scope:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(feed)
                        await child.wait()
                        tg.cancel_scope.cancel()
            except BaseException:
                # Cancelled (daemon shutting down): leave nothing running behind.
                if child.returncode is None:
                    groups.kill_tree_now(child.pid)
                raise
        finally:
            if stdin_write >= 0:
                os.close(stdin_write)
        if scope.cancelled_caught:
            groups.kill_tree_now(child.pid)
            with anyio.CancelScope(shield=True):
                await child.wait()
            raise DaemonError(Code.PROCESS_EXECUTION_TIMEOUT, "command execution timeout")
        code = child.popen.returncode
        return Finished(code if code is not None and code >= 0 else -1, output)
    except BaseException:
        output.close()
        raise
