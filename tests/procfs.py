"""Reading /proc in tests: which processes run, their command lines and parents.

Every reader tolerates a process that ends while it is read (it is then skipped, or reads
as empty), since the machine runs other tests' processes too.
"""

from __future__ import annotations

from pathlib import Path


def pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def cmdline(pid: int) -> bytes:
    """The NUL-separated command line; b"" for a process that is gone (or a kernel thread)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (`[state, ppid, ...]`); None once gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def ppid(pid: int) -> int:
    fields = stat_fields(pid)
    return int(fields[1]) if fields else 0


def gone(pid: int) -> bool:
    """Ended: no such process, or a zombie nobody reaped yet."""
    fields = stat_fields(pid)
    return fields is None or fields[0] in ("Z", "X")


def command_lines(containing: bytes = b"") -> dict[int, bytes]:
    """pid -> command line of every live process whose command line contains `containing`."""
    found = {}
    for pid in pids():
        line = cmdline(pid)
        if line and containing in line:
            found[pid] = line
    return found


def children(pid: int) -> dict[int, str]:
    """The direct children of `pid` and their state letters."""
    found = {}
    for child in pids():
        fields = stat_fields(child)
        if fields is not None and int(fields[1]) == pid:
            found[child] = fields[0]
    return found
