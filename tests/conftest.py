from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import system
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



def pytest_unconfigure(config: pytest.Config) -> None:
    """The run's last line: the system packages whose absence skipped tests, if any."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    reasons = []
    for report in reporter.stats.get("skipped", []):
        longrepr = getattr(report, "longrepr", None)
        if isinstance(longrepr, tuple) and len(longrepr) == 3:
            reasons.append(str(longrepr[2]))
    packages = system.packages_in(reasons)
    if packages:
        reporter.write_line(
            f"Skipped for missing system packages; to run them: apt-get install {' '.join(packages)} "
            "(or `bash .ci/run`, which installs everything and runs the suite)", yellow=True)
