"""A real `Runtime` driven from synchronous tests: its event loop runs in a thread, and
sandboxes are checked from inside through the daemon's own Unix socket."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx

from runtime.manager import Runtime

T = TypeVar("T")


class DirectRuntime:
    def __init__(self, state: Path, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        kwargs.setdefault("pool_size", 0)
        kwargs.setdefault("idle_timeout", 0)
        self.runtime = Runtime(state, **kwargs)
        self.run(self.runtime.open())

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def socket(self, sandbox_id: str) -> Path:
        return self.runtime.socket_path(sandbox_id)

    def execute(self, sandbox_id: str, command: str, timeout: int = 30) -> tuple[int, str]:
        transport = httpx.HTTPTransport(uds=str(self.socket(sandbox_id)))
        with httpx.Client(transport=transport, base_url="http://sandbox", timeout=timeout + 10) as client:
            response = client.post("/process/execute", json={"command": command, "timeout": timeout})
        assert response.status_code == 200, response.text
        body = response.json()
        return body["exitCode"], body["result"]

    def sh(self, sandbox_id: str, script: str, timeout: int = 30) -> tuple[int, str]:
        """Run a shell script inside the sandbox (the daemon's execute takes one command)."""
        quoted = script.replace("'", "'\\''")
        return self.execute(sandbox_id, f"sh -c '{quoted}'", timeout)

    def close(self) -> None:
        try:
            self.run(self.runtime.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
