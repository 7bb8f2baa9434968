"""`sandbox-toolbox`, the CLI, driven as a subprocess against the real main job: every verb,
JSON output, exit codes (exec's is the command's), bad input, login, colour only on a TTY."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.controlplane_helpers import extra_key
from tests.helpers import REPO_ROOT
from tests.runtime_helpers import CLI, Stack, needs_bwrap, start_stack

pytestmark = needs_bwrap

VERBS = [["create"], ["list"], ["info"], ["start"], ["stop"], ["archive"], ["delete"], ["exec"], ["logs"],
         ["preview-url"], ["terminal"], ["upload"], ["download"], ["volume"], ["volume", "create"], ["volume", "list"], ["volume", "info"],
         ["volume", "delete"], ["snapshot"], ["snapshot", "list"], ["snapshot", "delete"], ["login"], ["logout"]]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("cli"), "--no-sandbox", pool_size=1)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def box(stack: Stack) -> str:
    """One sandbox for the exec, logs and preview tests."""
    return str(stack.cli("create", "--name", "box", "-e", "GREETING=hello there", "-l", "suite=cli")["id"])


def run(stack: Stack | None, *args: str, env: dict[str, str] | None = None, stdin: str | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`sandbox-toolbox ARGS` as a user types it (the two DAYTONA_ variables exported)."""
    base = stack.cli_env if stack is not None else dict(os.environ)
    return subprocess.run([*CLI, *args], env={**base, **(env or {})}, input=stdin, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT, check=False)


def no_key_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DAYTONA_API_KEY", "DAYTONA_API_URL")}
    return {**env, "XDG_CONFIG_HOME": str(tmp_path / "config")}


def cli_sessions(stack: Stack, sandbox_id: str) -> list[str]:
    with stack.toolbox(sandbox_id) as toolbox:
        return [s["sessionId"] for s in toolbox.get("/process/session").json() if s["sessionId"].startswith("cli-")]


# ---- no server needed ---------------------------------------------------------------------

@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_every_verb_has_help(verb: list[str]) -> None:
    result = run(None, *verb, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: sandbox-toolbox") and "options:" in result.stdout


def test_mcp_verbs_are_the_mcp_servers_own() -> None:
    """`sandbox-toolbox mcp start|config`, as the issue names them, are mcpserver/cli.py's."""
    pytest.importorskip("mcpserver.cli")
    assert run(None, "mcp", "--help").returncode == 0
    snippet = run(None, "mcp", "config", "--no-key", "--transport", "stdio",
                  env={"DAYTONA_API_URL": "http://localhost:8080/api"})
    assert snippet.returncode == 0, snippet.stderr
    server = json.loads(snippet.stdout)["mcpServers"]["sandbox-toolbox"]
    assert server["env"]["DAYTONA_API_URL"] == "http://localhost:8080/api"


def test_a_missing_key_is_a_clear_message(tmp_path: Path) -> None:
    result = run(None, "list", env=no_key_env(tmp_path))
    assert result.returncode == 1 and result.stdout == ""
    assert "no API key: set DAYTONA_API_KEY" in result.stderr and "sandbox-toolbox login" in result.stderr


def test_an_unreachable_server_is_exit_1_with_the_url(tmp_path: Path) -> None:
    result = run(None, "list", env={"DAYTONA_API_URL": "http://127.0.0.1:9/api", "DAYTONA_API_KEY": "dtn_x"})
    assert result.returncode == 1
    assert "cannot reach http://127.0.0.1:9/api/sandbox" in result.stderr and "DAYTONA_API_URL" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["create", "-e", "NOEQUALS"], "--env wants KEY=VALUE"),
    (["create", "--volume", "novolume"], "--volume wants VOLUME:/ABSOLUTE/MOUNT/PATH"),
    (["create", "--cpu", "two"], "invalid int value"),
    (["exec", "box"], "exec needs a command"),
    (["exec", "box", "--timeout", "0", "--", "true"], "--timeout must be more than 0"),
    (["exec", "box", "-e", "NOEQUALS", "--", "true"], "--env wants KEY=VALUE"),
    (["list", "-l", "nolabel"], "--label wants KEY=VALUE"),
    (["logs", "box", "s", "--follow", "--format", "json"], "no --format json"),
    (["preview-url", "box"], "preview-url needs a PORT"),
    (["preview-url", "box", "70000"], "PORT must be from 1 to 65535"),
    (["list", "--format", "yaml"], "invalid choice"),
    (["frobnicate"], "invalid choice"),
])
def test_usage_errors_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    # Usage comes first: exit 2 with or without a key, and no server is ever asked.
    for env in ({"DAYTONA_API_URL": "http://127.0.0.1:9/api", "DAYTONA_API_KEY": "dtn_x"}, no_key_env(tmp_path)):
        result = run(None, *args, env=env)
        assert result.returncode == 2, (result.returncode, result.stderr)
        assert message in result.stderr


