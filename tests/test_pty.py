"""PTY sessions through the official SDK (`Process` PTY methods and `PtyHandle`) on a live daemon."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from daytona.common.errors import (
    DaytonaConflictError,
    DaytonaError,
    DaytonaNotFoundError,
    DaytonaSessionEndedError,
)
from daytona._sync.process import Process
from daytona.common.pty import PtySize
from daytona.handle.pty_handle import PtyHandle
from daytona_toolbox_api_client import PtyCreateRequest

from tests.helpers import RunningDaemon, sdk_process


@pytest.fixture(params=[False, True], ids=["bare", "via-prefix"])
def process(request: pytest.FixtureRequest, daemon: RunningDaemon) -> Process:
    return sdk_process(daemon, via_prefix=request.param)


@pytest.fixture
def pty_id(process: Process) -> Iterator[str]:
    session_id = f"pty-{uuid.uuid4().hex[:8]}"
    yield session_id
    try:
        process.kill_pty_session(session_id)
    except DaytonaError:
        pass


def read_until(handle: PtyHandle, marker: bytes, timeout: float = 10.0) -> bytes:
    """Iterate the handle's output until `marker` shows up."""
    seen = b""
    deadline = time.monotonic() + timeout
    for chunk in handle._handle_events(deadline):
        seen += chunk
        if marker in seen:
            return seen
    raise AssertionError(f"{marker!r} not seen within {timeout}s; got {seen[-500:]!r}")


def test_create_send_input_and_exit_code(process, pty_id: str, daemon: RunningDaemon) -> None:
    sub = daemon.workdir / "sub dir"
    sub.mkdir(exist_ok=True)
    handle = process.create_pty_session(
        pty_id, cwd=str(sub), envs={"GREETING": "hello world", "QUOTE": 'a"b'}, pty_size=PtySize(rows=33, cols=111)
    )
    try:
        assert handle.is_connected()
        handle.send_input('echo "[$GREETING|$QUOTE|$(pwd)|$(stty size)|$TERM]"\n')
        out = read_until(handle, b"|33 111|")
        assert f"[hello world|a\"b|{sub}|33 111|xterm-256color]".encode() in out
        handle.send_input("exit 3\n")
        result = handle.wait(timeout=10)
        assert (result.exit_code, result.error) == (3, "non-zero exit")
        assert handle.exit_code == 3
    finally:
        handle.disconnect()
    # Exited PTYs leave the registry (Daytona semantics).
    with pytest.raises(DaytonaNotFoundError):
        process.get_pty_session_info(pty_id)


def test_clean_exit_is_zero_without_error(process, pty_id: str) -> None:
    handle = process.create_pty_session(pty_id)
    handle.send_input("echo bye-$((2*3)); exit\n")
    collected = b""
    for chunk in handle:  # plain iteration ends when the PTY exits
        collected += chunk
    handle.disconnect()
    assert b"bye-6" in collected
    assert (handle.exit_code, handle.error) == (0, None)
    assert (handle.wait().exit_code, handle.is_connected()) == (0, False)


def test_kill_a_lazy_pty_that_never_started(process, pty_id: str) -> None:
    process._api_client.create_pty_session(PtyCreateRequest(id=pty_id, lazy_start=True, cols=90))
    assert process.resize_pty_session(pty_id, PtySize(rows=30, cols=100)).cols == 100
    process.kill_pty_session(pty_id)
    with pytest.raises(DaytonaNotFoundError):
        process.get_pty_session_info(pty_id)


def test_list_info_resize_and_kill(process, pty_id: str) -> None:
    handle = process.create_pty_session(pty_id, envs={"A": "1"})
    try:
        listed = {s.id: s for s in process.list_pty_sessions()}
        assert listed[pty_id].active is True and listed[pty_id].envs["A"] == "1"
        info = process.get_pty_session_info(pty_id)
        assert (info.cols, info.rows, info.lazy_start, info.active) == (80, 24, False, True)
        assert info.envs["TERM"] == "xterm-256color" and info.created_at

        updated = handle.resize(PtySize(rows=50, cols=200))
        assert (updated.cols, updated.rows) == (200, 50)
        updated = process.resize_pty_session(pty_id, PtySize(rows=40, cols=120))
        assert (updated.cols, updated.rows) == (120, 40)
        handle.send_input("stty size\n")
        read_until(handle, b"40 120")
        assert (process.get_pty_session_info(pty_id).cols) == 120

        handle.send_input("sleep 1000 &\n")  # a job in its own process group dies too
        handle.kill()
        result = handle.wait(timeout=10)
        assert (result.exit_code, result.error) == (137, "SIGKILL")
    finally:
        handle.disconnect()
    with pytest.raises(DaytonaNotFoundError):
        process.get_pty_session_info(pty_id)
    assert pty_id not in {s.id for s in process.list_pty_sessions()}
    with pytest.raises(DaytonaSessionEndedError):
        process.resize_pty_session(pty_id, PtySize(rows=10, cols=10))
    with pytest.raises(DaytonaNotFoundError):
        process.kill_pty_session(pty_id)


