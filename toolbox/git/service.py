"""Git operations of the toolbox API, on the real `git` CLI; knows nothing about HTTP.

Each method validates its input, runs git (never blocking the event loop, never waiting
for input) and either returns plain data or raises `DaemonError` with git's own message.
Repository paths are the repository root: git is told not to look above it, so a
subdirectory of some enclosing repository is "not a repository" (as with go-git).
"""

from __future__ import annotations

import os
import shutil
import weakref
from dataclasses import dataclass
from pathlib import Path

import anyio

from toolbox.config import Settings
from toolbox.errors import Code, DaemonError, bad_request
from toolbox.git import models
from toolbox.git.errors import git_error, redact_urls
from toolbox.git.runner import Credentials, GitResult, GitRunner
from toolbox.git.status import parse_porcelain_v2

RESET_MODES = ("soft", "mixed", "hard", "merge", "keep")
CONFIG_SCOPES = ("global", "local", "system")
_FIELD_SEPARATOR = "\x1f"


@dataclass(frozen=True)
class Repo:
    """An existing directory the client named as a repository root."""

    path: str
    ceiling: str

    @property
    def env(self) -> dict[str, str]:
        return {"GIT_CEILING_DIRECTORIES": self.ceiling}


def _require(value: str | None, name: str) -> str:
    if value is None or value.strip() == "":
        raise DaemonError(Code.INVALID_REQUEST_BODY, f"invalid body request: {name} is required")
    if "\x00" in value:
        raise bad_request(f"{name} contains a NUL byte")
    return value


def _no_option(value: str, name: str) -> str:
    """Values that git would read as an option are refused (argument injection)."""
    if value.startswith("-"):
        raise bad_request(f"{name} must not start with '-': {value!r}")
    if "\x00" in value or "\n" in value:
        raise bad_request(f"{name} must not contain NUL or newline characters")
    return value


def _credentials(username: str | None, password: str | None) -> Credentials | None:
    # As in Daytona, credentials are used only when both halves are given.
    if username and password:
        return Credentials(username, password)
    return None


def normalize_clone_url(url: str) -> str:
    """`github.com/user/repo` → `https://github.com/user/repo` (Daytona's CLI rule); local
    paths, scp-like `user@host:path` and URLs with a scheme are left as they are."""
    if "://" in url or url.startswith(("/", ".", "~")):
        return url
    host, _, _ = url.partition("/")
    if ":" in host or "." not in host:
        return url
    return f"https://{url}"


def _discard(dest: Path, keep_directory: bool) -> None:
    """Removes a clone; a directory that existed (empty) before the clone is kept, emptied."""
    if not keep_directory:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for child in dest.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


