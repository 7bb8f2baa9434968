"""The proxy's lifespan: one task group owns its background work, and shutdown unwinds
through an exit stack however it ends (proxy/app.py `running()`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from proxy.app import ProxyApp
from proxy.config import ProxyConfig
from proxy.registry import FileRegistry

DOMAIN = "preview.test"


def test_the_lifespan_unwinds_everything_even_when_a_close_fails(tmp_path: Path) -> None:
    """Shutdown runs through an exit stack: a failing registry close is reported as
    lifespan.shutdown.failed, and the task group still cancels and awaits what it owns."""
    class FailingRegistry(FileRegistry):
        async def close(self) -> None:
            raise RuntimeError("the registry would not close")

    (tmp_path / "registry.json").write_text('{"sandboxes": {}}')
    config = ProxyConfig(domain=DOMAIN, registry=f"file:{tmp_path / 'registry.json'}")
    app = ProxyApp(config, FailingRegistry(str(tmp_path / "registry.json")))

    async def run() -> list[str]:
        sent: list[str] = []
        started = asyncio.Event()
        phases = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

        async def receive() -> dict[str, str]:
            message = next(phases)
            if message["type"] == "lifespan.shutdown":
                app.tasks.spawn(_forever(started), name="work that outlives its request")
                await started.wait()
            return message

        async def send(message: dict[str, str]) -> None:
            sent.append(message["type"])

        with pytest.raises(RuntimeError, match="would not close"):
            await app({"type": "lifespan"}, receive, send)  # type: ignore[arg-type]
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
        return sent

    assert asyncio.run(run()) == ["lifespan.startup.complete", "lifespan.shutdown.failed"]
    with pytest.raises(RuntimeError, match="not running"):  # nothing starts after the end
        app.tasks.spawn(asyncio.sleep(0), name="late")


async def _forever(started: asyncio.Event) -> None:
    started.set()
    await asyncio.sleep(3600)
