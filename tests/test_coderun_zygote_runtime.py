"""A pooled sandbox starts its code-run zygote before it is claimed (runtime/entry.py),
through the official SDK's front door (`Daytona().create()`, then `code_run`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.controlplane_helpers import daytona
from tests.runtime_helpers import Stack, needs_bwrap, pool_ready, start_stack

pytestmark = needs_bwrap

# Prints whether the run's parent is the zygote, how long ago that zygote started, and
# what the run sees of the claim's environment.
PROBE = (
    "import os, sys\n"
    "stat = open(f'/proc/{os.getppid()}/stat').read().rsplit(')', 1)[1].split()\n"
    "age = float(open('/proc/uptime').read().split()[0]) - int(stat[19]) / os.sysconf('SC_CLK_TCK')\n"
    "mark = b'The warm interpreter' in open(f'/proc/{os.getppid()}/cmdline', 'rb').read()\n"
    "print(mark, round(age, 3), os.environ.get('GREETING'), sys.dont_write_bytecode)\n"
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("zygote-runtime"), pool_size=1)
    yield running
    running.stop()



def wait_for_pool(stack: Stack) -> None:
    deadline = time.monotonic() + 60
    while pool_ready(stack) < 1:
        assert time.monotonic() < deadline, "the pool did not fill"
        time.sleep(0.05)
    time.sleep(1.0)  # a pooled directory appears at launch: let its start-up finish


def probe(sandbox: Any) -> list[str]:
    response = sandbox.process.code_run(PROBE)
    assert response.exit_code == 0, response.result
    words: list[str] = response.result.split()
    return words


def test_the_claimed_sandbox_forks_the_zygote_it_started_while_pooled(stack: Stack) -> None:
    from daytona import CreateSandboxFromSnapshotParams

    client = daytona(stack)
    wait_for_pool(stack)
    started = time.monotonic()
    sandbox = client.create(CreateSandboxFromSnapshotParams(env_vars={"GREETING": "hi"}))
    try:
        mark, age, greeting, no_bytecode = probe(sandbox)
        assert mark == "True" and greeting == "hi" and no_bytecode == "False"
        assert float(age) > time.monotonic() - started  # it was running before the create began
    finally:
        sandbox.delete()


def test_a_claim_that_changes_python_start_up_gets_a_new_zygote(stack: Stack) -> None:
    from daytona import CreateSandboxFromSnapshotParams

    client = daytona(stack)
    wait_for_pool(stack)
    started = time.monotonic()
    sandbox = client.create(CreateSandboxFromSnapshotParams(env_vars={"PYTHONDONTWRITEBYTECODE": "1"}))
    try:
        mark, age, _greeting, no_bytecode = probe(sandbox)
        # The pooled zygote started without the variable: it was replaced by one started with it.
        assert mark == "True" and no_bytecode == "True"
        assert float(age) < time.monotonic() - started
    finally:
        sandbox.delete()