class GitService:
    def __init__(self, settings: Settings, runner: GitRunner | None = None) -> None:
        self.settings = settings
        self.runner = runner or GitRunner()
        # One writer per repository at a time: concurrent git writers would otherwise
        # fail on index.lock instead of waiting their turn.
        self._locks: weakref.WeakValueDictionary[str, anyio.Lock] = weakref.WeakValueDictionary()

    # -- helpers -------------------------------------------------------------------------

    def _lock(self, path: str) -> anyio.Lock:
        key = os.path.realpath(path)
        lock = self._locks.get(key)
        if lock is None:
            lock = anyio.Lock()
            self._locks[key] = lock
        return lock

    def _resolve(self, raw: str | None, name: str = "path") -> Path:
        return self.settings.resolve(_require(raw, name))

    def _repo(self, raw: str | None) -> Repo:
        path = self._resolve(raw)
        if not path.exists():
            raise DaemonError(Code.GIT_REPO_NOT_FOUND, f"repository not found: {path} does not exist")
        if not path.is_dir():
            raise DaemonError(Code.GIT_REPO_NOT_FOUND, f"repository not found: {path} is not a directory")
        real = os.path.realpath(path)
        return Repo(str(path), os.path.dirname(real) or "/")

    def _neutral_cwd(self) -> str:
        workdir = self.settings.workdir
        return str(workdir) if workdir.is_dir() else "/"

    async def _git(
        self,
        repo: Repo,
        args: list[str],
        *,
        credentials: Credentials | None = None,
        config: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> GitResult:
        return await self.runner.run(
            args, cwd=repo.path, credentials=credentials, config=config, env={**repo.env, **(env or {})}
        )

    async def _checked(self, operation: str, repo: Repo, args: list[str], **kwargs: object) -> GitResult:
        result = await self._git(repo, args, **kwargs)  # type: ignore[arg-type]
        if not result.ok:
            raise git_error(operation, result)
        return result

    async def _current_branch(self, repo: Repo) -> str | None:
        result = await self._git(repo, ["symbolic-ref", "-q", "--short", "HEAD"])
        if result.ok:
            return result.stdout.strip()
        if result.status == 1:
            return None  # detached HEAD
        raise git_error("git symbolic-ref", result)

    # -- repository lifecycle ------------------------------------------------------------

    async def clone(self, request: models.CloneRequest) -> None:
        url = _no_option(_require(request.url, "url"), "url")
        if not self.settings.resolve(url).exists():  # a relative local path stays one
            url = normalize_clone_url(url)
        dest = self._resolve(request.path)
        # All branches, unlike go-git's single-branch clone: later checkouts of remote
        # branches and `push(set_upstream=True)` of new branches then track as expected.
        args = ["clone"]
        if request.branch:
            args += ["--branch", _no_option(request.branch, "branch")]
        if request.depth is not None:
            if request.depth < 0:
                raise bad_request(f"depth must be a positive number of commits, got {request.depth}")
            if request.depth > 0:
                args += ["--depth", str(request.depth)]
        commit = _no_option(request.commit_id, "commit_id") if request.commit_id else None
        args += ["--", url, str(dest)]
        config = ("http.sslVerify=false",) if request.insecure_skip_tls else ()
        async with self._lock(str(dest)):
            # Checked under the lock: a failed clone is cleaned up below, which must never
            # touch a concurrent clone's finished work.
            existed = dest.exists()
            if existed and (not dest.is_dir() or any(dest.iterdir())):
                raise DaemonError(
                    Code.CONFLICT, f"clone failed: destination {dest} already exists and is not an empty directory"
                )
            result = await self.runner.run(
                args,
                cwd=self._neutral_cwd(),
                credentials=_credentials(request.username, request.password),
                config=config,
            )
            if not result.ok:
                # git removes what it made when it fails cleanly; this also covers a git
                # that died half-way (killed, crashed) so no partial clone stays behind.
                if dest.exists():
                    await anyio.to_thread.run_sync(_discard, dest, existed)
                raise git_error("git clone", result)
            if commit is None:
                return
            repo = self._repo(str(dest))
            checkout = await self._git(repo, ["checkout", "--detach", commit, "--"])
            if checkout.ok:
                return
            # No half-made clone left behind when the requested commit is not there.
            await anyio.to_thread.run_sync(_discard, dest, existed)
            raise git_error(f"git checkout of commit {commit}", checkout, Code.NOT_FOUND)

    async def init(self, request: models.InitRequest) -> None:
        dest = self._resolve(request.path)
        if (dest / ".git").exists() or all((dest / part).exists() for part in ("HEAD", "objects", "refs")):
            raise DaemonError(Code.CONFLICT, f"repository already exists at {dest}")
        args = ["init", "-q"]
        if request.bare:
            args.append("--bare")
        if request.initial_branch:
            args.append(f"--initial-branch={_no_option(request.initial_branch, 'initial_branch')}")
        args.append(str(dest))
        result = await self.runner.run(args, cwd=self._neutral_cwd())
        if not result.ok:
            raise git_error("git init", result)

    # -- working tree --------------------------------------------------------------------

    async def status(self, path: str | None) -> dict[str, object]:
        repo = self._repo(path)
        result = await self._checked(
            "git status", repo, ["status", "--porcelain=v2", "--branch", "-z", "--untracked-files=all"]
        )
        return parse_porcelain_v2(result.stdout).wire()

    async def add(self, request: models.AddRequest) -> None:
        repo = self._repo(request.path)
        if not request.files:
            return  # as in Daytona: nothing to stage
        async with self._lock(repo.path):
            await self._checked("git add", repo, ["add", "--all", "--", *request.files])

    async def commit(self, request: models.CommitRequest) -> str:
        repo = self._repo(request.path)
        message = _require(request.message, "message")
        author = _require(request.author, "author")
        email = _require(request.email, "email")
        identity = {
            "GIT_AUTHOR_NAME": author,
            "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": author,
            "GIT_COMMITTER_EMAIL": email,
        }
        # Hooks and signing are skipped as in Daytona's go-git commit: they could prompt.
        args = ["commit", "--no-verify", "--quiet", "--cleanup=verbatim", "-m", message]
        if request.allow_empty:
            args.append("--allow-empty")
        async with self._lock(repo.path):
            result = await self._git(repo, args, env=identity, config=("commit.gpgSign=false",))
            if not result.ok:
                if "nothing to commit" in result.stdout or "no changes added to commit" in result.stdout:
                    raise bad_request(
                        "nothing to commit: stage changes with add() first, or pass allow_empty=True"
                    )
                raise git_error("git commit", result)
            head = await self._checked("git rev-parse", repo, ["rev-parse", "HEAD"])
        return head.stdout.strip()

    async def reset(self, request: models.ResetRequest) -> None:
        repo = self._repo(request.path)
        mode = request.mode or "mixed"
        if mode not in RESET_MODES:
            raise bad_request(f"unsupported reset mode {mode!r}: use one of {', '.join(RESET_MODES)}")
        args = ["reset", "-q"]
        files = request.files or []
        if files and mode != "mixed":
            raise bad_request(f"files can only be reset in mixed mode (git cannot do a {mode} reset with paths)")
        if not files:
            args.append(f"--{mode}")
        if request.target:
            args.append(_no_option(request.target, "target"))
        if files:
            args += ["--", *files]
        async with self._lock(repo.path):
            await self._checked("git reset", repo, args, config=("core.hooksPath=/dev/null",))

    async def restore(self, request: models.RestoreRequest) -> None:
        repo = self._repo(request.path)
        if not request.files:
            raise DaemonError(Code.INVALID_REQUEST_BODY, "invalid body request: files must list at least one path")
        args = ["restore"]
        staged = bool(request.staged)
        worktree = bool(request.worktree) or not staged  # git restore's own default
        if staged:
            args.append("--staged")
        if worktree:
            args.append("--worktree")
        if request.source:
            args.append(f"--source={_no_option(request.source, 'source')}")
        args += ["--", *request.files]
        async with self._lock(repo.path):
            await self._checked("git restore", repo, args)

    # -- branches ------------------------------------------------------------------------

    async def branches(self, path: str | None) -> dict[str, object]:
        repo = self._repo(path)
        result = await self._checked(
            "git for-each-ref", repo, ["for-each-ref", "--format=%(HEAD)%(refname)", "refs/heads/"]
        )
        names: list[str] = []
        current = ""
        for line in result.stdout.splitlines():
            marker, name = line[:1], line[1:].removeprefix("refs/heads/")
            names.append(name)
            if marker == "*":
                current = name
        if not current:
            current = await self._current_branch(repo) or ""  # unborn branch, or detached
        return {"branches": names, "current": current}

    async def create_branch(self, request: models.BranchRequest) -> None:
        repo = self._repo(request.path)
        name = _no_option(_require(request.name, "name"), "name")
        async with self._lock(repo.path):
            # Daytona creates the branch at HEAD and checks it out; local changes carry over.
            await self._checked("git checkout -b", repo, ["checkout", "-q", "-b", name])

    async def delete_branch(self, request: models.BranchRequest) -> None:
        repo = self._repo(request.path)
        name = _no_option(_require(request.name, "name"), "name")
        async with self._lock(repo.path):
            # -D: Daytona removes the ref without a merge check.
            result = await self._git(repo, ["branch", "-D", name])
            if result.ok:
                return
            if "not found" in result.stderr:
                raise git_error("git branch -D", result, Code.GIT_BRANCH_NOT_FOUND)
            if "checked out at" in result.stderr:
                raise git_error("git branch -D", result, Code.CONFLICT)
            raise git_error("git branch -D", result)

    async def checkout(self, request: models.CheckoutRequest) -> None:
        repo = self._repo(request.path)
        target = _no_option(_require(request.branch, "branch"), "branch")
        async with self._lock(repo.path):
            # A branch, a remote branch (creates the tracking branch) or a commit (detached).
            result = await self._git(repo, ["checkout", "-q", target, "--"])
            if result.ok:
                return
            if "invalid reference" in result.stderr or "did not match any" in result.stderr:
                raise git_error("git checkout", result, Code.GIT_BRANCH_NOT_FOUND)
            raise git_error("git checkout", result)

    async def history(self, path: str | None) -> list[dict[str, str]]:
        repo = self._repo(path)
        fmt = _FIELD_SEPARATOR.join(("%H", "%an", "%ae", "%aI", "%B"))
        result = await self._git(repo, ["log", "-z", f"--format={fmt}", "HEAD", "--"])
        if not result.ok:
            if "does not have any commits yet" in result.stderr or "bad revision 'HEAD'" in result.stderr:
                return []
            raise git_error("git log", result)
        commits = []
        for record in result.stdout.split("\0"):
            if not record.strip():
                continue
            sha, author, email, when, message = record.lstrip("\n").split(_FIELD_SEPARATOR, 4)
            # Go's RFC 3339 writes a zero offset as "Z".
            when = when[:-6] + "Z" if when.endswith("+00:00") else when
            commits.append({"hash": sha, "author": author, "email": email, "message": message, "timestamp": when})
        return commits

    # -- remotes -------------------------------------------------------------------------

    async def pull(self, request: models.PullRequest) -> None:
        repo = self._repo(request.path)
        args = ["pull", "--ff-only", "--no-rebase", "--no-edit"]
        remote = _no_option(request.remote, "remote") if request.remote else None
        if request.branch:
            args += [remote or "origin", _no_option(request.branch, "branch")]
        else:
            current = await self._current_branch(repo)
            if current is None:
                raise DaemonError(
                    Code.GIT_BRANCH_NOT_FOUND, "git pull failed: HEAD is detached; pass the branch to pull"
                )
            tracked = await self._git(repo, ["config", "--get", f"branch.{current}.remote"])
            tracked_remote = tracked.stdout.strip() if tracked.ok else ""
            if not tracked_remote or (remote and remote != tracked_remote):
                # No upstream: pull the branch of the same name (Daytona's default remote).
                args += [remote or "origin", current]
        credentials = _credentials(request.username, request.password)
        async with self._lock(repo.path):
            await self._checked("git pull", repo, args, credentials=credentials)

    async def push(self, request: models.PushRequest) -> None:
        repo = self._repo(request.path)
        branch = _no_option(request.branch, "branch") if request.branch else await self._current_branch(repo)
        if branch is None:
            raise DaemonError(Code.GIT_BRANCH_NOT_FOUND, "git push failed: HEAD is detached; pass the branch to push")
        remote = _no_option(request.remote, "remote") if request.remote else "origin"
        args = ["push"]
        if request.set_upstream:
            args.append("--set-upstream")
        args += [remote, f"refs/heads/{branch}:refs/heads/{branch}"]
        credentials = _credentials(request.username, request.password)
        async with self._lock(repo.path):
            await self._checked("git push", repo, args, credentials=credentials)

    async def remotes(self, path: str | None) -> dict[str, object]:
        repo = self._repo(path)
        result = await self._git(repo, ["config", "--local", "--get-regexp", r"^remote\..*\.url$"])
        if not result.ok and (result.status != 1 or result.stderr.strip()):
            raise git_error("git config", result)
        remotes: dict[str, str] = {}
        for line in result.stdout.splitlines():
            key, _, url = line.partition(" ")
            name = key[len("remote."):-len(".url")]
            remotes.setdefault(name, redact_urls(url))  # the first URL of each remote
        return {"remotes": [{"name": name, "url": url} for name, url in remotes.items()]}

    async def add_remote(self, request: models.AddRemoteRequest) -> None:
        repo = self._repo(request.path)
        name = _no_option(_require(request.name, "name"), "name")
        url = _no_option(_require(request.url, "url"), "url")
        async with self._lock(repo.path):
            added = await self._git(repo, ["remote", "add", name, url])
            if not added.ok:
                if not (request.overwrite and "already exists" in added.stderr):
                    raise git_error("git remote add", added)
                # Overwrite keeps the remote's tracking refs and branch upstreams.
                await self._checked("git remote set-url", repo, ["remote", "set-url", name, url])
            if request.fetch:
                await self._checked("git fetch", repo, ["fetch", "--quiet", name])

    # -- configuration -------------------------------------------------------------------

    def _config_target(self, scope: str | None, path: str | None) -> tuple[list[str], Repo | None]:
        scope = scope or "global"
        if scope not in CONFIG_SCOPES:
            raise bad_request(f"unsupported config scope {scope!r}: use one of {', '.join(CONFIG_SCOPES)}")
        if scope == "local":
            if not path:
                raise bad_request("path is required when scope is 'local'")
            return ["--local"], self._repo(path)
        return [f"--{scope}"], None

    async def _config(self, repo: Repo | None, args: list[str]) -> GitResult:
        if repo is not None:
            return await self._git(repo, ["config", *args])
        return await self.runner.run(["config", *args], cwd=self._neutral_cwd())

    async def get_config(self, key: str, scope: str | None, path: str | None) -> str | None:
        key = _no_option(_require(key, "key"), "key")
        scope_args, repo = self._config_target(scope, path)
        result = await self._config(repo, [*scope_args, "--get", key])
        if result.ok:
            return result.stdout.removesuffix("\n")
        if result.status == 1 and not result.stderr.strip():
            return None  # unset
        raise git_error("git config --get", result)

    async def set_config(self, key: str, value: str, scope: str | None, path: str | None) -> None:
        key = _no_option(_require(key, "key"), "key")
        if "\x00" in value:
            raise bad_request("value must not contain NUL bytes")
        scope_args, repo = self._config_target(scope, path)
        result = await self._config(repo, [*scope_args, "--replace-all", key, value])
        if not result.ok:
            raise git_error("git config", result)

    async def configure_user(self, request: models.ConfigureUserRequest) -> None:
        name = _require(request.name, "name")
        email = _require(request.email, "email")
        await self.set_config("user.name", name, request.scope, request.path)
        await self.set_config("user.email", email, request.scope, request.path)

    async def store_credentials(self, request: models.AuthenticateRequest) -> None:
        """Daytona's `/git/credentials`: the global `store` helper keeps them in plaintext."""
        fields = {
            "protocol": request.protocol or "https",
            "host": request.host or "github.com",
            "username": _require(request.username, "username"),
            "password": _require(request.password, "password"),
        }
        for name, value in fields.items():
            if any(char in value for char in "\n\r\x00"):
                raise bad_request(f"{name} must not contain newline, carriage return or NUL characters")
        cwd = self._neutral_cwd()
        helpers = await self.runner.run(["config", "--global", "--get-all", "credential.helper"], cwd=cwd)
        if "store" not in helpers.stdout.split("\n"):
            added = await self.runner.run(["config", "--global", "--add", "credential.helper", "store"], cwd=cwd)
            if not added.ok:
                raise git_error("git config credential.helper", added)
        record = "".join(f"{name}={value}\n" for name, value in fields.items()) + "\n"
        approved = await self.runner.run(["credential", "approve"], cwd=cwd, stdin=record.encode())
        if not approved.ok:
            raise git_error("git credential approve", approved)
