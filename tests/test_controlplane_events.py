"""Socket.IO events at `{api}/socket.io/` through the proxy, against the real main job:
the SDK's waits end on `sandbox.state.updated` instead of its 1 s polling fallback, an
event of one organization never reaches another's socket, bad keys are refused, and
polling-only clients still work."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import socketio  # type: ignore[import-untyped]

from tests.controlplane_helpers import api_url, daytona, extra_key, key_command, stack_fixture
from tests.runtime_helpers import Stack, needs_bwrap, start_stack

pytestmark = needs_bwrap

stack = stack_fixture("events")


class Listener:
    """A raw Socket.IO client, connected as the SDK connects (websocket, auth.token)."""

    def __init__(self, stack: Stack, key: str, query: str = "") -> None:
        self.events: list[tuple[str, Any, float]] = []
        self.client = socketio.Client(reconnection=False)
        for name in ("sandbox.created", "sandbox.state.updated"):
            self.client.on(name, self._handler(name))
        self.client.connect(f"http://localhost:{stack.port}{query}", socketio_path="/api/socket.io/",
                            auth={"token": key}, transports=["websocket"], wait_timeout=5)

    def _handler(self, name: str) -> Any:
        return lambda data: self.events.append((name, data, time.monotonic()))

    def of(self, sandbox_id: str) -> list[tuple[str, Any]]:
        return [(name, data) for name, data, _ in self.events
                if (data.get("sandbox", data) or {}).get("id") == sandbox_id]

    def wait_for(self, sandbox_id: str, new_state: str, timeout: float = 10) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, data, when in self.events:
                if name == "sandbox.state.updated" and data["sandbox"]["id"] == sandbox_id \
                        and data["newState"] == new_state:
                    return when
            time.sleep(0.01)
        raise AssertionError(f"no {new_state} event for {sandbox_id}: {self.of(sandbox_id)}")

    def close(self) -> None:
        self.client.disconnect()


@pytest.fixture
def listener(stack: Stack) -> Iterator[Listener]:
    opened = Listener(stack, stack.api_key)
    yield opened
    opened.close()


def test_lifecycle_events_carry_full_sandboxes_and_old_and_new_states(stack: Stack, listener: Listener) -> None:
    from daytona import Sandbox
    from daytona_api_client import Sandbox as SandboxDto

    d = daytona(stack)
    sandbox: Sandbox = d.create()
    sandbox.stop()
    listener.wait_for(sandbox.id, "stopped")
    sandbox.delete()
    listener.wait_for(sandbox.id, "destroyed")
    events = listener.of(sandbox.id)
    created = [data for name, data in events if name == "sandbox.created"]
    assert len(created) == 1 and created[0]["state"] == "creating"
    parsed = SandboxDto.from_dict(created[0])  # a full Sandbox, as the SDK parses it
    assert parsed is not None and parsed.id == sandbox.id
    moves = [(data["oldState"], data["newState"]) for name, data in events if name == "sandbox.state.updated"]
    assert moves == [("creating", "started"), ("started", "stopping"), ("stopping", "stopped"),
                     ("stopped", "destroying"), ("destroying", "destroyed")]
    for name, data in events:
        if name == "sandbox.state.updated":
            assert data["sandbox"]["state"] == data["newState"]
            SandboxDto.from_dict(data["sandbox"])  # every payload parses in the strict model


def test_a_stop_wait_ends_on_the_event_not_on_the_one_second_poll(stack: Stack) -> None:
    """One client waits for `stopped`; another stops the sandbox. With events the wait ends
    within milliseconds of the stop; the polling fallback (subscribed: every 1 s) could not."""
    d = daytona(stack)
    deadline = time.monotonic() + 5
    while not d._event_dispatcher.is_connected and time.monotonic() < deadline:
        time.sleep(0.02)
    assert d._event_dispatcher.is_connected, "the SDK's Socket.IO client did not connect"
    lags = []
    for _ in range(3):
        sandbox = d.create()
        returned: list[float] = []

        def wait(sandbox: Any = sandbox, returned: list[float] = returned) -> None:
            sandbox.wait_for_sandbox_stop(timeout=20)
            returned.append(time.monotonic())

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.3)  # the wait's immediate first refresh has seen `started`
        response = httpx.post(f"{api_url(stack)}/sandbox/{sandbox.id}/stop", timeout=30,
                              headers={"Authorization": f"Bearer {stack.api_key}"})
        stopped_at = time.monotonic()
        assert response.status_code == 200, response.text
        waiter.join(20)
        assert returned, "the wait did not end"
        assert sandbox.state == "stopped"
        lags.append(returned[0] - stopped_at)
        d.delete(sandbox)
    print(f"stop wait ended {max(lags) * 1000:.0f} ms (worst of 3) after the stop answered")
    assert max(lags) < 0.25, lags


def test_an_async_sdk_wait_ends_on_the_event_too(stack: Stack) -> None:
    """AsyncDaytona has its own Socket.IO client (python-socketio's AsyncClient)."""
    import asyncio

    from daytona import AsyncDaytona, DaytonaConfig

    async def scenario() -> float:
        async with AsyncDaytona(DaytonaConfig(api_url=api_url(stack), api_key=stack.api_key)) as d:
            for _ in range(250):
                if d._event_dispatcher is not None and d._event_dispatcher.is_connected:
                    break
                await asyncio.sleep(0.02)
            assert d._event_dispatcher is not None and d._event_dispatcher.is_connected
            sandbox = await d.create()
            try:
                waiting = asyncio.ensure_future(sandbox.wait_for_sandbox_stop(timeout=20))
                await asyncio.sleep(0.3)
                async with httpx.AsyncClient(timeout=30) as client:
                    response = await client.post(f"{api_url(stack)}/sandbox/{sandbox.id}/stop",
                                                 headers={"Authorization": f"Bearer {stack.api_key}"})
                stopped_at = time.monotonic()
                assert response.status_code == 200, response.text
                await asyncio.wait_for(waiting, 20)
                lag = time.monotonic() - stopped_at
                assert sandbox.state == "stopped"
            finally:
                await d.delete(sandbox)
            return lag

    lag = asyncio.run(scenario())
    assert lag < 0.25, lag


def test_an_event_for_one_organization_never_reaches_another(stack: Stack, listener: Listener) -> None:
    other_key = extra_key(stack, "org-b")
    other = Listener(stack, other_key)
    try:
        sandbox = daytona(stack).create()
        sandbox.delete()
        listener.wait_for(sandbox.id, "destroyed")
        time.sleep(0.3)
        assert other.events == []  # org B saw nothing of org A's sandbox
        b_sandbox = daytona(stack, other_key).create()
        try:
            other.wait_for(b_sandbox.id, "started")
            assert b_sandbox.organization_id != sandbox.organization_id
        finally:
            b_sandbox.delete()
        other.wait_for(b_sandbox.id, "destroyed")
        assert listener.of(b_sandbox.id) == []  # and org A saw nothing of B's
    finally:
        other.close()


def test_a_revoked_key_s_socket_is_closed_and_hears_nothing_more(stack: Stack) -> None:
    """A socket authenticates once, in its CONNECT packet: revoking its key closes it, so it
    never hears of its organization's sandboxes again. Another key's socket stays."""
    key = extra_key(stack, "default")
    revoked, kept = Listener(stack, key), Listener(stack, stack.api_key)
    try:
        assert revoked.client.connected
        result = key_command(stack, "revoke", key)
        assert result.returncode == 0, result.stderr
        deadline = time.monotonic() + 5
        while revoked.client.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not revoked.client.connected, "the revoked key's socket is still open"
        sandbox = daytona(stack).create()
        kept.wait_for(sandbox.id, "started")
        sandbox.delete()
        kept.wait_for(sandbox.id, "destroyed")
        assert revoked.of(sandbox.id) == [] and kept.client.connected
        with pytest.raises(socketio.exceptions.ConnectionError):  # and it cannot come back
            Listener(stack, key)
    finally:
        revoked.close()
        kept.close()


def test_naming_another_organization_in_the_query_does_not_join_its_room(stack: Stack) -> None:
    """The SDK sends ?organizationId=...; a key's socket still hears only its key's own
    organization, whatever the query names."""
    other_key = extra_key(stack, "org-c")
    victim = daytona(stack, other_key).create()
    try:
        spy = Listener(stack, stack.api_key, f"?organizationId={victim.organization_id}&source=sdk-python")
        witness = Listener(stack, other_key)
        try:
            victim.stop()
            witness.wait_for(victim.id, "stopped")
            time.sleep(0.3)
            assert spy.of(victim.id) == []
            spy.client.emit("sandbox.state.updated", {"sandbox": {"id": victim.id, "state": "error"}})
            time.sleep(0.2)  # what a client sends is ignored: nothing relayed, nothing changed
            assert not [data for name, data in witness.of(victim.id)
                        if (data.get("sandbox", data) or {}).get("state") == "error"]
            assert daytona(stack, other_key).get(victim.id).state == "stopped"
        finally:
            spy.close()
            witness.close()
    finally:
        victim.delete()


@pytest.mark.parametrize("auth", [{"token": "dtn_" + "0" * 64}, {"token": ""}, {}, None])
def test_a_socket_with_a_bad_or_missing_key_is_refused(stack: Stack, auth: Any) -> None:
    client = socketio.Client(reconnection=False)
    refusals: list[Any] = []
    client.on("connect_error", refusals.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(f"http://localhost:{stack.port}", socketio_path="/api/socket.io/", auth=auth,
                       transports=["websocket"], wait_timeout=5)
    assert not client.connected
    message = refusals[0]["message"] if isinstance(refusals[0], dict) else str(refusals[0])
    assert ("unknown" if auth and auth.get("token") else "Missing credentials") in message, refusals


def test_the_sdk_with_a_bad_key_is_not_connected(stack: Stack) -> None:
    d = daytona(stack, key="dtn_" + "1" * 64)
    time.sleep(0.5)
    assert not d._event_dispatcher.is_connected


@pytest.mark.parametrize("how", ["config", "env"])
def test_polling_only_clients_still_work(stack: Stack, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from daytona import Daytona, DaytonaConfig

    if how == "config":
        d = Daytona(DaytonaConfig(api_url=api_url(stack), api_key=stack.api_key, use_deprecated_polling=True))
    else:
        monkeypatch.setenv("DAYTONA_USE_DEPRECATED_POLLING", "true")
        d = Daytona(DaytonaConfig(api_url=api_url(stack), api_key=stack.api_key))
    assert getattr(d, "_event_dispatcher", None) is None
    sandbox = d.create()
    assert sandbox.process.code_run("print(2)").result.strip() == "2"
    sandbox.stop()
    assert sandbox.state == "stopped"
    sandbox.start()
    assert sandbox.state == "started"
    sandbox.delete()


def test_the_first_event_after_a_restart_carries_the_state_before_it(tmp_path: Path) -> None:
    first = start_stack(tmp_path, "--no-sandbox", pool_size=0)
    try:
        sandbox = daytona(first).create()
        sandbox.stop()
    finally:
        first.stop()
    again = start_stack(tmp_path, "--no-sandbox", pool_size=0)
    try:
        listener = Listener(again, again.api_key)
        try:
            d = daytona(again)
            assert d.get(sandbox.id).state == "stopped"
            d.get(sandbox.id).start()
            listener.wait_for(sandbox.id, "started")
            moves = [(data["oldState"], data["newState"]) for _, data in listener.of(sandbox.id)]
            assert moves == [("stopped", "starting"), ("starting", "started")]
        finally:
            listener.close()
    finally:
        again.stop()
