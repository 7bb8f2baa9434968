"""`python -m runtime up|inspect|api-key create|revoke|image build|push`: what only the
runtime's host can do.

`up` runs everything (proxy, control plane, runtime) in the foreground until Ctrl-C;
`inspect` asks the control socket what the runtime knows of a sandbox; `api-key create`
and `revoke` make and revoke keys through the running main job, so the proxy follows at
once (runtime/apikeys.py); `image` builds the project's own sandbox and proxy images and
pushes them to a registry (runtime/imagecli.py). Managing sandboxes is the
`sandbox-toolbox` CLI's job (client/cli/), a client of `/api` like the SDKs: one API per
concern.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from runtime.limits import Limits
from runtime.rootmode import ROOTFS_MODES, default_rootfs_mode
from toolbox.options import env


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default once, and only when there is one (not `None`, not a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        # A help text that names its default itself, "(env X; default: ...)", keeps its own.
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in text.partition("(env")[2]:
            return text
        return super()._get_help_string(action) or text


def _limits_args(parser: argparse.ArgumentParser) -> None:
    d = Limits()
    parser.add_argument("--cpus", type=float, default=float(env("RUNTIME_CPUS", str(d.cpus)) or d.cpus),
                        help="default CPU cap per sandbox, in CPUs (env RUNTIME_CPUS)")
    parser.add_argument("--memory", type=int, default=int(env("RUNTIME_MEMORY_MIB", str(d.memory_mib)) or d.memory_mib),
                        help="default memory cap per sandbox, MiB (env RUNTIME_MEMORY_MIB)")
    parser.add_argument("--pids", type=int, default=int(env("RUNTIME_PIDS", str(d.pids)) or d.pids),
                        help="process/thread cap per sandbox (env RUNTIME_PIDS)")


def _state_arg(parser: argparse.ArgumentParser, top: bool) -> None:
    # Accepted before and after the command (`./scripts/start --state-dir X` is `up --state-dir X`).
    parser.add_argument("--state-dir", default=env("RUNTIME_STATE_DIR") if top else argparse.SUPPRESS,
                        help="where sandboxes, the database and the control socket live "
                             "(env RUNTIME_STATE_DIR; default $XDG_STATE_HOME/sandbox-toolbox)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m runtime",
                                     description="Local sandbox runtime: toolbox daemons in Linux namespaces behind "
                                                 "the preview proxy, managed through Daytona's REST API.")
    _state_arg(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start the proxy, the control plane, the runtime and a first sandbox; "
                                        "Ctrl-C stops all", formatter_class=_HelpFormatter)
    _state_arg(up, top=False)
    up.add_argument("--host", default=env("RUNTIME_PROXY_HOST", "127.0.0.1"), help="proxy listen address (env RUNTIME_PROXY_HOST)")
    up.add_argument("--port", type=int, default=int(env("RUNTIME_PROXY_PORT", "8080") or 8080), help="proxy port (env RUNTIME_PROXY_PORT)")
    up.add_argument("--domain", default=env("RUNTIME_DOMAIN", "localhost"), help="preview domain (env RUNTIME_DOMAIN)")
    up.add_argument("--pool-size", type=int, default=int(env("RUNTIME_POOL_SIZE", "1") or 1),
                    help="pre-started sandboxes kept warm for fast create (env RUNTIME_POOL_SIZE)")
    up.add_argument("--idle-timeout", type=float, default=float(env("RUNTIME_IDLE_TIMEOUT", "900") or 900),
                    help="default auto-stop of sandboxes created without autoStopInterval, in seconds "
                         "(rounded up to minutes); 0 disables (env RUNTIME_IDLE_TIMEOUT)")
    up.add_argument("--api-key", default=env("RUNTIME_API_KEY"),
                    help="the default organization's API key (env RUNTIME_API_KEY; "
                         "default: generated once into STATE/api-key)")
    up.add_argument("--sandbox", default=env("RUNTIME_SANDBOX"),
                    help="name of the first sandbox (created if missing); default: the newest existing one, "
                         "else a new one")
    up.add_argument("--no-sandbox", action="store_true", help="do not start a first sandbox")
    up.add_argument("--sandbox-network", default=env("RUNTIME_SANDBOX_NETWORK", "10.213.0.0/16"),
                    help="as root: the range sandbox addresses come from; the default is shared with the "
                         "host's other runtimes (a /24 each), any other is this runtime's alone "
                         "(env RUNTIME_SANDBOX_NETWORK)")
    up.add_argument("--network-block-all-default", action="store_true",
                    default=env("RUNTIME_NETWORK_BLOCK_ALL", "") not in ("", "0", "false", "no"),
                    help="sandboxes that do not say get networkBlockAll=true (env RUNTIME_NETWORK_BLOCK_ALL)")
    up.add_argument("--layers-dir", default=env("RUNTIME_LAYERS_DIR"),
                    help="where snapshot layers live, shareable between state dirs "
                         "(env RUNTIME_LAYERS_DIR; default STATE/layers)")
    up.add_argument("--sandbox-dns", default=env("RUNTIME_SANDBOX_DNS"),
                    help="resolver sandboxes' DNS goes to (default: the host's first; env RUNTIME_SANDBOX_DNS)")
    up.add_argument("--rootfs", choices=ROOTFS_MODES, default=default_rootfs_mode(),
                    help="snapshot (the default as root): each sandbox its own root from a snapshot, root "
                         "inside, a disk quota; host (the default otherwise): sandboxes see the host's root "
                         "read-only (bwrap) (env RUNTIME_ROOTFS)")
    _limits_args(up)

    inspect = commands.add_parser("inspect", help="what the runtime knows of a sandbox (uid, socket, cgroups, "
                                                   "usage; by id), over the control socket")
    _state_arg(inspect, top=False)
    inspect.add_argument("id", help="sandbox id")
    keys = commands.add_parser("api-key", help="API keys")
    key_commands = keys.add_subparsers(dest="key_command", required=True)
    key_create = key_commands.add_parser("create", help="create an API key and print it (shown once)")
    _state_arg(key_create, top=False)
    key_create.add_argument("--organization", default="default",
                            help="the organization it belongs to, created if new")
    key_revoke = key_commands.add_parser("revoke", help="revoke an API key: refused everywhere once this returns")
    _state_arg(key_revoke, top=False)
    key_revoke.add_argument("key", help="the key (dtn_...), or - to read it from stdin (keeps it out of ps)")
    from runtime import imagecli

    imagecli.add_parser(commands, _state_arg, _HelpFormatter)
    return parser


def _state_dir(args: argparse.Namespace) -> Path:
    from runtime.stack import default_state_dir

    return Path(args.state_dir) if args.state_dir else default_state_dir()


# ---- up ----------------------------------------------------------------------------------

def up(args: argparse.Namespace) -> int:
    import uvicorn
    from starlette.applications import Starlette

    from controlplane.app import build_app
    from controlplane.errors import ApiError
    from runtime.manager import SandboxError
    from runtime.snapshots import SnapshotError
    from runtime.stack import Stack, StackConfig

    try:
        limits = Limits(cpus=args.cpus, memory_mib=args.memory, pids=args.pids)
    except ValueError as exc:
        print(f"error: invalid limit: {exc} (--cpus/--memory/--pids, RUNTIME_CPUS/RUNTIME_MEMORY_MIB/"
              "RUNTIME_PIDS)", file=sys.stderr, flush=True)
        return 2
    config = StackConfig(
        state_dir=_state_dir(args), host=args.host, port=args.port, domain=args.domain,
        pool_size=max(0, args.pool_size), idle_timeout=args.idle_timeout,
        limits=limits, api_key=args.api_key, network=args.sandbox_network,
        network_block_all=args.network_block_all_default, dns=args.sandbox_dns,
        rootfs=args.rootfs,
        layers_dir=Path(args.layers_dir) if args.layers_dir else None,
    )
    try:
        stack = Stack(config)
    except SnapshotError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except OSError as exc:
        print(f"error: cannot use the state directory {config.state_dir}: {exc.strerror or exc}; "
              "pick another with --state-dir or RUNTIME_STATE_DIR", file=sys.stderr, flush=True)
        return 1
    control = build_app(stack.plane, host_routes=_host_routes(stack), mcp=stack.mcp)
    failed: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            try:
                await stack.start()
                if args.no_sandbox:
                    _print_banner(stack, None)
                else:
                    await _first_sandbox(stack, args.sandbox)
                stack.restart_interrupted()
            except (SandboxError, ApiError, OSError) as exc:
                # One line that says what failed and what to do; raising here would make
                # Starlette and uvicorn print the traceback of a lifespan failure instead.
                failed.append(exc.message if isinstance(exc, (SandboxError, ApiError)) else str(exc))
                print(f"error: {failed[-1]}", file=sys.stderr, flush=True)
                server.should_exit = True
            yield
        finally:
            if not failed:
                print("Stopping sandboxes and the proxy...", flush=True)
            await stack.stop()

    control.router.lifespan_context = lifespan
    if stack.control_socket.exists() or stack.control_socket.is_symlink():
        stack.control_socket.unlink()
    from toolbox.server import ReadyServer, websocket_protocol

    # The project's WebSocket protocol: a refused upgrade (Socket.IO before it is served)
    # is then not logged as an error (toolbox/forward/wsserver.py). Its closing line says
    # whether any task of the main job, its runtime, control plane or proxy was left pending.
    server = ReadyServer(uvicorn.Config(control, uds=str(stack.control_socket), log_level="warning",
                                        access_log=False, lifespan="on", timeout_graceful_shutdown=5,
                                        ws=websocket_protocol),  # type: ignore[arg-type]
                         banner=None, elsewhere=stack.left_elsewhere)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    return 0 if server.started and not failed else 1


def _host_routes(stack: Any) -> list[Any]:
    """`GET /runtime/sandboxes/{id}` on the control socket only (never forwarded by the
    proxy): what the runtime knows of a sandbox (uid, socket, cgroups, usage, daemon pid),
    for `python -m runtime inspect` and the tests of the tenant boundary; and the API-key
    routes of `python -m runtime api-key`."""
    import anyio
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from controlplane.errors import NotFound

    async def inspect(request: Request) -> JSONResponse:
        spec = stack.runtime.specs.get(request.path_params["id"])
        if spec is None:
            raise NotFound(f"Sandbox with ID {request.path_params['id']} not found in the runtime")
        return JSONResponse(await anyio.to_thread.run_sync(stack.runtime.describe, spec))

    from runtime import apikeys

    return [Route("/runtime/sandboxes/{id}", inspect, methods=["GET"]), *apikeys.routes(stack.plane)]


async def _first_sandbox(stack: Any, wanted: str | None) -> None:
    """The sandbox named `wanted` (created if missing), else the newest one, else a new one,
    in the default organization, started."""
    from controlplane.auth import Principal
    from controlplane.errors import ApiError, NotFound
    from controlplane.sandboxes.dto import CreateSandbox

    plane = stack.plane
    who = Principal(plane.default_organization, "main-job")
    record = None
    if wanted:
        try:
            record = await plane.sandboxes.get(who, wanted)
        except NotFound:
            record = None
    else:
        page = await plane.sandboxes.list(who, limit=1)
        record = page.items[0] if page.items else None
    if record is not None and record.state != "started":
        try:
            record = await plane.sandboxes.start(who, record.id)
        except ApiError as exc:
            if wanted:
                raise
            # The newest one cannot start (in error, gone from the backend): a new one instead.
            print(f"warning: cannot start sandbox {record.id} ({exc.message}); creating a new one",
                  file=sys.stderr, flush=True)
            record = None
    if record is None:
        body = CreateSandbox(name=wanted, labels={"code-toolbox-language": "python"})
        record = await plane.sandboxes.create(who, body)
    _print_banner(stack, record)


def _cli_name() -> str:
    """`sandbox-toolbox` when it is on PATH, else its path in this interpreter's venv."""
    import os
    import shutil

    beside = Path(sys.executable).parent / "sandbox-toolbox"
    if shutil.which("sandbox-toolbox") or not beside.exists():
        return "sandbox-toolbox"
    try:
        return os.path.relpath(beside) if not os.path.relpath(beside).startswith("..") else str(beside)
    except ValueError:
        return str(beside)