def test_kill_pty_session_closes_attached_clients(process, pty_id: str) -> None:
    handle = process.create_pty_session(pty_id)
    process.kill_pty_session(pty_id)
    result = handle.wait(timeout=10)
    handle.disconnect()
    assert (result.exit_code, result.error) == (137, "SIGKILL")


def test_conflicting_id_is_a_409_before_the_upgrade(process, pty_id: str) -> None:
    handle = process.create_pty_session(pty_id)
    try:
        with pytest.raises(DaytonaConflictError, match="409"):
            process.create_pty_session(pty_id)
        assert process.get_pty_session_info(pty_id).active  # the first one is untouched
    finally:
        handle.disconnect()


def test_bad_create_connect_parameters_are_400(process, pty_id: str, daemon: RunningDaemon) -> None:
    with pytest.raises(DaytonaError, match="400"):
        process.create_pty_session(pty_id, pty_size=PtySize(rows=24, cols=5000))
    with pytest.raises(DaytonaError, match="400"):
        process.create_pty_session(pty_id, cwd=str(daemon.workdir / "missing"))
    with pytest.raises(DaytonaNotFoundError):
        process.get_pty_session_info(pty_id)


def test_connect_pty_session_replays_screen_and_multi_attaches(process, pty_id: str) -> None:
    process._api_client.create_pty_session(PtyCreateRequest(id=pty_id, envs={"MARK": "m1"}))
    a = process.connect_pty_session(pty_id)
    a.send_input("echo before-$MARK\n")
    read_until(a, b"before-m1")
    # A second client attaching later sees the recent screen first, then live output.
    b = process.connect_pty_session(pty_id)
    try:
        read_until(b, b"before-m1")
        b.send_input("echo live-$((40+2))\n")
        read_until(a, b"live-42")
        read_until(b, b"live-42")
        b.disconnect()  # one client leaving does not stop the PTY
        a.send_input("echo still-$((1+1))-here\n")
        read_until(a, b"still-2-here")
        a.send_input("exit 7\n")
        assert a.wait(timeout=10).exit_code == 7
    finally:
        a.disconnect()
        b.disconnect()


def test_connect_to_unknown_pty_fails(process) -> None:
    with pytest.raises(DaytonaError):
        process.connect_pty_session("no-such-pty")


def test_lazy_start_starts_on_first_connect(process, pty_id: str) -> None:
    process._api_client.create_pty_session(PtyCreateRequest(id=pty_id, lazy_start=True))
    info = process.get_pty_session_info(pty_id)
    assert (info.active, info.lazy_start) == (False, True)
    handle = process.connect_pty_session(pty_id)
    try:
        assert process.get_pty_session_info(pty_id).active
        handle.send_input("echo lazy-$((3*3))\n")
        read_until(handle, b"lazy-9")
    finally:
        handle.disconnect()


def test_ctrl_c_reaches_the_foreground_job(process, pty_id: str) -> None:
    handle = process.create_pty_session(pty_id)
    try:
        handle.send_input("sleep 100\n")
        time.sleep(0.3)
        handle.send_input(b"\x03")
        handle.send_input("echo after-sleep-$?\n")
        read_until(handle, b"after-sleep-130")
    finally:
        handle.disconnect()


def test_rest_validation_errors(daemon: RunningDaemon, pty_id: str, process) -> None:
    with daemon.client() as client:
        assert client.post("/process/pty", json={"cols": 80}).status_code == 400
        assert client.post("/process/pty", json={"id": pty_id, "rows": 1001}).status_code == 400
        assert client.post("/process/pty", content=b"{not json").status_code == 400
        created = client.post("/process/pty", json={"id": pty_id})
        assert created.status_code == 201 and created.json() == {"sessionId": pty_id}
        conflict = client.post("/process/pty", json={"id": pty_id})
        assert conflict.status_code == 409 and conflict.json()["code"] == "CONFLICT"
        bad_resize = client.post(f"/process/pty/{pty_id}/resize", json={"cols": 0, "rows": 10})
        assert bad_resize.status_code == 400
        missing = client.get("/process/pty/nope")
        assert missing.status_code == 404 and missing.json()["code"] == "PROCESS_NOT_FOUND"
        assert client.delete(f"/process/pty/{pty_id}").json() == {"message": "PTY session deleted"}
