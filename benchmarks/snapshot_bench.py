"""The default snapshot and the daemon's launcher: what they cost.

Prints:
- first-ever default-snapshot build (debootstrap, then the package step) in a fresh
  layers dir: seconds per step and the layer's size (needs root and Debian's mirror;
  --skip-build uses the shared test layers dir instead);
- warm (cached) `ensure_default` from another state dir on the same layers dir;
- code_mount's host-library preparation, cold (ldd over the interpreter's ELF files and
  the copy) and warm (from the disk cache, as a new runtime process does);
- the daemon's start to its first answer in the snapshot root, through the launcher.

Usage: sudo .venv/bin/python benchmarks/snapshot_bench.py [--skip-build] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime import codemount  # noqa: E402
from runtime.snapshots import SnapshotStore  # noqa: E402
from tests.layer_helpers import daemon_in, overlay, shared_default  # noqa: E402


def du(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def build(scratch: Path) -> SnapshotStore:
    store = SnapshotStore(scratch / "state", layers_dir=scratch / "layers")
    marks: list[tuple[float, str]] = []
    started = time.monotonic()

    def progress(line: str) -> None:
        marks.append((time.monotonic() - started, line))
        if not line.startswith("  "):
            print(f"  {marks[-1][0]:6.1f} s  {line}", flush=True)

    snapshot = store.ensure_default(progress)
    total = time.monotonic() - started
    layer = store.layer_path(snapshot.layers[0])
    print(f"first-ever default snapshot build: {total:.1f} s, {snapshot.size / 1e6:.0f} MB of files, "
          f"{du(layer) / 1e6:.0f} MB on disk", flush=True)
    return store


def warm(layers: Path, runs: int) -> None:
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(dir="/var/tmp") as state:
            store = SnapshotStore(Path(state), layers_dir=layers)
            started = time.perf_counter()
            store.ensure_default()
            times.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            store.ensure_default()
            again = (time.perf_counter() - started) * 1000
    print(f"warm ensure_default (new state dir, cached build): p50 {statistics.median(times):.1f} ms; "
          f"same state dir again: {again:.2f} ms")


def prepare_costs(runs: int) -> None:
    cold = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(dir="/var/tmp") as cache:
            os.environ[codemount.CACHE_ENV] = cache
            codemount.prepare.cache_clear()
            started = time.perf_counter()
            prepared = codemount.prepare(sys.executable)
            cold.append(time.perf_counter() - started)
            assert prepared is not None
            libs = len(list(prepared.so_dir.iterdir()))
            size = du(prepared.so_dir)
            warm_times = []
            for _ in range(runs):
                codemount.prepare.cache_clear()
                started = time.perf_counter()
                codemount.prepare(sys.executable)
                warm_times.append((time.perf_counter() - started) * 1000)
    os.environ.pop(codemount.CACHE_ENV)
    codemount.prepare.cache_clear()
    print(f"launcher libraries: {libs} files, {size / 1e6:.1f} MB; prepare cold p50 "
          f"{statistics.median(cold):.2f} s, warm (disk cache, new process) p50 {statistics.median(warm_times):.0f} ms")


def daemon_start(layers: list[Path], runs: int) -> None:
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch:
            started = time.perf_counter()
            with overlay(layers, Path(scratch) / "root") as merged, daemon_in(merged, Path(scratch)) as client:
                times.append((time.perf_counter() - started) * 1000)
                assert client.get("/version").status_code == 200
    print(f"daemon start to first answer in the default snapshot, through the launcher: "
          f"p50 {statistics.median(times):.0f} ms (min {min(times):.0f})")


def interpreter_start(layers: list[Path], runs: int) -> None:
    """`python -c 'import ssl'`: on the host directly, and inside bwrap in the snapshot
    root through the launcher (the loader's own start and the library path search)."""
    def timed(argv: list[str]) -> float:
        samples = []
        for _ in range(runs * 2):
            started = time.perf_counter()
            subprocess.run(argv, check=True)
            samples.append((time.perf_counter() - started) * 1000)
        return statistics.median(samples)

    probe = ["-c", "import ssl"]
    host = timed([sys.executable, *probe])
    with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch:
        cfg = Path(scratch) / "pyvenv.cfg"
        cfg.write_text(codemount.PYVENV_CFG)
        with overlay(layers, Path(scratch) / "root") as merged:
            code = codemount.code_mount(sys.executable, cfg, host_root=False)
            base = ["bwrap", "--bind", str(merged), "/", "--proc", "/proc", "--dev", "/dev", *code.argv,
                    "--setenv", "PYTHONPATH", codemount.LIB_INSIDE, "--"]
            inside = timed([*base, code.python, *probe])
            shell = timed([*base, "/bin/true"])
    print(f"python -c 'import ssl': host {host:.0f} ms; in the snapshot through the launcher {inside:.0f} ms "
          f"(bwrap alone {shell:.0f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-build", action="store_true", help="no first-ever build; use the shared test layers")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the build uses debootstrap, the daemon an overlay root")
    scratch = Path(tempfile.mkdtemp(prefix="snapshot-bench-", dir="/var/tmp"))
    try:
        if args.skip_build:
            store, _ = shared_default()
        else:
            store = build(scratch)
        warm(store.layers_dir, args.runs)
        prepare_costs(args.runs)
        snapshot = SnapshotStore(scratch / "probe", layers_dir=store.layers_dir).ensure_default()
        interpreter_start(store.lower_dirs(snapshot.layers), args.runs)
        daemon_start(store.lower_dirs(snapshot.layers), args.runs)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
