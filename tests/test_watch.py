"""File watching: polled watchers by cursor and the WebSocket stream, on a real daemon."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_ws import WebSocketSession, WebSocketUpgradeError, connect_ws

from tests.helpers import RunningDaemon, start_daemon


def _poll_until(http: httpx.Client, watcher: str, cursor: int, want: Any, deadline: float = 10.0) -> list[dict]:
    """Events from `cursor` on until `want(events)` holds (long polls, bounded in time)."""
    seen: list[dict] = []
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        response = http.get(f"/watch/{watcher}/events", params={"cursor": cursor, "timeout": 2})
        assert response.status_code == 200, response.text
        body = response.json()
        seen += body["events"]
        cursor = body["cursor"]
        if want(seen):
            return seen
    raise AssertionError(f"condition not met; events: {seen}")


@pytest.fixture
def watched(daemon: RunningDaemon) -> Iterator[tuple[httpx.Client, Path]]:
    folder = daemon.workdir / f"w{time.monotonic_ns()}"
    folder.mkdir()
    with daemon.client(timeout=30) as http:
        yield http, folder


def test_poll_create_modify_move_delete_with_stat(watched: tuple[httpx.Client, Path]) -> None:
    http, folder = watched
    (folder / "old.txt").write_text("existing before the watch")
    created = http.post("/watch", json={"path": folder.name})  # relative to the work dir
    assert created.status_code == 201, created.text
    watcher = created.json()
    assert watcher["path"] == str(folder) and watcher["recursive"] is False and watcher["cursor"] == 0

    (folder / "a.txt").write_text("hello")
    seen = _poll_until(http, watcher["id"], 0, lambda ev: any(e["path"].endswith("a.txt") for e in ev))
    first = next(e for e in seen if e["path"] == str(folder / "a.txt"))
    assert first["type"] in ("create", "modify") and first["stat"]["size"] == 5 and first["isDir"] is False
    assert first["stat"]["permissions"] and first["stat"]["modTime"].endswith("Z")
    cursor = seen[-1]["seq"]

    os.rename(folder / "old.txt", folder / "new.txt")
    seen = _poll_until(http, watcher["id"], cursor, lambda ev: any(e["type"] == "move" for e in ev))
    move = next(e for e in seen if e["type"] == "move")
    assert move["oldPath"] == str(folder / "old.txt") and move["path"] == str(folder / "new.txt")
    assert move["stat"]["size"] == len("existing before the watch")
    cursor = seen[-1]["seq"]

    (folder / "a.txt").unlink()
    seen = _poll_until(http, watcher["id"], cursor, lambda ev: any(e["type"] == "delete" for e in ev))
    gone = next(e for e in seen if e["type"] == "delete")
    assert gone["path"] == str(folder / "a.txt") and gone["stat"] is None

    listed = http.get("/watch").json()["watchers"]
    assert watcher["id"] in [w["id"] for w in listed]
    assert http.delete(f"/watch/{watcher['id']}").status_code == 204
    assert http.get(f"/watch/{watcher['id']}/events").json()["code"] == "NOT_FOUND"


def test_recursive_only_on_request(watched: tuple[httpx.Client, Path]) -> None:
    http, folder = watched
    (folder / "sub").mkdir()
    flat = http.post("/watch", json={"path": str(folder)}).json()
    deep = http.post("/watch", json={"path": str(folder), "recursive": True}).json()
    (folder / "sub" / "inner.txt").write_text("x")
    (folder / "top.txt").write_text("y")
    seen = _poll_until(http, deep["id"], 0, lambda ev: {e["path"] for e in ev} >= {str(folder / "sub" / "inner.txt"), str(folder / "top.txt")})
    assert seen
    shallow = _poll_until(http, flat["id"], 0, lambda ev: any(e["path"] == str(folder / "top.txt") for e in ev))
    assert not any(e["path"] == str(folder / "sub" / "inner.txt") for e in shallow)
    for w in (flat, deep):
        http.delete(f"/watch/{w['id']}")


def test_websocket_streams_events_and_ends_when_path_is_deleted(daemon: RunningDaemon) -> None:
    folder = daemon.workdir / "streamed"
    folder.mkdir()
    ws_url = daemon.url.replace("http", "ws", 1)
    ws: WebSocketSession
    with httpx.Client() as http, connect_ws(f"{ws_url}/sbx-test/watch/stream?path={folder}&recursive=true", http) as ws:
        ready = json.loads(ws.receive_text())
        assert ready["type"] == "ready" and ready["path"] == str(folder) and ready["recursive"] is True
        (folder / "deep").mkdir()
        (folder / "deep" / "f.bin").write_bytes(b"12345678")
        events: list[dict[str, Any]] = []
        while not any(e.get("path") == str(folder / "deep" / "f.bin") for e in events):
            events.append(json.loads(ws.receive_text(timeout=10)))
        file_event = [e for e in events if e.get("path") == str(folder / "deep" / "f.bin")][-1]
        assert file_event["stat"]["size"] in (0, 8)
        (folder / "deep" / "f.bin").unlink()
        (folder / "deep").rmdir()
        folder.rmdir()
        closing = None
        while True:
            try:
                event = json.loads(ws.receive_text(timeout=10))
            except Exception as exc:  # the server closes the stream with 1000 once the path is gone
                closing = exc
                break
            if event["type"] == "delete" and event["path"] == str(folder):
                continue
        assert "1000" in repr(closing) or "Disconnect" in type(closing).__name__, repr(closing)
    with daemon.client() as http:
        assert http.get("/watch").json()["watchers"] == [] or all(
            w["path"] != str(folder) for w in http.get("/watch").json()["watchers"]
        )


def test_websocket_refuses_missing_path_before_upgrade(daemon: RunningDaemon) -> None:
    ws_url = daemon.url.replace("http", "ws", 1)
    with httpx.Client() as http:
        with pytest.raises(WebSocketUpgradeError) as caught:
            with connect_ws(f"{ws_url}/watch/stream?path=/no/such/dir", http):
                pass
        assert caught.value.response.status_code == 404
        # The same refusal read as a plain upgrade request carries an ErrorResponse body.
        upgrade = {"connection": "upgrade", "upgrade": "websocket", "sec-websocket-version": "13",
                   "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ=="}
        response = http.get(f"{daemon.url}/watch/stream", params={"path": "/no/such/dir"}, headers=upgrade)
    assert response.status_code == 404
    assert response.json()["code"] == "FILE_NOT_FOUND" and "/no/such/dir" in response.json()["message"]


def test_bad_requests_are_error_responses(daemon: RunningDaemon) -> None:
    with daemon.client() as http:
        missing = http.post("/watch", json={"path": "/no/such/place"})
        no_body = http.post("/watch")
        bad_cursor = http.get("/watch/nope/events", params={"cursor": "x"})
    assert missing.status_code == 404 and missing.json()["code"] == "FILE_NOT_FOUND"
    assert no_body.status_code == 400 and no_body.json()["code"] == "INVALID_REQUEST_BODY"
    assert bad_cursor.status_code == 404  # the watcher is looked up first


def test_slow_reader_gets_an_explicit_overflow(tmp_path: Path) -> None:
    running = start_daemon(tmp_path, extra_env={"TOOLBOX_WATCH_BUFFER": "32"})
    try:
        folder = running.workdir / "busy"
        folder.mkdir()
        with running.client(timeout=30) as http:
            watcher = http.post("/watch", json={"path": str(folder)}).json()
            for i in range(100):
                (folder / f"f{i:03}").write_text("x")
            _poll_until(http, watcher["id"], 0, lambda ev: len({e["path"] for e in ev if e["type"] != "overflow"}) >= 1)
            time.sleep(0.5)  # let the last batch land
            body = http.get(f"/watch/{watcher['id']}/events", params={"cursor": 0}).json()
        events = body["events"]
        assert events[0]["type"] == "overflow" and events[0]["dropped"] > 0
        assert len(events) <= 33
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # contiguous after the marker
        assert events[0]["dropped"] + len(events) - 1 == body["cursor"]
    finally:
        running.stop()


def test_recursive_watch_of_a_huge_tree_is_refused(daemon: RunningDaemon) -> None:
    with daemon.client(timeout=60) as http:
        response = http.post("/watch", json={"path": "/", "recursive": True})
    assert response.status_code == 400
    assert "too many" in response.json()["message"] and "subdirectory" in response.json()["message"]


def test_watcher_cap_is_a_409_that_says_what_to_do(tmp_path: Path) -> None:
    capped = start_daemon(tmp_path, sandbox_id=None, extra_env={"TOOLBOX_MAX_WATCHERS": "2"})
    try:
        with capped.client() as http:
            ids = [http.post("/watch", json={"path": "."}).json()["id"] for _ in range(2)]
            refused = http.post("/watch", json={"path": "."})
            assert refused.status_code == 409 and refused.json()["code"] == "CONFLICT"
            assert "TOOLBOX_MAX_WATCHERS" in refused.json()["message"]
            assert http.delete(f"/watch/{ids[0]}").status_code == 204
            assert http.post("/watch", json={"path": "."}).status_code in (200, 201)
    finally:
        capped.stop()