# ---- sandboxes --------------------------------------------------------------------------------

def test_create_info_list_stop_archive_start_delete(stack: Stack) -> None:
    created = stack.cli("create", "--name", "cycle", "-e", "A=1", "-l", "team=red", "--cpu", "1", "--memory", "1",
                        "--disk", "3", "--auto-stop", "0", "--auto-archive", "60", "--auto-delete", "-1", "--public")
    sandbox_id = created["id"]
    assert created["state"] == "started" and created["name"] == "cycle"
    assert created["env"] == {"A": "1"} and created["labels"]["team"] == "red" and created["public"] is True
    assert (created["autoStopInterval"], created["autoArchiveInterval"], created["autoDeleteInterval"]) == (0, 60, -1)
    assert stack.cli("info", "cycle")["id"] == sandbox_id  # by name
    assert sandbox_id in [s["id"] for s in stack.cli("list")]
    assert [s["id"] for s in stack.cli("list", "-l", "team=red")] == [sandbox_id]
    assert stack.cli("list", "-l", "team=blue") == []
    assert sandbox_id in [s["id"] for s in stack.cli("list", "--state", "stopped", "--state", "started")]
    assert sandbox_id not in [s["id"] for s in stack.cli("list", "--state", "stopped")]

    # For people: an aligned table with a header, no colour codes when stdout is a pipe.
    table = run(stack, "list", "-l", "team=red")
    assert table.returncode == 0 and "\x1b[" not in table.stdout
    header, row = table.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "STATE", "CPU", "MEMORY", "DISK", "CREATED", "LABELS"]
    assert row.split()[:3] == [sandbox_id, "cycle", "started"] and row.index("cycle") == header.index("NAME")
    info = run(stack, "info", sandbox_id)
    assert re.search(r"^State:\s+started$", info.stdout, re.M) and re.search(r"^Labels:\s+team=red$", info.stdout, re.M)

    assert stack.cli("stop", "cycle")["state"] == "stopped"
    assert stack.cli("archive", "cycle")["state"] == "archived"
    assert stack.cli("start", "cycle")["state"] == "started"
    stopped = run(stack, "stop", sandbox_id)
    assert stopped.returncode == 0 and stopped.stdout.strip() == f"Sandbox cycle ({sandbox_id}) stopped"
    deleted = stack.cli("delete", sandbox_id)
    assert deleted["id"] == sandbox_id and deleted["state"] == "destroyed"
    assert sandbox_id not in [s["id"] for s in stack.cli("list")]


def test_unknown_ids_and_bad_input_are_exit_1_with_the_servers_message(stack: Stack) -> None:
    for verb in (["info"], ["start"], ["stop"], ["archive"], ["delete"], ["preview-url", "--port", "3000"],
                 ["terminal"], ["logs", "--follow"]):
        args = [verb[0], "no-such-sandbox", *verb[1:]]
        if verb[0] == "logs":
            args = ["logs", "no-such-sandbox", "s", "--follow"]
        result = run(stack, *args)
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.strip() == "error: Sandbox with ID or name no-such-sandbox not found (HTTP 404)"
    result = run(stack, "exec", "no-such-sandbox", "--", "true")
    assert result.returncode == 1 and "not found (HTTP 404)" in result.stderr
    bad = run(stack, "create", "--name", "Bad/Name")
    assert bad.returncode == 1 and "invalid sandbox name" in bad.stderr
    assert "Bad/Name" not in [s["name"] for s in stack.cli("list")]  # nothing half-created
    # A name with a slash or dots never reaches another route (each id is one path segment):
    # `delete ..` would otherwise be DELETE /api.
    for sneaky in ("..", "../volumes", "%2E%2E"):
        result = run(stack, "delete", sneaky)
        assert result.returncode == 1 and "(HTTP 404)" in result.stderr, result.stderr


def test_another_organizations_sandbox_is_not_found(stack: Stack, box: str) -> None:
    intruder = extra_key(stack, "intruder")
    for args in (["info", box], ["delete", box], ["exec", box, "--", "id"], ["preview-url", box, "3000"]):
        result = run(stack, *args, env={"DAYTONA_API_KEY": intruder})
        assert result.returncode == 1 and "not found (HTTP 404)" in result.stderr, (args, result.stderr)
    assert run(stack, "list", "--format", "json", env={"DAYTONA_API_KEY": intruder}).stdout.strip() == "[]"
    assert stack.cli("info", box)["state"] == "started"