def _print_banner(stack: Any, record: Any) -> None:
    info = stack.info()
    key_source = f"in {info['api_key_file']}" if info["api_key_file"] else "from --api-key"
    lines = [
        f"Proxy:        {info['proxy_url']}",
        f"API:          {info['api_url']}   (Daytona's REST API; the key is {key_source})",
        f"DAYTONA_API_URL={info['api_url']}",
        f"DAYTONA_API_KEY={stack.api_key}",
        f"Limits:       {info['limits_backend']}",
        f"Control:      {_cli_name()} list|create|info|exec|stop|start|delete   (reads the two DAYTONA_ "
        f"lines above from the environment, or run: {_cli_name()} login)",
        f"Host:         python -m runtime --state-dir {stack.config.state_dir} inspect ID|api-key create",
        f"MCP:          {info['api_url']}/mcp   (coding agents; {_cli_name()} mcp config prints their settings)",
        f"Object store: {info['object_storage']}   (Image.add_local_file/add_local_dir uploads)",
    ]
    if record is not None:
        urls = stack.urls(record.id, record.preview_token)
        lines += [
            f"Sandbox:      {record.id}",
            f"Toolbox URL:  {urls['toolbox']}/version   (Authorization: Bearer $DAYTONA_API_KEY)",
            f"Try:          curl -H 'Authorization: Bearer {stack.api_key}' {urls['toolbox']}/version",
            # Opens in a browser as printed: the token in the query becomes the proxy's cookie.
            f"Preview URL:  {urls['example_preview']}?DAYTONA_SANDBOX_AUTH_KEY={record.preview_token}"
            f"   (any port: {urls['preview']})",
            f"Preview auth: X-Daytona-Preview-Token: {record.preview_token}",
            f"Terminal:     {urls['terminal']}",
        ]
    lines.append("Press Ctrl-C to stop.")
    print("\n".join(lines), flush=True)


