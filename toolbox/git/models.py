"""Request bodies of the `/git` endpoints, field names exactly as the SDK sends them.

Types are strict (a number where a string belongs is a 400, not a coercion) and required
fields are required, as with Daytona's `validate:"required"` binding.
"""

from __future__ import annotations

from pydantic import StrictBool, StrictInt, StrictStr

from toolbox.http import WireModel


class CloneRequest(WireModel):
    url: StrictStr
    path: StrictStr
    username: StrictStr | None = None
    password: StrictStr | None = None
    branch: StrictStr | None = None
    commit_id: StrictStr | None = None
    insecure_skip_tls: StrictBool | None = None
    depth: StrictInt | None = None


class AddRequest(WireModel):
    path: StrictStr
    files: list[StrictStr]


class CommitRequest(WireModel):
    path: StrictStr
    message: StrictStr
    author: StrictStr
    email: StrictStr
    allow_empty: StrictBool | None = None


class BranchRequest(WireModel):
    path: StrictStr
    name: StrictStr


class CheckoutRequest(WireModel):
    path: StrictStr
    branch: StrictStr


class PullRequest(WireModel):
    path: StrictStr
    username: StrictStr | None = None
    password: StrictStr | None = None
    branch: StrictStr | None = None
    remote: StrictStr | None = None


class PushRequest(PullRequest):
    set_upstream: StrictBool | None = None


class InitRequest(WireModel):
    path: StrictStr
    bare: StrictBool | None = None
    initial_branch: StrictStr | None = None


class ResetRequest(WireModel):
    path: StrictStr
    mode: StrictStr | None = None
    target: StrictStr | None = None
    files: list[StrictStr] | None = None


class RestoreRequest(WireModel):
    path: StrictStr
    files: list[StrictStr]
    staged: StrictBool | None = None
    worktree: StrictBool | None = None
    source: StrictStr | None = None


class AddRemoteRequest(WireModel):
    path: StrictStr
    name: StrictStr
    url: StrictStr
    fetch: StrictBool | None = None
    overwrite: StrictBool | None = None


class SetConfigRequest(WireModel):
    key: StrictStr
    value: StrictStr
    scope: StrictStr | None = None
    path: StrictStr | None = None


class ConfigureUserRequest(WireModel):
    name: StrictStr
    email: StrictStr
    scope: StrictStr | None = None
    path: StrictStr | None = None


class AuthenticateRequest(WireModel):
    username: StrictStr
    password: StrictStr
    host: StrictStr | None = None
    protocol: StrictStr | None = None
