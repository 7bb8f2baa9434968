"""Start a shell on a fresh pseudo-terminal in its own session, and kill that session.

The shell is a session leader with the PTY as its controlling terminal, so Ctrl+C, job
control and SIGHUP behave as in a real terminal. Shell choice and tree killing come from
the shared `process/groups.py`; only the terminal-specific parts live here.
"""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import subprocess
import termios
from pathlib import Path

from toolbox.process.groups import default_shell, kill_tree_now, signal_pids

__all__ = ["default_shell", "kill_session", "set_window_size", "spawn_on_pty"]


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
    """Every process still in session `sid`, also orphans whose parent shell is gone."""
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    members.append(int(entry.name))
            except OSError:
                continue
    return members


def kill_session(sid: int) -> None:
    """SIGKILL the shell's tree (group + descendants, via groups.py), then any process left
    in its session (background jobs re-parented away from the shell)."""
    kill_tree_now(sid)
    signal_pids(session_members(sid), signal.SIGKILL)
