"""Process hygiene shared by every process API: shells, process groups, signals, reaping.

Everything the daemon starts runs in its own process group (its own session, so it also
has no controlling terminal of ours). Stopping it means stopping the whole group and the
descendants that left it: SIGTERM first, SIGKILL after a grace period. When the daemon is
PID 1 of a container it also reaps orphans that the kernel re-parents to it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from functools import lru_cache

import anyio
import anyio.abc

log = logging.getLogger("toolbox.process")

DEFAULT_GRACE = 5.0  # seconds between SIGTERM and SIGKILL (Daytona's termination grace period)
_POLL = 0.05

# Signal names the API accepts (with or without the SIG prefix, any case).
SIGNALS: dict[str, signal.Signals] = {
    "INT": signal.SIGINT,
    "TERM": signal.SIGTERM,
    "KILL": signal.SIGKILL,
    "HUP": signal.SIGHUP,
    "QUIT": signal.SIGQUIT,
    "STOP": signal.SIGSTOP,
    "CONT": signal.SIGCONT,
    "USR1": signal.SIGUSR1,
    "USR2": signal.SIGUSR2,
}


def parse_signal(name: str) -> signal.Signals:
    """`INT`, `sigint`, `SIGINT` or `2` → signal.SIGINT; ValueError with the accepted names."""
    text = name.strip().upper()
    if text.startswith("SIG"):
        text = text[3:]
    if text in SIGNALS:
        return SIGNALS[text]
    if text.isdigit():
        for sig in SIGNALS.values():
            if sig.value == int(text):
                return sig
    raise ValueError(f"unknown signal {name!r}; use one of {', '.join(SIGNALS)}")


# -- shell selection ---------------------------------------------------------------------------

_PREFERRED_SHELLS = ("/usr/bin/zsh", "/bin/zsh", "/usr/bin/bash", "/bin/bash")


@lru_cache(maxsize=1)
def default_shell() -> str:
    """Daytona's choice: zsh, then bash (as listed in /etc/shells), then $SHELL, then sh.

    `TOOLBOX_SHELL` (an executable path) overrides the choice.
    """
    forced = os.environ.get("TOOLBOX_SHELL")
    if forced and os.access(forced, os.X_OK):
        return forced
    try:
        with open("/etc/shells", encoding="utf-8", errors="replace") as fh:
            listed = {line.strip() for line in fh if line.strip() and not line.startswith("#")}
    except OSError:
        listed = set()
    for candidate in _PREFERRED_SHELLS:
        if candidate in listed and os.access(candidate, os.X_OK):
            return candidate
    shell = os.environ.get("SHELL")
    if shell and os.access(shell, os.X_OK):
        return shell
    return "/bin/sh"


# -- /proc helpers -----------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state is [0], ppid [1], pgid [2])."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    return raw[raw.rfind(b")") + 2 :].decode("ascii", "replace").split()


def _all_pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def process_table() -> dict[int, tuple[int, int, str, int]]:
    """pid → (ppid, pgid, state, start time in clock ticks) for every visible process."""
    table: dict[int, tuple[int, int, str, int]] = {}
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields and len(fields) > 19:
            table[pid] = (int(fields[1]), int(fields[2]), fields[0], int(fields[19]))
    return table


def descendants(root: int, table: dict[int, tuple[int, int, str, int]] | None = None) -> list[int]:
    """Every process below `root` in the parent tree (not `root` itself)."""
    table = process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_rest) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: list[int] = []
    stack = list(children.get(root, ()))
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, ()))
    return found


def group_members(pgid: int, table: dict[int, tuple[int, int, str, int]] | None = None) -> list[int]:
    table = process_table() if table is None else table
    return [pid for pid, (_ppid, group, _state, _start) in table.items() if group == pgid]


def clock_ticks_now() -> int:
    """Now, in the unit of /proc/<pid>/stat start times (clock ticks since boot)."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK"))


# -- signalling --------------------------------------------------------------------------------


def signal_pids(pids: Iterable[int], sig: int) -> int:
    """Send `sig` to each pid that still exists; returns how many were signalled."""
    sent = 0
    for pid in pids:
        try:
            os.kill(pid, sig)
            sent += 1
        except (ProcessLookupError, PermissionError):
            pass
    return sent


def signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _alive(pids: Iterable[int]) -> list[int]:
    """Pids that still run (zombies count as gone: they only wait to be reaped)."""
    living = []
    for pid in pids:
        fields = _stat_fields(pid)
        if fields and fields[0] not in ("Z", "X"):
            living.append(pid)
    return living


