"""Git endpoints through the official SDK's `Git` class, against a live daemon, with local
bare repositories (file:// URLs) as remotes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict

import httpx
import pytest
from daytona._sync.git import Git
from daytona.common.errors import (
    DaytonaBadRequestError,
    DaytonaConflictError,
    DaytonaError,
    DaytonaNotFoundError,
)
from daytona_toolbox_api_client import GitApi

from tests.git_server import make_origin, push_commit, run_git
from tests.helpers import RunningDaemon, sdk_api_client
from tests.system import requires

pytestmark = requires("git")


class Author(TypedDict):
    author: str
    email: str


AUTHOR: Author = {"author": "Ada Lovelace", "email": "ada@example.com"}


@pytest.fixture(scope="module")
def git(daemon: RunningDaemon) -> Git:
    return Git(GitApi(sdk_api_client(daemon, via_prefix=True)))


@pytest.fixture
def space(daemon: RunningDaemon) -> Iterator[Path]:
    """A fresh directory inside the daemon's work dir for one test."""
    path = daemon.workdir / f"t-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    yield path


@pytest.fixture
def origin(space: Path) -> Path:
    return make_origin(space, files={"README.md": "hello\n", "src/app.py": "print('hi')\n"})


def error_of(exc: pytest.ExceptionInfo[DaytonaError]) -> tuple[int | None, str | None]:
    return exc.value.status_code, exc.value.code


def test_clone_status_add_commit_push_pull(git: Git, space: Path, origin: Path) -> None:
    git.clone(url=f"file://{origin}", path=f"{space.name}/repo")
    repo = f"{space.name}/repo"
    work = space / "repo"
    assert (work / "README.md").read_text() == "hello\n"

    status = git.status(repo)
    assert status.current_branch == "main"
    assert status.file_status == []
    assert (status.ahead, status.behind, status.branch_published) == (0, 0, True)
    assert status.upstream == "origin/main" and status.detached is False

    (work / "new.txt").write_text("new\n")
    (work / "README.md").write_text("changed\n")
    git.add(repo, ["new.txt", "README.md"])
    result = git.commit(repo, "second commit", **AUTHOR)
    assert len(result.sha) == 40
    assert run_git(work, "log", "-1", "--format=%an <%ae>|%cn|%s").strip() == "Ada Lovelace <ada@example.com>|Ada Lovelace|second commit"
    assert git.status(repo).ahead == 1

    git.push(repo)
    assert run_git(origin, "rev-parse", "main").strip() == result.sha
    assert git.status(repo).ahead == 0

    other = push_commit(origin, space / "other", "from-other.txt", "x\n")
    run_git(work, "fetch", "-q")
    assert git.status(repo).behind == 1
    git.pull(repo)
    assert run_git(work, "rev-parse", "HEAD").strip() == other
    assert (work / "from-other.txt").exists()


def test_status_reports_every_file_state(git: Git, space: Path, origin: Path) -> None:
    repo = f"{space.name}/repo"
    git.clone(url=str(origin), path=repo)
    work = space / "repo"
    (work / "staged-new.txt").write_text("a\n")
    run_git(work, "add", "staged-new.txt")
    (work / "staged-new.txt").write_text("a and more\n")  # added, then modified
    (work / "README.md").write_text("modified\n")  # worktree modified
    run_git(work, "mv", "src/app.py", "src/main.py")  # staged rename
    (work / "untracked dir").mkdir()
    (work / "untracked dir" / "file with spaces.txt").write_text("u\n")
    run_git(work, "commit", "-q", "--allow-empty", "-m", "noop")  # nothing else changes
    run_git(work, "reset", "-q", "--soft", "HEAD~1")

    by_name = {f.name: f for f in git.status(repo).file_status}
    assert (by_name["staged-new.txt"].staging, by_name["staged-new.txt"].worktree) == ("Added", "Modified")
    assert (by_name["README.md"].staging, by_name["README.md"].worktree) == ("Unmodified", "Modified")
    assert by_name["src/main.py"].staging == "Renamed" and by_name["src/main.py"].extra == "src/app.py"
    untracked = by_name["untracked dir/file with spaces.txt"]
    assert (untracked.staging, untracked.worktree) == ("Untracked", "Untracked")

    (work / "README.md").unlink()
    run_git(work, "rm", "-q", "--cached", "src/main.py")
    by_name = {f.name: f for f in git.status(repo).file_status}
    assert by_name["README.md"].worktree == "Deleted"


