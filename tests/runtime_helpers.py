"""Start the main job (`./scripts/start`, i.e. `python -m runtime up`) for tests."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from runtime.network import DEFAULT_RANGE
from tests import procfs
from toolbox.server import STOPPED_CLEANLY
from tests.helpers import REPO_ROOT, free_port
from tests.layer_helpers import shared_default, shared_layers_dir
from tests.system import requires

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

needs_bwrap = requires("bwrap")
# The daemon's interpreter inside every sandbox (its venv: aiohttp and the rest), at the same
# path with either root; with an own root, user code's `python3` is the snapshot's own.
DAEMON_PYTHON = "/opt/sandbox-toolbox/venv/bin/python"

# The installed `sandbox-toolbox` script beside this interpreter, as a user runs it; the
# module when the venv predates the script.
_SCRIPT = Path(sys.executable).parent / "sandbox-toolbox"
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "client.cli"]


@dataclass
class Stack:
    process: subprocess.Popen[str]
    state_dir: Path
    port: int
    banner: dict[str, str]
    env: dict[str, str]
    banner_lines: list[str] = field(default_factory=list)
    output: list[str] = field(default_factory=list)  # what it printed after the banner
    drain: threading.Thread | None = None
    closing_line: str = ""  # what it printed as it stopped (set by stop())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_key(self) -> str:
        return (self.state_dir / "api-key").read_text().strip()

    @property
    def first_id(self) -> str:
        return self.banner["Sandbox"]

    @property
    def cli_env(self) -> dict[str, str]:
        """What a user of `sandbox-toolbox` exports: the two lines the banner prints."""
        return dict(self.env, DAYTONA_API_URL=f"http://localhost:{self.port}/api", DAYTONA_API_KEY=self.api_key)

    def cli(self, *args: str, check: bool = True) -> Any:
        """`sandbox-toolbox ARGS --format json` against this main job: the decoded JSON, or
        the CompletedProcess when it failed and `check` is off."""
        result = subprocess.run([*CLI, *args, "--format", "json"], env=self.cli_env,
                                capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
        if check and result.returncode != 0:
            raise AssertionError(f"sandbox-toolbox {' '.join(args)} failed: {result.stderr}")
        if result.returncode != 0:
            return result
        return json.loads(result.stdout) if result.stdout.strip() else None

    def inspect(self, sandbox_id: str) -> Any:
        """`python -m runtime inspect ID`: what the runtime knows of a sandbox (host only)."""
        result = subprocess.run([sys.executable, "-m", "runtime", "inspect", sandbox_id], env=self.env,
                                capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
        if result.returncode != 0:
            raise AssertionError(f"runtime inspect {sandbox_id} failed: {result.stderr}")
        return json.loads(result.stdout)

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Daytona's REST API of the main job, through the proxy, with the default key."""
        return httpx.request(method, f"{self.url}/api{path}", timeout=kwargs.pop("timeout", 60),
                             headers={"Authorization": f"Bearer {self.api_key}", "Host": f"localhost:{self.port}"},
                             **kwargs)

    def preview_token(self, sandbox_id: str) -> str:
        response = self.api("GET", f"/sandbox/{sandbox_id}/ports/3000/preview-url")
        assert response.status_code == 200, response.text
        return str(response.json()["token"])

    def toolbox(self, sandbox_id: str, timeout: float = 30) -> httpx.Client:
        return httpx.Client(base_url=f"{self.url}/toolbox/{sandbox_id}", timeout=timeout,
                            headers={"Authorization": f"Bearer {self.api_key}"})

    def execute(self, sandbox_id: str, command: str, timeout: float = 30) -> tuple[int, str]:
        with self.toolbox(sandbox_id, timeout=timeout + 10) as client:
            response = client.post("/process/execute", json={"command": command, "timeout": int(timeout)})
        assert response.status_code == 200, response.text
        body = response.json()
        return body["exitCode"], body["result"]

    def preview(self, sandbox_id: str, port: int, path: str = "/", token: str | None = None,
                **kwargs: Any) -> httpx.Response:
        headers = {"Host": f"{port}-{sandbox_id}.localhost:{self.port}"}
        if token:
            headers["X-Daytona-Preview-Token"] = token
        return httpx.get(f"{self.url}{path}", headers=headers, timeout=30, **kwargs)

    def stop(self) -> int:
        """Ctrl-C (SIGINT); a main job that then stops must say that no task of its own,
        its runtime's, its control plane's or its proxy's was left pending (toolbox/server.py).
        A main job that had ended already (a test killed it) is not asked."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                return self.process.returncode
            if self.drain is not None:
                self.drain.join(10)
            said = [line for line in self.output if line.startswith("Stopped")]
            self.closing_line = said[-1] if said else ""
            assert self.closing_line == STOPPED_CLEANLY, f"the main job stopped, but: {self.closing_line or 'said nothing'}"
        return self.process.returncode


def start_stack(state_dir: Path, *extra: str, pool_size: int = 1, idle_timeout: float = 0,
                timeout: float = 60, checkout: Path = REPO_ROOT, port: int | None = None,
                prefix: tuple[str, ...] = (), extra_env: dict[str, str] | None = None) -> Stack:
    """Run ./scripts/start exactly as the README says, with its state under `state_dir`
    (options as RUNTIME_* variables, which every version of the CLI reads; `prefix`: a
    command to run it under, such as nsenter)."""
    port = port or free_port()
    # Every test stack shares one layers dir, with the default snapshot built once per
    # machine before the first stack starts (tests/layer_helpers.py).
    layers_env = {}
    if os.geteuid() == 0:
        shared_default()
        layers_env = {"RUNTIME_LAYERS_DIR": str(shared_layers_dir())}
    # Test network rule: sandboxes of a test's main job send nothing off the host (as root
    # they would have NAT egress, Daytona's default) unless the test asks, with a namespace
    # of its own to talk to (tests/net_helpers.py).
    env = dict(os.environ, RUNTIME_STATE_DIR=str(state_dir), RUNTIME_PROXY_PORT=str(port),
               RUNTIME_POOL_SIZE=str(pool_size), RUNTIME_IDLE_TIMEOUT=str(idle_timeout),
               PYTHONUNBUFFERED="1",
               # The default range: main jobs alive at once (a module's stack and a test's own)
               # each get a block of it from the host-wide record, the same one again when a
               # test restarts one on its state dir (runtime/netranges.py).
               **{"RUNTIME_NETWORK_BLOCK_ALL": "1", "RUNTIME_SANDBOX_NETWORK": DEFAULT_RANGE,
                  **layers_env, **(extra_env or {})})
    process = subprocess.Popen([*prefix, str(checkout / "scripts" / "start"), *extra], env=env,
                               stdout=subprocess.PIPE, stderr=None, text=True, cwd=checkout)
    assert process.stdout is not None
    banner: dict[str, str] = {}
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        match = re.match(r"^([A-Z][\w ]+):\s+(\S+)", line)
        if match:
            banner[match.group(1).strip()] = match.group(2)
        if line.startswith("Press Ctrl-C"):
            break
    if "Proxy" not in banner:
        process.kill()
        raise RuntimeError(f"the main job did not start (exit {process.poll()}): {banner}")
    # Keep draining its output so it never blocks on a full pipe (kept: stop() reads its last line).
    stack = Stack(process, state_dir, port, banner, env, lines)
    stream = process.stdout

    def drain() -> None:
        for line in stream:
            stack.output.append(line.rstrip("\n"))

    stack.drain = threading.Thread(target=drain, daemon=True)
    stack.drain.start()
    return stack


def ws_connect(stack: Stack, sandbox_id: str, port: int, path: str = "/", token: str | None = None) -> ClientConnection:
    """A WebSocket to a preview, with the Host the proxy routes on."""
    from websockets.sync.client import connect

    sock = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
    headers = {"X-Daytona-Preview-Token": token} if token else {}
    return connect(f"ws://{port}-{sandbox_id}.localhost:{stack.port}{path}", sock=sock,
                   additional_headers=headers, open_timeout=10)


def cgroup_dirs(stack: Stack, sandbox_id: str) -> list[Path]:
    """The cgroup directories holding the sandbox, found by its own uid (`uid` in its
    sandbox.json: the uid its processes run as on the host, with bwrap or its own root)."""
    import hashlib
    import json

    uid = json.loads((stack.state_dir / "sandboxes" / sandbox_id / "sandbox.json").read_text())["uid"]
    # Every runtime numbers its uids from the same base: only this main job's groups count.
    prefix = "sbx-" + hashlib.sha256(str(stack.state_dir.resolve()).encode()).hexdigest()[:8] + "-"
    found = []
    for group in Path("/sys/fs/cgroup").glob(f"**/sandbox-toolbox/{prefix}*"):
        try:
            pids = (group / "cgroup.procs").read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue  # ended meanwhile
            uids = next((line.split()[1:] for line in status.splitlines() if line.startswith("Uid:")), [])
            if str(uid) in uids:
                found.append(group)
                break
    return found


def pool_ready(stack: Stack) -> int:
    """Pooled sandboxes waiting for a claim: their daemon has imported and said `pooled`
    (bwrap is running and the pool directory exists; a launch in progress counts too)."""
    pool = stack.state_dir / "pool"
    return sum(1 for d in pool.iterdir() if d.is_dir()) if pool.exists() else 0


def bwrap_pids(state_dir: Path) -> set[int]:
    """The processes that hold the sandboxes of the runtime on `state_dir`, host-wide: bwrap
    (`host` root) or the own-root launcher and its forks, pid 1 of each sandbox among them
    (`snapshot` root: their command line names the sandbox's staging dir in the state dir)."""
    return {pid for pid, line in procfs.command_lines(str(state_dir).encode()).items()
            if line.startswith(b"bwrap\0") or b"runtime.rootlauncher" in line}


def own_roots() -> bool:
    """Whether a test's main job gives sandboxes their own root (`snapshot`, as root) rather
    than bwrap over the host's root: the same default the runtime takes (runtime/rootmode.py)."""
    from runtime.rootmode import default_rootfs_mode

    return os.geteuid() == 0 and default_rootfs_mode() == "snapshot"
