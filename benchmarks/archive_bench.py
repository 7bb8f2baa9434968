"""Archive and restore of a sandbox with ~200 MiB of mixed files, through a real Runtime.

The home holds copies of installed packages (many small text files plus some .so files,
~100 MiB), 60 MiB of random bytes (incompressible), a 30 MiB text log (compressible), and
a 1 GiB sparse file with 4 MiB of data. Prints, per run and as medians: archive time,
archive size, disk used before and after, start time of the archived sandbox (restore +
start) against a plain start, and `cp -a` of the same home for scale (the restore is
bound by creating the files, as a copy is).

Usage (as root, bwrap installed): .venv/bin/python benchmarks/archive_bench.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.runtime_direct import DirectRuntime  # noqa: E402

PACKAGES = ("jedi", "pip", "pygments", "aiohttp", "setuptools", "hypothesis", "mypy", "pydantic_core")


def du(path: Path) -> int:
    out = subprocess.run(["du", "-s", "--block-size=1", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    site = Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    fill = " && ".join([
        "mkdir -p pkgs", *(f"cp -r {site / p} pkgs/" for p in PACKAGES if (site / p).exists()),
        "for i in 1 2 3; do head -c 20M /dev/urandom > random$i.bin; done",
        "seq 1 4000000 | sed 's/$/ INFO request served in 12 ms/' | head -c 30M > app.log",
        "truncate -s 1G disk.img && head -c 4M /dev/urandom | dd of=disk.img bs=1M seek=512 conv=notrunc 2>/dev/null",
        "find . -type f | wc -l",
    ])
    with tempfile.TemporaryDirectory() as tmp:
        direct = DirectRuntime(Path(tmp) / "state")
        rt = direct.runtime
        rows = []
        try:
            for _ in range(args.runs):
                spec = direct.run(rt.create())
                code, out = direct.sh(spec.id, fill, timeout=300)
                assert code == 0, out
                files = int(out.split()[-1])
                direct.run(rt.stop(spec.id))
                sandbox_dir = rt.sandboxes_dir / spec.id
                used_before = du(sandbox_dir)
                began = time.monotonic()
                subprocess.run(["cp", "-a", str(sandbox_dir / "home"), str(Path(tmp) / "copy")], check=True)
                copy_s = time.monotonic() - began
                subprocess.run(["rm", "-rf", str(Path(tmp) / "copy")], check=True)
                began = time.monotonic()
                direct.run(rt.start(spec.id))
                plain_start = time.monotonic() - began
                direct.run(rt.stop(spec.id))
                began = time.monotonic()
                direct.run(rt.archive(spec.id), timeout=600)
                archive_s = time.monotonic() - began
                size = (rt.archives_dir / f"{spec.id}.tar.zst").stat().st_size
                used_after = du(sandbox_dir)
                began = time.monotonic()
                direct.run(rt.start(spec.id), timeout=600)
                restore_s = time.monotonic() - began
                rows.append((files, used_before, archive_s, size, used_after, restore_s, plain_start, copy_s))
                print(f"files {files}, on disk {used_before / 2**20:.0f} MiB -> {used_after / 2**20:.2f} MiB "
                      f"archived; archive {archive_s:.2f} s, {size / 2**20:.0f} MiB; start archived "
                      f"{restore_s:.2f} s (plain start {plain_start:.2f} s, cp -a {copy_s:.2f} s)", flush=True)
                direct.run(rt.delete(spec.id))
        finally:
            direct.close()
    med = [statistics.median(col) for col in zip(*rows, strict=True)]
    print(f"median: on disk {med[1] / 2**20:.0f} MiB, archive {med[2]:.2f} s -> {med[3] / 2**20:.0f} MiB, "
          f"left on disk {med[4] / 2**20:.2f} MiB, restore+start {med[5]:.2f} s (plain start {med[6]:.2f} s, "
          f"cp -a {med[7]:.2f} s)")


if __name__ == "__main__":
    main()
