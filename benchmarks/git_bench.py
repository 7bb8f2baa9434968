"""Git endpoint figures: clone and status of a mid-size repository, and how /version
latency holds up while clones run. Prints numbers; asserts nothing.

    .venv/bin/python benchmarks/git_bench.py [--files 3000]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daytona._sync.git import Git  # noqa: E402
from daytona_toolbox_api_client import GitApi  # noqa: E402

from tests.git_server import make_origin  # noqa: E402
from tests.helpers import sdk_api_client, start_daemon  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--parallel", type=int, default=4)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="git-bench-"))
    files = {f"pkg{i % 50}/module_{i}.py": f"# file {i}\n" + "x = 1\n" * 40 for i in range(args.files)}
    origin = make_origin(tmp, "big.git", files)
    daemon = start_daemon(tmp / "daemon")
    try:
        git = Git(GitApi(sdk_api_client(daemon)))
        started = time.perf_counter()
        git.clone(url=f"file://{origin}", path="big")
        print(f"clone of {args.files} files: {time.perf_counter() - started:.2f} s")

        (daemon.workdir / "big" / "pkg1" / "module_1.py").write_text("changed\n")
        (daemon.workdir / "big" / "new.txt").write_text("new\n")
        timings = []
        for _ in range(20):
            started = time.perf_counter()
            git.status("big")
            timings.append(time.perf_counter() - started)
        print(f"status ({args.files} files, 2 changed): median {statistics.median(timings) * 1000:.1f} ms, "
              f"max {max(timings) * 1000:.1f} ms")

        clones = [
            threading.Thread(target=git.clone, kwargs={"url": f"file://{origin}", "path": f"par{i}"})
            for i in range(args.parallel)
        ]
        latencies = []
        started = time.perf_counter()
        for thread in clones:
            thread.start()
        with daemon.client() as http:
            while any(thread.is_alive() for thread in clones):
                before = time.perf_counter()
                http.get("/version")
                latencies.append(time.perf_counter() - before)
                time.sleep(0.02)
        print(f"{args.parallel} parallel clones: {time.perf_counter() - started:.2f} s; /version during them: "
              f"{len(latencies)} calls, median {statistics.median(latencies) * 1000:.1f} ms, "
              f"max {max(latencies) * 1000:.1f} ms")
    finally:
        daemon.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