# ---- host commands: the control socket and the state directory -----------------------------

# Moved to `sandbox-toolbox` (client/cli/): the name a user typed, and what to type now.
MOVED = {"create": "create", "list": "list", "get": "info", "stop": "stop", "start": "start", "delete": "delete"}


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _inspect(args: argparse.Namespace) -> int:
    """`GET /runtime/sandboxes/{id}` over the control socket, with STATE/api-key (or
    DAYTONA_API_KEY): a route only the runtime's host reaches, never forwarded by the proxy."""
    import os
    from urllib.parse import quote

    import httpx

    state = _state_dir(args)
    socket = state / "control" / "api.sock"
    if not socket.exists():
        return _fail(f"no main job is running (no {socket}); start one with: ./scripts/start "
                     f"--state-dir {state}  (or python -m runtime up)")
    key = os.environ.get("DAYTONA_API_KEY") or ""
    if not key:
        try:
            key = (state / "api-key").read_text().strip()
        except OSError as exc:
            return _fail(f"no API key: set DAYTONA_API_KEY or make {state / 'api-key'} readable ({exc})")
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket)), base_url="http://controlplane",
                      headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
        try:
            # One escaped segment, dots too: httpx would fold a `..` id into another path.
            response = client.get(f"/runtime/sandboxes/{quote(args.id, safe='').replace('.', '%2E')}")
        except httpx.TransportError as exc:
            return _fail(f"cannot reach the control plane at {socket}: {exc}")
    data = response.json() if response.content else None
    if response.is_error:
        message = data.get("message", data) if isinstance(data, dict) else response.text
        return _fail(f"{message} (HTTP {response.status_code})")
    print(json.dumps(data, indent=2))
    return 0


def _moved(verb: str) -> int:
    print(f"error: `python -m runtime {verb}` moved to `sandbox-toolbox {MOVED[verb]}` (the CLI of Daytona's "
          "API, installed with the project: .venv/bin/sandbox-toolbox). It reads DAYTONA_API_URL and "
          "DAYTONA_API_KEY, which ./scripts/start prints, or the key saved by `sandbox-toolbox login`; "
          "see docs/cli.md", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    verb = next((w for i, w in enumerate(words) if not w.startswith("-")
                 and (i == 0 or words[i - 1] != "--state-dir")), None)
    if verb in MOVED:
        return _moved(verb)
    parser = build_parser()
    args = parser.parse_args(words)
    if args.command == "up":
        return up(args)
    if args.command == "inspect":
        return _inspect(args)
    if args.command == "api-key":
        from runtime import apikeys

        if args.key_command == "revoke":
            return apikeys.revoke(_state_dir(args), args.key)
        return apikeys.create(_state_dir(args), args.organization)
    if args.command == "image":
        from runtime import imagecli

        return imagecli.run(args, _state_dir(args))
    return 2
