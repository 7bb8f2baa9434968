"""Real processes for the forwarder and proxy tests: upstream apps, proxies, Redis."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import REPO_ROOT, free_port, stop_cleanly
from tests.system import skip_unless

DOMAIN = "preview.test"
API_KEY = "test-api-key-1"
SECRET = "test-secret"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def ipv6_loopback() -> bool:
    """Some CI containers run without IPv6; the IPv6 tests skip there."""
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while time.monotonic() < deadline:
        with socket.socket(family) as sock:
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {host}:{port}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class App:
    process: subprocess.Popen[bytes]
    port: int

    def stop(self) -> None:
        stop(self.process)


def start_app(host: str = "127.0.0.1", port: int | None = None, wait: bool = True) -> App:
    port = port or free_port()
    process = subprocess.Popen([sys.executable, "-m", "tests.proxy_apps", "--host", host, "--port", str(port)],
                               env=_env(), cwd=REPO_ROOT, start_new_session=True)
    if wait:
        wait_for_port(host, port)
    return App(process, port)


@dataclass
class Proxy:
    process: subprocess.Popen[bytes]
    port: int
    registry_path: Path | None
    # One worker prints whether a task was left pending as it stops (toolbox/server.py).
    single_worker: bool = True
    closing_line: str = ""  # what it printed as it stopped (set by stop())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def host(self, port: int, label: str) -> str:
        return f"{port}-{label}.{DOMAIN}:{self.port}"

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def write_registry(self, sandboxes: dict[str, dict[str, object]]) -> None:
        assert self.registry_path is not None
        write_registry(self.registry_path, sandboxes)

    def stop(self) -> None:
        """SIGTERM; a single-worker proxy that then stops must say that no task of its own
        was left pending (several workers print nothing of the kind)."""
        if self.single_worker:
            self.closing_line = stop_cleanly(self.process, "proxy", timeout=15)
        else:
            stop(self.process)


def write_registry(path: Path, sandboxes: dict[str, dict[str, object]]) -> None:
    # Written beside and renamed into place, as the local runtime does.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"sandboxes": sandboxes}))
    os.replace(tmp, path)


def start_proxy(tmp: Path, sandboxes: dict[str, dict[str, object]] | None = None, *, registry: str | None = None,
                extra_args: list[str] | None = None, extra_env: dict[str, str] | None = None) -> Proxy:
    port = free_port()
    registry_path = None
    if registry is None:
        registry_path = tmp / "registry.json"
        write_registry(registry_path, sandboxes or {})
        registry = f"file:{registry_path}"
    env = _env()
    env.update(PROXY_API_KEYS=f"{API_KEY},other-key", PROXY_SECRET=SECRET)
    env.update(extra_env or {})
    args = [sys.executable, "-m", "proxy", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--domain", DOMAIN, "--registry", registry, *(extra_args or [])]
    process = subprocess.Popen(args, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, start_new_session=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if b"Starting proxy" not in line:
        process.kill()
        raise RuntimeError(f"proxy did not start: {line!r}")
    wait_for_port("127.0.0.1", port)
    return Proxy(process, port, registry_path, single_worker="--workers" not in (extra_args or []))


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes] | None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)


def start_redis(private: bool = False) -> RedisServer:
    """The CI's redis on 6379 if it answers, else (or when `private`: for a test that
    pauses the server) a redis-server of its own on a free port."""
    import redis

    if not private:
        try:
            redis.Redis(port=6379, socket_connect_timeout=0.5).ping()
            return RedisServer(6379, None)
        except redis.RedisError:
            pass
    skip_unless("redis-server")
    binary = shutil.which("redis-server")
    assert binary is not None
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL, start_new_session=True)
    wait_for_port("127.0.0.1", port)
    return RedisServer(port, process)


def one_shot_upstream(port: int, response: bytes, *, delay: float = 0.0) -> threading.Event:
    """A bare HTTP responder on `port` for a single request, listening after `delay` seconds.

    Returns an event set once it listens.
    """
    listening = threading.Event()

    def serve() -> None:
        time.sleep(delay)
        with socket.socket() as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", port))
            server.listen()
            listening.set()
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(response)

    threading.Thread(target=serve, daemon=True).start()
    return listening