# ---- exec and logs ------------------------------------------------------------------------------

def test_exec_exits_with_the_commands_code_and_keeps_stdout_and_stderr_apart(stack: Stack, box: str) -> None:
    result = run(stack, "exec", box, "--", "echo out; echo err >&2; echo $GREETING; exit 3")
    assert result.returncode == 3
    assert result.stdout == "out\nhello there\n" and result.stderr == "err\n"
    assert run(stack, "exec", box, "--", "true").returncode == 0
    assert run(stack, "exec", box, "--", "kill -9 $$").returncode == 137  # killed by a signal: 128 + 9
    # Several words are an argv, quoted for the shell: nothing is split or expanded twice.
    words = run(stack, "exec", box, "--", "printf", "[%s]\\n", "a b", "$HOME", "*")
    assert words.returncode == 0 and words.stdout == "[a b]\n[$HOME]\n[*]\n"
    where = run(stack, "exec", box, "--cwd", "/tmp", "-e", "X=y z", "--", "pwd; echo $X")
    assert where.stdout == "/tmp\ny z\n"
    assert run(stack, "exec", box, "--", "cat").returncode == 0  # stdin is at EOF, nothing waits on it
    assert cli_sessions(stack, box) == []  # each throwaway session is deleted


def test_exec_output_arrives_while_the_command_still_runs(stack: Stack, box: str) -> None:
    process = subprocess.Popen([*CLI, "exec", box, "--", "echo first; sleep 4; echo second"], env=stack.cli_env,
                               stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    assert process.stdout is not None
    try:
        assert process.stdout.readline() == "first\n"
        assert process.poll() is None  # the first line came before the command ended
        assert process.stdout.readline() == "second\n"
        assert process.wait(30) == 0
    finally:
        process.kill()
        process.wait()


def sigint_to_another_thread(process: subprocess.Popen[str]) -> None:
    """Ctrl-C as the kernel may deliver it under load: to a thread other than the main one
    (here the log reader's or the WebSocket's), which Python's main thread never hears of
    while it is blocked (tgkill(2), x86-64 and arm64 numbers)."""
    import ctypes
    import platform

    number = {"x86_64": 234, "aarch64": 131}.get(platform.machine())
    if number is None:
        pytest.skip(f"no tgkill number for {platform.machine()}")
    others = [int(t) for t in os.listdir(f"/proc/{process.pid}/task") if int(t) != process.pid]
    assert others, "the CLI runs its log reader in a thread"
    assert ctypes.CDLL(None, use_errno=True).syscall(number, process.pid, max(others), signal.SIGINT) == 0


def test_exec_timeout_and_ctrl_c_stop_the_command(stack: Stack, box: str) -> None:
    timed = run(stack, "exec", box, "--timeout", "1", "--", "touch /tmp/started; sleep 30; touch /tmp/never")
    assert timed.returncode == 124 and "--timeout 1 s" in timed.stderr
    for interrupt in (lambda p: p.send_signal(signal.SIGINT), sigint_to_another_thread):
        process = subprocess.Popen([*CLI, "exec", box, "--", "echo go; sleep 30; touch /tmp/never"],
                                   env=stack.cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   cwd=REPO_ROOT)
        assert process.stdout is not None and process.stdout.readline() == "go\n"
        interrupt(process)
        assert process.wait(15) == 130  # well before the command's 30 s
    assert cli_sessions(stack, box) == []  # the sessions went, and their processes with them
    code, out = stack.execute(box, "ls /tmp/started /tmp/never 2>&1; pgrep -x sleep || echo no-sleep")
    assert "/tmp/started" in out and "No such file" in out and "no-sleep" in out, out


def test_ctrl_c_stops_logs_follow_at_once(stack: Stack, box: str) -> None:
    started = run(stack, "exec", box, "--session", "followed", "--detach", "--", "echo go; sleep 30")
    assert started.returncode == 0, started.stderr
    session, command_id = started.stdout.split()
    process = subprocess.Popen([*CLI, "logs", box, session, command_id, "--follow"], env=stack.cli_env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        assert process.stdout is not None and process.stdout.readline() == "go\n"
        sigint_to_another_thread(process)  # the WebSocket's: the main thread waits in recv
        assert process.wait(15) == 130
    finally:
        with stack.toolbox(box) as toolbox:
            toolbox.delete(f"/process/session/{session}")


def test_logs_of_a_detached_command_and_follow(stack: Stack, box: str) -> None:
    started = run(stack, "exec", box, "--session", "work", "--detach", "--",
                  "for i in 1 2 3; do echo line$i; echo oops$i >&2; sleep 0.3; done")
    assert started.returncode == 0, started.stderr
    session, command_id = started.stdout.split()
    assert session == "work"
    followed = run(stack, "logs", box, "work", command_id, "--follow")
    assert followed.returncode == 0
    assert followed.stdout == "line1\nline2\nline3\n" and followed.stderr == "oops1\noops2\noops3\n"
    logs = json.loads(run(stack, "logs", box, "work", "--format", "json").stdout)  # the newest command
    assert logs["commandId"] == command_id and logs["stdout"] == "line1\nline2\nline3\n"
    # A kept session keeps the shell's state between commands, as Daytona's sessions do.
    assert run(stack, "exec", box, "--session", "work", "--", "cd /tmp; export KEPT=1").returncode == 0
    assert run(stack, "exec", box, "--session", "work", "--", "pwd; echo $KEPT").stdout == "/tmp\n1\n"
    missing = run(stack, "logs", box, "no-session")
    assert missing.returncode == 1 and "session not found" in missing.stderr


# ---- files -------------------------------------------------------------------------------------

def test_upload_and_download_stream_a_file_both_ways(stack: Stack, box: str, tmp_path: Path) -> None:
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(8 << 20))
    assert run(stack, "upload", box, str(local), "big.bin").returncode == 0
    assert stack.execute(box, "stat -c %s big.bin") == (0, f"{8 << 20}\n")
    back = tmp_path / "back"
    back.mkdir()
    fetched = run(stack, "download", box, "big.bin", str(back))
    assert fetched.returncode == 0, fetched.stderr
    assert (back / "big.bin").read_bytes() == local.read_bytes()
    # Pipes both ways.
    assert run(stack, "upload", box, "-", "note.txt", stdin="from stdin\n").returncode == 0
    assert run(stack, "download", box, "note.txt", "-").stdout == "from stdin\n"
    # A failed download is exit 1 and leaves nothing behind, not even a partial file.
    missing = run(stack, "download", box, "no-such-file", str(back))
    assert missing.returncode == 1 and "file not found" in missing.stderr
    assert sorted(p.name for p in back.iterdir()) == ["big.bin"]
    usage = run(stack, "upload", box, str(tmp_path / "absent"), "x")
    assert usage.returncode == 2 and "is not a file" in usage.stderr


def test_a_stopped_sandbox_says_so(stack: Stack) -> None:
    sandbox_id = stack.cli("create", "--name", "resting")["id"]
    try:
        stack.cli("stop", sandbox_id)
        for args in (["exec", "resting", "--", "true"], ["logs", "resting", "s"], ["download", "resting", "x", "-"]):
            result = run(stack, *args)
            assert result.returncode == 1
            assert result.stderr.strip() == (f"error: sandbox resting ({sandbox_id}) is stopped, not started: "
                                             "start it first (HTTP 409)"), args
    finally:
        stack.cli("delete", sandbox_id)


# ---- previews, terminal --------------------------------------------------------------------------

def test_preview_url_and_terminal_open_through_the_proxy(stack: Stack, box: str) -> None:
    token = stack.preview_token(box)
    url = run(stack, "preview-url", box, "3000").stdout.strip()
    assert url == f"http://3000-{box}.localhost:{stack.port}/?DAYTONA_SANDBOX_AUTH_KEY={token}"
    assert run(stack, "preview-url", box, "--port", "3000").stdout.strip() == url
    link = json.loads(run(stack, "preview-url", box, "8080", "--format", "json").stdout)
    assert link["token"] == token and link["url"].startswith(f"http://8080-{box}.localhost") and not link["public"]
    terminal = run(stack, "terminal", box).stdout.strip()
    assert terminal == f"http://22222-{box}.localhost:{stack.port}/?DAYTONA_SANDBOX_AUTH_KEY={token}"
    # As a browser opens it: the proxy takes the token from the query; the terminal's page answers.
    page = httpx.get(terminal.replace(f"22222-{box}.localhost", "127.0.0.1"), follow_redirects=True,
                     headers={"Host": f"22222-{box}.localhost:{stack.port}", "Accept": "text/html"}, timeout=30)
    assert page.status_code == 200 and "xterm" in page.text


# ---- volumes, snapshots ---------------------------------------------------------------------------

def test_volumes_and_snapshots(stack: Stack) -> None:
    made = stack.cli("volume", "create", "data")
    assert made["name"] == "data"
    assert [v["name"] for v in stack.cli("volume", "list")] == ["data"]
    assert stack.cli("volume", "info", "data")["id"] == made["id"]  # by name
    listed = run(stack, "volume", "list")
    assert listed.stdout.splitlines()[0].split() == ["ID", "NAME", "STATE", "CREATED"]
    mounted = stack.cli("create", "--name", "with-volume", "--volume", "data:/home/daytona/data")
    try:
        assert [(v["volumeId"], v["mountPath"]) for v in mounted["volumes"]] == [(made["id"], "/home/daytona/data")]
    finally:
        stack.cli("delete", mounted["id"])
    assert stack.cli("volume", "delete", "data")["deleted"] is True
    again = run(stack, "volume", "delete", "data")
    assert again.returncode == 1 and "not found" in again.stderr
    snapshots = stack.cli("snapshot", "list")
    assert "default" in [s["name"] for s in snapshots]
    gone = run(stack, "snapshot", "delete", "no-such-snapshot")
    assert gone.returncode == 1 and "not found" in gone.stderr


# ---- login -----------------------------------------------------------------------------------------

def test_login_saves_the_key_0600_and_later_commands_use_it(stack: Stack, tmp_path: Path) -> None:
    env = no_key_env(tmp_path)
    url = f"http://localhost:{stack.port}/api"
    refused = run(stack, "login", "--api-url", url, stdin="dtn_not-a-key\n", env=env)
    assert refused.returncode == 1 and "refused the key" in refused.stderr
    saved = tmp_path / "config" / "sandbox-toolbox" / "config.json"
    assert not saved.exists()  # nothing saved

    cli_env = dict(env)
    logged = subprocess.run([*CLI, "login", "--api-url", url], input=stack.api_key + "\n", env=cli_env,
                            capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, check=False)
    assert logged.returncode == 0, logged.stderr
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600 and stat.S_IMODE(saved.parent.stat().st_mode) == 0o700
    assert json.loads(saved.read_text()) == {"apiUrl": url, "apiKey": stack.api_key}
    listed = subprocess.run([*CLI, "list", "--format", "json"], env=cli_env, capture_output=True, text=True,
                            timeout=60, cwd=REPO_ROOT, check=False)
    assert listed.returncode == 0 and isinstance(json.loads(listed.stdout), list)
    # The environment wins over the file, as with the SDKs.
    overridden = subprocess.run([*CLI, "list"], env={**cli_env, "DAYTONA_API_KEY": "dtn_wrong"}, capture_output=True,
                                text=True, timeout=60, cwd=REPO_ROOT, check=False)
    assert overridden.returncode == 1 and "(HTTP 401)" in overridden.stderr
    out = subprocess.run([*CLI, "logout"], env=cli_env, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert out.returncode == 0 and not saved.exists()


# ---- colour ----------------------------------------------------------------------------------------

def _on_a_tty(stack: Stack, *args: str, env: dict[str, str] | None = None) -> str:
    controller, terminal = pty.openpty()
    process = subprocess.Popen([*CLI, *args], env={**stack.cli_env, "TERM": "xterm", **(env or {})},
                               stdin=terminal, stdout=terminal, stderr=terminal, cwd=REPO_ROOT)
    os.close(terminal)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1)
            if ready:
                try:
                    data = os.read(controller, 65536)
                except OSError:  # the other side closed
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
        assert process.wait(30) == 0
    finally:
        process.kill()
        os.close(controller)
    return b"".join(chunks).decode()


def test_progress_only_on_a_tty(stack: Stack) -> None:
    shown = _on_a_tty(stack, "create", "--name", "watched", env={"NO_COLOR": "1"})
    assert "Creating sandbox watched" in shown and re.search(r"^State:\s+started\r?$", shown, re.M)
    quiet = run(stack, "stop", "watched")
    assert quiet.returncode == 0 and quiet.stderr == ""  # stderr is a pipe: no spinner
    stack.cli("delete", "watched")


def test_colour_only_on_a_tty_and_never_with_no_color(stack: Stack, box: str) -> None:
    coloured = _on_a_tty(stack, "list")
    assert "\x1b[32mstarted" in coloured and "\x1b[1mID" in coloured
    plain = _on_a_tty(stack, "list", env={"NO_COLOR": "1"})
    assert "\x1b[" not in plain and re.search(r"started", plain)
