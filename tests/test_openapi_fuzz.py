"""Fuzz every HTTP operation of GET /openapi.json with schemathesis against a real daemon.

The daemon runs inside bubblewrap: read-only root, a writable temp work dir, no network
but its own loopback, its own PID namespace, no capabilities. So whatever the fuzzer sends
(`DELETE /files?path=/`, random shell commands, proxying to random ports) stays harmless.
It talks over a Unix socket, the one door out of its network namespace.

Passing means: no 5xx (other than a 503 the operation documents, such as computer use
without an X display), no hang, no crash for any generated input, and every error an
ErrorResponse. The run is bounded to ~60 s however many routes exist.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import urllib3
from requests.adapters import HTTPAdapter

from tests.helpers import REPO_ROOT, RunningDaemon, start_daemon, stopped_line
from toolbox.server import STOPPED_CLEANLY
from tests.system import skip_unless

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

BUDGET_SECONDS = float(os.environ.get("TOOLBOX_FUZZ_SECONDS", "60"))
MAX_EXAMPLES = 100
REQUEST_TIMEOUT = 15.0
BASE_URL = "http://toolbox"


class _OperationDone(Exception):
    """An operation's share of the time budget is spent."""


class _UnixConnection(urllib3.connection.HTTPConnection):
    def __init__(self, socket_path: str, **kwargs: Any) -> None:
        super().__init__("toolbox", **kwargs)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(REQUEST_TIMEOUT)
        sock.connect(self.socket_path)
        self.sock = sock


class _UnixPool(urllib3.HTTPConnectionPool):
    def __init__(self, socket_path: str) -> None:
        super().__init__("toolbox", timeout=REQUEST_TIMEOUT)
        self.socket_path = socket_path

    def _new_conn(self) -> _UnixConnection:
        return _UnixConnection(self.socket_path, timeout=REQUEST_TIMEOUT)


class _UnixAdapter(HTTPAdapter):
    """requests over a Unix socket (schemathesis sends with requests)."""

    def __init__(self, socket_path: str) -> None:
        super().__init__()
        self.pool = _UnixPool(socket_path)

    def get_connection_with_tls_context(self, request: Any, verify: Any, proxies: Any = None, cert: Any = None) -> Any:
        return self.pool

    def close(self) -> None:
        self.pool.close()
        super().close()


HIDDEN_TREES = ("/home", "/work", "/srv", "/mnt")


def _test_installs() -> list[Path]:
    found = [*REPO_ROOT.glob(".venv-sdk-*"), REPO_ROOT / "tests" / "sdk-ts" / "node_modules"]
    return [path for path in found if path.is_dir() and Path(sys.prefix).resolve() != path.resolve()]


def _sandboxed(root: Path) -> list[str]:
    return [
        "bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
        # Other people's trees (checkouts with their venvs) hidden too, for the same reason.
        *(arg for tree in HIDDEN_TREES if os.path.isdir(tree) for arg in ("--tmpfs", tree)),
        "--bind", str(root), str(root),
        # The code and its interpreter may live under /tmp (CI clones anywhere): keep them visible.
        "--ro-bind", str(REPO_ROOT), str(REPO_ROOT), "--ro-bind", sys.prefix, sys.prefix,
        # The other SDKs' test installs (~28,000 files) hidden: a fuzzed `find` or
        # `search` from / would otherwise outlast REQUEST_TIMEOUT on a full machine.
        *(arg for bulky in _test_installs() for arg in ("--tmpfs", str(bulky))),
        "--unshare-net", "--unshare-pid", "--unshare-ipc",
        "--die-with-parent", "--cap-drop", "ALL", "--",
    ]


@pytest.fixture(scope="module")
def sandboxed_daemon() -> Iterator[RunningDaemon]:
    skip_unless("bwrap")  # the fuzzer's inputs must not touch the host
    root = Path(tempfile.mkdtemp(prefix="toolbox-fuzz-"))
    running = start_daemon(root, uds=True, command_prefix=_sandboxed(root), extra_env={"DISPLAY": ""})
    yield running
    # bwrap does not pass SIGTERM on (its child would die of --die-with-parent, unheard):
    # stop the daemon inside it, as a supervisor in the sandbox would, and then bwrap.
    daemon = _descendant(running.process.pid, b"-m\0toolbox\0serve")
    if daemon is not None:
        os.kill(daemon, signal.SIGTERM)
        running.process.wait(15)
        assert stopped_line(running.process) == STOPPED_CLEANLY
    running.stop()
    shutil.rmtree(root, ignore_errors=True)


