"""`/process/session/*` through the official SDK `Process`, plus raw HTTP/WebSocket for the
additions (offsets, signals)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest
from daytona.common.errors import (
    DaytonaBadRequestError,
    DaytonaCommandAlreadyCompletedError,
    DaytonaConflictError,
    DaytonaNotFoundError,
    DaytonaSessionEndedError,
)
from daytona._sync.process import Process
from daytona.common.process import SessionExecuteRequest

from tests.helpers import RunningDaemon, sdk_process, start_daemon

OUT = "\x01\x01\x01"
ERR = "\x02\x02\x02"


def wait_for_exit(process: Process, session_id: str, command_id: str, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        command = process.get_session_command(session_id, command_id)
        if command.exit_code is not None:
            return command.exit_code
        time.sleep(0.05)
    raise AssertionError(f"command {command_id} did not finish")


def _binary(frame: str | bytes) -> bytes:
    assert isinstance(frame, bytes), f"a text frame where raw log bytes belong: {frame!r}"
    return frame


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.fixture(params=[False, True], ids=["direct", "via_prefix"])
def process(request: pytest.FixtureRequest, daemon: RunningDaemon) -> Process:
    return sdk_process(daemon, via_prefix=request.param)


def test_state_carries_over_and_sync_exec_shape(process: Process, daemon: RunningDaemon, request) -> None:
    sid = f"state-{request.node.callspec.id}"
    process.create_session(sid)
    (daemon.workdir / "inner").mkdir(exist_ok=True)
    first = process.execute_session_command(
        sid, SessionExecuteRequest(command="cd inner && export GREETING=hi && f() { echo \"f:$1\"; }; echo ok; echo warn >&2")
    )
    assert first.exit_code == 0
    assert first.stdout == "ok\n" and first.stderr == "warn\n"
    # `output` carries the stream markers, as Daytona's daemon sends them to this SDK.
    assert first.output is not None and OUT in first.output and ERR in first.output
    assert first.output.replace(OUT, "").replace(ERR, "") in ("ok\nwarn\n", "warn\nok\n")
    second = process.execute_session_command(sid, SessionExecuteRequest(command='pwd; echo "$GREETING"; f x; exit_code=3; (exit 3)'))
    assert second.stdout == f"{daemon.workdir / 'inner'}\nhi\nf:x\n"
    assert second.exit_code == 3
    session = process.get_session(sid)
    assert session.session_id == sid
    assert [c.id for c in session.commands] == [first.cmd_id, second.cmd_id]
    assert [c.exit_code for c in session.commands] == [0, 3]
    assert sid in [s.session_id for s in process.list_sessions()]
    process.delete_session(sid)
    with pytest.raises(DaytonaNotFoundError):
        process.get_session(sid)


def test_commands_run_one_after_another(daemon: RunningDaemon) -> None:
    process = sdk_process(daemon)
    process.create_session("seq")
    slow = process.execute_session_command("seq", SessionExecuteRequest(command="sleep 0.6; echo slow", run_async=True))
    started = time.monotonic()
    fast = process.execute_session_command("seq", SessionExecuteRequest(command="echo fast"))
    assert time.monotonic() - started >= 0.4, "the second command did not wait for the first"
    assert fast.stdout == "fast\n"
    assert process.get_session_command("seq", slow.cmd_id).exit_code == 0
    assert process.get_session_command_logs("seq", slow.cmd_id).stdout == "slow\n"
    process.delete_session("seq")


def test_async_exec_logs_and_deprecated_async_flag(daemon: RunningDaemon) -> None:
    process = sdk_process(daemon, via_prefix=True)
    process.create_session("async")
    response = process.execute_session_command(
        "async", SessionExecuteRequest(command="echo one; sleep 0.2; echo two >&2; (exit 4)", run_async=True)
    )
    assert response.cmd_id and response.exit_code is None
    command = process.get_session_command("async", response.cmd_id)
    assert command.command.startswith("echo one") and command.exit_code is None
    assert wait_for_exit(process, "async", response.cmd_id) == 4
    logs = process.get_session_command_logs("async", response.cmd_id)
    assert (logs.stdout, logs.stderr) == ("one\n", "two\n")
    assert logs.output == f"{OUT}one\n{ERR}two\n"
    with daemon.client() as client:
        raw = client.post("/process/session/async/exec", json={"command": "echo legacy", "async": True})
        assert raw.status_code == 202 and set(raw.json()) == {"cmdId"}
        assert wait_for_exit(process, "async", raw.json()["cmdId"]) == 0
    process.delete_session("async")


def test_sync_command_never_waits_for_stdin(daemon: RunningDaemon) -> None:
    process = sdk_process(daemon)
    process.create_session("stdin")
    started = time.monotonic()
    response = process.execute_session_command("stdin", SessionExecuteRequest(command="cat; read x; echo after"), timeout=10)
    assert time.monotonic() - started < 5
    assert response.stdout == "after\n"
    process.delete_session("stdin")


def test_log_stream_over_websocket(process: Process, request) -> None:
    sid = f"stream-{request.node.callspec.id}"
    process.create_session(sid)
    command = process.execute_session_command(
        sid,
        SessionExecuteRequest(command="for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.1; done", run_async=True),
    )
    stdout: list[str] = []
    stderr: list[str] = []

    async def on_stderr(text: str) -> None:  # async callbacks are awaited by the SDK
        stderr.append(text)

    started = time.monotonic()
    asyncio.run(process.get_session_command_logs_async(sid, command.cmd_id, stdout.append, on_stderr))
    # The server closed the stream by itself once the command had finished.
    assert time.monotonic() - started < 10
    assert "".join(stdout) == "out1\nout2\nout3\n"
    assert "".join(stderr) == "err1\nerr2\nerr3\n"
    assert process.get_session_command(sid, command.cmd_id).exit_code == 0
    # A finished command streams its whole log and closes at once.
    again: list[str] = []
    asyncio.run(process.get_session_command_logs_async(sid, command.cmd_id, again.append, lambda _t: None))
    assert "".join(again) == "out1\nout2\nout3\n"
    process.delete_session(sid)


def test_send_input_echo_and_errors(daemon: RunningDaemon) -> None:
    process = sdk_process(daemon)
    process.create_session("input")
    echoed = process.execute_session_command(
        "input", SessionExecuteRequest(command='read a; read b; echo "got $a/$b"', run_async=True)
    )
    process.send_session_command_input("input", echoed.cmd_id, "first")
    process.send_session_command_input("input", echoed.cmd_id, "second\n")
    assert wait_for_exit(process, "input", echoed.cmd_id) == 0
    assert process.get_session_command_logs("input", echoed.cmd_id).stdout == "first\nsecond\ngot first/second\n"

    quiet = process.execute_session_command(
        "input", SessionExecuteRequest(command="read a; echo \"len ${#a}\"", run_async=True, suppress_input_echo=True)
    )
    process.send_session_command_input("input", quiet.cmd_id, "secret")
    assert wait_for_exit(process, "input", quiet.cmd_id) == 0
    assert process.get_session_command_logs("input", quiet.cmd_id).stdout == "len 6\n"

    with pytest.raises(DaytonaCommandAlreadyCompletedError):
        process.send_session_command_input("input", quiet.cmd_id, "late")
    with pytest.raises(DaytonaNotFoundError):
        process.send_session_command_input("input", "no-such-command", "x")

    waiting = process.execute_session_command("input", SessionExecuteRequest(command="exit 9", run_async=True))
    assert wait_for_exit(process, "input", waiting.cmd_id) == 9
    with pytest.raises(DaytonaSessionEndedError):
        process.execute_session_command("input", SessionExecuteRequest(command="echo hi"))
    process.delete_session("input")


def test_session_errors(process: Process) -> None:
    with pytest.raises(DaytonaNotFoundError, match="session not found"):
        process.get_session("missing")
    with pytest.raises(DaytonaNotFoundError):
        process.execute_session_command("missing", SessionExecuteRequest(command="true"))
    with pytest.raises(DaytonaNotFoundError):
        process.delete_session("missing")
    with pytest.raises(DaytonaBadRequestError, match="reserved"):
        process.create_session("entrypoint")
    with pytest.raises(DaytonaBadRequestError):
        process.delete_session("entrypoint")
    with pytest.raises(DaytonaBadRequestError, match="must not contain '/'"):
        process.create_session("a/b")
    with pytest.raises(DaytonaBadRequestError, match="too long"):
        process.create_session("x" * 300)
    process.create_session("dup")
    try:
        with pytest.raises(DaytonaConflictError):
            process.create_session("dup")
        with pytest.raises(DaytonaBadRequestError, match="empty"):
            process.execute_session_command("dup", SessionExecuteRequest(command="  "))
        with pytest.raises(DaytonaNotFoundError, match="command not found"):
            process.get_session_command("dup", "nope")
    finally:
        process.delete_session("dup")


def test_entrypoint_without_command_is_empty_but_valid(process: Process) -> None:
    session = process.get_entrypoint_session()
    assert session.session_id == "entrypoint" and session.commands == []
    logs = process.get_entrypoint_logs()
    assert (logs.output, logs.stdout, logs.stderr) == ("", "", "")
    got: list[str] = []
    asyncio.run(process.get_entrypoint_logs_async(got.append, got.append))
    assert got == []
    assert "entrypoint" not in [s.session_id for s in process.list_sessions()]


def test_entrypoint_command(tmp_path: Path) -> None:
    running = start_daemon(tmp_path, extra_env={"TOOLBOX_ENTRYPOINT": "echo booting; echo oops >&2; sleep 0.3; echo up"})
    try:
        process = sdk_process(running, via_prefix=True)
        session = process.get_entrypoint_session()
        assert [c.id for c in session.commands] == ["entrypoint_command"]
        out: list[str] = []
        err: list[str] = []
        asyncio.run(process.get_entrypoint_logs_async(out.append, err.append))
        assert "".join(out) == "booting\nup\n" and "".join(err) == "oops\n"
        logs = process.get_entrypoint_logs()
        assert logs.stdout == "booting\nup\n"
        assert process.get_entrypoint_session().commands[0].exit_code == 0
        with pytest.raises(DaytonaBadRequestError):
            process.execute_session_command("entrypoint", SessionExecuteRequest(command="true"))
    finally:
        running.stop()


def test_exit_code_only_after_all_output(daemon: RunningDaemon) -> None:
    process = sdk_process(daemon)
    process.create_session("flush")
    expected = "".join(f"{i}\n" for i in range(1, 50001))
    for _ in range(3):
        command = process.execute_session_command("flush", SessionExecuteRequest(command="seq 1 50000", run_async=True))
        assert wait_for_exit(process, "flush", command.cmd_id) == 0
        assert process.get_session_command_logs("flush", command.cmd_id).stdout == expected
    sync = process.execute_session_command("flush", SessionExecuteRequest(command="seq 1 50000; seq 1 10 >&2"))
    assert sync.stdout == expected and sync.stderr == "".join(f"{i}\n" for i in range(1, 11))
    process.delete_session("flush")


def test_delete_kills_background_children(daemon: RunningDaemon, tmp_path: Path) -> None:
    process = sdk_process(daemon)
    process.create_session("orphans")
    pids_file = tmp_path / "pids"
    response = process.execute_session_command(
        "orphans",
        SessionExecuteRequest(
            command=(
                f"sleep 300 > /dev/null 2>&1 & echo $! >> {pids_file}; "
                f"setsid sleep 301 > /dev/null 2>&1 & echo $! >> {pids_file}; "
                f"(trap '' TERM; sleep 302) > /dev/null 2>&1 & echo $! >> {pids_file}; echo started"
            )
        ),
    )
    assert response.exit_code == 0 and response.stdout == "started\n"
    pids = [int(line) for line in pids_file.read_text().split()]
    assert len(pids) == 3 and all(alive(pid) for pid in pids)
    # A still-running async command is killed as well.
    running = process.execute_session_command("orphans", SessionExecuteRequest(command="sleep 303", run_async=True))
    time.sleep(0.2)
    process.delete_session("orphans")
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.1)
    assert not any(alive(pid) for pid in pids), "background children survived the session"
    assert running.cmd_id


def test_background_child_holding_output_does_not_block(daemon: RunningDaemon) -> None:
    process = sdk_process(daemon)
    process.create_session("bg")
    started = time.monotonic()
    response = process.execute_session_command("bg", SessionExecuteRequest(command="sleep 30 & echo fg"))
    assert time.monotonic() - started < 5
    assert response.stdout == "fg\n" and response.exit_code == 0
    assert process.execute_session_command("bg", SessionExecuteRequest(command="echo next")).stdout == "next\n"
    process.delete_session("bg")


def test_logs_survive_daemon_restart(tmp_path: Path) -> None:
    first = start_daemon(tmp_path)
    try:
        process = sdk_process(first)
        process.create_session("kept")
        earlier = process.execute_session_command("kept", SessionExecuteRequest(command="true"))
        done = process.execute_session_command("kept", SessionExecuteRequest(command="echo persisted; echo e >&2; exit 2"))
    finally:
        first.stop()
    second = start_daemon(tmp_path)
    try:
        process = sdk_process(second)
        session = process.get_session("kept")
        assert [(c.id, c.exit_code) for c in session.commands] == [(earlier.cmd_id, 0), (done.cmd_id, 2)]
        logs = process.get_session_command_logs("kept", done.cmd_id)
        assert (logs.stdout, logs.stderr) == ("persisted\n", "e\n")
        got: list[str] = []
        asyncio.run(process.get_session_command_logs_async("kept", done.cmd_id, got.append, lambda _t: None))
        assert got == ["persisted\n"]
        with pytest.raises(DaytonaSessionEndedError):
            process.execute_session_command("kept", SessionExecuteRequest(command="true"))
        process.delete_session("kept")
        with pytest.raises(DaytonaNotFoundError):
            process.get_session("kept")
    finally:
        second.stop()


# -- additions beyond Daytona: offsets, signals --------------------------------------------------


def test_json_logs_offset(daemon: RunningDaemon) -> None:
    process = sdk_process(daemon)
    process.create_session("offsets")
    command = process.execute_session_command("offsets", SessionExecuteRequest(command="echo abc; echo def"))
    base = f"/process/session/offsets/command/{command.cmd_id}/logs"
    with daemon.client() as client:
        whole = client.get(base)
        end = int(whole.headers["x-output-offset"])
        raw = whole.json()["output"].encode()
        assert end == len(raw)
        tail = client.get(base, params={"offset": end - 4})
        assert tail.json()["output"].encode() == raw[-4:]
        assert tail.headers["x-output-offset"] == str(end)
        past = client.get(base, params={"offset": end + 100})
        assert past.json() == {"output": "", "stdout": "", "stderr": ""}
        assert client.get(base, params={"offset": "-1"}).status_code == 400
    process.delete_session("offsets")


def test_websocket_resume_from_offset(daemon: RunningDaemon) -> None:
    from websockets.sync.client import connect

    process = sdk_process(daemon)
    process.create_session("resume")
    command = process.execute_session_command(
        "resume", SessionExecuteRequest(command="for i in 1 2 3 4 5 6; do echo line$i; sleep 0.15; done", run_async=True)
    )
    ws_base = daemon.url.replace("http://", "ws://") + f"/process/session/resume/command/{command.cmd_id}/logs"
    received = b""
    # First connection: read a little, then drop the connection mid-stream.
    with connect(ws_base + "?follow=true", open_timeout=10) as ws:
        assert ws.response is not None and ws.response.headers["X-Output-Offset"] == "0"
        received += _binary(ws.recv(timeout=10))
    resume_at = len(received)
    with connect(f"{ws_base}?follow=true&offset={resume_at}", open_timeout=10) as ws:
        assert ws.response is not None and ws.response.headers["X-Output-Offset"] == str(resume_at)
        for frame in ws:
            received += _binary(frame)
        assert ws.close_code == 1000 and ws.close_reason is not None
        end = json.loads(ws.close_reason)["offset"]
    assert end == len(received)
    assert received.replace(OUT.encode(), b"") == b"".join(b"line%d\n" % i for i in range(1, 7))
    logs = process.get_session_command_logs("resume", command.cmd_id)
    assert logs.output is not None and logs.output.encode() == received
    # Without follow: what exists now, then close 1000 with the end offset.
    with connect(ws_base + f"?offset={end - 6}", open_timeout=10) as ws:
        frames = b"".join(_binary(frame) for frame in ws)
        assert ws.close_reason is not None
        assert frames == received[-6:] and json.loads(ws.close_reason) == {"offset": end}
    process.delete_session("resume")


def test_websocket_errors_before_upgrade(daemon: RunningDaemon) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url = daemon.url.replace("http://", "ws://") + "/process/session/none/command/x/logs?follow=true"
    with pytest.raises(InvalidStatus) as info:
        connect(url, open_timeout=10)
    assert info.value.response.status_code == 404


def test_signal_running_command(daemon: RunningDaemon) -> None:
    process = sdk_process(daemon)
    process.create_session("sig")
    command = process.execute_session_command(
        "sig", SessionExecuteRequest(command="trap 'echo got-int' INT; sleep 30 & wait; echo after", run_async=True)
    )
    route = f"/process/session/sig/command/{command.cmd_id}/signal"
    time.sleep(0.3)
    with daemon.client() as client:
        assert client.post(route, json={"signal": "BOGUS"}).status_code == 400
        sent = client.post(route, json={"signal": "TERM"})
        assert sent.status_code == 200, sent.text
        assert sent.json()["signal"] == "SIGTERM" and sent.json()["processes"] >= 1
        code = wait_for_exit(process, "sig", command.cmd_id)
        assert code == 0  # `wait` returned once sleep died; the script went on
        assert process.get_session_command_logs("sig", command.cmd_id).stdout == "after\n"
        late = client.post(route, params={"signal": "INT"})
        assert late.status_code == 410 and late.json()["code"] == "COMMAND_ALREADY_COMPLETED"
    # The session shell itself survived: the signal went to the command's processes only.
    assert process.execute_session_command("sig", SessionExecuteRequest(command="echo alive")).stdout == "alive\n"
    killed = process.execute_session_command("sig", SessionExecuteRequest(command="sleep 30", run_async=True))
    time.sleep(0.3)
    with daemon.client() as client:
        assert client.post(f"/process/session/sig/command/{killed.cmd_id}/signal?signal=KILL").status_code == 200
    assert wait_for_exit(process, "sig", killed.cmd_id) == 137
    process.delete_session("sig")


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_big_output_keeps_daemon_memory_flat(daemon: RunningDaemon) -> None:
    process = sdk_process(daemon)
    process.create_session("big")
    before = _rss_kib(daemon.process.pid)
    command = process.execute_session_command(
        "big", SessionExecuteRequest(command="head -c 100000000 /dev/zero | tr '\\0' x", run_async=True)
    )
    assert wait_for_exit(process, "big", command.cmd_id, timeout=60) == 0
    grown = _rss_kib(daemon.process.pid) - before
    assert grown < 24 * 1024, f"daemon RSS grew by {grown} KiB while a command printed 100 MB"
    with daemon.client() as client:
        response = client.get(f"/process/session/big/command/{command.cmd_id}/logs", params={"offset": 99_000_000})
        end = int(response.headers["x-output-offset"])
    assert end > 100_000_000  # markers included
    assert set(response.json()["stdout"]) == {"x"}
    process.delete_session("big")
    assert os.path.exists(f"/proc/{daemon.process.pid}")


def test_input_to_queued_command_and_cancelled_sync_wait(daemon: RunningDaemon) -> None:
    import threading

    process = sdk_process(daemon)
    process.create_session("queue")
    blocker = process.execute_session_command("queue", SessionExecuteRequest(command="sleep 30", run_async=True))
    queued = process.execute_session_command("queue", SessionExecuteRequest(command="cat", run_async=True))
    with pytest.raises(DaytonaConflictError, match="not started yet"):
        process.send_session_command_input("queue", queued.cmd_id, "x")
    outcome: list[BaseException | None] = []

    def wait_sync() -> None:
        try:
            process.execute_session_command("queue", SessionExecuteRequest(command="echo never"))
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)

    waiter = threading.Thread(target=wait_sync)
    waiter.start()
    time.sleep(0.3)
    process.delete_session("queue")
    waiter.join(15)
    assert len(outcome) == 1 and isinstance(outcome[0], DaytonaBadRequestError), outcome
    assert "session cancelled" in str(outcome[0])
    assert blocker.cmd_id


def test_async_sdk_streams_logs_over_aiohttp(daemon: RunningDaemon) -> None:
    """The async SDK streams with aiohttp instead of httpx_ws: same frames, same close."""
    from daytona._async.process import AsyncProcess
    from daytona.internal.toolbox_api_client_proxy import ToolboxApiClientProxy
    from daytona_toolbox_api_client_async import ApiClient, Configuration, ProcessApi

    async def scenario() -> tuple[str, str, int | None]:
        api_client = ApiClient(Configuration(host=daemon.url))
        try:
            # As the SDK builds it: the proxy adds /{sandboxId} and exposes the aiohttp session.
            assert daemon.sandbox_id is not None
            proxy = ToolboxApiClientProxy(api_client, daemon.sandbox_id, daemon.url)
            process = AsyncProcess("python", ProcessApi(proxy))
            await process.create_session("aio")
            command = await process.execute_session_command(
                "aio", SessionExecuteRequest(command="echo a; sleep 0.2; echo b >&2; echo c", run_async=True)
            )
            out: list[str] = []
            err: list[str] = []
            await process.get_session_command_logs_async("aio", command.cmd_id, out.append, err.append)
            finished = await process.get_session_command("aio", command.cmd_id)
            await process.delete_session("aio")
            return "".join(out), "".join(err), finished.exit_code
        finally:
            await api_client.close()

    assert asyncio.run(scenario()) == ("a\nc\n", "b\n", 0)


def test_daemon_stop_leaves_no_session_processes(tmp_path: Path) -> None:
    running = start_daemon(tmp_path)
    pid_file = tmp_path / "pid"
    try:
        process = sdk_process(running)
        process.create_session("left")
        process.execute_session_command(
            "left", SessionExecuteRequest(command=f"sleep 300 > /dev/null 2>&1 & echo $! > {pid_file}")
        )
        process.execute_session_command("left", SessionExecuteRequest(command="sleep 301", run_async=True))
        pid = int(pid_file.read_text())
        assert alive(pid)
    finally:
        running.stop()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.1)
    assert not alive(pid), "a session's background process outlived the daemon"


def test_websocket_echoes_the_sdk_version_subprotocol(daemon: RunningDaemon) -> None:
    from websockets.sync.client import connect
    from websockets.typing import Subprotocol

    url = daemon.url.replace("http://", "ws://") + "/process/session/entrypoint/logs?follow=true"
    with connect(url, subprotocols=[Subprotocol("X-Daytona-SDK-Version~0.226.1")], open_timeout=10) as ws:
        assert ws.subprotocol == "X-Daytona-SDK-Version~0.226.1"
        assert list(ws) == [] and ws.close_code == 1000
    with connect(url, open_timeout=10) as ws:
        assert ws.subprotocol is None
