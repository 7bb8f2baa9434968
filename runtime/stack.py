"""`python -m runtime up`: the proxy, the runtime and the control plane in one process tree.

The control plane (Daytona's REST API, `controlplane/`) is served on a Unix socket in a
0700 directory (`STATE/control/api.sock`); the proxy runs as a child process (`python -m
proxy serve ... --registry file:... --api-upstream unix:...`) and forwards
`http://{domain}:{port}/api/...` there, so a crash or overload of one sandbox's traffic
never takes the control plane with it. The control plane writes the proxy's registry and
reads its last-activity records from `/metrics`.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import secrets
import socket
import sys
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx

from controlplane.backend import Resources
from controlplane.auth import DEFAULT_ORGANIZATION, new_key
from controlplane.plane import ControlPlane, PlaneConfig
from controlplane.sandboxes.routes import PublicUrls
from mcpserver.http import McpEndpoint
from runtime import codemount
from runtime.backend import LocalBackend
from runtime.limits import Limits
from runtime.manager import Runtime, SandboxError
from runtime.network import DEFAULT_RANGE
from runtime.rootfs import build_key
from runtime.snapshots import Snapshot, SnapshotError, SnapshotStore
from toolbox.tasks import BackgroundTask, TaskOwner

_ACTIVITY = re.compile(r'^proxy_sandbox_last_activity_seconds\{sandbox="([^"]+)"\} ([0-9.eE+]+)$',
                       re.MULTILINE)


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "sandbox-toolbox"


def parse_activity(metrics_text: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in _ACTIVITY.finditer(metrics_text)}


def _secret_file(path: Path, nbytes: int = 24, value: str | None = None) -> str:
    """A secret kept in the state dir (0600), so URLs and keys survive a restart."""
    if path.exists():
        return path.read_text().strip()
    value = value or secrets.token_urlsafe(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


def _die_with_parent() -> None:
    """In the proxy's child process: SIGTERM when the main job dies, even by SIGKILL, so a
    crashed main job never leaves a proxy holding its port."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, 15)


@dataclass
class StackConfig:
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    domain: str = "localhost"
    pool_size: int = 1
    idle_timeout: float = 15 * 60
    limits: Limits = field(default_factory=Limits)
    api_key: str | None = None
    # Sandbox networking (root): the address range, block-all by default, a resolver override.
    network: str = DEFAULT_RANGE
    network_block_all: bool = False
    dns: str | None = None
    # Snapshot layers (runtime/snapshots.py): STATE/layers unless shared.
    layers_dir: Path | None = None
    # "host" (bwrap over the host's root) or "snapshot" (own roots); None: RUNTIME_ROOTFS.
    rootfs: str | None = None


