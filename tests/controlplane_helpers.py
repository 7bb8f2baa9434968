"""Shared pieces of the control-plane tests: the main job on either store, SDK clients and
keys of other organizations."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.helpers import REPO_ROOT
from tests.runtime_helpers import Stack, start_stack

STORES = ["sqlite", "postgresql"]


def stack_fixture(name: str, *extra: str, pool_size: int = 1, stores: list[str] = STORES) -> Callable[..., Any]:
    """A module-scoped main job (`./scripts/start --no-sandbox`), once on SQLite and once on
    PostgreSQL (a fresh database of the session's cluster), so every test that uses it
    runs on both stores (or only on those in `stores`)."""

    @pytest.fixture(scope="module", params=stores)
    def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
        saved = os.environ.get("CONTROLPLANE_DATABASE_URL")
        if request.param == "postgresql":
            cluster = request.getfixturevalue("postgres_cluster")
            os.environ["CONTROLPLANE_DATABASE_URL"] = cluster.new_database()
        else:
            os.environ.pop("CONTROLPLANE_DATABASE_URL", None)
        try:
            running = start_stack(tmp_path_factory.mktemp(f"{name}-{request.param}"), "--no-sandbox", *extra,
                                  pool_size=pool_size)
        finally:
            if saved is None:
                os.environ.pop("CONTROLPLANE_DATABASE_URL", None)
            else:
                os.environ["CONTROLPLANE_DATABASE_URL"] = saved
        running.database_url = running.env.get("CONTROLPLANE_DATABASE_URL")  # type: ignore[attr-defined]
        yield running
        running.stop()

    return stack


def api_url(stack: Stack) -> str:
    return f"http://localhost:{stack.port}/api"


def daytona(stack: Stack, key: str | None = None, **config: Any) -> Any:
    from daytona import Daytona, DaytonaConfig

    return Daytona(DaytonaConfig(api_url=api_url(stack), api_key=key or stack.api_key, **config))


def database_url(stack: Stack) -> str:
    from controlplane.store.db import sqlite_url

    return stack.env.get("CONTROLPLANE_DATABASE_URL") or sqlite_url(stack.state_dir / "controlplane.db")


def key_command(stack: Stack, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m runtime api-key ARGS...` on the stack's state directory, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "runtime", "api-key", *args], env=stack.env, input=stdin,
                          capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)


def extra_key(stack: Stack, organization: str) -> str:
    """A key of `organization` (created if new), made by the key command: the proxy takes
    it before the command returns."""
    result = key_command(stack, "create", "--organization", organization)
    line = result.stdout.strip()
    assert result.returncode == 0 and line.startswith("DAYTONA_API_KEY=dtn_"), (result.stdout, result.stderr)
    return line.split("=", 1)[1]


def other_key_fixture() -> Callable[..., Any]:
    """A module-scoped key of a second organization for the module's `stack`."""

    @pytest.fixture(scope="module")
    def other_key(stack: Stack) -> str:
        return extra_key(stack, f"other-org-{stack.port}")

    return other_key
