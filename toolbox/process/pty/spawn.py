"""Start a shell on a fresh pseudo-terminal in its own session, and kill that session.

Minimal process-group helpers local to the PTY package (the shared `process/groups.py`
covers pipes, not terminals): the shell is a session leader with the PTY as its
controlling terminal, so Ctrl+C, job control and SIGHUP behave as in a real terminal.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import struct
import subprocess
import termios
from pathlib import Path


def default_shell() -> str:
    for candidate in (os.environ.get("SHELL"), "/bin/bash", "/usr/bin/bash", "/bin/sh"):
        if candidate and os.path.isabs(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("sh") or "/bin/sh"


def set_window_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _take_controlling_terminal() -> None:  # runs in the child, after setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def spawn_on_pty(argv: list[str], cwd: Path, env: dict[str, str], cols: int, rows: int) -> tuple[subprocess.Popen[bytes], int]:
    """(process, non-blocking master fd). Blocking (fork/exec): call from a worker thread."""
    master, slave = os.openpty()
    try:
        set_window_size(slave, cols, rows)
        process = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=cwd,
            env=env,
            start_new_session=True,
            preexec_fn=_take_controlling_terminal,
            close_fds=True,
        )
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    os.set_blocking(master, False)
    fcntl.fcntl(master, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
    return process, master


def session_members(sid: int) -> list[int]:
    """Every process still in session `sid` (jobs run in their own process groups)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if os.getsid(pid) == sid:
                members.append(pid)
        except OSError:
            continue
    return members


def kill_session(sid: int, sig: int = signal.SIGKILL) -> None:
    """Signal the session leader's group first, then every other process of the session."""
    try:
        os.killpg(sid, sig)
    except OSError:
        pass
    for pid in session_members(sid):
        try:
            os.kill(pid, sig)
        except OSError:
            pass