def test_status_detached_head_and_unpublished_branch(git: Git, space: Path, origin: Path) -> None:
    repo = f"{space.name}/repo"
    git.clone(url=f"file://{origin}", path=repo)
    git.create_branch(repo, "local-only")
    status = git.status(repo)
    assert status.current_branch == "local-only"
    assert (status.branch_published, status.upstream, status.ahead) == (False, "", 0)

    sha = run_git(space / "repo", "rev-parse", "HEAD").strip()
    git.checkout_branch(repo, sha)
    status = git.status(repo)
    assert status.current_branch == "HEAD" and status.detached is True
    assert git.branches(repo).current == ""


def test_clone_branch_commit_and_depth(git: Git, space: Path, origin: Path) -> None:
    first = run_git(origin, "rev-parse", "main").strip()
    seed = space / "seed"
    second = push_commit(origin, seed, "two.txt", "2\n")
    run_git(seed, "checkout", "-q", "-b", "feature")
    feature = push_commit(origin, seed, "feature.txt", "f\n", branch="feature")

    git.clone(url=f"file://{origin}", path=f"{space.name}/by-branch", branch="feature")
    assert run_git(space / "by-branch", "rev-parse", "HEAD").strip() == feature
    assert git.status(f"{space.name}/by-branch").current_branch == "feature"

    git.clone(url=f"file://{origin}", path=f"{space.name}/by-commit", commit_id=first)
    status = git.status(f"{space.name}/by-commit")
    assert status.detached is True and status.current_branch == "HEAD"
    assert run_git(space / "by-commit", "rev-parse", "HEAD").strip() == first

    # Every branch is fetched: a remote-only branch checks out as a tracking branch.
    git.clone(url=str(origin.relative_to(space.parent)), path=f"{space.name}/default")
    git.checkout_branch(f"{space.name}/default", "feature")
    status = git.status(f"{space.name}/default")
    assert (status.current_branch, status.upstream) == ("feature", "origin/feature")

    git.clone(url=f"file://{origin}", path=f"{space.name}/shallow", depth=1)
    assert run_git(space / "shallow", "rev-list", "--count", "HEAD").strip() == "1"
    assert run_git(space / "shallow", "rev-parse", "HEAD").strip() == second

    with pytest.raises(DaytonaNotFoundError) as caught:
        git.clone(url=f"file://{origin}", path=f"{space.name}/bad-commit", commit_id="0" * 40)
    assert not (space / "bad-commit").exists()  # no half-made clone left behind
    (space / "empty-dir").mkdir()
    with pytest.raises(DaytonaNotFoundError):
        git.clone(url=f"file://{origin}", path=f"{space.name}/empty-dir", commit_id="f" * 40)
    assert list((space / "empty-dir").iterdir()) == []

    with pytest.raises(DaytonaNotFoundError) as caught:
        git.clone(url=f"file://{origin}", path=f"{space.name}/bad-branch", branch="no-such-branch")
    assert error_of(caught) == (404, "GIT_BRANCH_NOT_FOUND")
    assert "no-such-branch" in str(caught.value)


def test_clone_errors(git: Git, space: Path, origin: Path) -> None:
    caught: pytest.ExceptionInfo[DaytonaError]
    with pytest.raises(DaytonaNotFoundError) as caught:
        git.clone(url=f"file://{space}/missing.git", path=f"{space.name}/x")
    assert error_of(caught) == (404, "GIT_REPO_NOT_FOUND")

    (space / "occupied").mkdir()
    (space / "occupied" / "file").write_text("keep me\n")
    with pytest.raises(DaytonaConflictError):
        git.clone(url=f"file://{origin}", path=f"{space.name}/occupied")
    assert (space / "occupied" / "file").read_text() == "keep me\n"

    with pytest.raises(DaytonaError) as caught:
        git.clone(url="http://127.0.0.1:9/nothing-listens-here.git", path=f"{space.name}/y")
    assert error_of(caught) == (502, "GIT_TRANSPORT_FAILED")
    assert "127.0.0.1" in str(caught.value)

    with pytest.raises(DaytonaBadRequestError):
        git.clone(url="--upload-pack=touch /tmp/pwned", path=f"{space.name}/z")
    with pytest.raises(DaytonaBadRequestError):
        git.clone(url=f"file://{origin}", path=f"{space.name}/z", depth=-1)


