"""Each runtime's own, never reused, range of sandbox uids (when the runtime runs as root).

A uid is the kernel's idea of who owns files, processes and keyrings; a later sandbox
given an earlier one's uid could reach whatever of it outlived the sandbox (its kernel
keyring did, issue 13). So uids are never handed out twice: each runtime records the
next free uid of its range in `STATE/uids.json` (a high-water mark, saved before the uid
is used), and ranges come from a host-wide list (`/var/lib/sandbox-toolbox/uid-ranges.json`,
under an exclusive lock) so two runtimes on one host never share one. A range goes back to the pool only when
nothing of its sandboxes can remain: its state dir (their homes and tmps, the only places
a sandbox can write on the host) is gone and no process runs as any of its uids.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from runtime.private import private_dir, write_private

# Far above real users, and above the 200000+ that runtimes before ranges handed out.
FIRST_UID = 1_000_000
RANGE_SIZE = 65_536
LAST_UID = 2**31 - 2  # below (uid_t)-1 and anything that treats uids as signed
HOST_RANGES = Path(os.environ.get("RUNTIME_UID_RANGES", "/var/lib/sandbox-toolbox/uid-ranges.json"))


class UidsExhausted(Exception):
    pass


@dataclass
class UidRange:
    path: Path  # STATE/uids.json
    base: int
    size: int
    next: int
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def open(cls, state_root: Path, host_ranges: Path = HOST_RANGES) -> UidRange:
        path = state_root / "uids.json"
        mine: dict[str, int] | None = None
        if path.exists():
            mine = {k: int(v) for k, v in json.loads(path.read_text()).items()}
        base = _reserve(host_ranges, state_root, mine["base"] if mine else None)
        if mine is None or mine["base"] != base:
            mine = {"base": base, "size": RANGE_SIZE, "next": base}
        uids = cls(path, mine["base"], mine["size"], mine["next"])
        uids._save()
        return uids

    def skip_past(self, uids: set[int]) -> None:
        """Never hand out a uid a sandbox on disk already has (one made before ranges)."""
        with self._lock:
            inside = [u for u in uids if self.base <= u < self.base + self.size]
            if inside and max(inside) >= self.next:
                self.next = max(inside) + 1
                self._save()

    def allocate(self) -> int:
        with self._lock:  # called from worker threads
            if self.next >= self.base + self.size:
                raise UidsExhausted(f"this runtime used all {self.size} uids of its range "
                                    f"{self.base}-{self.base + self.size - 1}; start a new state dir")
            uid = self.next
            self.next += 1
            self._save()  # before the uid is used: a crash must not hand it out again
            return uid

    def _save(self) -> None:
        write_private(self.path, json.dumps({"base": self.base, "size": self.size,
                                             "next": self.next}).encode())


def sandbox_range(state_root: Path, host_ranges: Path | None = None) -> int:
    """The base of a new range of RANGE_SIZE host ids for one sandbox with its own root
    (its user namespace maps ids 0-65535 onto it: root inside is the base). Recorded in the
    host-wide list under `state_root`, so it is never handed out again while that state
    dir, where the sandbox's disk lives, or any process with one of its ids remains."""
    return _reserve(host_ranges or HOST_RANGES, state_root, None)


def _reserve(host_ranges: Path, state_root: Path, base: int | None) -> int:
    """The base of `state_root`'s range in the host-wide list: `base` (re-recorded if the
    list lost it), else an abandoned range (see the module doc), else the first range
    after every range given out."""
    private_dir(host_ranges.parent)
    lock_fd = os.open(host_ranges.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        try:
            ranges: list[dict[str, object]] = json.loads(host_ranges.read_text()).get("ranges", [])
        except FileNotFoundError:
            ranges = []
        taken = [int(str(r["base"])) for r in ranges]
        if base is None:
            abandoned = _abandoned(ranges)
            if abandoned:
                ranges = [r for r in ranges if int(str(r["base"])) != abandoned]
                taken.remove(abandoned)
                base = abandoned
            else:
                base = max([FIRST_UID - RANGE_SIZE, *taken]) + RANGE_SIZE
            if base + RANGE_SIZE - 1 > LAST_UID:
                raise UidsExhausted(f"no uid range left in {host_ranges}")
        if base not in taken:
            ranges.append({"base": base, "size": RANGE_SIZE, "state": str(state_root)})
            write_private(host_ranges, json.dumps({"ranges": ranges}, indent=1).encode())
        return base
    finally:
        os.close(lock_fd)


def _abandoned(ranges: list[dict[str, object]]) -> int | None:
    """The base of a range whose state dir is gone and whose uids own no process."""
    gone = [int(str(r["base"])) for r in ranges if not Path(str(r["state"])).exists()]
    if not gone:
        return None
    alive = _process_uids()
    for base in sorted(gone):
        if not any(base <= uid < base + RANGE_SIZE for uid in alive):
            return base
    return None


def _process_uids() -> set[int]:
    uids: set[int] = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            for line in status.read_text().splitlines():
                if line.startswith("Uid:"):
                    uids.update(int(field) for field in line.split()[1:])
                    break
        except (OSError, ValueError):
            continue  # exited meanwhile
    return uids
