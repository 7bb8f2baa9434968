"""Archive, restore and resize through the SDK against the real main job: archived files
are packed away (disk freed) and come back on start; resize changes the live cgroup."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.controlplane_helpers import daytona
from tests.runtime_helpers import Stack, cgroup_dirs, needs_bwrap, start_stack

pytestmark = needs_bwrap


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("lifecycle"), "--no-sandbox", pool_size=1)
    yield running
    running.stop()


def test_archive_frees_the_files_and_start_restores_them(stack: Stack) -> None:
    from daytona import DaytonaValidationError

    d = daytona(stack)
    sandbox = d.create()
    try:
        sandbox.process.exec("head -c 2000000 /dev/urandom > blob && sha256sum blob > sum")
        digest = sandbox.process.exec("cat sum").result
        with pytest.raises(DaytonaValidationError, match="Cannot archive"):
            sandbox.archive()  # only a stopped sandbox
        sandbox.stop()
        sandbox.archive()
        assert sandbox.state == "archived"
        assert d.get(sandbox.id).state == "archived"
        assert not (stack.state_dir / "sandboxes" / sandbox.id / "home" / "blob").exists()
        sandbox.start()
        assert sandbox.state == "started"
        assert sandbox.process.exec("sha256sum blob").result == digest
    finally:
        sandbox.delete()


def test_resize_applies_to_the_running_sandbox(stack: Stack) -> None:
    from daytona import DaytonaValidationError, Resources

    sandbox = daytona(stack).create()
    try:
        sandbox.resize(Resources(cpu=2, memory=2))
        assert (sandbox.cpu, sandbox.memory) == (2, 2)
        fresh = daytona(stack).get(sandbox.id)
        assert (fresh.cpu, fresh.memory, fresh.state) == (2, 2, "started")
        limits = [g / "memory.limit_in_bytes" for g in cgroup_dirs(stack, sandbox.id)
                  if (g / "memory.limit_in_bytes").exists()]
        limits += [g / "memory.max" for g in cgroup_dirs(stack, sandbox.id) if (g / "memory.max").exists()]
        if limits:  # the cgroup backend (root); the rlimit fallback applies at the next start
            assert int(limits[0].read_text()) == 2 << 30
        with pytest.raises(DaytonaValidationError, match="disk can only grow"):
            sandbox.resize(Resources(disk=1))
    finally:
        sandbox.delete()
