"""The main job end to end: `./scripts/start` brings up the proxy, the runtime and a first
sandbox; the official SDK drives sandboxes through the proxy; previews work over HTTP and
WebSocket; sandboxes are isolated and limited; lifecycle commands update the registry."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.runtime_helpers import Stack, bwrap_pids, cgroup_dirs, needs_bwrap, start_stack, ws_connect
from tests.system import requires

if TYPE_CHECKING:
    from daytona.internal.toolbox_api_client_proxy import ToolboxApiClientProxy
    from daytona_toolbox_api_client import ApiClient

pytestmark = needs_bwrap

PREVIEW_APP = r'''
from aiohttp import web

async def index(request):
    return web.Response(text="hello from " + request.app["id"])

async def echo(request):
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        await ws.send_str("echo:" + message.data)
    return ws

import os
app = web.Application()
app["id"] = os.environ["DAYTONA_SANDBOX_ID"]
app.add_routes([web.get("/", index), web.get("/ws", echo)])
web.run_app(app, host="127.0.0.1", port=3000, print=None)
'''


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("runtime"), pool_size=1)
    yield running
    running.stop()


def sdk_client(stack: Stack, sandbox_id: str) -> ToolboxApiClientProxy[ApiClient]:
    from daytona.internal.toolbox_api_client_proxy import ToolboxApiClientProxy
    from daytona_toolbox_api_client import ApiClient, Configuration

    api_client = ApiClient(Configuration(host=stack.url))
    api_client.default_headers["Authorization"] = f"Bearer {stack.api_key}"
    return ToolboxApiClientProxy(api_client, sandbox_id, stack.url + "/toolbox")


def token_of(stack: Stack, sandbox_id: str) -> str:
    return stack.preview_token(sandbox_id)


def test_main_job_prints_the_toolbox_and_preview_urls(stack: Stack) -> None:
    sandbox_id = stack.first_id
    assert stack.banner["Toolbox URL"] == f"http://localhost:{stack.port}/toolbox/{sandbox_id}/version"
    # The banner's URL answers, with the key the banner's curl line uses.
    curl = next(line for line in stack.banner_lines if line.startswith("Try:"))
    assert f"curl -H 'Authorization: Bearer {stack.api_key}' {stack.banner['Toolbox URL']}" in curl
    answer = httpx.get(stack.banner["Toolbox URL"].replace("localhost", "127.0.0.1"),
                       headers={"Authorization": f"Bearer {stack.api_key}", "Host": f"localhost:{stack.port}"})
    assert answer.status_code == 200 and "version" in answer.json()
    token = stack.preview_token(sandbox_id)
    preview = stack.banner["Preview URL"]
    assert preview == f"http://3000-{sandbox_id}.localhost:{stack.port}/?DAYTONA_SANDBOX_AUTH_KEY={token}"
    # As a browser opens it: the proxy takes the token (nothing listens on 3000 yet, so the
    # answer is the proxy's "nothing listening", never a credentials error).
    opened = httpx.get(preview.replace(f"3000-{sandbox_id}.localhost", "127.0.0.1"),
                       headers={"Host": f"3000-{sandbox_id}.localhost:{stack.port}", "Accept": "text/html"})
    assert opened.status_code not in (401, 403, 404), (opened.status_code, opened.text[:200])
    assert httpx.get(f"{stack.url}/health", headers={"Host": f"localhost:{stack.port}"}).status_code == 200
    listed = stack.cli("list")
    assert [s["id"] for s in listed] == [sandbox_id]
    assert listed[0]["state"] == "started"
    registry = json.loads((stack.state_dir / "registry.json").read_text())
    assert registry["sandboxes"][sandbox_id]["url"].startswith("unix:")


def test_official_sdk_drives_a_sandbox_through_the_proxy(stack: Stack) -> None:
    from daytona._sync.filesystem import FileSystem
    from daytona._sync.process import Process
    from daytona_toolbox_api_client import FileSystemApi, InfoApi, ProcessApi

    client = sdk_client(stack, stack.first_id)
    assert InfoApi(client).get_work_dir().dir == "/home/daytona"
    fs = FileSystem(FileSystemApi(client), httpx.Client(timeout=60))
    payload = os.urandom(300_000)
    fs.upload_file(payload, "blob.bin")
    assert fs.download_file("blob.bin") == payload
    process = Process("python", ProcessApi(client), httpx.Client(timeout=60))
    result = process.exec("id -un; hostname; cat /etc/hostname; sha256sum blob.bin | cut -c1-16")
    assert result.exit_code == 0
    user, hostname, etc_hostname, digest = result.result.split()
    assert (user, hostname, etc_hostname) == ("daytona", "sandbox", "sandbox")
    import hashlib

    assert digest == hashlib.sha256(payload).hexdigest()[:16]
    # The file is in the sandbox's own home on the host, owned by the sandbox's uid.
    home_file = stack.state_dir / "sandboxes" / stack.first_id / "home" / "blob.bin"
    assert home_file.read_bytes() == payload


def test_preview_of_a_server_inside_the_sandbox_over_http_and_websocket(stack: Stack) -> None:
    from daytona._sync.process import Process
    from daytona.common.process import SessionExecuteRequest
    from daytona_toolbox_api_client import ProcessApi

    sandbox_id = stack.first_id
    token = token_of(stack, sandbox_id)
    with stack.toolbox(sandbox_id) as client:
        assert client.post("/files/upload", params={"path": "app.py"},
                           files={"file": ("app.py", PREVIEW_APP.encode())}).status_code == 200
    process = Process("python", ProcessApi(sdk_client(stack, sandbox_id)), httpx.Client(timeout=60))
    process.create_session("preview-app")
    process.execute_session_command("preview-app", SessionExecuteRequest(command="python app.py", run_async=True))

    deadline = time.monotonic() + 20
    response = stack.preview(sandbox_id, 3000, token=token)
    while response.status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
        response = stack.preview(sandbox_id, 3000, token=token)
    assert response.status_code == 200, response.text
    assert response.text == f"hello from {sandbox_id}"
    # Without credentials a private sandbox's preview is refused.
    assert stack.preview(sandbox_id, 3000).status_code in (401, 403)

    with ws_connect(stack, sandbox_id, 3000, "/ws", token=token) as ws:
        ws.send("ping")
        assert ws.recv(timeout=10) == "echo:ping"


def test_sandbox_has_no_network_beyond_its_own_loopback(stack: Stack) -> None:
    # The proxy listens on the host's loopback; other host addresses too.
    host_ips = {"127.0.0.1"}
    try:
        host_ips.add(socket.gethostbyname(socket.gethostname()))
    except OSError:
        pass
    probe = ("import socket,sys\n"
             "for ip in sys.argv[2:]:\n"
             "    s = socket.socket(); s.settimeout(2)\n"
             "    try: s.connect((ip, int(sys.argv[1]))); print('open', ip)\n"
             "    except OSError as e: print('closed', ip, e.errno)\n")
    code, out = stack.execute(stack.first_id, f"python -c \"{probe}\" {stack.port} {' '.join(host_ips)}")
    assert code == 0, out
    assert "open" not in out.split(), out
    code, out = stack.execute(stack.first_id, "cat /proc/net/dev | tail -n +3 | cut -d: -f1")
    # As root each sandbox has its own veth (tests/test_network.py); else loopback only.
    assert sorted(out.split()) == (["eth0", "lo"] if own_network() else ["lo"]), out


def own_network() -> bool:
    return os.geteuid() == 0 and shutil.which("nft") is not None


def test_host_egress_is_opt_in(stack: Stack) -> None:
    online = stack.cli("create", "--name", "online", "--no-network-block-all")["id"]
    try:
        assert stack.cli("info", online)["networkBlockAll"] is False
        probe = (f"import socket; s = socket.create_connection(('127.0.0.1', {stack.port}), timeout=2); "
                 "print('reached')")
        code, out = stack.execute(online, f'python -c "{probe}"')
        if own_network():
            # Egress through NAT from its own address: the host's loopback stays out of reach.
            assert code != 0 and "reached" not in out, out
        else:
            assert (code, out) == (0, "reached\n")
    finally:
        stack.cli("delete", online)


@requires("ps")
def test_sandboxes_cannot_see_each_other_or_the_runtime_state(stack: Stack) -> None:
    other = stack.cli("create", "--name", "neighbour", "-e", "GREETING=hi there")
    neighbour = other["id"]
    try:
        assert other["state"] == "started" and other["name"] == "neighbour"
        code, out = stack.execute(neighbour, "echo \"$GREETING\"; echo $DAYTONA_SANDBOX_ID")
        assert out.split("\n")[:2] == ["hi there", neighbour]
        stack.execute(stack.first_id, "echo secret > mine.txt")
        first_home = stack.state_dir / "sandboxes" / stack.first_id / "home"
        assert (first_home / "mine.txt").read_text() == "secret\n"
        code, out = stack.execute(neighbour, f"cat {first_home}/mine.txt; ls {stack.state_dir}; "
                                             f"ls /home; ps -e -o comm= | sort -u")
        assert "secret" not in out
        listing = out.split()
        for private in ("sandboxes", "registry.json", "api-key", "controlplane.db", "control", "internal-key"):
            assert private not in listing, out
        # Only its own processes: no other daemon, no proxy.
        code, out = stack.execute(neighbour, "ps -e -o args=")
        assert "proxy" not in out and stack.first_id not in out, out
        # Writing anywhere outside home and /tmp fails: the host is read-only.
        code, out = stack.execute(neighbour, f"touch /usr/x {REPO_ROOT_STR}/x 2>&1; echo done")
        assert "/usr/x': Read-only file system" in out, out
        # The checkout is read-only where the sandbox sees the host's tree, unreachable in a
        # private directory, absent under /tmp or /home (the sandbox's own): never writable.
        repo_line = next(line for line in out.splitlines() if f"{REPO_ROOT_STR}/x" in line)
        assert any(why in repo_line for why in ("Read-only file system", "Permission denied",
                                                "No such file or directory")), out
        assert not Path(REPO_ROOT_STR, "x").exists()
    finally:
        stack.cli("delete", neighbour)
    assert not (stack.state_dir / "sandboxes" / neighbour).exists()


REPO_ROOT_STR = str(Path(__file__).resolve().parent.parent)


@requires("pgrep")
def test_sandbox_code_comes_from_the_fixed_path_never_the_hosts_layout(stack: Stack) -> None:
    """The daemon, its interpreter and its packages are at /opt/sandbox-toolbox; nothing a
    sandbox sees names the checkout or the host's interpreter (a pyenv under 0700 /root)."""
    import sys

    probe = "import sys, toolbox, starlette; print(sys.prefix, toolbox.__file__, starlette.__file__)"
    # The daemon's own command line and environment (bwrap's pid 1 keeps its host-side
    # arguments, the mount sources, in its cmdline: that is bwrap's, not ours).
    daemon = "tr '\\0' ' ' < /proc/$(pgrep -f 'interp -m runtime.entry' | tail -1)/cmdline"
    code, out = stack.execute(stack.first_id, f"python3 -c '{probe}'; {daemon}; echo; env")
    assert code == 0, out
    prefix, toolbox_file, starlette_file = out.splitlines()[0].split()
    # Started by the launcher on the host's loader and libraries (runtime/launcher.py).
    assert out.splitlines()[1] == ("/opt/sandbox-toolbox/so/ld.so --library-path /opt/sandbox-toolbox/so:"
                                   "/opt/sandbox-toolbox/python/lib --argv0 /opt/sandbox-toolbox/venv/bin/python "
                                   "/opt/sandbox-toolbox/interp -m runtime.entry "), out
    assert prefix == "/opt/sandbox-toolbox/venv"
    assert toolbox_file == "/opt/sandbox-toolbox/lib/toolbox/__init__.py"
    assert starlette_file.startswith("/opt/sandbox-toolbox/venv/lib/")
    for host_path in {REPO_ROOT_STR, sys.prefix, str(Path(sys.executable).resolve().parent.parent)}:
        assert host_path not in out, (host_path, out)
    # Read-only, like the rest of the host.
    code, out = stack.execute(stack.first_id, "touch /opt/sandbox-toolbox/lib/toolbox/x 2>&1")
    assert code != 0 and "Read-only file system" in out, out