class Stack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        state = config.state_dir.resolve()
        state.mkdir(parents=True, exist_ok=True)
        os.chmod(state, 0o700)  # registry.json and every sandbox.json hold preview tokens
        self.api_key_file = state / "api-key"
        # The default organization's key (shown in the banner), kept in plain text 0600.
        if config.api_key:
            self.api_key = config.api_key
        else:
            self.api_key = _secret_file(self.api_key_file, value=new_key())
        # A static proxy key for the main job's own probes; valid for every sandbox.
        self.internal_key = _secret_file(state / "internal-key", 32)
        self.secret = _secret_file(state / "proxy-secret", 32)
        control_dir = state / "control"
        control_dir.mkdir(exist_ok=True)
        os.chmod(control_dir, 0o700)  # uvicorn makes the socket 0666; the directory guards it
        self.control_socket = control_dir / "api.sock"
        self.snapshots = SnapshotStore(state, layers_dir=config.layers_dir)
        # Idle auto-stop is the control plane's (autoStopInterval, from the proxy's activity).
        self.runtime = Runtime(state, pool_size=config.pool_size, limits=config.limits,
                               idle_timeout=0, write_registry=False, restart_crashed=False,
                               network=config.network, network_block_all=config.network_block_all,
                               dns=config.dns, rootfs_mode=config.rootfs,
                               # The control plane's default disk: pooled sandboxes have it.
                               disk_gib=float(Resources().disk), snapshots=self.snapshots)
        self.backend = LocalBackend(self.runtime, snapshots=self.snapshots)  # image builds go to the same store
        self.registry_path = state / "registry.json"
        self.plane = ControlPlane(
            PlaneConfig(state_dir=state, urls=PublicUrls("http", config.domain, config.port),
                        registry_path=self.registry_path, preview_secret=self.secret.encode(),
                        default_auto_stop=math.ceil(config.idle_timeout / 60) if config.idle_timeout > 0 else 0),
            self.backend, visible=self.wait_routed, activity=self.read_activity)
        self.proxy: asyncio.subprocess.Process | None = None
        self.default_snapshot: Snapshot | None = None
        # The main job's background work (the proxy's watcher, restarting what a crash
        # stopped) runs in one task group, open from start() to the end of stop().
        self.tasks = TaskOwner()
        # MCP for coding agents at /api/mcp (mcpserver/http.py): its tools call this main job's
        # API and toolboxes through the proxy, with the caller's own key.
        self.mcp = McpEndpoint(self._known_key, self.api_url, spawn=self.tasks.spawn)
        self._lifetime = AsyncExitStack()
        self._watch: BackgroundTask | None = None
        self._restarting: BackgroundTask | None = None
        self._stopping = False
        self._http = httpx.AsyncClient(timeout=5)

    @property
    def proxy_url(self) -> str:
        return f"http://{self.config.domain}:{self.config.port}"

    @property
    def api_url(self) -> str:
        return f"{self.proxy_url}/api"

    def info(self) -> dict[str, object]:
        return {
            "proxy_url": self.proxy_url,
            "domain": self.config.domain,
            "toolbox_url": f"{self.proxy_url}/toolbox",
            "api_url": self.api_url,
            "api_key_file": None if self.config.api_key else str(self.api_key_file),
            "limits_backend": self.runtime.backend.description,
            "pool_size": self.config.pool_size,
            "pool_ready": len(self.runtime.pool),
            "idle_timeout": self.config.idle_timeout,
            "object_storage": self.plane.resources.object_storage.describe(),
        }

    def urls(self, sandbox_id: str, token: str) -> dict[str, str]:
        domain, port = self.config.domain, self.config.port
        return {
            "toolbox": f"{self.proxy_url}/toolbox/{sandbox_id}",
            "preview": f"http://{{port}}-{sandbox_id}.{domain}:{port}/",
            "example_preview": f"http://3000-{sandbox_id}.{domain}:{port}/",
            "terminal": f"http://22222-{sandbox_id}.{domain}:{port}/?DAYTONA_SANDBOX_AUTH_KEY={token}",
        }

    async def read_activity(self) -> dict[str, float]:
        url = f"http://{self.config.host}:{self.config.port}/metrics"
        response = await self._http.get(url, headers={"host": f"{self.config.domain}:{self.config.port}",
                                                      "authorization": f"Bearer {self.internal_key}"})
        response.raise_for_status()
        return parse_activity(response.text)

    async def wait_routed(self, sandbox_id: str, timeout: float = 2.0) -> None:
        """Return once the proxy routes `sandbox_id`, so `create` hands out a sandbox whose
        first call through the proxy succeeds (the proxy re-reads the registry file at most
        every 0.25 s). The probe also opens the proxy's connection to the new daemon."""
        url = f"http://{self.config.host}:{self.config.port}/toolbox/{sandbox_id}/version"
        headers = {"host": f"{self.config.domain}:{self.config.port}",
                   "authorization": f"Bearer {self.internal_key}"}
        async with asyncio.timeout(timeout):
            while True:
                response = await self._http.get(url, headers=headers)
                if response.headers.get("x-proxy-error") != "sandbox-not-found":
                    return
                await asyncio.sleep(0.02)

    async def start(self) -> None:
        self._check_port()
        await self.ensure_default_snapshot()
        await self._lifetime.enter_async_context(self.tasks.running())
        await self.runtime.open()
        await self.plane.open()
        await self.plane.adopt_key(self.api_key, DEFAULT_ORGANIZATION)
        await self._start_proxy()
        self.plane.run_policies()

    async def _known_key(self, key: str) -> bool:
        return await anyio.to_thread.run_sync(self.plane.keys.authenticate, key) is not None

    async def ensure_default_snapshot(self) -> None:
        """Build the default snapshot on the first start (a minute or so, its progress
        printed as it goes; in a thread, so the loop stays free), find it after that."""
        # The daemon's launcher and host libraries too (runtime/codemount.py): seconds once.
        try:
            await asyncio.to_thread(codemount.prepare, self.runtime.python)
        except RuntimeError as exc:
            raise SandboxError(500, str(exc)) from None
        if os.geteuid() != 0 and self.snapshots.cached_build(build_key()) is None:
            print("warning: the default snapshot is built as root (debootstrap); not building it",
                  file=sys.stderr, flush=True)
            return
        try:
            snapshot = await asyncio.to_thread(self.snapshots.ensure_default,
                                               lambda line: print(line, flush=True))
        except SnapshotError as exc:
            raise SandboxError(500, str(exc)) from None
        self.default_snapshot = snapshot

    def _check_port(self) -> None:
        """Fail in milliseconds, before any sandbox starts, when the proxy could not listen."""
        host, port = self.config.host, self.config.port
        try:
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
                probe.bind((host, port))
        except OSError as exc:
            raise SandboxError(500, f"the proxy cannot listen on {host}:{port} ({exc.strerror}); "
                                    "stop what uses it or pick another port with --port "
                                    "or RUNTIME_PROXY_PORT") from None

    async def _start_proxy(self) -> None:
        env = dict(os.environ, PROXY_API_KEYS=self.internal_key, PROXY_SECRET=self.secret,
                   PROXY_PARENT_PID=str(os.getpid()))
        self.proxy = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "serve", "--host", self.config.host,
            "--port", str(self.config.port), "--domain", self.config.domain,
            "--registry", f"file:{self.registry_path}", "--public-url", self.proxy_url,
            "--api-upstream", f"unix:{self.control_socket}",
            stdout=asyncio.subprocess.PIPE, env=env, start_new_session=True, preexec_fn=_die_with_parent,
        )
        assert self.proxy.stdout is not None
        try:
            async with asyncio.timeout(30):
                while True:
                    line = await self.proxy.stdout.readline()
                    if not line:
                        raise SandboxError(500, f"the proxy exited (code {await self.proxy.wait()}); "
                                                f"is port {self.config.port} free?")
                    if line.startswith(b"Starting proxy"):
                        break
        except TimeoutError:
            raise SandboxError(500, "the proxy did not start within 30 s") from None
        self._watch = self.tasks.spawn(self._watch_proxy(self.proxy), name="watch the proxy")

    async def _watch_proxy(self, proxy: asyncio.subprocess.Process) -> None:
        """Drain the proxy's stdout; if it dies while we run, start it again."""
        assert proxy.stdout is not None
        while await proxy.stdout.read(65536):
            pass
        code = await proxy.wait()
        delay = 0.5
        while not self._stopping:
            print(f"the proxy exited (code {code}); restarting it", file=sys.stderr, flush=True)
            try:
                await self._start_proxy()
                return
            except SandboxError as exc:
                print(f"error: {exc.message}", file=sys.stderr, flush=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)

    def restart_interrupted(self) -> None:
        """In the background: start again what a crash of the previous main job stopped."""
        self._restarting = self.tasks.spawn(self.plane.restart_interrupted(), name="restart interrupted sandboxes")

    async def stop(self) -> None:
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
        if self._restarting is not None:
            self._restarting.cancel()
            await self._restarting.wait()
        await self.mcp.aclose()  # MCP calls in flight end before their sandboxes do
        await self.plane.close()  # policies first: nothing may act on sandboxes being stopped
        await self.runtime.close()
        if self.proxy is not None and self.proxy.returncode is None:
            self.proxy.terminate()
            try:
                async with asyncio.timeout(15):
                    await self.proxy.wait()
            except TimeoutError:
                self.proxy.kill()
                await self.proxy.wait()
        await self._http.aclose()
        await self._lifetime.aclose()  # cancels and awaits whatever of ours still runs
