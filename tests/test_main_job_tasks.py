"""Every task of the main job has an owner: the runtime's, the control plane's and the
main job's own task groups, their start-up unwinding and the one closing line.

Every test that stops a main job checks that line (tests/runtime_helpers.py Stack.stop);
here: a stop with background work in flight (an image build, a create waiting on it, a pool
refill), a part that does not stop (the line names it), and start-ups that fail part-way.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.controlplane_helpers import daytona
from tests.runtime_helpers import Stack, needs_bwrap, start_stack
from toolbox.server import pending_tasks_line
from toolbox.tasks import finish_in_thread


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from tests.image_helpers import registry_with_image, tiny_rootfs

    with registry_with_image(tmp_path_factory.mktemp("registry"), "tiny:1", tiny_rootfs) as address:
        yield address


def _proxy_pid(stack: Stack) -> int:
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"proxy\0serve" in argv and f"\0{stack.port}\0".encode() in argv:
            return int(entry.name)
    raise AssertionError("the main job's proxy is not running")


@needs_bwrap
@pytest.mark.skipif(os.geteuid() != 0, reason="image builds need root (idmapped mounts)")
def test_a_main_job_stopped_mid_build_and_mid_refill_leaves_no_task_pending(tmp_path: Path, registry: str) -> None:
    state = tmp_path / "state"
    running = start_stack(state, "--no-sandbox", pool_size=1)
    try:
        slow = f"FROM {registry}/tiny:1\nRUN sleep 60\n"
        built = running.api("POST", "/snapshots", json={"name": "slow", "buildInfo": {"dockerfileContent": slow}})
        assert built.status_code == 200, built.text
        # A create from the same image waits on that build, in the background.
        waiting = running.api("POST", "/sandbox", json={"buildInfo": {"dockerfileContent": slow}})
        assert waiting.status_code == 200, waiting.text
        d = daytona(running)
        deadline = time.monotonic() + 30
        while d.snapshot.get("slow").state != "building":
            assert time.monotonic() < deadline, "the build never started"
            time.sleep(0.2)
        # This create takes the pooled sandbox: the pool's refill starts as it returns.
        assert running.api("POST", "/sandbox", json={"name": "warm"}).status_code == 200
        started = time.monotonic()
        assert running.stop() == 0  # asserts "Stopped: no task left pending"
        assert time.monotonic() - started < 25  # the build is cancelled, not waited for
    finally:
        running.stop()
    again = start_stack(state, "--no-sandbox", pool_size=0, port=running.port)
    try:
        d = daytona(again)
        assert d.snapshot.get("slow").state == "build_failed"
        sandbox = again.api("GET", f"/sandbox/{waiting.json()['id']}").json()
        assert sandbox["state"] == "build_failed", sandbox
        assert "interrupted: the control plane stopped" in sandbox["errorReason"], sandbox  # the build's reason
    finally:
        again.stop()


@needs_bwrap
def test_the_closing_line_names_a_proxy_that_would_not_stop(tmp_path: Path) -> None:
    running = start_stack(tmp_path / "state", "--no-sandbox", pool_size=0)
    proxy = _proxy_pid(running)
    try:
        os.kill(proxy, signal.SIGSTOP)  # it cannot act on SIGTERM: killed after 15 s
        running.process.send_signal(signal.SIGINT)
        running.process.wait(40)
        assert running.drain is not None
        running.drain.join(10)
    finally:
        if running.process.poll() is None:
            running.process.kill()
        subprocess.run(["kill", "-CONT", str(proxy)], check=False, capture_output=True)
    said = [line for line in running.output if line.startswith("Stopped")]
    assert said == ["Stopped with 1 task(s) left pending: the proxy: said nothing as it stopped"], running.output


def test_a_control_plane_start_up_that_fails_part_way_leaves_nothing_running(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from controlplane.plane import ControlPlane, PlaneConfig
    from controlplane.sandboxes.routes import PublicUrls
    from runtime.backend import LocalBackend
    from runtime.manager import Runtime

    runtime = Runtime(tmp_path / "state", pool_size=0, idle_timeout=0, write_registry=False)
    plane = ControlPlane(PlaneConfig(state_dir=tmp_path / "state", urls=PublicUrls("http", "localhost", 8080),
                                     registry_path=tmp_path / "state" / "registry.json"), LocalBackend(runtime))
    closed: list[str] = []

    async def fail() -> None:
        raise OSError("the volumes directory is gone")

    async def resources_close() -> None:
        closed.append("resources")

    monkeypatch.setattr(plane.resources, "open", fail)  # after the events consumer started
    monkeypatch.setattr(plane.resources, "close", resources_close)

    async def scenario() -> list[str]:
        with pytest.raises(OSError, match="volumes directory"):
            await plane.open()
        with pytest.raises(RuntimeError, match="not running"):
            plane.tasks.spawn(asyncio.sleep(1), name="too late")
        return [task.get_name() for task in asyncio.all_tasks() if task is not asyncio.current_task()]

    assert asyncio.run(scenario()) == []
    assert closed == ["resources"]


@needs_bwrap
@pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox network needs root")
def test_a_runtime_start_up_that_fails_part_way_takes_its_network_down(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.manager import Runtime
    from tests.net_helpers import runtime_range

    runtime = Runtime(tmp_path / "state", pool_size=0, idle_timeout=0, network=runtime_range())
    tables: list[str] = []

    def sweep() -> None:
        assert runtime.net is not None  # set up by now
        tables.append(runtime.net.table)
        raise OSError("the disk went read-only")

    monkeypatch.setattr(runtime, "_sweep_disk", sweep)

    async def scenario() -> list[str]:
        with pytest.raises(OSError, match="read-only"):
            await runtime.open()
        return [task.get_name() for task in asyncio.all_tasks() if task is not asyncio.current_task()]

    assert asyncio.run(scenario()) == []
    assert runtime.net is None
    listed = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    assert tables and tables[0] not in listed


def test_a_cancelled_thread_call_ends_after_the_thread_and_undoes_what_it_made() -> None:
    made: list[str] = []
    undone: list[str] = []
    release = threading.Event()

    def make() -> str:
        release.wait(5)
        made.append("group")
        return "group"

    async def scenario() -> None:
        call = asyncio.ensure_future(finish_in_thread(make, undo=undone.append))
        await asyncio.sleep(0.05)
        call.cancel()
        await asyncio.sleep(0.05)
        assert not call.done()  # still waiting for the thread, which cannot be stopped
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await call

    asyncio.run(scenario())
    assert made == ["group"] and undone == ["group"]


def test_the_closing_line_names_what_is_left_here_and_elsewhere() -> None:
    async def scenario() -> str:
        left = asyncio.ensure_future(asyncio.sleep(3600))
        left.set_name("forgotten")
        try:
            return await pending_tasks_line(["the proxy: said nothing as it stopped"])
        finally:
            left.cancel()

    line = asyncio.run(scenario())
    assert line.startswith("Stopped with 2 task(s) left pending: forgotten (<coroutine object sleep")
    assert line.endswith("; the proxy: said nothing as it stopped")


def test_a_failed_claim_raises_its_own_error_once_the_policy_call_has_returned(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pooled claim runs beside its nft policy call (runtime/manager.py): when the claim
    fails, create() tears the slot down, so the policy's thread must have returned first."""
    from runtime.manager import Runtime, SandboxError

    runtime = Runtime(tmp_path / "state", pool_size=0, idle_timeout=0)
    events: list[str] = []

    class SlowNet:
        def set_policy(self, *args: object) -> None:
            time.sleep(0.3)
            events.append("policy applied")

    async def failing_claim(*args: object) -> None:
        await asyncio.sleep(0.05)  # the policy's thread is running by now
        raise SandboxError(500, "sandbox exited during start-up")

    monkeypatch.setattr(runtime, "net", SlowNet())
    monkeypatch.setattr(runtime, "_claim", failing_claim)

    spec = SimpleNamespace(id="sbx", block_all=True, allow_list=(), domains=())

    async def scenario() -> None:
        with pytest.raises(SandboxError, match="exited during start-up"):
            await runtime._claim_with_policy(None, spec, None)  # type: ignore[arg-type]  # fakes
        events.append("create unwinds")

    asyncio.run(scenario())
    assert events == ["policy applied", "create unwinds"]
