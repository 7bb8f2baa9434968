"""Authenticated git over real smart HTTP (`git http-backend` behind Basic auth): per-call
credentials, stored credentials, failing fast without prompting, secrets never persisted
or exposed, and the daemon staying responsive during a slow clone."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict

import pytest
from daytona._sync.git import Git
from daytona.common.errors import DaytonaError, DaytonaGitAuthFailedError
from daytona_toolbox_api_client import GitApi

from tests import procfs
from tests.git_server import GitHttpServer, make_origin, run_git
from tests.helpers import RunningDaemon, sdk_api_client, start_daemon
from tests.system import requires

pytestmark = requires("git")

USER = "alice"
PASSWORD = f"pw-{uuid.uuid4().hex}"


class Author(TypedDict):
    author: str
    email: str


AUTHOR: Author = {"author": "Ada Lovelace", "email": "ada@example.com"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitHttpServer]:
    root = tmp_path_factory.mktemp("served")
    make_origin(root, "project.git")
    server = GitHttpServer(root, USER, PASSWORD)
    yield server
    server.close()


def sdk_git(daemon: RunningDaemon) -> Git:
    return Git(GitApi(sdk_api_client(daemon, via_prefix=True)))


def secrets_on_disk(*roots: Path) -> list[Path]:
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                try:
                    if PASSWORD.encode() in path.read_bytes():
                        found.append(path)
                except OSError:
                    pass
    return found


def test_per_call_credentials_clone_push_pull_and_leave_no_trace(daemon: RunningDaemon, served: GitHttpServer) -> None:
    git = sdk_git(daemon)
    repo = f"auth-{uuid.uuid4().hex[:8]}"
    git.clone(url=served.url("project.git"), path=repo, username=USER, password=PASSWORD)
    work = daemon.workdir / repo
    assert (work / "README.md").read_text() == "hello\n"

    (work / "pushed.txt").write_text("pushed\n")
    git.add(repo, ["pushed.txt"])
    sha = git.commit(repo, "over http", **AUTHOR).sha
    git.push(repo, username=USER, password=PASSWORD)
    assert run_git(served.root / "project.git", "rev-parse", "main").strip() == sha
    git.pull(repo, username=USER, password=PASSWORD)

    # The credential is in none of: the repository, its remote URL, the credential store,
    # the user's git config; only in the server's log of successful attempts.
    assert git.remote_get(repo, "origin") == served.url("project.git")
    assert PASSWORD not in (work / ".git" / "config").read_text()
    assert not (daemon.home / ".git-credentials").exists()
    assert secrets_on_disk(work, daemon.home) == []
    assert any(authorized for _, _, authorized in served.attempts)


@pytest.mark.parametrize("password", [None, "wrong-password"])
def test_bad_or_missing_credentials_fail_fast_without_prompting(
    daemon: RunningDaemon, served: GitHttpServer, password: str | None
) -> None:
    git = sdk_git(daemon)
    started = time.monotonic()
    with pytest.raises(DaytonaGitAuthFailedError) as caught:
        git.clone(
            url=served.url("project.git"),
            path=f"denied-{uuid.uuid4().hex[:8]}",
            username=USER if password else None,
            password=password,
            request_timeout=30,
        )
    assert time.monotonic() - started < 10
    assert caught.value.status_code == 401 and caught.value.code == "GIT_AUTH_FAILED"
    assert "wrong-password" not in str(caught.value)
    assert served.host in str(caught.value) and "dangerously_authenticate" in str(caught.value)


def test_push_without_credentials_is_auth_failed(daemon: RunningDaemon, served: GitHttpServer) -> None:
    git = sdk_git(daemon)
    repo = f"noauth-{uuid.uuid4().hex[:8]}"
    git.clone(url=served.url("project.git"), path=repo, username=USER, password=PASSWORD)
    git.commit(repo, "x", allow_empty=True, **AUTHOR)
    with pytest.raises(DaytonaGitAuthFailedError):
        git.push(repo, request_timeout=30)
    with pytest.raises(DaytonaGitAuthFailedError):
        git.pull(repo, username=USER, password="nope", request_timeout=30)


def test_dangerously_authenticate_stores_credentials_for_later_calls(
    fresh_daemon: RunningDaemon, served: GitHttpServer
) -> None:
    git = sdk_git(fresh_daemon)
    git.dangerously_authenticate(USER, PASSWORD, host=served.host, protocol="http")
    store = (fresh_daemon.home / ".git-credentials").read_text()
    port = served.host.split(":")[1]
    assert f"http://{USER}:{PASSWORD}@127.0.0.1%3a{port}" in store  # git's own store format
    assert git.get_config("credential.helper") == "store"

    repo = "stored"
    git.clone(url=served.url("project.git"), path=repo)  # no per-call credentials
    assert (fresh_daemon.workdir / repo / "README.md").exists()
    assert PASSWORD not in (fresh_daemon.workdir / repo / ".git" / "config").read_text()

    # Per-call credentials take precedence, and a failure with them erases nothing stored.
    with pytest.raises(DaytonaGitAuthFailedError):
        git.pull(repo, username=USER, password="wrong", request_timeout=30)
    assert (fresh_daemon.home / ".git-credentials").read_text() == store
    git.pull(repo)

    # Defaults: github.com over https; authenticating twice does not duplicate the helper.
    git.dangerously_authenticate("bob", "token-123")
    assert "https://bob:token-123@github.com" in (fresh_daemon.home / ".git-credentials").read_text()
    assert run_git(fresh_daemon.home, "config", "--file", str(fresh_daemon.home / ".gitconfig"),
                   "--get-all", "credential.helper").split() == ["store"]


def _command_lines() -> list[str]:
    return [line.replace(b"\0", b" ").decode(errors="replace") for line in procfs.command_lines().values()]


def test_daemon_stays_responsive_during_a_slow_clone_and_argv_has_no_secret(
    daemon: RunningDaemon, tmp_path: Path
) -> None:
    make_origin(tmp_path, "slow.git")
    slow = GitHttpServer(tmp_path, USER, PASSWORD, delay=3.0)
    git = sdk_git(daemon)
    outcome: list[object] = []

    def clone() -> None:
        try:
            git.clone(url=slow.url("slow.git"), path=f"slow-{uuid.uuid4().hex[:8]}", username=USER, password=PASSWORD)
            outcome.append("ok")
        except Exception as exc:  # reported below
            outcome.append(exc)

    worker = threading.Thread(target=clone)
    started = time.monotonic()
    worker.start()
    latencies = []
    saw_clone_process = False
    try:
        with daemon.client(timeout=10) as http:
            while worker.is_alive() and time.monotonic() - started < 30:
                before = time.monotonic()
                assert http.get("/version").status_code == 200
                latencies.append(time.monotonic() - before)
                for line in _command_lines():
                    assert PASSWORD not in line
                    saw_clone_process |= "git" in line and slow.base_url in line
                time.sleep(0.1)
        worker.join(30)
    finally:
        slow.close()
    assert outcome == ["ok"]
    assert time.monotonic() - started >= 3  # the clone really was slow
    assert saw_clone_process
    assert len(latencies) >= 10 and max(latencies) < 1.0, latencies


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    """A daemon whose git transfers fail after 1 s without receiving a byte."""
    running = start_daemon(tmp_path_factory.mktemp("impatient"), extra_env={"TOOLBOX_GIT_STALL_TIMEOUT": "1"})
    yield running
    running.stop()


def test_stalled_clone_and_pull_fail_fast_with_transport_error_and_leave_nothing(
    impatient: RunningDaemon, tmp_path: Path
) -> None:
    make_origin(tmp_path, "stalling.git")
    stalling = GitHttpServer(tmp_path, USER, PASSWORD, delay=20.0)
    git = sdk_git(impatient)
    kept = impatient.workdir / f"empty-{uuid.uuid4().hex[:8]}"
    kept.mkdir()
    try:
        for target in (f"stalled-{uuid.uuid4().hex[:8]}", kept.name):
            started = time.monotonic()
            with pytest.raises(DaytonaError) as caught:
                git.clone(url=stalling.url("stalling.git"), path=target, username=USER, password=PASSWORD)
            assert time.monotonic() - started < 10  # not the server's 20 s
            assert caught.value.status_code == 502 and caught.value.code == "GIT_TRANSPORT_FAILED"
            assert "stalled" in str(caught.value) and "TOOLBOX_GIT_STALL_TIMEOUT" in str(caught.value)
        # No half-made clone: a new destination is gone, an existing empty one stays empty.
        assert list(impatient.workdir.glob("stalled-*")) == []
        assert kept.is_dir() and list(kept.iterdir()) == []

        # A pull from a remote that stalls after a good clone fails the same way.
        stalling.delay = 0.0
        repo = f"pulled-{uuid.uuid4().hex[:8]}"
        git.clone(url=stalling.url("stalling.git"), path=repo, username=USER, password=PASSWORD)
        stalling.delay = 20.0
        started = time.monotonic()
        with pytest.raises(DaytonaError) as caught:
            git.pull(repo, username=USER, password=PASSWORD)
        assert time.monotonic() - started < 10
        assert caught.value.status_code == 502 and caught.value.code == "GIT_TRANSPORT_FAILED"
    finally:
        stalling.close()
