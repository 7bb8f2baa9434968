"""Start real daemons for tests and build official-SDK objects over them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from toolbox.server import STOPPED_CLEANLY

if TYPE_CHECKING:  # the functions below import the SDK only when called
    from daytona._sync.filesystem import FileSystem
    from daytona._sync.process import Process
    from daytona.internal.toolbox_api_client_proxy import ToolboxApiClientProxy
    from daytona_toolbox_api_client import ApiClient

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stopped_line(process: subprocess.Popen[bytes]) -> str:
    """The closing line a stopped server printed (toolbox/server.py), '' if none.

    Read without blocking: the sandbox's own processes may still hold the pipe open."""
    assert process.stdout is not None
    os.set_blocking(process.stdout.fileno(), False)
    try:
        rest = process.stdout.read() or b""
    except BlockingIOError:
        rest = b""
    lines = [line for line in rest.decode("utf-8", "replace").splitlines() if line.startswith("Stopped")]
    return lines[-1] if lines else ""


def stop_cleanly(process: subprocess.Popen[bytes], what: str, timeout: float = 10) -> str:
    """SIGTERM a server of ours and return the closing line it printed, asserting it says
    that no task was left pending. '' when it had ended already (a test killed it) or had to
    be killed after `timeout`."""
    if process.poll() is not None:
        return ""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return ""
    line = stopped_line(process)
    assert line == STOPPED_CLEANLY, f"the {what} stopped, but: {line or 'said nothing'}"
    return line


@dataclass
class RunningDaemon:
    """A `python -m toolbox serve` process on a free port (or a Unix socket)."""

    process: subprocess.Popen[bytes]
    url: str
    workdir: Path
    home: Path
    sandbox_id: str | None
    uds: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    closing_line: str = ""  # what it printed as it stopped (set by stop())

    def client(self, **kwargs: Any) -> httpx.Client:
        if self.uds is not None:
            return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.uds)), base_url="http://toolbox", **kwargs)
        return httpx.Client(base_url=self.url, **kwargs)

    def stop(self) -> None:
        """SIGTERM, as a supervisor stops it; a daemon that then stops must say that no
        task of its own was left pending (toolbox/server.py)."""
        self.closing_line = stop_cleanly(self.process, "daemon")


def start_daemon(
    tmp: Path,
    *,
    sandbox_id: str | None = "sbx-test",
    uds: bool = False,
    extra_env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    user: int | None = None,
    timeout: float = 20.0,
    command_prefix: list[str] | None = None,
) -> RunningDaemon:
    """Start a real daemon whose work dir and $HOME live under `tmp`.

    `command_prefix` runs the daemon under a wrapper (e.g. `setpriv` to drop capabilities).
    """
    workdir = tmp / "work"
    home = tmp / "home"
    workdir.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        HOME=str(home),
        PYTHONPATH=str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        PYTHONUNBUFFERED="1",
    )
    env.pop("DAYTONA_SANDBOX_ID", None)
    env.update(extra_env or {})
    args = [sys.executable, "-m", "toolbox", "serve", "--workdir", str(workdir)]
    uds_path: Path | None = None
    if uds:
        uds_path = tmp / "toolbox.sock"
        args += ["--uds", str(uds_path)]
        url = "http://toolbox"
    else:
        port = free_port()
        args += ["--host", "127.0.0.1", "--port", str(port)]
        url = f"http://127.0.0.1:{port}"
    if sandbox_id:
        args += ["--sandbox-id", sandbox_id]
    args += extra_args or []
    # e.g. a sandbox (bwrap ...) the daemon runs inside
    args = [*(command_prefix or []), *args]
    process = subprocess.Popen(
        args,
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=None,
        user=user,
        start_new_session=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if b"Starting toolbox server" in line or not line:
            break
    if b"Starting toolbox server" not in line:
        process.kill()
        raise RuntimeError(f"daemon did not start (exit {process.poll()}): {line!r}")
    return RunningDaemon(process, url, workdir, home, sandbox_id, uds_path, env)


def sdk_api_client(daemon: RunningDaemon, *, via_prefix: bool = False) -> ApiClient | ToolboxApiClientProxy[ApiClient]:
    """The SDK's generated ApiClient pointed at the daemon.

    `via_prefix` wraps it in the SDK's own ToolboxApiClientProxy, which puts `/{sandboxId}`
    in front of every path exactly as it does against Daytona's proxy.
    """
    from daytona.internal.toolbox_api_client_proxy import ToolboxApiClientProxy
    from daytona_toolbox_api_client import ApiClient, Configuration

    api_client = ApiClient(Configuration(host=daemon.url))
    if via_prefix:
        assert daemon.sandbox_id
        return ToolboxApiClientProxy(api_client, daemon.sandbox_id, daemon.url)
    return api_client


def sdk_filesystem(daemon: RunningDaemon, *, via_prefix: bool = False) -> FileSystem:
    from daytona._sync.filesystem import FileSystem
    from daytona_toolbox_api_client import FileSystemApi

    return FileSystem(FileSystemApi(sdk_api_client(daemon, via_prefix=via_prefix)), httpx.Client(timeout=60))


def sdk_process(daemon: RunningDaemon, *, via_prefix: bool = False, language: str = "python") -> Process:
    from daytona._sync.process import Process
    from daytona_toolbox_api_client import ProcessApi

    return Process(language, ProcessApi(sdk_api_client(daemon, via_prefix=via_prefix)), httpx.Client(timeout=60))
