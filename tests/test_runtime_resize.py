"""Resize with a real Runtime: new limits hold at once inside a started sandbox (memory,
pids), are recorded for the next start when stopped, and a memory limit below what the
sandbox uses now is refused without changing anything."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from runtime.limits import Limits
from runtime.manager import SandboxError
from tests.runtime_direct import DirectRuntime
from tests.runtime_helpers import needs_bwrap

pytestmark = needs_bwrap

ALLOCATE = "python3 -c 'b = bytearray({mib} * 2**20); b[::4096] = b\"x\" * len(b[::4096]); print(\"ok\")'"
FORK = "for i in $(seq 60); do sleep 3 & done 2>&1; wait; echo done"


def memory_limit(direct: DirectRuntime, sandbox_id: str) -> int:
    """The memory limit in the sandbox's cgroup (v2: one dir; v1: cpu, memory, pids)."""
    dirs = direct.runtime.running[sandbox_id].group.dirs
    if len(dirs) == 1:
        return int((dirs[0] / "memory.max").read_text())
    return int((dirs[1] / "memory.limit_in_bytes").read_text())


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DirectRuntime]:
    running = DirectRuntime(tmp_path_factory.mktemp("resize") / "state")
    if not running.runtime.backend.name.startswith("cgroup"):
        running.close()
        pytest.skip(f"live resize needs cgroups; this machine has {running.runtime.backend.name}")
    yield running
    running.close()


def test_resize_applies_live_to_a_started_sandbox(direct: DirectRuntime) -> None:
    rt = direct.runtime
    spec = direct.run(rt.create(limits=Limits(cpus=1, memory_mib=1024, pids=512)))
    try:
        assert direct.sh(spec.id, ALLOCATE.format(mib=300), timeout=60) == (0, "ok\n")
        assert direct.sh(spec.id, FORK)[1].strip() == "done"

        resized = direct.run(rt.resize(spec.id, Limits(cpus=0.5, memory_mib=160, pids=40)))
        assert resized.limits == Limits(cpus=0.5, memory_mib=160, pids=40)
        # The same sandbox, not restarted: what worked a moment ago is now over its limits.
        code, out = direct.sh(spec.id, ALLOCATE.format(mib=300), timeout=60)
        assert code != 0 and "ok" not in out
        code, out = direct.sh(spec.id, FORK)
        assert "fork" in out.lower() and "done" not in out, out
        assert rt.describe(rt.get(spec.id))["limits"] == {"cpus": 0.5, "memory_mib": 160, "pids": 40}
        assert memory_limit(direct, spec.id) == 160 * 2**20
        saved = (rt.sandboxes_dir / spec.id / "sandbox.json").read_text()
        assert '"memory_mib": 160' in saved

        # And back up again, live.
        direct.run(rt.resize(spec.id, Limits(cpus=2, memory_mib=1024, pids=512)))
        assert direct.sh(spec.id, ALLOCATE.format(mib=300), timeout=60) == (0, "ok\n")
    finally:
        direct.run(rt.delete(spec.id))


def test_a_memory_limit_below_current_usage_is_refused_and_changes_nothing(direct: DirectRuntime) -> None:
    rt = direct.runtime
    spec = direct.run(rt.create())
    try:
        hold = ("nohup python3 -c 'import time; b = bytearray(200 * 2**20); b[::4096] = b\"x\" * len(b[::4096]);"
                " open(\"/tmp/held\", \"w\").close(); time.sleep(120)' >/dev/null 2>&1 & "
                "while [ ! -e /tmp/held ]; do sleep 0.05; done; echo held")
        assert direct.sh(spec.id, hold, timeout=60) == (0, "held\n")
        with pytest.raises(SandboxError, match="uses .* MiB now") as caught:
            direct.run(rt.resize(spec.id, Limits(memory_mib=64)))
        assert caught.value.status == 409
        assert rt.get(spec.id).limits == Limits()
        assert memory_limit(direct, spec.id) == Limits().memory_bytes
    finally:
        direct.run(rt.delete(spec.id))


def test_resize_of_a_stopped_sandbox_holds_from_its_next_start(direct: DirectRuntime) -> None:
    rt = direct.runtime
    spec = direct.run(rt.create())
    try:
        direct.run(rt.stop(spec.id))
        direct.run(rt.resize(spec.id, Limits(cpus=1, memory_mib=160, pids=40)))
        direct.run(rt.start(spec.id))
        code, out = direct.sh(spec.id, ALLOCATE.format(mib=300), timeout=60)
        assert code != 0 and "ok" not in out
        with pytest.raises(SandboxError) as caught:
            direct.run(rt.resize("no-such-sandbox", Limits()))
        assert caught.value.status == 404
    finally:
        direct.run(rt.delete(spec.id))