def test_branches_create_checkout_delete(git: Git, space: Path, origin: Path) -> None:
    repo = f"{space.name}/repo"
    git.clone(url=f"file://{origin}", path=repo)
    listed = git.branches(repo)
    assert listed.branches == ["main"] and listed.current == "main"

    git.create_branch(repo, "feature/x")
    listed = git.branches(repo)
    assert sorted(listed.branches) == ["feature/x", "main"] and listed.current == "feature/x"

    caught: pytest.ExceptionInfo[DaytonaError]
    with pytest.raises(DaytonaConflictError) as caught:
        git.create_branch(repo, "main")
    assert error_of(caught) == (409, "GIT_BRANCH_EXISTS")
    with pytest.raises(DaytonaBadRequestError):
        git.create_branch(repo, "bad..name")

    git.checkout_branch(repo, "main")
    assert git.branches(repo).current == "main"
    with pytest.raises(DaytonaNotFoundError) as caught:
        git.checkout_branch(repo, "nope")
    assert error_of(caught) == (404, "GIT_BRANCH_NOT_FOUND")

    git.delete_branch(repo, "feature/x")
    assert git.branches(repo).branches == ["main"]
    with pytest.raises(DaytonaNotFoundError) as caught:
        git.delete_branch(repo, "feature/x")
    assert error_of(caught) == (404, "GIT_BRANCH_NOT_FOUND")
    with pytest.raises(DaytonaConflictError):
        git.delete_branch(repo, "main")  # checked out


def _commit_readme_on_branch(git: Git, repo: str, work: Path, branch: str, text: str) -> None:
    """Commit README.md with `text` on a new `branch`, then go back to main."""
    git.create_branch(repo, branch)
    (work / "README.md").write_text(text)
    git.add(repo, ["README.md"])
    git.commit(repo, f"on {branch}", **AUTHOR)
    git.checkout_branch(repo, "main")


def test_checkout_refuses_to_overwrite_local_changes(git: Git, space: Path, origin: Path) -> None:
    repo = f"{space.name}/repo"
    git.clone(url=f"file://{origin}", path=repo)
    work = space / "repo"
    _commit_readme_on_branch(git, repo, work, "other", "other branch\n")
    (work / "README.md").write_text("uncommitted\n")
    with pytest.raises(DaytonaConflictError) as caught:
        git.checkout_branch(repo, "other")
    assert error_of(caught) == (409, "GIT_DIRTY_WORKTREE")
    assert "README.md" in str(caught.value)
    assert (work / "README.md").read_text() == "uncommitted\n"


def test_commit_empty_and_allow_empty(git: Git, space: Path, origin: Path) -> None:
    repo = f"{space.name}/repo"
    git.clone(url=f"file://{origin}", path=repo)
    with pytest.raises(DaytonaBadRequestError) as caught:
        git.commit(repo, "nothing", **AUTHOR)
    assert "allow_empty" in str(caught.value)
    sha = git.commit(repo, "empty on purpose", allow_empty=True, **AUTHOR).sha
    assert run_git(space / "repo", "rev-parse", "HEAD").strip() == sha


def test_push_rejected_and_pull_conflict(git: Git, space: Path, origin: Path) -> None:
    repo = f"{space.name}/repo"
    git.clone(url=f"file://{origin}", path=repo)
    work = space / "repo"
    push_commit(origin, space / "other", "theirs.txt", "theirs\n")
    (work / "mine.txt").write_text("mine\n")
    git.add(repo, ["mine.txt"])
    git.commit(repo, "mine", **AUTHOR)

    with pytest.raises(DaytonaConflictError) as caught:
        git.push(repo)
    assert error_of(caught) == (409, "GIT_PUSH_REJECTED")
    assert "rejected" in str(caught.value)

    with pytest.raises(DaytonaConflictError) as caught:
        git.pull(repo)
    assert error_of(caught) == (409, "GIT_MERGE_CONFLICT")


def test_pull_refuses_to_overwrite_local_changes(git: Git, space: Path, origin: Path) -> None:
    repo = f"{space.name}/repo"
    git.clone(url=f"file://{origin}", path=repo)
    push_commit(origin, space / "other", "README.md", "theirs\n")
    (space / "repo" / "README.md").write_text("mine, uncommitted\n")
    with pytest.raises(DaytonaConflictError) as caught:
        git.pull(repo)
    assert error_of(caught) == (409, "GIT_DIRTY_WORKTREE")


