"""Registry backends: file (reloaded on change), template, and a real Redis."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from proxy.registry import (
    FileRegistry,
    RedisRegistry,
    RegistryError,
    Sandbox,
    TemplateRegistry,
    open_registry,
)
from tests.helpers import RunningDaemon, free_port
from tests.proxy_helpers import AUTH, App, RedisServer, start_proxy, start_redis


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


def test_file_registry_reloads_on_change(tmp_path: Path, daemon: RunningDaemon, app: App) -> None:
    proxy = start_proxy(tmp_path, {})
    try:
        with proxy.client() as client:
            host = {"Host": proxy.host(app.port, "late")}
            assert client.get("/info/x", headers=host).status_code == 404
            proxy.write_registry({"late": {"url": daemon.url, "public": True}})
            time.sleep(0.4)
            assert client.get("/info/x", headers=host).status_code == 200
            # A half-written file keeps the last good map.
            assert proxy.registry_path is not None
            proxy.registry_path.write_text('{"sandboxes": {"late": ')
            time.sleep(0.4)
            assert client.get("/info/x", headers=host).status_code == 200
            proxy.write_registry({})
            time.sleep(0.4)
            assert client.get("/info/x", headers=host).status_code == 404
    finally:
        proxy.stop()


def test_file_registry_format_and_bad_entries(tmp_path: Path) -> None:
    path = tmp_path / "sandboxes.json"
    path.write_text(json.dumps({"sandboxes": {
        "a": {"url": "http://127.0.0.1:2280", "public": False, "token": "t"},
        "b": {"url": "unix:/run/b/toolbox.sock"},
        "c": {"url": "ftp://nope"},
        "d": "not an object",
    }}))
    registry = FileRegistry(str(path))

    async def lookups() -> list[Sandbox | None]:
        return [await registry.get(name) for name in "abcd"]

    a, b, c, d = asyncio.run(lookups())
    assert a == Sandbox("a", "http://127.0.0.1:2280", "t", False)
    assert b == Sandbox("b", "unix:/run/b/toolbox.sock", None, False)
    assert c is None and d is None


def test_file_registry_finds_a_new_id_at_once_but_rereads_known_ones_at_most_every_quarter_second(
        tmp_path: Path) -> None:
    """A just-created sandbox is routed as soon as the file names it (the control plane's
    create waits for that), while lookups of known ids keep the 0.25 s re-read interval."""
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"sandboxes": {"a": {"url": "http://127.0.0.1:2280"}}}))
    registry = FileRegistry(str(path))

    async def scenario() -> tuple[Sandbox | None, Sandbox | None, Sandbox | None, float]:
        assert await registry.get("a") is not None
        assert await registry.get("new") is None
        path.write_text(json.dumps({"sandboxes": {"b": {"url": "http://127.0.0.1:2281"},
                                                   "new": {"url": "http://127.0.0.1:2282"}}}))
        await asyncio.sleep(0.01)
        started = time.monotonic()
        known = await registry.get("a")  # within 0.25 s of the last full check: not re-read
        new = await registry.get("new")  # unknown: re-read now
        gone = await registry.get("a")
        return known, new, gone, time.monotonic() - started

    known, new, gone, took = asyncio.run(scenario())
    assert known is not None and known.url == "http://127.0.0.1:2280"
    assert new == Sandbox("new", "http://127.0.0.1:2282", None, False)
    assert gone is None and took < 0.2


def test_a_new_api_key_is_found_at_once_and_a_flood_of_unknown_ones_costs_at_most_200_reads_a_second(
        tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    known, new = "a" * 64, "b" * 64
    path.write_text(json.dumps({"sandboxes": {}, "api_keys": {known: "org-a"}}))
    registry = FileRegistry(str(path))
    loads = 0
    load = registry._load

    def counted() -> Any:
        nonlocal loads
        loads += 1
        return load()

    registry._load = counted  # type: ignore[method-assign]

    async def scenario() -> tuple[str | None, str | None, float]:
        assert await registry.key_organization(known) == "org-a"
        path.write_text(json.dumps({"sandboxes": {}, "api_keys": {known: "org-a", new: "org-b"}}))
        await asyncio.sleep(0.01)
        found = await registry.key_organization(new)  # unknown: re-read now, not 0.25 s later
        started = time.monotonic()
        for n in range(3000):
            assert await registry.key_organization(f"{n:064x}") is None
        return found, await registry.key_organization(known), time.monotonic() - started

    found, still, took = asyncio.run(scenario())
    assert found == "org-b" and still == "org-a"
    assert loads - 2 <= took / FileRegistry.MISS_CHECK_INTERVAL + 1, (loads, took)


def test_a_sandbox_address_is_an_ipv4_literal_or_nothing(tmp_path: Path) -> None:
    # Previews connect to it directly: never a name the proxy would resolve, nor more.
    path = tmp_path / "sandboxes.json"
    entries = {"ok": "10.213.0.2", "name": "evil.example", "cidr": "10.213.0.2/30",
               "port": "10.213.0.2:22", "v6": "::1", "number": 167968002}
    path.write_text(json.dumps({"sandboxes": {
        key: {"url": "unix:/run/x.sock", "address": value} for key, value in entries.items()}}))
    registry = FileRegistry(str(path))

    async def addresses() -> list[str | None]:
        found = [await registry.get(key) for key in entries]
        return [entry.address if entry is not None else "missing" for entry in found]

    assert asyncio.run(addresses()) == ["10.213.0.2", None, None, None, None, None]


def test_template_registry(tmp_path: Path, daemon: RunningDaemon, app: App) -> None:
    # The daemon serves every route under /{sandboxId} too, so the id can sit in the path.
    proxy = start_proxy(tmp_path, registry=f"template:{daemon.url}/{{id}}")
    try:
        with proxy.client() as client:
            assert client.get("/toolbox/sbx-test/version", headers=AUTH).status_code == 200
            preview = client.get("/info/t", headers={"Host": proxy.host(app.port, "sbx-test"), **AUTH})
            assert preview.json()["raw_path"] == "/info/t"
    finally:
        proxy.stop()
    # With no such host (a deleted sandbox's Service), the answer is a fast, clear 404.
    dns = start_proxy(tmp_path / "dns", registry="template:http://sbx-{id}.invalid:2280")
    try:
        with dns.client() as client:
            started = time.monotonic()
            missing = client.get("/toolbox/gone/version", headers=AUTH)
            assert missing.status_code == 404 and missing.headers["x-proxy-error"] == "sandbox-not-found"
            assert time.monotonic() - started < 5
    finally:
        dns.stop()
    with pytest.raises(ValueError):
        TemplateRegistry("http://no-placeholder:2280")
    with pytest.raises(ValueError):
        open_registry("consul://x")


def test_redis_registry_end_to_end(tmp_path: Path, redis_server: RedisServer, daemon: RunningDaemon, app: App) -> None:
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    prefix = f"test-{free_port()}:"
    client.hset(f"{prefix}red", mapping={"url": daemon.url, "public": "true"})
    proxy = start_proxy(tmp_path, registry=f"{redis_server.url}?prefix={prefix}",
                        extra_env={"PROXY_ACTIVITY_INTERVAL": "0.1"})
    try:
        with proxy.client() as http:
            assert http.get("/info/r", headers={"Host": proxy.host(app.port, "red")}).status_code == 200
            unknown = http.get("/info/r", headers={"Host": proxy.host(app.port, "blue")})
            assert unknown.status_code == 404 and unknown.headers["x-proxy-error"] == "sandbox-not-found"
            # Activity from real traffic is written back into the control plane's entry.
            deadline = time.monotonic() + 5
            while not client.hget(f"{prefix}red", "lastActivity") and time.monotonic() < deadline:
                time.sleep(0.05)
            assert abs(float(client.hget(f"{prefix}red", "lastActivity") or 0) - time.time()) < 10
            # ...but never resurrects a deleted sandbox.
            assert not client.exists(f"{prefix}blue")
    finally:
        proxy.stop()
        client.delete(f"{prefix}red")


def test_redis_lookups_are_cached_and_single_flight(redis_server: RedisServer) -> None:
    client = redis.Redis(port=redis_server.port)
    prefix = f"sf-{free_port()}:"
    client.hset(f"{prefix}x", mapping={"url": "http://127.0.0.1:1", "token": "tk"})

    async def run() -> tuple[list[Sandbox | None], int, Sandbox | None]:
        registry = RedisRegistry(f"{redis_server.url}?prefix={prefix}", ttl=0.3)
        try:
            results = await asyncio.gather(*(registry.get("x") for _ in range(50)))
            first = registry.lookups
            await asyncio.sleep(0.4)
            client.hset(f"{prefix}x", "public", "1")
            after = await registry.get("x")
            return list(results), first, after
        finally:
            await registry.close()

    try:
        results, lookups, after = asyncio.run(run())
    finally:
        client.delete(f"{prefix}x")
    assert lookups == 1
    assert all(r == Sandbox("x", "http://127.0.0.1:1", "tk", False) for r in results)
    assert after is not None and after.public  # expired cache entries are re-read


def test_a_cancelled_caller_does_not_cancel_the_others_lookup() -> None:
    # Two requests for one sandbox share a single Redis query. The first one's client goes
    # away while the query is on the wire: the second must still get its answer, not the
    # first one's CancelledError. A private server, paused, holds the query on the wire.
    server = start_redis(private=True)
    client = redis.Redis(port=server.port)
    client.hset("sandbox:x", mapping={"url": "http://127.0.0.1:1", "token": "tk"})

    async def run() -> None:
        registry = RedisRegistry(server.url, ttl=5)
        try:
            client.client_pause(500)  # ms; every command waits, ours included
            first = asyncio.create_task(registry.get("x"))
            second = asyncio.create_task(registry.get("x"))
            await asyncio.sleep(0.1)
            assert not first.done() and not second.done() and registry.lookups == 1
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            assert await asyncio.wait_for(second, 5) == Sandbox("x", "http://127.0.0.1:1", "tk", False)
            # The answer was cached for whoever asks next, though the first caller left.
            assert await registry.get("x") == Sandbox("x", "http://127.0.0.1:1", "tk", False)
            assert registry.lookups == 1

            # Every caller gone: the query still finishes (and is cached), no error logged.
            client.client_pause(300)
            alone = asyncio.create_task(registry.get("y"))
            await asyncio.sleep(0.05)
            alone.cancel()
            await asyncio.sleep(0.5)
            assert registry.lookups == 2 and await registry.get("y") is None and registry.lookups == 2

            # A query in flight at close is ended with it: no task of the registry's is left.
            client.client_pause(300)
            waiting = asyncio.create_task(registry.get("z"))
            await asyncio.sleep(0.05)
        finally:
            await registry.close()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("registry lookup")]

    try:
        asyncio.run(run())
    finally:
        server.stop()


def test_redis_down_is_a_clear_503(tmp_path: Path) -> None:
    async def run() -> None:
        registry = RedisRegistry(f"redis://127.0.0.1:{free_port()}/0")
        try:
            with pytest.raises(RegistryError):
                await registry.get("x")
        finally:
            await registry.close()

    asyncio.run(run())
    proxy = start_proxy(tmp_path, registry=f"redis://127.0.0.1:{free_port()}/0")
    try:
        with proxy.client() as http:
            response = http.get("/", headers={"Host": proxy.host(3000, "x")})
        assert response.status_code == 503 and response.headers["x-proxy-error"] == "registry-unavailable"
    finally:
        proxy.stop()




def test_activity_is_throttled_per_sandbox() -> None:
    from proxy.activity import ActivityTracker
    from toolbox.tasks import TaskOwner

    class Recorder:
        def __init__(self) -> None:
            self.writes: list[tuple[str, float]] = []

        async def record_activity(self, sandbox_id: str, when: float) -> None:
            self.writes.append((sandbox_id, when))

    async def run() -> Recorder:
        recorder = Recorder()
        owner = TaskOwner()
        async with owner.running():
            tracker = ActivityTracker(recorder, owner.spawn, interval=0.2)  # type: ignore[arg-type]
            for _ in range(100):
                tracker.touch("a")
            tracker.touch("b")
            await asyncio.sleep(0.25)
            tracker.touch("a")
            await tracker.flush()
            assert set(tracker.last_seen) == {"a", "b"}
        tracker.touch("c")  # after the proxy stopped: remembered, not written, nothing left running
        assert "c" in tracker.last_seen
        assert [task for task in asyncio.all_tasks() if task is not asyncio.current_task()] == []
        return recorder

    recorder = asyncio.run(run())
    assert [sandbox for sandbox, _ in recorder.writes] == ["a", "b", "a"]
