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


def pytest_configure(config: pytest.Config) -> None:
    """Every main job a test starts (through start_stack or ./scripts/start directly) and
    every SnapshotStore without a layers dir of its own use the machine's shared layers
    dir, so the default snapshot is built once, not once per state dir."""
    import os

    from tests import layer_helpers

    if os.geteuid() == 0:
        os.environ.setdefault("RUNTIME_LAYERS_DIR", str(layer_helpers.shared_layers_dir()))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the machine's shared default snapshot (tests/layer_helpers.py) before the
    first test that needs one, outside every test's timeout: the first build on a machine
    takes one to two minutes; after that it is found in milliseconds."""
    import os

    from tests import layer_helpers

    users = ("start_stack", "default_snapshot", "shared_default", "shared_snapshot")
    wanted = any(any(hasattr(getattr(item, "module", None), name) for name in users) for item in session.items)
    if not wanted or os.geteuid() != 0 or layer_helpers.default_is_built():
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")

    def say(line: str) -> None:
        if reporter is not None:
            reporter.write_line(f"[test layers] {line}")

    say(f"building the default snapshot in {layer_helpers.shared_layers_dir()} (once per machine)")
    try:
        layer_helpers.shared_default(say)
    except Exception as exc:  # the tests that need it fail with the reason; the rest run
        say(f"the default snapshot could not be built: {exc}")