def test_push_new_branch_with_set_upstream_and_explicit_remote(git: Git, space: Path, origin: Path) -> None:
    repo = f"{space.name}/repo"
    git.clone(url=f"file://{origin}", path=repo)
    git.create_branch(repo, "topic")
    git.commit(repo, "topic work", allow_empty=True, **AUTHOR)
    git.push(repo, branch="topic", remote="origin", set_upstream=True)
    status = git.status(repo)
    assert status.upstream == "origin/topic" and status.branch_published is True
    assert run_git(origin, "rev-parse", "topic").strip() == run_git(space / "repo", "rev-parse", "HEAD").strip()

    # A pull of an explicit branch from an explicit remote.
    push_commit(origin, space / "other", "later.txt", "later\n")
    git.checkout_branch(repo, "main")
    git.pull(repo, remote="origin", branch="main")
    assert (space / "repo" / "later.txt").exists()

    with pytest.raises(DaytonaNotFoundError) as caught:
        git.push(repo, branch="does-not-exist")
    assert error_of(caught) == (404, "GIT_BRANCH_NOT_FOUND")


def test_push_and_pull_without_upstream(git: Git, space: Path, origin: Path) -> None:
    """A branch with no upstream pushes and pulls the same-named branch on origin."""
    repo = f"{space.name}/repo"
    git.init(repo, initial_branch="main")
    git.remote_add(repo, "origin", f"file://{origin}")
    git.pull(repo)
    assert (space / "repo" / "README.md").read_text() == "hello\n"
    git.commit(repo, "local", allow_empty=True, **AUTHOR)
    git.push(repo)
    assert run_git(origin, "log", "-1", "--format=%s", "main").strip() == "local"

    sha = run_git(space / "repo", "rev-parse", "HEAD").strip()
    git.checkout_branch(repo, sha)
    with pytest.raises(DaytonaNotFoundError) as caught:
        git.push(repo)
    assert "detached" in str(caught.value)


def test_init_plain_bare_and_existing(git: Git, space: Path) -> None:
    git.init(f"{space.name}/plain", initial_branch="trunk")
    status = git.status(f"{space.name}/plain")  # works before the first commit
    assert status.current_branch == "trunk" and status.file_status == []
    assert git.branches(f"{space.name}/plain").branches == []

    git.init(f"{space.name}/bare.git", bare=True)
    assert (space / "bare.git" / "HEAD").exists() and not (space / "bare.git" / ".git").exists()

    with pytest.raises(DaytonaConflictError):
        git.init(f"{space.name}/plain")
    with pytest.raises(DaytonaBadRequestError):
        git.init(f"{space.name}/bad", initial_branch="bad..name")


def test_reset_modes(git: Git, space: Path, origin: Path) -> None:
    repo = f"{space.name}/repo"
    git.clone(url=f"file://{origin}", path=repo)
    work = space / "repo"
    first = run_git(work, "rev-parse", "HEAD").strip()
    (work / "README.md").write_text("v2\n")
    git.add(repo, ["README.md"])
    git.commit(repo, "v2", **AUTHOR)

    git.reset(repo, mode="soft", target="HEAD~1")
    assert run_git(work, "rev-parse", "HEAD").strip() == first
    assert {f.name: f.staging for f in git.status(repo).file_status}["README.md"] == "Modified"

    git.reset(repo)  # mixed: unstage everything
    entry = {f.name: f for f in git.status(repo).file_status}["README.md"]
    assert (entry.staging, entry.worktree) == ("Unmodified", "Modified")

    git.add(repo, ["README.md"])
    git.reset(repo, files=["README.md"])
    assert {f.name: f.staging for f in git.status(repo).file_status}["README.md"] == "Unmodified"

    git.reset(repo, mode="hard")
    assert (work / "README.md").read_text() == "hello\n" and git.status(repo).file_status == []

    (work / "README.md").write_text("local edit\n")
    git.reset(repo, mode="keep", target="HEAD")
    assert (work / "README.md").read_text() == "local edit\n"

    with pytest.raises(DaytonaBadRequestError) as caught:
        git.reset(repo, mode="sideways")
    assert "soft, mixed, hard, merge, keep" in str(caught.value)
    with pytest.raises(DaytonaBadRequestError):
        git.reset(repo, mode="hard", files=["README.md"])
    with pytest.raises(DaytonaNotFoundError):
        git.reset(repo, mode="hard", target="no-such-revision")


