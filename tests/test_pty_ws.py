"""PTY WebSocket protocol details and the additions beyond Daytona, with a raw client.

Covers: subprotocol negotiation, `connected` before output, `exited` only for clients that
offered the capability, close codes/reasons, HTTP denial before the upgrade, scrollback
replay on re-attach (cut at a safe point), resume by offset, and the idle reaper.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

from tests.helpers import RunningDaemon, start_daemon

EXIT_CONTROL = "X-Daytona-Pty-Exit-Control"


def ws_url(daemon: RunningDaemon, path: str) -> str:
    return daemon.url.replace("http://", "ws://") + path


def open_ws(daemon: RunningDaemon, path: str, subprotocols: list[str] | None = None) -> ClientConnection:
    offered = [Subprotocol(p) for p in subprotocols] if subprotocols is not None else None
    return connect(ws_url(daemon, path), subprotocols=offered, compression=None, max_size=None, proxy=None)


def expect_connected(ws: ClientConnection) -> dict:
    first = ws.recv(timeout=10)
    assert isinstance(first, str), f"first frame must be the text control message, got {first!r}"
    message = json.loads(first)
    assert message["type"] == "control" and message["status"] == "connected"
    return message


def read_until(ws: ClientConnection, marker: bytes, timeout: float = 10.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        frame = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        assert isinstance(frame, bytes), f"unexpected text frame {frame!r}"
        seen += frame
    return seen


def drain(ws: ClientConnection, quiet: float = 0.3) -> bytes:
    seen = b""
    while True:
        try:
            frame = ws.recv(timeout=quiet)
        except TimeoutError:
            return seen
        assert isinstance(frame, bytes)
        seen += frame


@pytest.fixture
def pty_id(daemon: RunningDaemon) -> Iterator[str]:
    session_id = f"raw-{uuid.uuid4().hex[:8]}"
    yield session_id
    with daemon.client() as client:
        client.delete(f"/process/pty/{session_id}")


def create(daemon: RunningDaemon, pty_id: str, **body: object) -> None:
    with daemon.client() as client:
        response = client.post("/process/pty", json={"id": pty_id, **body})
        assert response.status_code == 201, response.text


def test_subprotocols_connected_first_and_exited_message(daemon: RunningDaemon, pty_id: str) -> None:
    token = base64.urlsafe_b64encode(json.dumps({"SECRET": "s3"}).encode()).rstrip(b"=").decode()
    with open_ws(daemon, f"/process/pty/create-connect?id={pty_id}&cols=90&rows=20",
                 [EXIT_CONTROL, f"X-Daytona-Pty-Envs~{token}"]) as ws:
        assert ws.subprotocol == EXIT_CONTROL  # only the capability is echoed, never the envs
        expect_connected(ws)
        ws.send("echo val=$SECRET\n")  # a text input frame is input too
        read_until(ws, b"val=s3")
        ws.send(b"exit 5\n")
        frames = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                frames.append(ws.recv(timeout=10))
        exited = [json.loads(f) for f in frames if isinstance(f, str)]
        assert exited == [{"type": "control", "status": "exited", "exitCode": 5, "exitReason": "non-zero exit"}]
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
        assert json.loads(closed.value.rcvd.reason) == {"exitCode": 5, "exitReason": "non-zero exit"}


def test_without_exit_control_only_the_close_frame(daemon: RunningDaemon, pty_id: str) -> None:
    with open_ws(daemon, f"/process/pty/create-connect?id={pty_id}", ["X-Daytona-SDK-Version~0.226.1"]) as ws:
        assert ws.subprotocol == "X-Daytona-SDK-Version~0.226.1"  # what a browser SDK needs back
        expect_connected(ws)
        ws.send(b"exit 0\n")
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                assert isinstance(ws.recv(timeout=10), bytes)  # no control text frame at all
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
        assert json.loads(closed.value.rcvd.reason) == {"exitCode": 0}


@pytest.mark.parametrize(
    "path, status",
    [
        ("/process/pty/create-connect?cols=80&rows=24", 400),  # no id
        ("/process/pty/create-connect?id=x&cols=abc", 400),
        ("/process/pty/create-connect?id=x&rows=0", 400),
        ("/process/pty/unknown-pty/connect", 404),
    ],
)
def test_rejections_are_http_statuses_before_the_upgrade(daemon: RunningDaemon, path: str, status: int) -> None:
    with pytest.raises(InvalidStatus) as rejected:
        open_ws(daemon, path, [EXIT_CONTROL])
    response = rejected.value.response
    assert response.status_code == status
    assert json.loads(response.body)["source"] == "DAYTONA_DAEMON"


def test_conflict_is_409_and_bad_envs_token_is_400(daemon: RunningDaemon, pty_id: str) -> None:
    create(daemon, pty_id)
    with pytest.raises(InvalidStatus) as rejected:
        open_ws(daemon, f"/process/pty/create-connect?id={pty_id}", [EXIT_CONTROL])
    assert rejected.value.response.status_code == 409
    assert json.loads(rejected.value.response.body)["code"] == "CONFLICT"
    with pytest.raises(InvalidStatus) as rejected:
        open_ws(daemon, "/process/pty/create-connect?id=other", [EXIT_CONTROL, "X-Daytona-Pty-Envs~!!notbase64"])
    assert rejected.value.response.status_code == 400


def test_reattach_replays_recent_screen_from_a_line_start(daemon: RunningDaemon, pty_id: str) -> None:
    create(daemon, pty_id)
    with open_ws(daemon, f"/process/pty/{pty_id}/connect") as ws:
        expect_connected(ws)
        ws.send(b"seq 1 40000; echo DONE-$((1+1))\n")
        read_until(ws, b"DONE-2")
    with open_ws(daemon, f"/process/pty/{pty_id}/connect") as ws:
        expect_connected(ws)
        replay = drain(ws)
        assert b"DONE-2" in replay
        # Bounded: the default 64 KiB window (plus the prompt, if it arrived live just after).
        assert 60 * 1024 <= len(replay) <= 65 * 1024
        first_line = replay.split(b"\r\n", 1)[0]
        assert first_line.isdigit() and int(first_line) > 30000  # whole lines from the recent end
        ws.send(b"echo live-after-$((2+3))\n")
        read_until(ws, b"live-after-5\r\n")
        drain(ws)  # the prompt that follows
    with open_ws(daemon, f"/process/pty/{pty_id}/connect?scrollback=0") as ws:
        expect_connected(ws)
        assert drain(ws) == b""  # Daytona's behaviour on request: live output only


def test_replay_never_splits_an_escape_or_a_character(daemon: RunningDaemon, pty_id: str) -> None:
    create(daemon, pty_id)
    with open_ws(daemon, f"/process/pty/{pty_id}/connect") as ws:
        expect_connected(ws)
        # 3000 x (red "é€") on one line, no line feed after it: nothing to cut at but
        # escape and character boundaries in the replay window.
        ws.send(b"python3 -c \"import sys, time; sys.stdout.write('\\x1b[31m\\u00e9\\u20ac' * 3000 + 'Z' + 'Z');"
                b" sys.stdout.flush(); time.sleep(30)\"\n")
        read_until(ws, b"ZZ")
    for window in (100, 101, 102, 103, 104, 105, 106, 107):
        with open_ws(daemon, f"/process/pty/{pty_id}/connect?scrollback={window}") as ws:
            expect_connected(ws)
            replay = drain(ws, quiet=0.2)
            text = replay.decode("utf-8")  # strict: a split character would raise
            assert text.startswith("\x1b") or text[0] in "é€E\r", text[:20]  # a sequence or character start
            assert not re.match(r"[\[\d;?]+[a-zA-Z]", text)  # no orphaned tail of an escape sequence
            assert text.endswith("ZZ") and len(replay) <= window


def test_resume_from_offset_is_exact(daemon: RunningDaemon, pty_id: str) -> None:
    create(daemon, pty_id)
    with open_ws(daemon, f"/process/pty/{pty_id}/connect?offset=0") as ws:
        assert expect_connected(ws)["offset"] == 0
        ws.send(b"echo part-$((1))\n")
        received = read_until(ws, b"part-1\r\n")
        received += drain(ws, quiet=0.3)
    with open_ws(daemon, f"/process/pty/{pty_id}/connect?scrollback=0") as ws:
        expect_connected(ws)
        ws.send(b"echo part-$((1+1))\n")  # produced while the first client is away
        read_until(ws, b"part-2\r\n")
        drain(ws, quiet=0.3)
    with open_ws(daemon, f"/process/pty/{pty_id}/connect?offset={len(received)}") as ws:
        assert expect_connected(ws)["offset"] == len(received)
        rest = drain(ws, quiet=0.3)
    with open_ws(daemon, f"/process/pty/{pty_id}/connect?offset=0") as ws:
        expect_connected(ws)
        everything = drain(ws, quiet=0.3)
    assert received + rest == everything  # nothing lost, nothing repeated
    assert b"part-2" in rest and b"part-1" not in rest


def test_idle_detached_pty_is_reaped(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, extra_env={"TOOLBOX_PTY_IDLE_TIMEOUT": "1"})
    try:
        create(daemon, "idle")
        create(daemon, "attached")
        with open_ws(daemon, "/process/pty/attached/connect") as ws:
            expect_connected(ws)
            deadline = time.monotonic() + 10
            with daemon.client() as client:
                while client.get("/process/pty/idle").status_code != 404:
                    assert time.monotonic() < deadline, "idle PTY was not reaped"
                    time.sleep(0.2)
                assert client.get("/process/pty/attached").json()["active"] is True
    finally:
        daemon.stop()


def test_a_stuck_client_does_not_stall_the_others(daemon: RunningDaemon, pty_id: str) -> None:
    create(daemon, pty_id)
    url = ws_url(daemon, f"/process/pty/{pty_id}/connect?scrollback=0")
    # max_queue=1: the client library stops reading the socket once one frame is waiting.
    with connect(url, compression=None, max_size=None, proxy=None, max_queue=1) as stuck:
        expect_connected(stuck)
        with open_ws(daemon, f"/process/pty/{pty_id}/connect?scrollback=0") as fast:
            expect_connected(fast)
            fast.send(b"stty -echo; head -c 24M /dev/zero | base64 | tr -d '\\n'; echo; echo END-$((6*7))\n")
            total, window = 0, b""
            while b"END-42" not in window:
                frame = fast.recv(timeout=30)
                assert isinstance(frame, bytes)
                total += len(frame)
                window = window[-16:] + frame
            assert total >= 32 * 1024 * 1024  # everything, though the other client reads nothing
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                stuck.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert closed.value.rcvd.reason == "slow consumer"