def test_lifecycle_stop_start_delete_update_the_proxy(stack: Stack) -> None:
    created = stack.cli("create", "--name", "cycle")
    cycle = created["id"]
    assert created["state"] == "started"
    stack.execute(cycle, "echo kept > state.txt")
    stopped = stack.cli("stop", "cycle")  # by name
    assert stopped["state"] == "stopped"
    registry = json.loads((stack.state_dir / "registry.json").read_text())
    assert cycle not in registry["sandboxes"]
    time.sleep(0.4)  # the proxy re-reads the registry file at most every 0.25 s
    with stack.toolbox(cycle) as client:
        assert client.get("/version").status_code == 404
    started = stack.cli("start", cycle)
    assert started["state"] == "started"
    # start (like create) returns once the proxy routes the sandbox: no waiting here.
    assert stack.execute(cycle, "cat state.txt") == (0, "kept\n")
    deleted = stack.cli("delete", cycle)
    assert deleted["id"] == cycle and deleted["state"] == "destroyed"
    assert cycle not in [s["id"] for s in stack.cli("list")]
    failed = stack.cli("info", "cycle", check=False)
    assert failed.returncode == 1 and "not found" in failed.stderr
    bad = stack.cli("create", "--name", "Bad/Name", check=False)
    assert bad.returncode == 1 and "invalid sandbox name" in bad.stderr


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="cgroup limits need root (CI runs as root)")


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A main job whose sandboxes get small default limits (`up --cpus 0.2 --pids 64 --memory
    128`): Daytona's API speaks whole CPUs and GiB, the runtime's defaults go finer."""
    running = start_stack(tmp_path_factory.mktemp("limited"), "--no-sandbox", "--cpus", "0.2", "--pids", "64",
                          "--memory", "128", pool_size=0)
    yield running
    running.stop()


def _pids_in(groups: list[Path]) -> int:
    for group in groups:
        for name in ("pids.current",):
            if (group / name).exists():
                return int((group / name).read_text())
    return max(len((g / "cgroup.procs").read_text().split()) for g in groups)


@needs_root
def test_fork_bomb_is_contained_by_its_pid_limit(stack: Stack, limited: Stack) -> None:
    # Whole CPUs (Daytona's unit) so the bomb grows fast; the pid cap is the stack's 64.
    forky = limited.cli("create", "--name", "forky", "--cpu", "2")["id"]
    cgroups = cgroup_dirs(limited, forky)
    assert cgroups
    try:
        with limited.toolbox(forky) as client:
            # A fork bomb in a session, so this call returns at once; it keeps respawning
            # until the sandbox is stopped, bounded by the pid limit (64) and 2 CPUs.
            assert client.post("/process/session", json={"sessionId": "bomb"}).status_code in (200, 201)
            assert client.post("/process/session/bomb/exec", json={
                "command": "b() { b | b & }; b", "runAsync": True}).status_code in (200, 202)
            deadline = time.monotonic() + 20
            peak = 0
            while time.monotonic() < deadline and peak < 48:
                pids = _pids_in(cgroups)
                peak = max(peak, pids)
                assert pids <= 64, pids  # never beyond the limit
                time.sleep(0.2)
            assert peak >= 48, f"the bomb never reached its limit: peak {peak}"
            # The bombed sandbox's own daemon still answers simple calls.
            assert client.get("/version").status_code == 200
        # Other sandboxes and the proxy answer promptly meanwhile.
        for _ in range(3):
            started = time.monotonic()
            assert stack.execute(stack.first_id, "echo alive") == (0, "alive\n")
            assert time.monotonic() - started < 3
    finally:
        limited.cli("delete", forky)
    # Deleting it killed every process of the bomb: its cgroups could be removed.
    deadline = time.monotonic() + 5
    while any(d.exists() for d in cgroups) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(d.exists() for d in cgroups), [(d, (d / "cgroup.procs").read_text()) for d in cgroups
                                                   if d.exists()]


@needs_root
def test_cpu_cap_holds(limited: Stack) -> None:
    spinner = limited.cli("create", "--name", "spinner")["id"]
    try:
        # Two busy loops for 1.5 s each would use ~3 CPU-seconds uncapped (or whatever the
        # shared machine gives); at 0.2 CPU they get ~0.3 s.
        code, out = limited.execute(spinner, "bash -c 'for i in 1 2; do timeout 1.5 sh -c \"while :; do :; done\" & "
                                             "done; wait; times'", timeout=20)
        children = out.strip().splitlines()[-1].split()  # "0m0.301s 0m0.002s" user, sys of children
        seconds = sum(float(part.split("m")[0]) * 60 + float(part.split("m")[1].rstrip("s")) for part in children)
        assert seconds < 0.7, out
    finally:
        limited.cli("delete", spinner)


@needs_root
def test_memory_hog_is_killed_inside_its_sandbox_only(stack: Stack, limited: Stack) -> None:
    hog = limited.cli("create", "--name", "hog")["id"]
    try:
        code, out = limited.execute(hog, "python -c \"b = bytearray(512 * 1024 * 1024); print('survived')\"; "
                                         "echo exit=$?", timeout=30)
        assert "\nsurvived" not in out and not out.startswith("survived") and "exit=137" in out, out
        # Its daemon was protected from the OOM killer and keeps serving.
        assert limited.execute(hog, "echo still here") == (0, "still here\n")
        assert stack.execute(stack.first_id, "echo alive") == (0, "alive\n")
    finally:
        limited.cli("delete", hog)


def test_ctrl_c_stops_everything(tmp_path: Path) -> None:
    own = start_stack(tmp_path / "state", pool_size=1)
    sandbox_id = own.first_id
    assert own.execute(sandbox_id, "echo up") == (0, "up\n")
    pids_before = bwrap_pids(own.state_dir)
    assert pids_before
    assert own.stop() == 0
    assert bwrap_pids(own.state_dir) == set()
    assert _leftover_cgroups(own.state_dir) == []
    assert not (own.state_dir / "pool").exists() or not any((own.state_dir / "pool").iterdir())
    assert json.loads((own.state_dir / "sandboxes" / sandbox_id / "sandbox.json").read_text())["state"] == "stopped"
    # The next start brings the same sandbox back, files intact.
    again = start_stack(tmp_path / "state", pool_size=0)
    try:
        assert again.first_id == sandbox_id
    finally:
        assert again.stop() == 0


def test_idle_sandbox_is_stopped_automatically(tmp_path: Path) -> None:
    # The default auto-stop is 1 minute (--idle-timeout 60 s), and a policy minute lasts 5 s here.
    idle = start_stack(tmp_path / "state", pool_size=0, idle_timeout=60,
                       extra_env={"CONTROLPLANE_MINUTE_SECONDS": "5"})
    try:
        sandbox_id = idle.first_id
        # Traffic through the proxy keeps it alive past the idle interval...
        for _ in range(14):
            assert idle.execute(sandbox_id, "true")[0] == 0
            time.sleep(0.5)
        assert idle.cli("info", sandbox_id)["state"] == "started"
        # ...and silence stops it.
        deadline = time.monotonic() + 20
        while idle.cli("info", sandbox_id)["state"] != "stopped" and time.monotonic() < deadline:
            time.sleep(0.25)
        assert idle.cli("info", sandbox_id)["state"] == "stopped"
        assert sandbox_id not in json.loads((idle.state_dir / "registry.json").read_text())["sandboxes"]
    finally:
        idle.stop()


def _leftover_cgroups(state_dir: Path) -> list[Path]:
    import hashlib

    prefix = "sbx-" + hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:8] + "-"
    return [d for d in Path("/sys/fs/cgroup").glob("*/sandbox-toolbox/*") if d.name.startswith(prefix)]


def test_a_sandbox_that_dies_is_marked_stopped_and_unregistered(stack: Stack) -> None:
    fragile = stack.cli("create", "--name", "fragile")["id"]
    try:
        groups = cgroup_dirs(stack, fragile) if os.geteuid() == 0 else []
        if not groups:
            pytest.skip("needs the cgroup backend to find the sandbox's processes")
        for pid in (groups[0] / "cgroup.procs").read_text().split():
            try:
                if b"runtime.entry" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(int(pid), 9)
            except (OSError, ProcessLookupError):
                pass
        # The control plane's periodic reconcile notices (every 5 s).
        deadline = time.monotonic() + 15
        while stack.cli("info", fragile)["state"] != "stopped" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stack.cli("info", fragile)["state"] == "stopped"
        assert fragile not in json.loads((stack.state_dir / "registry.json").read_text())["sandboxes"]
        assert stack.cli("start", fragile)["state"] == "started"
    finally:
        stack.cli("delete", fragile)


def test_main_job_fails_clearly_when_the_proxy_port_is_taken(tmp_path: Path) -> None:
    import subprocess

    from tests.helpers import REPO_ROOT

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = dict(os.environ, RUNTIME_STATE_DIR=str(tmp_path / "state"), RUNTIME_PROXY_PORT=str(port))
        result = subprocess.run([str(REPO_ROOT / "scripts" / "start")], env=env, capture_output=True,
                                text=True, timeout=60)
    assert result.returncode != 0
    # One line that says what failed and what to do; no lifespan traceback.
    assert result.stderr.strip().splitlines() == [
        (f"error: the proxy cannot listen on 127.0.0.1:{port} (Address already in use); stop what "
         "uses it or pick another port with --port or RUNTIME_PROXY_PORT")], result.stderr
    assert not bwrap_pids(tmp_path / "state")
    assert _leftover_cgroups(tmp_path / "state") == []


def test_the_proxy_is_restarted_if_it_dies(stack: Stack) -> None:
    import signal

    proxies = [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()
               and b"proxy\0serve" in _cmdline(e) and f"\0{stack.port}\0".encode() in _cmdline(e)]
    assert len(proxies) == 1
    os.kill(proxies[0], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if stack.execute(stack.first_id, "echo back") == (0, "back\n"):
                break
        except (httpx.TransportError, AssertionError):
            time.sleep(0.2)
    assert stack.execute(stack.first_id, "echo back") == (0, "back\n")


def _cmdline(entry: Path) -> bytes:
    try:
        return (entry / "cmdline").read_bytes()
    except OSError:
        return b""


def _proxy_pids(port: int) -> list[int]:
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()
            and b"proxy\0serve" in _cmdline(e) and f"\0{port}\0".encode() in _cmdline(e)]


def test_a_sigkilled_main_job_takes_its_children_and_the_next_start_recovers(tmp_path: Path) -> None:
    import signal

    state = tmp_path / "state"
    first = start_stack(state, pool_size=1)
    try:
        survivor = first.cli("create", "--name", "survivor")["id"]
        first.execute(survivor, "echo kept > kept.txt")
        first.cli("create", "--name", "resting")
        first.cli("stop", "resting")
        newest = first.cli("create", "--name", "newest")["id"]  # what the next `up` starts anyway
        assert len(_proxy_pids(first.port)) == 1
        # Power loss / OOM killer: no chance to clean up.
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(10)
        deadline = time.monotonic() + 20  # the proxy gets SIGTERM: a graceful, short drain
        while (_proxy_pids(first.port) or bwrap_pids(state)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _proxy_pids(first.port) == [], "the proxy outlived the runtime"
        assert bwrap_pids(state) == set(), "sandboxes outlived the runtime"
    finally:
        first.stop()
        for pid in _proxy_pids(first.port):  # only when the test failed: leave no stray proxy
            os.kill(pid, signal.SIGKILL)
    # The same port and state: starts, and what ran before runs again.
    second = start_stack(state, pool_size=1, port=first.port)
    try:
        deadline = time.monotonic() + 60  # cold starts, one after the other, on a busy machine
        while second.cli("info", "survivor")["state"] != "started" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert second.cli("info", "survivor")["state"] == "started", second.cli("list")
        assert second.execute(survivor, "cat kept.txt") == (0, "kept\n")
        assert second.cli("info", "resting")["state"] == "stopped"  # it was stopped before the crash
        assert second.first_id == newest
        assert second.execute(second.first_id, "echo up") == (0, "up\n")
    finally:
        assert second.stop() == 0
    assert _proxy_pids(first.port) == [] and bwrap_pids(state) == set()
    assert _leftover_cgroups(state) == []


def test_a_failed_create_leaves_nothing_behind(tmp_path: Path) -> None:
    """The runtime's half of "nothing half-created" (the control plane's half, its records,
    is tests/test_controlplane_sandbox.py): no directory, socket, process or cgroup."""
    from runtime.limits import Limits
    from runtime.manager import SandboxError
    from tests.runtime_direct import DirectRuntime

    direct = DirectRuntime(tmp_path / "state", pool_size=1)
    try:
        direct.run(direct.runtime.wait_pool_ready())
        # 16 MiB passes validation but cannot hold the daemon: a pre-started sandbox refuses
        # the limit (it already uses more), a cold one is killed while it imports.
        for egress in ("none", "host"):
            with pytest.raises(SandboxError):
                direct.run(direct.runtime.create("doomed", limits=Limits(memory_mib=16), egress=egress))
            assert not (direct.runtime.sandboxes_dir / "doomed").exists()
            assert not direct.runtime.socket_path("doomed").exists()
            assert "doomed" not in direct.runtime.specs
        # The id is free again and the pool still serves.
        assert direct.run(direct.runtime.create("doomed")).state == "started"
        direct.run(direct.runtime.delete("doomed"))
        assert list(direct.runtime.sandboxes_dir.iterdir()) == []
    finally:
        direct.close()
    assert bwrap_pids(tmp_path / "state") == set()
    assert _leftover_cgroups(tmp_path / "state") == []


def test_a_first_sandbox_that_cannot_start_is_one_line_and_no_orphan(tmp_path: Path) -> None:
    import subprocess

    from tests.helpers import REPO_ROOT, free_port

    state = tmp_path / "state"
    env = dict(os.environ, RUNTIME_STATE_DIR=str(state), RUNTIME_PROXY_PORT=str(free_port()),
               RUNTIME_MEMORY_MIB="16")
    result = subprocess.run([str(REPO_ROOT / "scripts" / "start")], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "startup failed" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "sandbox exited during start-up" in last, result.stderr
    assert list((state / "sandboxes").iterdir()) == []
    assert not bwrap_pids(state) and _leftover_cgroups(state) == []
