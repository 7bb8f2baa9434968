"""`sandbox-toolbox` as a user runs it (a new process per command) against the real main job
(`./scripts/start --no-sandbox`, state in a temp dir), and what its client costs to import
next to the official SDK's.

Prints p50/min/max over --runs for: `--help` (no server), `info`, `list`, `preview-url`,
`exec -- true` (sandbox lookup, session, exec, followed log, exit code, session delete),
and one `upload`/`download` of a --mib file; then the import time of `client.api` and of
`from daytona import Daytona` (fresh interpreters, 3 each).

Usage: .venv/bin/python benchmarks/cli_bench.py [--runs 10] [--mib 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.runtime_helpers import CLI, start_stack


def timed(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        began = time.monotonic()
        result = subprocess.run(argv, env=env, capture_output=True, check=False)
        out.append((time.monotonic() - began) * 1000)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {result.stderr.decode()}")
    return out


def show(name: str, values: list[float]) -> None:
    ordered = sorted(values)
    print(f"{name:<28} p50 {statistics.median(ordered):7.0f} ms   min {ordered[0]:6.0f}   max {ordered[-1]:6.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--mib", type=int, default=30)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}, {args.runs} runs each")
    with tempfile.TemporaryDirectory(prefix="cli-bench-") as temp:
        stack = start_stack(Path(temp) / "state", "--no-sandbox", pool_size=1)
        try:
            env = stack.cli_env
            show("--help (no server)", timed([*CLI, "--help"], env, args.runs))
            subprocess.run([*CLI, "create", "--name", "bench"], env=env, capture_output=True, check=True)
            show("info", timed([*CLI, "info", "bench"], env, args.runs))
            show("list", timed([*CLI, "list"], env, args.runs))
            show("preview-url", timed([*CLI, "preview-url", "bench", "3000"], env, args.runs))
            show("exec -- true", timed([*CLI, "exec", "bench", "--", "true"], env, args.runs))
            local = Path(temp) / "blob"
            local.write_bytes(os.urandom(args.mib << 20))
            show(f"upload {args.mib} MiB", timed([*CLI, "upload", "bench", str(local), "blob"], env, 1))
            show(f"download {args.mib} MiB", timed([*CLI, "download", "bench", "blob", str(Path(temp) / "back")],
                                                   env, 1))
        finally:
            stack.stop()
    for name, code in (("import client.api", "import client.api"),
                       ("from daytona import Daytona", "from daytona import Daytona")):
        show(name, timed([sys.executable, "-c", code], dict(os.environ), 3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
