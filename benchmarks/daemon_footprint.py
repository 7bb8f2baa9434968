"""The daemon's footprint: import time, time to ready, idle RSS, what it imports. Prints, asserts nothing.

    .venv/bin/python benchmarks/daemon_footprint.py [--runs 5] [--repo OTHER_CHECKOUT]

Every sandbox runs a daemon, so these costs are paid everywhere (docs/footprint.md):
- import: `import toolbox.app` plus building the route table and the ASGI app in a fresh
  interpreter: wall time of that step, and CPU time of the whole child (interpreter start
  included), median of --runs;
- ready: from spawning `python -m toolbox serve` to its "Starting toolbox server" line,
  wall time and the daemon's CPU time by then (CPU is what a loaded host makes slow);
- idle RSS: VmRSS of a daemon after one `GET /version`, also with the browser terminal on
  (a second uvicorn server, as in the sandbox image);
- modules: what the serving daemon has imported after that call (`-X importtime`), and
  which heavy packages, meant to load on first use of their area, are among them.

`--repo` measures another checkout's `toolbox/` with this venv, e.g. the code before a
change: `git archive <rev> toolbox | tar -x -C /tmp/before`, then `--repo /tmp/before`.

Bounded: about 4 × --runs short-lived processes; ~10 s on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

# Packages that belong to one area (or only to the tests) and must not load until that area
# is used. watchfiles and multiprocessing are not listed: `import uvicorn` loads them for
# its reloader, whatever the daemon does.
HEAVY = (
    "aiohttp", "yarl", "multidict", "git", "gitdb", "smmap", "websockets", "wsproto",
    "jedi", "jedi_language_server", "pygls", "schemathesis", "hypothesis", "httpx", "httpcore",
    "PIL", "redis",
)

IMPORT_SNIPPET = """
import time
start = time.perf_counter()
import toolbox.app
from toolbox.config import Settings
toolbox.app.create_app(Settings.from_environment(workdir={workdir!r}, sandbox_id="sbx"))
print(time.perf_counter() - start, time.process_time())
"""

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Start:
    ready_ms: float
    cpu_ms: float
    rss_kib: int
    modules: set[str]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(repo: Path, home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HOME=str(home), PYTHONPATH=str(repo), PYTHONUNBUFFERED="1")
    for name in ("DAYTONA_SANDBOX_ID", "TOOLBOX_TERMINAL_PORT", "TOOLBOX_ENTRYPOINT"):
        env.pop(name, None)
    env.update(extra or {})
    return env


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_ms(pid: int) -> float:
    # utime and stime, fields 14 and 15 of /proc/<pid>/stat (after the parenthesised name)
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / CLOCK_TICKS


def bare_interpreter_ms() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return (time.perf_counter() - start) * 1000


def import_once(repo: Path, root: Path) -> tuple[float, float]:
    """(wall ms of import + create_app, CPU ms of the whole child)."""
    code = IMPORT_SNIPPET.format(workdir=str(root / "work"))
    out = subprocess.run([sys.executable, "-c", code], env=child_env(repo, root / "home"),
                         capture_output=True, text=True, check=True, cwd=root)
    wall, cpu = out.stdout.split()
    return float(wall) * 1000, float(cpu) * 1000


def serve_once(repo: Path, root: Path, *, importtime: bool = False, terminal: bool = False) -> Start:
    """Start a daemon, wait until it is ready, call /version once, measure, stop it."""
    port = free_port()
    args = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "toolbox", "serve",
            "--host", "127.0.0.1", "--port", str(port), "--workdir", str(root / "work"),
            "--sandbox-id", "sbx"]
    # As in the sandbox image: the browser terminal listens too (a second uvicorn server).
    extra = {"TOOLBOX_TERMINAL_PORT": str(free_port())} if terminal else None
    stderr_path = root / "stderr.txt"
    with open(stderr_path, "wb") as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(args, env=child_env(repo, root / "home", extra), cwd=root,
                                   stdout=subprocess.PIPE, stderr=stderr, start_new_session=True)
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            ready_ms = (time.perf_counter() - start) * 1000
            if b"Starting toolbox server" not in line:
                raise RuntimeError(f"daemon did not start: {line!r} {stderr_path.read_text()[-2000:]}")
            ready_cpu = cpu_ms(process.pid)
            httpx.get(f"http://127.0.0.1:{port}/version", timeout=30).raise_for_status()
            time.sleep(0.3)  # let anything the first request started settle
            rss = rss_kib(process.pid)
        finally:
            process.terminate()
            process.wait(10)
    modules = set()
    if importtime:
        for text in stderr_path.read_text().splitlines():
            match = re.match(r"import time:\s+\d+ \|\s+\d+ \|\s*(\S+)", text)
            if match:
                modules.add(match.group(1))
    return Start(ready_ms, ready_cpu, rss, modules)


def spread(values: list[float], unit: str, scale: float = 1.0) -> str:
    values = [v / scale for v in values]
    return f"median {statistics.median(values):6.1f} {unit} (min {min(values):.1f}, max {max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="checkout whose toolbox/ to measure (default: this one)")
    options = parser.parse_args()
    repo: Path = options.repo.resolve()
    runs: int = options.runs
    root = Path(tempfile.mkdtemp(prefix="footprint-bench-"))
    (root / "work").mkdir()
    (root / "home").mkdir()

    bare = [bare_interpreter_ms() for _ in range(runs)]
    imports = [import_once(repo, root) for _ in range(runs)]
    starts = [serve_once(repo, root) for _ in range(runs)]
    with_terminal = [serve_once(repo, root, terminal=True) for _ in range(max(1, runs // 2))]
    modules = serve_once(repo, root, importtime=True).modules

    print(f"{repo}: python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}, {runs} runs each")
    print(f"bare interpreter start (wall):          {spread(bare, 'ms')}")
    print(f"import toolbox.app + create_app (wall): {spread([w for w, _ in imports], 'ms')}")
    print(f"  child CPU, interpreter start included: {spread([c for _, c in imports], 'ms')}")
    print(f"python -m toolbox serve, ready (wall):  {spread([s.ready_ms for s in starts], 'ms')}")
    print(f"  daemon CPU until ready:               {spread([s.cpu_ms for s in starts], 'ms')}")
    print(f"idle RSS after one GET /version:        {spread([s.rss_kib for s in starts], 'MiB', 1024)}")
    print(f"  with the browser terminal on:         {spread([s.rss_kib for s in with_terminal], 'MiB', 1024)}")
    top = sorted({name.split(".")[0] for name in modules if not name.startswith("_")})
    print(f"modules imported by an idle daemon: {len(modules)} ({len(top)} top-level packages)")
    print(f"heavy packages loaded at idle: {', '.join(n for n in HEAVY if n in top) or 'none'}")
    print(f"top-level: {' '.join(top)}")


if __name__ == "__main__":
    main()