def tree_of(leader: int) -> list[int]:
    """The leader's process group plus every descendant of the leader (even ones that left
    the group with setsid), leader included when alive."""
    table = process_table()
    pids = set(group_members(leader, table)) | set(descendants(leader, table))
    if leader in table:
        pids.add(leader)
    return sorted(pids)


async def kill_tree(leader: int, grace: float = DEFAULT_GRACE) -> None:
    """Stop a group leader, its group and all its descendants: TERM, wait `grace`, KILL.

    The set is re-read while waiting so processes forked during the grace period are
    caught too. Never blocks the event loop: /proc walks are cheap, waits are async sleeps.
    """
    targets = set(tree_of(leader))
    if not targets:
        return
    signal_group(leader, signal.SIGTERM)
    signal_pids(targets, signal.SIGTERM)
    # Stopped processes only act on SIGTERM once continued.
    signal_group(leader, signal.SIGCONT)
    signal_pids(targets, signal.SIGCONT)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        await anyio.sleep(_POLL)
        targets = set(_alive(targets | set(tree_of(leader))))
        if not targets:
            return
    for _ in range(3):
        signal_group(leader, signal.SIGKILL)
        signal_pids(targets, signal.SIGKILL)
        await anyio.sleep(_POLL)
        targets = set(_alive(targets | set(tree_of(leader))))
        if not targets:
            return
    log.warning("processes survived SIGKILL: %s", sorted(targets))


def kill_tree_now(leader: int) -> None:
    """Synchronous SIGKILL of a whole tree (timeouts, daemon shutdown)."""
    targets = tree_of(leader)
    signal_group(leader, signal.SIGKILL)
    signal_pids(targets, signal.SIGKILL)


# -- orphan reaping ----------------------------------------------------------------------------


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process (Linux PR_SET_CHILD_SUBREAPER)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # 36 = PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


class ZombieReaper:
    """Reaps orphans re-parented to the daemon (when it is PID 1 or a subreaper).

    `waitpid(-1)` would steal exit statuses from subprocess waiters, so it only reaps
    zombies it has seen twice `interval` apart: a child someone waits for is reaped at
    once, so a zombie that lingers is an orphan nobody will wait for.
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._seen: set[int] = set()
        self.reaped = 0

    def sweep(self) -> int:
        me = os.getpid()
        zombies = {
            pid for pid, (ppid, _pgid, state, _start) in process_table().items()
            if ppid == me and state == "Z"
        }
        count = 0
        for pid in zombies & self._seen:
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            if done:
                count += 1
        self._seen = zombies
        self.reaped += count
        return count

    async def run(self) -> None:
        while True:
            await anyio.sleep(self.interval)
            await anyio.to_thread.run_sync(self.sweep)


def reaping_wanted() -> bool:
    """Reap when we are a container's init, or when asked to (TOOLBOX_SUBREAPER=1)."""
    return os.getpid() == 1 or os.environ.get("TOOLBOX_SUBREAPER") == "1"


# -- spawning ----------------------------------------------------------------------------------


async def open_group_process(argv: list[str], **kwargs: object) -> anyio.abc.Process:
    """anyio.open_process in a new session: its own process group, leader = the child."""
    kwargs.setdefault("start_new_session", True)
    return await anyio.open_process(argv, **kwargs)  # type: ignore[arg-type]


class Child:
    """A child process in its own session, started with `subprocess.Popen` and awaited
    through a pidfd.

    Popen spawns with vfork, which stays ~1 ms even from a daemon with a large heap
    (the event loop's fork-based spawn copies page tables: several ms), and a pidfd lets
    the event loop wait for the exit without a watcher thread or SIGCHLD handler.
    """

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid

    @classmethod
    def spawn(cls, argv: list[str], **kwargs: object) -> "Child":
        kwargs.setdefault("start_new_session", True)
        return cls(subprocess.Popen(argv, **kwargs))  # type: ignore[call-overload]

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    async def wait(self) -> int:
        if self.popen.poll() is not None:
            return self.popen.returncode
        try:
            pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            pidfd = None
        if pidfd is None:  # kernels before 5.3: poll
            while self.popen.poll() is None:
                await anyio.sleep(0.005)
            return self.popen.returncode
        try:
            while self.popen.poll() is None:
                await anyio.wait_readable(pidfd)
        finally:
            os.close(pidfd)
        return self.popen.returncode


async def write_all(fd: int, data: bytes) -> bool:
    """Write `data` to a non-blocking pipe without blocking the loop; False if the reader
    went away first."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            await anyio.wait_writable(fd)
        except (BrokenPipeError, ConnectionResetError):
            return False
    return True
