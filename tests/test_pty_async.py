"""The async SDK (aiohttp transport) against the same PTY and interpreter endpoints."""

from __future__ import annotations

import asyncio

import pytest
from daytona._async.code_interpreter import AsyncCodeInterpreter
from daytona._async.process import AsyncProcess
from daytona.common.errors import DaytonaConflictError, DaytonaTimeoutError
from daytona.common.pty import PtySize
from daytona.internal.toolbox_api_client_proxy import ToolboxApiClientProxy
from daytona_toolbox_api_client_async import ApiClient, Configuration, InterpreterApi, ProcessApi

from tests.helpers import RunningDaemon


class Screen:
    """Collects PTY output from the async handle's `on_data` callback."""

    def __init__(self) -> None:
        self.data = b""
        self.changed = asyncio.Event()

    def __call__(self, chunk: bytes) -> None:
        self.data += chunk
        self.changed.set()

    async def wait_for(self, marker: bytes, timeout: float = 10.0) -> None:
        async def poll() -> None:
            while marker not in self.data:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(poll(), timeout)


def test_async_pty_and_interpreter(daemon: RunningDaemon) -> None:
    async def scenario() -> None:
        async with ApiClient(Configuration(host=daemon.url)) as raw_client:
            # As AsyncSandbox builds it: the SDK's proxy adds `/{sandboxId}` and exposes the
            # aiohttp session its WebSockets use (created by the first REST call).
            assert daemon.sandbox_id is not None
            api_client = ToolboxApiClientProxy(raw_client, daemon.sandbox_id, daemon.url)
            process = AsyncProcess("python", ProcessApi(api_client))
            assert await process.list_pty_sessions() == []
            screen = Screen()
            handle = await process.create_pty_session(
                "async-pty", screen, envs={"X": "async"}, pty_size=PtySize(rows=20, cols=70)
            )
            try:
                with pytest.raises(DaytonaConflictError):
                    await process.create_pty_session("async-pty", lambda _: None)
                await handle.send_input("echo value=$X; stty size\n")
                await screen.wait_for(b"20 70")
                assert b"value=async" in screen.data
                assert (await handle.resize(PtySize(rows=21, cols=71))).cols == 71
                second = Screen()
                again = await process.connect_pty_session("async-pty", second)
                await second.wait_for(b"value=async")  # replayed screen
                await again.send_input("exit 4\n")
                result = await asyncio.wait_for(handle.wait(), 10)
                assert (result.exit_code, result.error) == (4, "non-zero exit")
                await again.disconnect()
            finally:
                await handle.disconnect()

            interpreter = AsyncCodeInterpreter(InterpreterApi(api_client))
            context = await interpreter.create_context()
            try:
                await interpreter.run_code("n = 5", context=context)
                assert (await interpreter.run_code("print(n * 2)", context=context)).stdout == "10\n"
                with pytest.raises(DaytonaTimeoutError):
                    await interpreter.run_code("import time; time.sleep(20)", context=context, timeout=1)
                assert context.id in {c.id for c in await interpreter.list_contexts()}
            finally:
                await interpreter.delete_context(context)

    asyncio.run(scenario())
