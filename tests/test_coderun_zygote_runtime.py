"""A pooled sandbox starts its code-run zygote before it is claimed (runtime/entry.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.runtime_helpers import pool_ready, Stack, needs_bwrap, start_stack

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
    # The runtime's JSON control API (and its /info) went with issue 12: the pool's
    # directory appears at launch, so wait for it and then for its imports to finish.
    deadline = time.monotonic() + 60
    while pool_ready(stack) < 1:
        assert time.monotonic() < deadline, "the pool did not fill"
        time.sleep(0.05)
    time.sleep(1.5)


def probe(stack: Stack, sandbox_id: str) -> list[str]:
    with stack.toolbox(sandbox_id) as client:
        response = client.post("/process/code-run", json={"language": "python", "code": PROBE})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["exitCode"] == 0, body
    words: list[str] = body["result"].split()
    return words


def test_the_claimed_sandbox_forks_the_zygote_it_started_while_pooled(stack: Stack) -> None:
    wait_for_pool(stack)
    started = time.monotonic()
    warm = stack.cli("create", "--name", "warm", "-e", "GREETING=hi")["id"]
    mark, age, greeting, no_bytecode = probe(stack, warm)
    assert mark == "True" and greeting == "hi" and no_bytecode == "False"
    assert float(age) > time.monotonic() - started  # it was running before the create began


def test_a_claim_that_changes_python_start_up_gets_a_new_zygote(stack: Stack) -> None:
    wait_for_pool(stack)
    started = time.monotonic()
    restarted = stack.cli("create", "--name", "restarted", "-e", "PYTHONDONTWRITEBYTECODE=1")["id"]
    mark, age, _greeting, no_bytecode = probe(stack, restarted)
    # The pooled zygote started without the variable: it was replaced by one started with it.
    assert mark == "True" and no_bytecode == "True"
    assert float(age) < time.monotonic() - started
