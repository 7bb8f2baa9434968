"""The control API (Daytona's REST API, served by the control plane) and the runtime's
building blocks, without starting sandboxes: bad input is a 4xx in Daytona's envelope with
a message, never a 500, and creates nothing; ids, limits and activity records parse as
documented."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
import uvicorn

from controlplane.app import build_app
from controlplane.plane import ControlPlane, PlaneConfig
from controlplane.sandboxes.routes import PublicUrls
from runtime.backend import LocalBackend
from runtime.cgroups import Group, Rlimits, detect
from runtime.limits import Limits
from runtime.manager import Runtime
from runtime.sandbox import SandboxDir, SandboxSpec, bwrap_argv, valid_id
from runtime.sockets import ensure_sockets_dir
from runtime.stack import parse_activity
from tests.layer_helpers import shared_default
from tests.runtime_helpers import own_roots


@pytest.fixture
def client(tmp_path: Path) -> Iterator[httpx.Client]:
    """The control plane served by uvicorn on a Unix socket, as `runtime up` serves it, over a
    runtime whose sandboxes cannot start (no such interpreter): any request that got as far
    as starting a sandbox fails there."""
    # With own roots (the default as root), the machine's default snapshot: creates get as
    # far as the daemon's start.
    snapshots = shared_default()[0] if own_roots() else None
    runtime = Runtime(tmp_path / "state", pool_size=0, idle_timeout=0, write_registry=False,
                      python=str(tmp_path / "no-such-python"), snapshots=snapshots)
    runtime.root.mkdir(parents=True)
    ensure_sockets_dir(runtime.root)  # what Runtime.open would make (it is not opened)
    plane = ControlPlane(PlaneConfig(state_dir=tmp_path / "state", urls=PublicUrls("http", "localhost", 8080),
                                     registry_path=tmp_path / "state" / "registry.json"), LocalBackend(runtime))
    anyio.run(plane.open)
    key = anyio.run(plane.create_key).key
    socket_path = tmp_path / "control.sock"
    server = uvicorn.Server(uvicorn.Config(build_app(plane), uds=str(socket_path), log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "control API did not start"
        time.sleep(0.01)
    transport = httpx.HTTPTransport(uds=str(socket_path))
    with httpx.Client(transport=transport, base_url="http://controlplane/api",
                      headers={"Authorization": f"Bearer {key}"}) as http:
        yield http
    server.should_exit = True
    thread.join(10)


@pytest.mark.parametrize("body, message", [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"name": "a b"}', "invalid sandbox name"),
    (b'{"name": "a/b"}', "invalid sandbox name"),
    (b'{"name": 7}', "name: Input should be a valid string"),
    (b'{"env": ["A=1"]}', "env: Input should be a valid dictionary"),
    (b'{"env": {"A": 1}}', "env.A: Input should be a valid string"),
    (b'{"env": {"1A": "x"}}', "environment variable name"),
    (b'{"labels": {"code-toolbox-language": "cobol"}}', "must be one of python"),
    (b'{"cpu": 0}', "cpu must be a whole number from 1"),
    (b'{"cpu": -1}', "cpu must be a whole number from 1"),
    (b'{"cpu": 1.0}', "cpu: Input should be a valid integer"),
    (b'{"memory": 4096}', "memory must be a whole number from 1 to 1024 GiB"),
    (b'{"disk": "3"}', "disk: Input should be a valid integer"),
    (b'{"public": "true"}', "public: Input should be a valid boolean"),
    (b'{"autoStopInterval": -5}', "autoStopInterval must be 0 or more"),
    (b'{"snapshot": "ubuntu:22.04"}', "Snapshot ubuntu:22.04 not found"),
    (b'{"gpu": 1}', "GPUs are not available"),
])
def test_create_rejects_bad_input_with_a_message(client: httpx.Client, body: bytes, message: str) -> None:
    response = client.post("/sandbox", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()
    assert message in error["message"], error
    assert error["statusCode"] == 400 and error["source"] == "DAYTONA_API" and error["path"] == "/api/sandbox"
    assert client.get("/sandbox").json() == {"items": [], "nextCursor": None}  # nothing half-created


def test_image_builds_that_cannot_build_are_refused_clearly(client: httpx.Client) -> None:
    response = client.post("/sandbox", json={"buildInfo": {"dockerfileContent": "FROM debian:12\nCOPY a /a\n"}})
    assert response.status_code == 400
    assert "has no build context" in response.json()["message"]
    response = client.post("/sandbox", json={"buildInfo": {"dockerfileContent": "FROM debian:12\n",
                                                           "contextHashes": ["abc"]}})
    assert response.status_code == 400 and "md5 hashes" in response.json()["message"]
    assert client.get("/sandbox").json() == {"items": [], "nextCursor": None}  # nothing half-created


def test_unknown_sandboxes_are_404(client: httpx.Client) -> None:
    for method, path in (("GET", "/sandbox/nope"), ("POST", "/sandbox/nope/stop"),
                         ("POST", "/sandbox/nope/start"), ("DELETE", "/sandbox/nope"),
                         ("PUT", "/sandbox/nope/labels"), ("POST", "/sandbox/nope/autostop/5")):
        response = client.request(method, path, json={"labels": {}} if method == "PUT" else None)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["message"] == "Sandbox with ID or name nope not found"
    assert client.get("/sandbox").json() == {"items": [], "nextCursor": None}
    assert client.get("/nothing-here").status_code == 404
    assert client.get("/config").json()["defaultSnapshot"] == "default"


def test_a_failing_backend_leaves_no_record(client: httpx.Client, tmp_path: Path) -> None:
    # The sandbox's interpreter does not exist, so its start fails: the record goes with it.
    response = client.post("/sandbox", json={"name": "doomed"})
    assert response.status_code >= 500, response.text
    assert response.json()["source"] == "DAYTONA_API"
    # (runtime/codemount.py finds no interpreter to bring in, before anything is started)
    assert "cannot start the sandbox's daemon: cannot find the dynamic loader" in response.json()["message"]
    assert client.get("/sandbox").json()["items"] == []
    assert client.get("/sandbox/doomed").status_code == 404
    assert list((tmp_path / "state" / "sandboxes").glob("*")) == []  # nor a directory


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

    for argv in (["--state-dir", str(tmp_path), "inspect", "abc"], ["inspect", "abc", "--state-dir", str(tmp_path)]):
        result = subprocess.run([sys.executable, "-m", "runtime", *argv], capture_output=True, text=True, timeout=60,
                                check=False)
        assert result.returncode == 1
        assert "no main job is running" in result.stderr and "./scripts/start --state-dir" in result.stderr


def test_the_sandbox_verbs_moved_to_sandbox_toolbox(tmp_path: Path) -> None:
    """One API per concern: `python -m runtime list` and friends say what to type now."""
    import subprocess
    import sys

    for argv, now in ((["list"], "sandbox-toolbox list"), (["--state-dir", str(tmp_path), "get", "x"], "sandbox-toolbox info"),
                      (["create", "-e", "A=1"], "sandbox-toolbox create")):
        result = subprocess.run([sys.executable, "-m", "runtime", *argv], capture_output=True, text=True, timeout=60,
                                check=False)
        assert result.returncode == 2, result.stderr
        assert f"moved to `{now}`" in result.stderr and "DAYTONA_API_KEY" in result.stderr


def test_state_machine_reports_transitions_and_refuses_conflicting_changes(tmp_path: Path) -> None:
    from controlplane.errors import BadRequest, Conflict
    from controlplane.sandboxes import states
    from controlplane.sandboxes.records import SandboxRecord, SandboxRecords
    from controlplane.store.db import migrate, open_engine, sqlite_url

    assert states.reported("started", "stopped", True) == "stopping"
    assert states.reported("stopped", "started", True) == "starting"
    assert states.reported("stopped", "archived", True) == "archiving"
    assert states.reported("archived", "started", True) == "restoring"
    assert states.reported("unknown", "started", True) == "creating"
    assert states.reported("started", "destroyed", True) == "destroying"
    assert states.reported("stopped", "stopped", False) == "stopped"
    with pytest.raises(Conflict, match="state change in progress"):
        states.check("start", "x", "stopped", pending=True)
    with pytest.raises(BadRequest, match="Cannot stop sandbox x in state 'stopped'"):
        states.check("stop", "x", "stopped", pending=False)
    with pytest.raises(BadRequest, match="Cannot archive"):
        states.check("archive", "x", "started", pending=False)
    assert states.check("start", "x", "started", pending=False) is False  # already there

    engine = open_engine(sqlite_url(tmp_path / "cp.db"))
    migrate(engine)
    migrate(engine)  # idempotent at every start
    from controlplane.auth import Keys

    org = Keys(engine).ensure_organization("o")
    records = SandboxRecords(engine)
    records.insert(SandboxRecord(
        id="abc", organization_id=org, name="abc", state="started", desired_state="started", pending=False,
        os_user="daytona", env={}, labels={}, public=False, target="local", cpu=1, gpu=0, memory=1, disk=3,
        auto_stop_interval=0, auto_archive_interval=0, auto_delete_interval=-1, network_block_all=True,
        preview_token="t", created_at=1.0, updated_at=1.0))
    # Two racing requests: exactly one marks the change; the other sees it pending.
    assert records.begin(org, "abc", "stopped", ["started"]) is True
    assert records.begin(org, "abc", "destroyed", ["started", "stopped"]) is False
    assert records.begin("another-org", "abc", "stopped", ["started"]) is False
    row = records.find(org, "abc")
    assert row is not None and row.pending and row.desired_state == "stopped"
    assert records.find("another-org", "abc") is None
    engine.dispose()