def test_restore_worktree_staged_and_source(git: Git, space: Path, origin: Path) -> None:
    repo = f"{space.name}/repo"
    git.clone(url=f"file://{origin}", path=repo)
    work = space / "repo"
    first = run_git(work, "rev-parse", "HEAD").strip()
    (work / "README.md").write_text("v2\n")
    git.add(repo, ["README.md"])
    git.commit(repo, "v2", **AUTHOR)

    (work / "README.md").write_text("scratch\n")
    git.restore(repo, ["README.md"])  # worktree from the index
    assert (work / "README.md").read_text() == "v2\n"

    (work / "README.md").write_text("staged scratch\n")
    git.add(repo, ["README.md"])
    git.restore(repo, ["README.md"], staged=True)  # index only
    entry = {f.name: f for f in git.status(repo).file_status}["README.md"]
    assert (entry.staging, entry.worktree) == ("Unmodified", "Modified")
    assert (work / "README.md").read_text() == "staged scratch\n"

    git.restore(repo, ["README.md"], staged=True, worktree=True, source=first)
    assert (work / "README.md").read_text() == "hello\n"

    with pytest.raises(DaytonaBadRequestError) as caught:
        git.restore(repo, ["no-such-file.txt"])
    assert "no-such-file.txt" in str(caught.value)


def test_remotes_add_list_get_overwrite_fetch(git: Git, space: Path, origin: Path) -> None:
    repo = f"{space.name}/repo"
    git.init(repo)
    assert git.remotes(repo).remotes == []
    assert git.remote_get(repo, "origin") is None

    git.remote_add(repo, "origin", "https://alice:s3cret@example.com/a.git")
    listed = git.remotes(repo).remotes
    assert [(r.name, r.url) for r in listed] == [("origin", "https://alice:xxxxx@example.com/a.git")]

    with pytest.raises(DaytonaConflictError):
        git.remote_add(repo, "origin", f"file://{origin}")
    git.remote_add(repo, "origin", f"file://{origin}", overwrite=True, fetch=True)
    assert git.remote_get(repo, "origin") == f"file://{origin}"
    assert run_git(space / "repo", "rev-parse", "origin/main").strip() == run_git(origin, "rev-parse", "main").strip()

    git.remote_add(repo, "mirror.v2", f"file://{origin}")
    assert [r.name for r in git.remotes(repo).remotes] == ["origin", "mirror.v2"]
    with pytest.raises(DaytonaNotFoundError) as caught:
        git.remote_add(repo, "broken", f"file://{space}/missing.git", fetch=True)
    assert error_of(caught) == (404, "GIT_REPO_NOT_FOUND")


def test_config_get_set_and_user(git: Git, daemon: RunningDaemon, space: Path) -> None:
    repo = f"{space.name}/repo"
    git.init(repo)
    assert git.get_config("toolbox.test-unset") is None
    git.set_config("toolbox.greeting", "hello world")
    assert git.get_config("toolbox.greeting") == "hello world"
    assert "greeting = hello world" in (daemon.home / ".gitconfig").read_text()

    git.set_config("core.autocrlf", "input", scope="local", path=repo)
    assert git.get_config("core.autocrlf", scope="local", path=repo) == "input"
    assert git.get_config("core.autocrlf", scope="global") is None

    git.configure_user("Grace Hopper", "grace@example.com", scope="local", path=repo)
    assert git.get_config("user.name", scope="local", path=repo) == "Grace Hopper"
    assert git.get_config("user.email", scope="local", path=repo) == "grace@example.com"
    git.configure_user("Global User", "global@example.com")
    assert git.get_config("user.name") == "Global User"

    with pytest.raises(DaytonaBadRequestError) as caught:
        git.get_config("user.name", scope="local")
    assert "path" in str(caught.value)
    with pytest.raises(DaytonaBadRequestError):
        git.set_config("user.name", "x", scope="galaxy")
    with pytest.raises(DaytonaBadRequestError):
        git.get_config("nosection")


