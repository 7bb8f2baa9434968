"""HTTP layer of the git endpoints (toolbox-api.md §11): parse, call GitService, reply."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from toolbox.context import Daemon
from toolbox.git import models
from toolbox.git.service import GitService
from toolbox.http import json_response, parse_body, query_required, query_str
from toolbox.openapi.registry import operation

# What talking to a remote can answer, besides bad input (toolbox-api.md §3.2).
_REMOTE_ERRORS = {
    401: "GIT_AUTH_FAILED: the remote refused the credentials",
    404: "GIT_REPO_NOT_FOUND / GIT_BRANCH_NOT_FOUND",
    409: "GIT_PUSH_REJECTED, GIT_MERGE_CONFLICT or GIT_DIRTY_WORKTREE",
    422: "GIT_REMOTE_REJECTED: a hook or branch protection refused the update",
    502: "GIT_TRANSPORT_FAILED: the remote could not be reached (DNS, TLS, connection)",
}


def build(daemon: Daemon) -> list[BaseRoute]:
    git = GitService(daemon.settings)

    @operation(summary="Clone a repository", request=models.CloneRequest, errors=_REMOTE_ERRORS)
    async def clone(request: Request) -> Response:
        await git.clone(await parse_body(request, models.CloneRequest))
        return Response(status_code=200)

    async def status(request: Request) -> JSONResponse:
        return json_response(await git.status(query_required(request, "path")))

    async def add(request: Request) -> Response:
        await git.add(await parse_body(request, models.AddRequest))
        return Response(status_code=200)

    async def commit(request: Request) -> JSONResponse:
        sha = await git.commit(await parse_body(request, models.CommitRequest))
        return json_response({"hash": sha})

    async def list_branches(request: Request) -> JSONResponse:
        return json_response(await git.branches(query_required(request, "path")))

    async def create_branch(request: Request) -> Response:
        await git.create_branch(await parse_body(request, models.BranchRequest))
        return Response(status_code=201)

    async def delete_branch(request: Request) -> Response:
        await git.delete_branch(await parse_body(request, models.BranchRequest))
        return Response(status_code=204)

    async def checkout(request: Request) -> Response:
        await git.checkout(await parse_body(request, models.CheckoutRequest))
        return Response(status_code=200)

    async def history(request: Request) -> JSONResponse:
        return json_response(await git.history(query_required(request, "path")))

    @operation(summary="Pull the current branch", request=models.PullRequest, errors=_REMOTE_ERRORS)
    async def pull(request: Request) -> Response:
        await git.pull(await parse_body(request, models.PullRequest))
        return Response(status_code=200)

    @operation(summary="Push the current branch", request=models.PushRequest, errors=_REMOTE_ERRORS)
    async def push(request: Request) -> Response:
        await git.push(await parse_body(request, models.PushRequest))
        return Response(status_code=200)

    async def init(request: Request) -> Response:
        await git.init(await parse_body(request, models.InitRequest))
        return Response(status_code=201)

    async def reset(request: Request) -> Response:
        await git.reset(await parse_body(request, models.ResetRequest))
        return Response(status_code=200)

    async def restore(request: Request) -> Response:
        await git.restore(await parse_body(request, models.RestoreRequest))
        return Response(status_code=200)

    async def list_remotes(request: Request) -> JSONResponse:
        return json_response(await git.remotes(query_required(request, "path")))

    async def add_remote(request: Request) -> Response:
        await git.add_remote(await parse_body(request, models.AddRemoteRequest))
        return Response(status_code=201)

    async def get_config(request: Request) -> JSONResponse:
        value = await git.get_config(
            query_required(request, "key"), query_str(request, "scope"), query_str(request, "path")
        )
        # Unset keys answer `{}` (Daytona omits `value`; the SDK reads it as None).
        return json_response({} if value is None else {"value": value})

    async def set_config(request: Request) -> Response:
        body = await parse_body(request, models.SetConfigRequest)
        await git.set_config(body.key, body.value, body.scope, body.path)
        return Response(status_code=200)

    async def configure_user(request: Request) -> Response:
        await git.configure_user(await parse_body(request, models.ConfigureUserRequest))
        return Response(status_code=200)

    async def credentials(request: Request) -> Response:
        await git.store_credentials(await parse_body(request, models.AuthenticateRequest))
        return Response(status_code=200)

    return [
        Route("/git/clone", clone, methods=["POST"]),
        Route("/git/status", status, methods=["GET"]),
        Route("/git/add", add, methods=["POST"]),
        Route("/git/commit", commit, methods=["POST"]),
        Route("/git/branches", list_branches, methods=["GET"]),
        Route("/git/branches", create_branch, methods=["POST"]),
        Route("/git/branches", delete_branch, methods=["DELETE"]),
        Route("/git/checkout", checkout, methods=["POST"]),
        Route("/git/history", history, methods=["GET"]),
        Route("/git/pull", pull, methods=["POST"]),
        Route("/git/push", push, methods=["POST"]),
        Route("/git/init", init, methods=["POST"]),
        Route("/git/reset", reset, methods=["POST"]),
        Route("/git/restore", restore, methods=["POST"]),
        Route("/git/remotes", list_remotes, methods=["GET"]),
        Route("/git/remotes", add_remote, methods=["POST"]),
        Route("/git/config", get_config, methods=["GET"]),
        Route("/git/config", set_config, methods=["POST"]),
        Route("/git/config/user", configure_user, methods=["POST"]),
        Route("/git/credentials", credentials, methods=["POST"]),
    ]
