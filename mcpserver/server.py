"""The MCP server: one tool per sandbox operation, registered on the official SDK's
`MCPServer`, each a thin call of `SandboxTools` (mcpserver/sandboxes.py).

The same server object answers over stdio (`python -m mcpserver start`, key from the
environment) and over streamable HTTP in the main job (key from the caller's Bearer
header): `resolve` gives the `Connection` of one tool call from its MCP context.
A `ToolFailure`, or anything unexpected, becomes an MCP tool error (`isError: true`) with
a message the model can act on; the protocol session always survives it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Literal

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from client import ApiError, Client
from mcpserver.sandboxes import SandboxTools, ToolFailure
from mcpserver.started import StartedCommands
from proxy import __version__

log = logging.getLogger("mcpserver")

Resolve = Callable[[Context], Client]

INSTRUCTIONS = """Sandboxes are isolated Linux machines for running code. Create one with
create_sandbox (keep its id), work in it with the other tools, destroy_sandbox when done.
execute_command runs a short command and returns its output; start_command runs a server or
a long job in the background (read_command_logs pages through its output by offset,
stop_command stops it). run_code keeps Python state between calls. preview_link gives the
URL of a port a server listens on inside the sandbox. Long results are cut with a note
saying how to read the rest; binary files are refused."""

SandboxId = Annotated[str, Field(description="the sandbox's id, from create_sandbox or list_sandboxes")]
SandboxPath = Annotated[str, Field(description="a path in the sandbox; relative paths start at its work directory")]
Command = Annotated[str, Field(description="a bash command line")]
WorkDir = Annotated[str | None, Field(description="working directory")]
Timeout = Annotated[int, Field(ge=1, le=3600, description="seconds before it is stopped")]
SessionId = Annotated[str, Field(description="from start_command")]
CommandId = Annotated[str, Field(description="from start_command")]
READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)
CHANGES = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
DESTROYS = ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False)


# Tool calls run in worker threads (the shared client is sync), under a limiter of their own
# so a burst of long calls (a 10-minute clone) never takes the threads the control plane's
# database calls run in when this server lives in the main job.
CALLS = anyio.CapacityLimiter(32)


async def _call(tools: Callable[[Context], SandboxTools], ctx: Context, run: Callable[[SandboxTools], str],
                name: str) -> str:
    try:
        toolset = tools(ctx)
        return await anyio.to_thread.run_sync(lambda: run(toolset), limiter=CALLS)
    except ToolFailure as failure:
        raise ToolError(failure.message) from None
    except ApiError as exc:  # one the tool did not expect: still a reason the model can read
        raise ToolError(f"{name} failed ({exc.status}): {exc.message}") from None
    except Exception as exc:  # a bug or a surprise: the model gets a reason, the log the trace
        log.exception("tool %s failed", name)
        raise ToolError(f"{name} failed unexpectedly ({type(exc).__name__}: {exc}); "
                        "try again, and report it if it persists") from None


def build_server(resolve: Resolve, started: StartedCommands | None = None) -> MCPServer:
    """`started` records the sessions start_command makes (stdio: deleted at the end)."""
    server: MCPServer = MCPServer("sandbox-toolbox", instructions=INSTRUCTIONS, version=__version__,
                                  log_level="WARNING")

    def tools(ctx: Context) -> SandboxTools:
        return SandboxTools(resolve(ctx), started)

    def tool(annotations: ToolAnnotations, description: str) -> Callable[[Callable[..., Awaitable[str]]], object]:
        return server.tool(annotations=annotations, description=description, structured_output=False)

    # ---- sandboxes ---------------------------------------------------------------------

    @tool(CHANGES, "Create a sandbox and start it; returns its id. The language picks run_code's "
                   "interpreter and the default toolchain.")
    async def create_sandbox(
        ctx: Context,
        name: Annotated[str | None, Field(description="unique name (default: the id)")] = None,
        language: Literal["python", "typescript", "javascript"] = "python",
        env: Annotated[dict[str, str] | None, Field(description="environment variables")] = None,
        labels: Annotated[dict[str, str] | None, Field(description="labels to find it by")] = None,
        cpu: Annotated[int | None, Field(ge=1, le=256, description="CPUs")] = None,
        memory: Annotated[int | None, Field(ge=1, le=1024, description="memory in GiB")] = None,
        auto_stop_minutes: Annotated[int | None, Field(ge=0, description="stop after this many idle minutes; "
                                                                       "0 = never")] = None,
        public: Annotated[bool, Field(description="previews open without a token")] = False,
    ) -> str:
        return await _call(tools, ctx, lambda t: t.create_sandbox(
            name, language, env, labels, cpu, memory, auto_stop_minutes, public), "create_sandbox")

    @tool(READ_ONLY, "List your sandboxes (newest first) with their state.")
    async def list_sandboxes(ctx: Context) -> str:
        return await _call(tools, ctx, lambda t: t.list_sandboxes(), "list_sandboxes")

    @tool(CHANGES, "Start a stopped sandbox again (its files are kept; running programs are not).")
    async def start_sandbox(ctx: Context, sandbox_id: SandboxId) -> str:
        return await _call(tools, ctx, lambda t: t.start_sandbox(sandbox_id), "start_sandbox")

    @tool(DESTROYS, "Destroy a sandbox and everything in it.")
    async def destroy_sandbox(ctx: Context, sandbox_id: SandboxId) -> str:
        return await _call(tools, ctx, lambda t: t.destroy_sandbox(sandbox_id),
                           "destroy_sandbox")

    @tool(READ_ONLY, "A URL that reaches a port a server listens on inside the sandbox (a web app, an API).")
    async def preview_link(
        ctx: Context, sandbox_id: SandboxId,
        port: Annotated[int, Field(ge=1, le=65535, description="the port inside the sandbox")],
        expires_in_seconds: Annotated[int, Field(ge=1, le=86400, description="how long the URL works")] = 3600,
    ) -> str:
        return await _call(tools, ctx,
                           lambda t: t.preview_link(sandbox_id, port, expires_in_seconds), "preview_link")

    # ---- commands and code -------------------------------------------------------------

    @tool(CHANGES, "Run a shell command and wait for it; returns its exit code and output (stdout and stderr "
                   "together). For servers or jobs longer than the timeout use start_command.")
    async def execute_command(
        ctx: Context, sandbox_id: SandboxId,
        command: Command, cwd: WorkDir = None, timeout: Timeout = 120,
    ) -> str:
        return await _call(tools, ctx,
                           lambda t: t.execute_command(sandbox_id, command, cwd, timeout), "execute_command")

    @tool(CHANGES, "Run Python code in a stateful interpreter: variables, imports and functions persist between "
                   "calls (per context). Returns what it printed and any exception.")
    async def run_code(
        ctx: Context, sandbox_id: SandboxId,
        code: Annotated[str, Field(description="Python source")],
        context_id: Annotated[str | None, Field(description="from create_code_context; default: the "
                                                            "sandbox's default context")] = None,
        timeout: Timeout = 120,
    ) -> str:
        return await _call(tools, ctx,
                           lambda t: t.run_code(sandbox_id, code, context_id, timeout), "run_code")

    @tool(CHANGES, "Create a separate interpreter context for run_code (its own variables and working directory).")
    async def create_code_context(
        ctx: Context, sandbox_id: SandboxId,
        cwd: Annotated[str | None, Field(description="its working directory")] = None,
    ) -> str:
        return await _call(tools, ctx,
                           lambda t: t.create_code_context(sandbox_id, cwd), "create_code_context")

    @tool(CHANGES, "Start a long-running command (a server, a build, tests) in the background; returns the "
                   "sessionId and commandId for read_command_logs and stop_command.")
    async def start_command(
        ctx: Context, sandbox_id: SandboxId, command: Command, cwd: WorkDir = None,
    ) -> str:
        return await _call(tools, ctx,
                           lambda t: t.start_command(sandbox_id, command, cwd), "start_command")

    @tool(READ_ONLY, "Read a started command's output from a byte offset; returns stdout, stderr, whether it "
                     "still runs, its exit code and the nextOffset to read from next time.")
    async def read_command_logs(
        ctx: Context, sandbox_id: SandboxId,
        session_id: SessionId, command_id: CommandId,
        offset: Annotated[int, Field(ge=0, description="0 first, then the nextOffset of the last read")] = 0,
        wait_seconds: Annotated[float, Field(ge=0, le=60, description="wait up to this long for new output "
                                                                      "while it runs")] = 0,
        max_bytes: Annotated[int, Field(ge=1000, le=100_000, description="page size")] = 16_000,
    ) -> str:
        return await _call(tools, ctx, lambda t: t.read_command_logs(
            sandbox_id, session_id, command_id, offset, wait_seconds, max_bytes), "read_command_logs")

    @tool(READ_ONLY, "The commands start_command started in a sandbox, with their ids and whether they still run.")
    async def list_commands(ctx: Context, sandbox_id: SandboxId) -> str:
        return await _call(tools, ctx, lambda t: t.list_commands(sandbox_id), "list_commands")

    @tool(DESTROYS, "Stop a started command: signal every process it started (TERM first; KILL if it stays).")
    async def stop_command(
        ctx: Context, sandbox_id: SandboxId,
        session_id: SessionId, command_id: CommandId,
        signal: Literal["TERM", "INT", "KILL", "HUP"] = "TERM",
    ) -> str:
        return await _call(tools, ctx,
                           lambda t: t.stop_command(sandbox_id, session_id, command_id, signal), "stop_command")

    # ---- files -------------------------------------------------------------------------

    @tool(READ_ONLY, "List a directory: type, permissions, size, modification time and path of each entry.")
    async def list_files(
        ctx: Context, sandbox_id: SandboxId, path: SandboxPath = ".",
        depth: Annotated[int, Field(ge=1, le=10, description="levels to descend")] = 1,
    ) -> str:
        return await _call(tools, ctx, lambda t: t.list_files(sandbox_id, path, depth),
                           "list_files")

    @tool(READ_ONLY, "Size, mode, owner and modification time of a file or directory.")
    async def get_file_info(ctx: Context, sandbox_id: SandboxId, path: SandboxPath) -> str:
        return await _call(tools, ctx, lambda t: t.get_file_info(sandbox_id, path),
                           "get_file_info")

    @tool(READ_ONLY, "Read lines of a text file with line numbers, from line `offset`, at most `limit` lines; "
                     "the footer says where to continue.")
    async def read_file(
        ctx: Context, sandbox_id: SandboxId, path: SandboxPath,
        offset: Annotated[int, Field(ge=1, description="first line (1-based)")] = 1,
        limit: Annotated[int, Field(ge=1, le=2000, description="how many lines")] = 200,
    ) -> str:
        return await _call(tools, ctx,
                           lambda t: t.read_file(sandbox_id, path, offset, limit), "read_file")

    @tool(READ_ONLY, "Download a whole text file (up to 100 kB; longer files are cut with a note, binary files "
                     "are refused).")
    async def download_file(ctx: Context, sandbox_id: SandboxId, path: SandboxPath) -> str:
        return await _call(tools, ctx, lambda t: t.download_file(sandbox_id, path),
                           "download_file")

    @tool(CHANGES, "Write a file (created with its parent directories, or overwritten).")
    async def upload_file(
        ctx: Context, sandbox_id: SandboxId, path: SandboxPath,
        content: Annotated[str, Field(description="the file's content")],
        encoding: Literal["text", "base64"] = "text",
    ) -> str:
        return await _call(tools, ctx,
                           lambda t: t.upload_file(sandbox_id, path, content, encoding), "upload_file")

    @tool(CHANGES, "Create a directory and its parents.")
    async def create_folder(
        ctx: Context, sandbox_id: SandboxId, path: SandboxPath,
        mode: Annotated[str, Field(pattern="^[0-7]{3,4}$", description="octal permissions")] = "755",
    ) -> str:
        return await _call(tools, ctx,
                           lambda t: t.create_folder(sandbox_id, path, mode), "create_folder")

    @tool(CHANGES, "Move or rename a file or directory (the destination must not exist).")
    async def move_file(ctx: Context, sandbox_id: SandboxId, source: SandboxPath, destination: SandboxPath) -> str:
        return await _call(tools, ctx,
                           lambda t: t.move_file(sandbox_id, source, destination), "move_file")

    @tool(DESTROYS, "Delete a file, or a directory with recursive=true.")
    async def delete_file(ctx: Context, sandbox_id: SandboxId, path: SandboxPath, recursive: bool = False) -> str:
        return await _call(tools, ctx,
                           lambda t: t.delete_file(sandbox_id, path, recursive), "delete_file")

    @tool(READ_ONLY, "Search file contents under a directory for literal text (not a regex); returns "
                     "file:line: text for each matching line.")
    async def search_files(
        ctx: Context, sandbox_id: SandboxId,
        pattern: Annotated[str, Field(min_length=1, description="literal text to find")],
        path: SandboxPath = ".",
    ) -> str:
        return await _call(tools, ctx,
                           lambda t: t.search_files(sandbox_id, pattern, path), "search_files")

    @tool(CHANGES, "Clone a git repository into the sandbox.")
    async def git_clone(
        ctx: Context, sandbox_id: SandboxId,
        url: Annotated[str, Field(description="repository URL")],
        path: SandboxPath,
        branch: Annotated[str | None, Field(description="branch to check out")] = None,
        commit_id: Annotated[str | None, Field(description="commit to check out (detached)")] = None,
        username: Annotated[str | None, Field(description="for private repositories")] = None,
        password: Annotated[str | None, Field(description="password or token, for private repositories")] = None,
    ) -> str:
        return await _call(tools, ctx, lambda t: t.git_clone(
            sandbox_id, url, path, branch, commit_id, username, password), "git_clone")

    return server