def test_not_a_repository_is_404_never_500(git: Git, space: Path) -> None:
    (space / "plain-dir").mkdir()
    (space / "plain-dir" / "sub").mkdir()
    calls = [
        lambda p: git.status(p),
        lambda p: git.branches(p),
        lambda p: git.add(p, ["."]),
        lambda p: git.commit(p, "m", **AUTHOR),
        lambda p: git.remotes(p),
        lambda p: git.create_branch(p, "x"),
        lambda p: git.checkout_branch(p, "x"),
        lambda p: git.reset(p),
        lambda p: git.pull(p),
        lambda p: git.push(p, branch="main"),
    ]
    for path in (f"{space.name}/plain-dir", f"{space.name}/does-not-exist", f"{space.name}/plain-dir/sub"):
        for call in calls:
            with pytest.raises(DaytonaNotFoundError) as caught:
                call(path)
            assert error_of(caught) == (404, "GIT_REPO_NOT_FOUND"), (path, str(caught.value))


def test_subdirectory_of_a_repository_is_not_a_repository(git: Git, space: Path) -> None:
    git.init(f"{space.name}/outer")
    (space / "outer" / "inner").mkdir()
    with pytest.raises(DaytonaNotFoundError):
        git.status(f"{space.name}/outer/inner")


def test_wire_shapes_and_bad_bodies(daemon: RunningDaemon, git: Git, space: Path, origin: Path) -> None:
    repo = f"{space.name}/repo"
    git.clone(url=f"file://{origin}", path=repo)
    with daemon.client() as http:
        status = http.get("/git/status", params={"path": repo})
        assert status.headers["content-type"] == "application/json"
        assert set(status.json()) == {"currentBranch", "fileStatus", "branchPublished", "ahead", "behind", "detached", "upstream"}
        created = http.post("/git/branches", json={"path": repo, "name": "b1"})
        assert created.status_code == 201
        assert http.post("/git/checkout", json={"path": repo, "branch": "main"}).status_code == 200
        deleted = http.request("DELETE", "/git/branches", json={"path": repo, "name": "b1"})
        assert deleted.status_code == 204
        assert http.get("/git/config", params={"key": "toolbox.never-set"}).json() == {}

        bad = [
            http.post("/git/clone", json={"url": 5, "path": "x"}),
            http.post("/git/clone", json={"path": "x"}),
            http.post("/git/commit", json={"path": repo, "message": "m", "author": "a", "email": "e", "allow_empty": "yes"}),
            http.post("/git/commit", json={"path": repo, "message": "", "author": "a", "email": "e"}),
            http.post("/git/add", json={"path": repo, "files": None}),
            http.post("/git/add", content=b"not json"),
            http.get("/git/status"),
            http.post("/git/credentials", json={"username": "u", "password": "p\nhost=evil"}),
            # NUL bytes in any git argument (found by the schema fuzzer: was a 500)
            http.post("/git/restore", json={"path": repo, "files": ["a\u0000b"]}),
            http.post("/git/add", json={"path": repo, "files": ["a\u0000b"]}),
        ]
        for response in bad:
            assert response.status_code == 400, response.text
            body = response.json()
            assert body["source"] == "DAYTONA_DAEMON" and body["code"] in ("BAD_REQUEST", "INVALID_REQUEST_BODY")


def test_history_through_generated_client(daemon: RunningDaemon, git: Git, space: Path, origin: Path) -> None:
    repo = f"{space.name}/repo"
    git.init(repo)
    api = GitApi(sdk_api_client(daemon))
    assert api.get_commit_history(path=repo) == []
    git.commit(repo, "first\n\nwith a body", allow_empty=True, **AUTHOR)
    git.commit(repo, "second", allow_empty=True, **AUTHOR)
    history = api.get_commit_history(path=repo)
    assert [c.message.strip() for c in history] == ["second", "first\n\nwith a body"]
    assert history[0].author == "Ada Lovelace" and history[0].email == "ada@example.com"
    assert len(history[0].hash) == 40 and history[0].timestamp[:2] == "20"


def test_concurrent_writers_on_one_repo_do_not_collide(daemon: RunningDaemon, git: Git, space: Path) -> None:
    import concurrent.futures

    repo = f"{space.name}/repo"
    git.init(repo)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(git.commit, repo, f"c{i}", allow_empty=True, **AUTHOR) for i in range(8)]
        shas = {f.result().sha for f in futures}
    assert len(shas) == 8
    assert run_git(space / "repo", "rev-list", "--count", "HEAD").strip() == "8"


