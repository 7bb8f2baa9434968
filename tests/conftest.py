from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import RunningDaemon, start_daemon
from tests.proxy_helpers import App, start_app


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    """One real daemon per test module (uvicorn on a free port, sandbox id `sbx-test`)."""
    running = start_daemon(tmp_path_factory.mktemp("daemon"))
    yield running
    running.stop()


@pytest.fixture
def fresh_daemon(tmp_path: Path) -> Iterator[RunningDaemon]:
    """A daemon of the test's own, for tests that change process-wide state."""
    running = start_daemon(tmp_path)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def app() -> Iterator[App]:
    """A small upstream app on a free port (HTTP, SSE, WebSocket echo, slow and crashing routes)."""
    running = start_app()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[object]:
    """One PostgreSQL server for the session (tests/postgres_helpers.py); skipped with the
    reason when PostgreSQL or psycopg is missing."""
    from tests import postgres_helpers

    reason = postgres_helpers.missing_reason()
    if reason:
        pytest.skip(reason)
    with postgres_helpers.cluster() as running:
        yield running
