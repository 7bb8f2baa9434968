"""HTTP layer of one-shot execution: `POST /process/execute`, `POST /process/code-run`
(toolbox-api.md §6, §7)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from pydantic import Field
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from toolbox.context import Daemon
from toolbox.errors import Code, DaemonError
from toolbox.http import WireModel, parse_body
from toolbox.openapi.registry import operation
from toolbox.process import jsonstream
from toolbox.process.execute.artifacts import ArtifactFilter
from toolbox.process.execute.coderun import LANGUAGES, build_script, python_code
from toolbox.process.execute.runner import Finished, check_cwd, run_script, validate_env
from toolbox.process.execute.zygote import CodeRunZygote

MAX_TIMEOUT = 2**32 - 1  # Daytona's field is a uint32


class ExecuteRequest(WireModel):
    command: str
    cwd: str | None = None
    envs: dict[str, str] | None = None
    timeout: int | None = Field(default=None, ge=0, le=MAX_TIMEOUT)


class CodeRunRequest(WireModel):
    code: str
    language: str
    argv: list[str] | None = None
    envs: dict[str, str] | None = None
    timeout: int | None = Field(default=None, ge=0, le=MAX_TIMEOUT)


class ExecuteResponse(WireModel):
    exit_code: int = Field(alias="exitCode")
    result: str


class CodeRunArtifacts(WireModel):
    charts: list[dict[str, Any]]


class CodeRunResponse(WireModel):
    exit_code: int = Field(alias="exitCode")
    result: str = Field(description="output without artifact lines")
    artifacts: CodeRunArtifacts | None = Field(default=None, description="omitted when there are no charts")


def preload() -> None:
    """Build the request models now: wire models build on first use (defer_build), and the
    first build also scans for pydantic plugins, ~15 ms a pooled sandbox's first
    execute or code run would otherwise pay after `create()`."""
    ExecuteRequest.model_validate({"command": "true"})
    CodeRunRequest.model_validate({"code": "pass", "language": "python"})


async def _finish(finished: Finished, fields: list[tuple[str, object]], size: int) -> Response:
    """Render the response, then close the output file once the body has been sent."""
    try:
        response = await jsonstream.json_response(fields, size_hint=size)
    except BaseException:
        finished.output.close()
        raise
    if isinstance(response, StreamingResponse):
        response.background = BackgroundTask(finished.output.close)
    else:
        finished.output.close()
    return response


def build(daemon: Daemon) -> list[BaseRoute]:
    settings = daemon.settings
    zygote = CodeRunZygote(settings.workdir)
    daemon.on_startup(zygote.start)
    daemon.on_shutdown(zygote.stop)

    @operation(
        summary="Run a shell script to completion; stdout and stderr merged in `result`",
        request=ExecuteRequest,
        response=ExecuteResponse,
        errors={400: "empty command, bad env name, cwd not a directory", 404: "cwd does not exist",
                408: "timeout: the whole process group was killed"},
    )
    async def execute(request: Request) -> Response:
        body = await parse_body(request, ExecuteRequest)
        if not body.command.strip():
            raise DaemonError(Code.BAD_REQUEST, "command cannot be empty or whitespace-only")
        envs = validate_env(body.envs)
        cwd = check_cwd(settings.resolve(body.cwd), body.cwd) if body.cwd else settings.workdir
        finished = await run_script(body.command, cwd=cwd, envs=envs, timeout=body.timeout)
        size = finished.output.size
        return await _finish(
            finished,
            [("exitCode", finished.exit_code), ("result", finished.output.chunks(size))],
            size,
        )

    @operation(
        summary="Run python, javascript or typescript code in the work dir; charts in `artifacts`",
        request=CodeRunRequest,
        response=CodeRunResponse,
        errors={400: "unsupported language, empty code, bad env name", 408: "timeout"},
    )
    async def code_run(request: Request) -> Response:
        body = await parse_body(request, CodeRunRequest)
        if not body.code.strip():
            raise DaemonError(Code.INVALID_REQUEST_BODY, "invalid body request: code is required")
        if body.language not in LANGUAGES:
            raise DaemonError(
                Code.BAD_REQUEST,
                f"unsupported language: {body.language} (supported: {', '.join(LANGUAGES)})",
            )
        envs = validate_env(body.envs)
        finished: Finished | None = None
        if body.language == "python":  # a fork of the warm interpreter, when it behaves the same
            finished = await zygote.run(python_code(body.code), body.argv or [], envs, body.timeout)
        if finished is None:
            # The runner is looked up on the PATH the code will run with.
            path = envs.get("PATH")
            script = build_script(body.language, body.code, body.argv or [], settings.workdir, path)
            finished = await run_script(script, cwd=settings.workdir, envs=envs, timeout=body.timeout)
        size = finished.output.size
        artifacts = ArtifactFilter()
        result: AsyncIterator[bytes] = artifacts.filter(finished.output.chunks(size))

        def artifacts_field() -> object:
            return {"charts": artifacts.charts} if artifacts.charts else jsonstream.OMIT

        fields: list[tuple[str, object]] = [
            ("exitCode", finished.exit_code),
            ("result", result),
            ("artifacts", artifacts_field),
        ]
        return await _finish(finished, fields, size)

    return [
        Route("/process/execute", execute, methods=["POST"]),
        Route("/process/code-run", code_run, methods=["POST"]),
    ]