def test_bare_http_error_envelope(daemon: RunningDaemon, space: Path) -> None:
    with httpx.Client(base_url=daemon.url) as http:
        response = http.post("/git/pull", json={"path": f"{space.name}/nope"})
    body = response.json()
    assert response.status_code == 404
    assert body["code"] == "GIT_REPO_NOT_FOUND" and body["statusCode"] == 404 and body["method"] == "POST"


def test_push_refused_by_a_server_hook_is_remote_rejected(git: Git, space: Path, origin: Path) -> None:
    from daytona.common.errors import DaytonaGitRemoteRejectedError

    hook = origin / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'main is protected: open a pull request instead' >&2\nexit 1\n")
    hook.chmod(0o755)
    repo = f"{space.name}/repo"
    git.clone(url=f"file://{origin}", path=repo)
    git.commit(repo, "x", allow_empty=True, **AUTHOR)
    with pytest.raises(DaytonaGitRemoteRejectedError) as caught:
        git.push(repo)
    assert error_of(caught) == (422, "GIT_REMOTE_REJECTED")
    assert "open a pull request instead" in str(caught.value)


def test_status_of_a_merge_conflict_and_odd_file_names(git: Git, space: Path, origin: Path) -> None:
    repo = f"{space.name}/repo"
    git.clone(url=f"file://{origin}", path=repo)
    work = space / "repo"
    _commit_readme_on_branch(git, repo, work, "left", "left\n")
    (work / "README.md").write_text("right\n")
    git.add(repo, ["README.md"])
    git.commit(repo, "right", **AUTHOR)
    with pytest.raises(AssertionError):
        run_git(work, "merge", "left")  # conflicts
    (work / "naïve – ünïcode.txt").write_text("u\n")
    (work.joinpath(b"latin1-\xe9.txt".decode("utf-8", "surrogateescape"))).write_text("l\n")

    by_name = {f.name: f for f in git.status(repo).file_status}
    assert (by_name["README.md"].staging, by_name["README.md"].worktree) == ("Updated but unmerged", "Updated but unmerged")
    assert by_name["naïve – ünïcode.txt"].worktree == "Untracked"
    assert by_name["latin1-\ufffd.txt"].worktree == "Untracked"  # not valid UTF-8: replaced, not a 500

    with pytest.raises(DaytonaConflictError) as caught:
        git.checkout_branch(repo, "left")
    assert caught.value.code in ("GIT_DIRTY_WORKTREE", "GIT_MERGE_CONFLICT")
    git.reset(repo, mode="merge")
    assert git.status(repo).file_status[0].name.startswith(("latin1", "naïve"))


def test_async_sdk_git(daemon: RunningDaemon, space: Path, origin: Path) -> None:
    """The async SDK (aiohttp-based generated client) parses the same responses."""
    import asyncio

    from daytona._async.git import AsyncGit
    from daytona_toolbox_api_client_async import ApiClient, Configuration
    from daytona_toolbox_api_client_async import GitApi as AsyncGitApi

    async def scenario() -> None:
        async with ApiClient(Configuration(host=daemon.url)) as client:
            git = AsyncGit(AsyncGitApi(client))
            repo = f"{space.name}/async"
            await git.clone(url=f"file://{origin}", path=repo)
            await git.create_branch(repo, "topic")
            (space / "async" / "a.txt").write_text("a\n")
            await git.add(repo, ["a.txt"])
            sha = (await git.commit(repo, "async commit", **AUTHOR)).sha
            status = await git.status(repo)
            assert status.current_branch == "topic" and status.file_status == []
            assert (await git.branches(repo)).current == "topic"
            await git.push(repo, set_upstream=True)
            assert (await git.remotes(repo)).remotes[0].name == "origin"
            assert await git.get_config("toolbox.async-unset") is None
            assert run_git(origin, "rev-parse", "topic").strip() == sha

    asyncio.run(scenario())


@requires("ssh")
def test_ssh_remote_fails_fast_without_prompting(git: Git, space: Path) -> None:
    import time

    started = time.monotonic()
    with pytest.raises(DaytonaError) as caught:
        git.clone(url="ssh://git@127.0.0.1:9/nothing.git", path=f"{space.name}/ssh", request_timeout=30)
    assert time.monotonic() - started < 10
    assert error_of(caught) == (502, "GIT_TRANSPORT_FAILED")
