"""The runtime's control API and building blocks, without starting sandboxes: bad input is a
4xx with a message, never a 500; ids, limits and activity records parse as documented."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from runtime.cgroups import Group, Rlimits, detect
from runtime.control import build_app
from runtime.limits import Limits
from runtime.manager import Runtime
from runtime.sandbox import SandboxDir, SandboxSpec, bwrap_argv, valid_id
from runtime.stack import parse_activity


@pytest.fixture
def client(tmp_path: Path) -> Iterator[httpx.Client]:
    """The control API served by uvicorn on a Unix socket, as `runtime up` serves it."""
    runtime = Runtime(tmp_path / "state", pool_size=0, idle_timeout=0)
    socket_path = tmp_path / "control.sock"
    server = uvicorn.Server(uvicorn.Config(
        build_app(runtime, lambda: {"pool_ready": 0}), uds=str(socket_path), log_level="warning", lifespan="off",
    ))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "control API did not start"
        time.sleep(0.01)
    transport = httpx.HTTPTransport(uds=str(socket_path))
    with httpx.Client(transport=transport, base_url="http://runtime") as http:
        yield http
    server.should_exit = True
    thread.join(10)


@pytest.mark.parametrize("body, message", [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"id": "UPPER"}', "invalid sandbox id"),
    (b'{"id": "a.b"}', "invalid sandbox id"),
    (b'{"id": 7}', "id must be a string"),
    (b'{"egress": "internet"}', "invalid egress"),
    (b'{"env": ["A=1"]}', "env must be an object"),
    (b'{"limits": {"cpus": 0}}', "cpus must be between"),
    (b'{"limits": {"memory_mib": 4}}', "memory_mib must be between"),
    (b'{"limits": {"gpus": 1}}', "unknown limit"),
    (b'{"limits": {"pids": "many"}}', "limits.pids must be an integer"),
    (b'{"limits": {"memory_mib": 1.5}}', "limits.memory_mib must be an integer"),
    (b'{"limits": 5}', "limits must be an object"),
    (b'{"name": "x"}', "unknown field"),
])
def test_create_rejects_bad_input_with_a_message(client: httpx.Client, body: bytes, message: str) -> None:
    response = client.post("/sandboxes", content=body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_unknown_sandboxes_are_404(client: httpx.Client) -> None:
    for method, path in (("GET", "/sandboxes/nope"), ("POST", "/sandboxes/nope/stop"),
                         ("POST", "/sandboxes/nope/start"), ("DELETE", "/sandboxes/nope")):
        response = client.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
        assert "not found" in response.json()["error"]
    assert client.get("/sandboxes").json() == []
    assert client.get("/info").json() == {"pool_ready": 0}


def test_sandbox_ids_are_single_dns_labels() -> None:
    assert valid_id("abc-123") and valid_id("a" * 63)
    for bad in ("", "-a", "a-", "a" * 64, "A", "a_b", "a.b", "a/b", "é"):
        assert not valid_id(bad), bad


def test_limits_round_trip_and_defaults_are_daytonas() -> None:
    assert Limits() == Limits(cpus=1.0, memory_mib=1024, pids=512)
    assert Limits.from_json(Limits(cpus=0.5, memory_mib=256, pids=64).to_json()) == Limits(0.5, 256, 64)
    assert Limits().memory_bytes == 1 << 30


def test_activity_records_are_read_from_the_proxy_metrics() -> None:
    text = ('# TYPE proxy_sandbox_last_activity_seconds gauge\n'
            'proxy_sandbox_last_activity_seconds{sandbox="abc"} 1795879585.250\n'
            'proxy_sandbox_last_activity_seconds{sandbox="d-e"} 1795879600.000\n'
            'proxy_requests_total{kind="toolbox"} 3\n')
    assert parse_activity(text) == {"abc": 1795879585.25, "d-e": 1795879600.0}


def test_bwrap_command_isolates_by_default(tmp_path: Path) -> None:
    sandbox = SandboxDir(tmp_path / "state" / "sandboxes" / "x")
    argv = bwrap_argv(sandbox, state_root=tmp_path / "state", egress="none", run_as=(200000, 200000))
    for flag in ("--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net", "--die-with-parent",
                 "--new-session"):
        assert flag in argv
    joined = " ".join(argv)
    assert f"--tmpfs {tmp_path / 'state'}" in joined  # other sandboxes and the registry hidden
    assert "--ro-bind / /" in joined and f"--bind {sandbox.home} /home/daytona" in joined
    assert "--bounding-set=-all" in joined and "--reuid=200000" in joined
    assert "TOOLBOX_TERMINAL_PORT" in joined
    shared = bwrap_argv(sandbox, state_root=tmp_path / "state", egress="host")
    assert "--unshare-net" not in shared and "TOOLBOX_TERMINAL_PORT" not in " ".join(shared)


def test_spec_round_trips(tmp_path: Path) -> None:
    sandbox = SandboxDir(tmp_path / "s")
    sandbox.create(1000, 1000)
    spec = SandboxSpec("s", 1000, 1000, {"A": "1"}, Limits(cpus=2), "host", public=True)
    sandbox.save(spec)
    assert sandbox.load() == spec
    assert "daytona:x:1000:1000" in (sandbox.path / "etc" / "passwd").read_text()


def test_limit_backend_is_detected_and_rlimits_are_the_fallback() -> None:
    backend = detect()
    assert backend.name in ("cgroup2", "cgroup1", "rlimit") and backend.description
    own = Rlimits(own_uids=True)
    prefix = own.launch_prefix(Group(own, "x"), Limits(pids=64, memory_mib=128))
    if prefix:  # prlimit installed
        assert prefix[1:] == ["--nproc=64", f"--as={4 * 128 << 20}", "--"]
        # Sharing the user's uid, a process cap would count the user's whole session.
        shared = Rlimits(own_uids=False)
        assert shared.launch_prefix(Group(shared, "x"), Limits())[1:] == [f"--as={4 << 30}", "--"]
        assert "no process cap" in shared.description


def test_cli_says_how_to_start_the_runtime_when_none_is_running(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "runtime", "--state-dir", str(tmp_path), "list"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "no runtime is running" in result.stderr and "python -m runtime up" in result.stderr
    bad = subprocess.run([sys.executable, "-m", "runtime", "--state-dir", str(tmp_path), "create", "-e", "NOEQUALS"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr
