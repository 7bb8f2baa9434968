"""Every background task has an owner: the daemon's task group and its lifecycle hooks.

The Daemon context and its TaskOwner are driven directly here (they know nothing of HTTP);
the end-to-end check, that a real daemon stopped by SIGTERM leaves no task pending, is in
every test that stops one (tests/helpers.py RunningDaemon.stop), and below for the case
that used to leak: output of a background child that outlives its session.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from tests.helpers import start_daemon
from toolbox.config import Settings
from toolbox.context import Daemon


def _daemon(tmp_path: Path) -> Daemon:
    return Daemon(Settings(workdir=tmp_path, home=tmp_path))


def test_a_startup_failure_unwinds_exactly_what_was_started(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path)
    calls: list[str] = []
    spawned: list[str] = []

    async def forever(name: str) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            spawned.append(f"{name} ended")

    def hook(name: str, fail: bool = False) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            calls.append(name)
            if name.startswith("start"):
                daemon.spawn(forever(name), name=name)
                await asyncio.sleep(0.01)  # it is running
            if fail:
                raise OSError(f"{name} failed")
        return run

    daemon.on_startup(hook("start files"))
    daemon.on_shutdown(hook("stop files"))
    daemon.on_startup(hook("start sessions"))
    daemon.on_shutdown(hook("stop sessions"))
    daemon.on_startup(hook("start terminal", fail=True))
    daemon.on_shutdown(hook("stop terminal"))  # never started: never stopped
    daemon.on_startup(hook("start watch"))

    async def run() -> None:
        with pytest.raises(OSError, match="start terminal failed"):
            async with daemon.running():
                raise AssertionError("the app must not serve after a failed start-up")
        assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    asyncio.run(run())
    assert calls == ["start files", "start sessions", "start terminal", "stop sessions", "stop files"]
    # Spawned work, the failed hook's included, was cancelled and awaited, not left behind.
    assert sorted(spawned) == ["start files ended", "start sessions ended", "start terminal ended"]


def test_shutdown_hooks_run_in_reverse_and_one_failing_does_not_skip_the_rest(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path)
    calls: list[str] = []

    def stop(name: str, fail: bool = False) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            calls.append(name)
            if fail:
                raise RuntimeError(f"{name} failed")
        return run

    daemon.on_shutdown(stop("first"))
    daemon.on_shutdown(stop("second", fail=True))
    daemon.on_shutdown(stop("third"))

    async def run() -> None:
        with pytest.raises(RuntimeError, match="second failed"):
            async with daemon.running():
                pass

    asyncio.run(run())
    assert calls == ["third", "second", "first"]


def test_spawned_work_is_cancelled_and_awaited_when_the_daemon_stops(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path)
    cleaned: list[str] = []

    async def holds_a_resource() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.05)  # an unwinding step that itself awaits
            cleaned.append("released")

    async def run() -> None:
        async with daemon.running():
            task = daemon.spawn(holds_a_resource(), name="holder")
            await asyncio.sleep(0.01)
            assert not task.done()
        assert task.done() and cleaned == ["released"]
        assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        with pytest.raises(RuntimeError, match="not running"):
            daemon.spawn(holds_a_resource(), name="too late")

    asyncio.run(run())


def test_one_failing_task_is_logged_and_ends_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    daemon = _daemon(tmp_path)

    async def boom() -> None:
        raise ValueError("a bug in one job")

    async def run() -> None:
        async with daemon.running():
            survivor = daemon.spawn(asyncio.sleep(0.2), name="survivor")
            failed = daemon.spawn(boom(), name="boom")
            await failed.wait()
            assert not survivor.done()  # the failure did not cancel the group
            await survivor.wait()

    with caplog.at_level(logging.ERROR, logger="toolbox.tasks"):
        asyncio.run(run())
    assert "background task 'boom' failed" in caplog.text and "a bug in one job" in caplog.text


def test_cancel_and_wait_on_a_handle(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path)

    async def run() -> None:
        async with daemon.running():
            task = daemon.spawn(asyncio.sleep(3600), name="sleeper")
            waiter = asyncio.create_task(task.wait())
            await asyncio.sleep(0.01)
            waiter.cancel()  # a waiter that gives up does not cancel the work
            await asyncio.sleep(0.01)
            assert not task.done()
            task.cancel()
            await asyncio.wait_for(task.wait(), 1)
            assert task.done()

    asyncio.run(run())


def test_output_of_a_background_child_that_outlives_its_session_is_no_loose_task(tmp_path: Path) -> None:
    # The command returns while a child it detached (setsid, re-parented away from the
    # shell, so no kill of the session's tree reaches it) still holds the output FIFO.
    # The daemon keeps draining it; when the daemon stops, that drain must end with it.
    pid_file = tmp_path / "child.pid"
    daemon = start_daemon(tmp_path)
    child = 0
    try:
        with daemon.client(timeout=30) as http:
            assert http.post("/process/session", json={"sessionId": "bg"}).status_code == 201
            command = f"( setsid sh -c 'echo $$ > {pid_file}; exec sleep 60' & ) ; echo started"
            response = http.post("/process/session/bg/exec", json={"command": command})
            assert response.status_code == 200, response.text
            assert "started" in response.json()["output"]
        deadline = time.monotonic() + 5
        while not pid_file.exists() or not pid_file.read_text().strip():
            assert time.monotonic() < deadline, "the detached child never started"
            time.sleep(0.02)
        child = int(pid_file.read_text())
        os.kill(child, 0)  # still alive, still holding the FIFO
        daemon.stop()  # asserts "Stopped: no task left pending"
        assert daemon.closing_line == "Stopped: no task left pending"
    finally:
        daemon.stop()
        if child:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_daemon_with_work_in_flight_stops_cleanly(tmp_path: Path) -> None:
    # A running interpreter execution, a running session command and an idle PTY: all are
    # background work of the daemon's, and SIGTERM must end every one of them.
    daemon = start_daemon(tmp_path)
    try:
        with daemon.client(timeout=30) as http:
            assert http.post("/process/session", json={"sessionId": "busy"}).status_code == 201
            response = http.post("/process/session/busy/exec", json={"command": "sleep 60", "runAsync": True})
            assert response.status_code in (200, 202), response.text
            response = http.post("/process/pty", json={"id": "idle-pty"})
            assert response.status_code in (200, 201), response.text

        async def start_execution() -> None:
            import aiohttp

            ws_url = daemon.url.replace("http", "ws", 1) + "/process/interpreter/execute"
            async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
                await ws.send_json({"code": "import time\nprint('go', flush=True)\ntime.sleep(60)"})
                message = await ws.receive(timeout=20)
                assert "go" in str(message.data)

        asyncio.run(start_execution())  # the client leaves; the execution goes on
        with httpx.Client(base_url=daemon.url) as http:
            assert http.get("/process/session/busy").status_code == 200
        started = time.monotonic()
        daemon.stop()
        assert daemon.closing_line == "Stopped: no task left pending"
        assert time.monotonic() - started < 10
    finally:
        daemon.stop()


def test_sole_exception_unwraps_only_a_group_of_one() -> None:
    from toolbox.tasks import sole_exception

    disconnect = ConnectionResetError("client left")
    assert sole_exception(ExceptionGroup("g", [disconnect])) is disconnect
    assert sole_exception(ExceptionGroup("g", [ExceptionGroup("inner", [disconnect])])) is disconnect
    several = ExceptionGroup("g", [disconnect, ValueError("bad body")])
    assert sole_exception(several) is several  # nothing is dropped