def _descendant(pid: int, marker: bytes) -> int | None:
    """The first process below `pid` whose command line contains `marker` (bwrap's own
    processes, whose arguments name the command too, do not count)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    queue = list(children.get(pid, []))
    while queue:
        candidate = queue.pop(0)
        try:
            cmdline = Path(f"/proc/{candidate}/cmdline").read_bytes()
            if marker in cmdline and not cmdline.startswith(b"bwrap\0"):
                return candidate
        except OSError:
            pass
        queue += children.get(candidate, [])
    return None


def _searches_the_whole_root(path: str, case: Any) -> bool:
    query = getattr(case, "query", None) or {}
    return path in ("/files/find", "/files/search") and str(query.get("path", "")).rstrip("/") == ""


def _error_problem(response: Any) -> str | None:
    """Why an error response is not a Daytona ErrorResponse, or None if it is one."""
    content_type = (response.headers.get("content-type") or [""])[0]
    if not content_type.startswith("application/json"):
        return f"content-type {content_type!r}"
    try:
        body = json.loads(response.content)
    except ValueError:
        return "body is not JSON"
    if not isinstance(body, dict):
        return "body is not an object"
    for name, kind in (("statusCode", int), ("message", str), ("timestamp", str), ("path", str), ("code", str)):
        if not isinstance(body.get(name), kind):
            return f"field {name!r} missing or not {kind.__name__}"
    if body["statusCode"] != response.status_code or body.get("source") != "DAYTONA_DAEMON":
        return "statusCode/source mismatch"
    return None


def _with_generic_bodies(doc: dict[str, Any]) -> dict[str, Any]:
    """Routes whose area has not described a request body still get arbitrary JSON objects.

    Without a described body the fuzzer would only ever send none; any JSON object is
    what a confused or hostile client sends, and must never produce a 5xx either.
    """
    for item in doc["paths"].values():
        for method, operation in item.items():
            if method in ("post", "put", "patch", "delete") and "requestBody" not in operation:
                operation["requestBody"] = {"required": False, "content": {"application/json": {"schema": {"type": "object"}}}}
    return doc


def _cases(operation: Any) -> Any:
    """Valid inputs and, where the schema allows, inputs that break it on purpose."""
    strategies = [operation.as_strategy(GenerationMode.POSITIVE)]
    try:
        strategies.append(operation.as_strategy(GenerationMode.NEGATIVE))
    except Exception:  # noqa: BLE001 - nothing to negate (no parameters, no body)
        pass
    return st.one_of(strategies)


# The time budget bounds the requests; generating the inputs also costs CPU, which on a
# busy 2-core machine can push the whole run past the suite's default 120 s timeout.
@pytest.mark.timeout(600)
def test_fuzz_every_operation(sandboxed_daemon: RunningDaemon) -> None:
    session = requests.Session()
    assert sandboxed_daemon.uds is not None
    session.mount(BASE_URL, _UnixAdapter(str(sandboxed_daemon.uds)))
    doc = session.get(f"{BASE_URL}/openapi.json", timeout=REQUEST_TIMEOUT).json()
    schema = schemathesis.openapi.from_dict(_with_generic_bodies(doc))

    operations = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.definition.raw.get("x-websocket"):
            continue  # a WebSocket upgrade; its HTTP refusals are tested per area
        operations.append(operation)
    assert operations

    failures: list[str] = []
    calls = 0
    started = time.monotonic()
    deadline = started + BUDGET_SECONDS

    for index, operation in enumerate(operations):
        # An even share of what is left, so slow operations early cannot starve later ones.
        stop_at = time.monotonic() + max(deadline - time.monotonic(), 0) / (len(operations) - index)
        label = f"{operation.method.upper()} {operation.path}"

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=_cases(operation))
        def run(case: Any) -> None:
            nonlocal calls
            if time.monotonic() > stop_at or len(failures) > 50:
                # Ends this operation's examples at once: returning would let hypothesis
                # generate the rest of them (CPU, not requests: minutes on a slow machine).
                raise _OperationDone
            calls += 1
            try:
                response = case.call(base_url=BASE_URL, session=session, timeout=REQUEST_TIMEOUT)
            except requests.RequestException as exc:
                if isinstance(exc, requests.ReadTimeout) and _searches_the_whole_root(operation.path, case):
                    # A content search of every file on the machine is slow, not broken: it
                    # takes as long as reading the disk (the daemon stops it when we leave).
                    return
                failures.append(f"{label}: no answer ({type(exc).__name__}) for {case.as_curl_command()}")
                return
            documented = str(response.status_code) in operation.definition.raw.get("responses", {})
            if response.status_code in (502, 503) and documented:
                # A documented "unavailable" (no X display, no ffmpeg) or "remote unreachable"
                # (git, in a sandbox without network): an answer, not a crash.
                problem = _error_problem(response)
                if problem:
                    failures.append(f"{label}: {response.status_code} not an ErrorResponse ({problem})")
            elif response.status_code >= 500:
                failures.append(f"{label}: {response.status_code} {response.content[:300]!r} for {case.as_curl_command()}")
            elif response.status_code >= 400:
                problem = _error_problem(response)
                if problem:
                    failures.append(f"{label}: {response.status_code} not an ErrorResponse ({problem}): {response.content[:200]!r}")

        try:
            run()
        except _OperationDone:
            pass

    elapsed = time.monotonic() - started
    print(f"fuzzed {len(operations)} operations with {calls} requests in {elapsed:.1f} s")
    assert sandboxed_daemon.process.poll() is None, "the daemon died while being fuzzed"
    assert session.get(f"{BASE_URL}/version", timeout=REQUEST_TIMEOUT).status_code == 200
    assert not failures, "\n".join(dict.fromkeys(failures))
