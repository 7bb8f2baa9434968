"""Live system metrics of the sandbox, read from cgroup v2 (or the host when absent)."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from toolbox.timestamps import iso_utc

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _own_cgroup() -> Path:
    """The cgroup v2 directory of this process (`0::/path` in /proc/self/cgroup)."""
    text = _read(Path("/proc/self/cgroup")) or ""
    for line in text.splitlines():
        if line.startswith("0::"):
            candidate = CGROUP_ROOT / line[3:].lstrip("/")
            if candidate.is_dir():
                return candidate
    return CGROUP_ROOT


def cpu_limit(cgroup: Path) -> float:
    raw = _read(cgroup / "cpu.max")
    if raw:
        quota, _, period = raw.partition(" ")
        if quota != "max" and period:
            return int(quota) / int(period)
    return float(os.cpu_count() or 1)


def cpu_usage_seconds(cgroup: Path) -> float:
    raw = _read(cgroup / "cpu.stat")
    if raw:
        for line in raw.splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
    # No cgroup accounting: the whole machine's busy time from /proc/stat.
    first = (_read(Path("/proc/stat")) or "cpu 0").splitlines()[0].split()[1:]
    ticks = [int(v) for v in first]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def memory(cgroup: Path) -> tuple[int, int, int]:
    """(used, total, cache) in bytes."""
    meminfo: dict[str, int] = {}
    for line in (_read(Path("/proc/meminfo")) or "").splitlines():
        key, _, rest = line.partition(":")
        meminfo[key] = int(rest.split()[0]) * 1024 if rest.split() else 0
    total = meminfo.get("MemTotal", 0)
    limit = _read(cgroup / "memory.max")
    current = _read(cgroup / "memory.current")
    if current is not None and cgroup != CGROUP_ROOT:
        cache = 0
        for line in (_read(cgroup / "memory.stat") or "").splitlines():
            key, _, value = line.partition(" ")
            if key == "file":
                cache = int(value)
        if limit and limit != "max":
            total = min(total, int(limit)) if total else int(limit)
        return max(int(current) - cache, 0), total, cache
    cache = meminfo.get("Cached", 0) + meminfo.get("Buffers", 0)
    used = total - meminfo.get("MemAvailable", total)
    return used, total, cache


@dataclass
class _Sample:
    at: float
    cpu_seconds: float


class MetricsSampler:
    """CPU percentage needs two readings; the previous request's reading is reused so that
    nothing polls in the background when nobody asks."""

    MIN_WINDOW = 0.25

    def __init__(self) -> None:
        self.cgroup = _own_cgroup()
        self._last: _Sample | None = None

    def _sample(self) -> _Sample:
        return _Sample(time.monotonic(), cpu_usage_seconds(self.cgroup))

    def read(self) -> dict[str, object]:
        """Blocking (file reads, a short sleep on the first call): run in a worker thread."""
        limit = cpu_limit(self.cgroup)
        previous = self._last
        now = self._sample()
        if previous is None or now.at - previous.at < self.MIN_WINDOW or now.at - previous.at > 60:
            previous = now
            time.sleep(self.MIN_WINDOW)
            now = self._sample()
        self._last = now
        elapsed = max(now.at - previous.at, 1e-6)
        cpu_pct = max(0.0, (now.cpu_seconds - previous.cpu_seconds) / (elapsed * limit) * 100.0)
        used, total, cache = memory(self.cgroup)
        disk = os.statvfs("/")
        disk_total = disk.f_blocks * disk.f_frsize
        disk_free = disk.f_bavail * disk.f_frsize
        stamp = datetime.now(timezone.utc).replace(microsecond=0)
        return {
            "timestamp": iso_utc(stamp),
            "timestampUnix": int(stamp.timestamp()),
            "cpuCount": int(math.ceil(limit)),
            "cpuUsedPct": round(min(cpu_pct, 100.0), 2),
            "memUsed": used,
            "memTotal": total,
            "memCache": cache,
            "diskUsed": disk_total - disk.f_bfree * disk.f_frsize,
            "diskTotal": disk_total,
            "diskFree": disk_free,
        }
