"""`python -m runtime up|create|list|get|stop|start|delete`.

`up` runs everything (proxy, runtime, control API) in the foreground until Ctrl-C; the
other commands talk to a running `up` over its control socket and print JSON.
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
from toolbox.options import env


def _limits_args(parser: argparse.ArgumentParser, defaults: bool) -> None:
    d = Limits()
    parser.add_argument("--cpus", type=float, default=float(env("RUNTIME_CPUS", str(d.cpus))) if defaults else None,
                        help="CPU cap per sandbox, in CPUs (env RUNTIME_CPUS)")
    parser.add_argument("--memory", type=int, default=int(env("RUNTIME_MEMORY_MIB", str(d.memory_mib))) if defaults else None,
                        help="memory cap per sandbox, MiB (env RUNTIME_MEMORY_MIB)")
    parser.add_argument("--pids", type=int, default=int(env("RUNTIME_PIDS", str(d.pids))) if defaults else None,
                        help="process/thread cap per sandbox (env RUNTIME_PIDS)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m runtime",
                                     description="Local sandbox runtime: toolbox daemons in Linux namespaces behind the preview proxy.")
    parser.add_argument("--state-dir", default=env("RUNTIME_STATE_DIR"),
                        help="where sandboxes, the registry and the control socket live "
                             "(env RUNTIME_STATE_DIR; default $XDG_STATE_HOME/sandbox-toolbox)")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start the proxy, the runtime and a first sandbox; Ctrl-C stops all",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    up.add_argument("--host", default=env("RUNTIME_PROXY_HOST", "127.0.0.1"), help="proxy listen address (env RUNTIME_PROXY_HOST)")
    up.add_argument("--port", type=int, default=int(env("RUNTIME_PROXY_PORT", "8080") or 8080), help="proxy port (env RUNTIME_PROXY_PORT)")
    up.add_argument("--domain", default=env("RUNTIME_DOMAIN", "localhost"), help="preview domain (env RUNTIME_DOMAIN)")
    up.add_argument("--pool-size", type=int, default=int(env("RUNTIME_POOL_SIZE", "1") or 1),
                    help="pre-started sandboxes kept warm for fast create (env RUNTIME_POOL_SIZE)")
    up.add_argument("--idle-timeout", type=float, default=float(env("RUNTIME_IDLE_TIMEOUT", "900") or 900),
                    help="stop a sandbox after this many seconds without proxy traffic; 0 disables (env RUNTIME_IDLE_TIMEOUT)")
    up.add_argument("--api-key", default=env("RUNTIME_API_KEY"),
                    help="API key for the proxy (env RUNTIME_API_KEY; default: generated once into STATE/api-key)")
    up.add_argument("--sandbox", default=env("RUNTIME_SANDBOX"),
                    help="id of the first sandbox (created if missing); default: the newest existing one, else a new one")
    up.add_argument("--no-sandbox", action="store_true", help="do not start a first sandbox")
    _limits_args(up, defaults=True)

    create = commands.add_parser("create", help="create and start a sandbox")
    create.add_argument("--id", help="sandbox id (default: random)")
    create.add_argument("--env", "-e", action="append", default=[], metavar="KEY=VALUE", help="environment variable (repeatable)")
    create.add_argument("--egress", choices=["none", "host"], default="none",
                        help="network: none (loopback only) or the host's network")
    create.add_argument("--public", action="store_true", help="previews reachable without credentials")
    _limits_args(create, defaults=False)
    commands.add_parser("list", help="list sandboxes")
    for name, text in (("get", "show one sandbox"), ("stop", "stop a sandbox (files stay)"),
                       ("start", "start a stopped sandbox"), ("delete", "stop and remove a sandbox")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("id")
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
    from runtime.stack import Stack, StackConfig

    config = StackConfig(
        state_dir=_state_dir(args), host=args.host, port=args.port, domain=args.domain,
        pool_size=max(0, args.pool_size), idle_timeout=args.idle_timeout,
        limits=Limits(cpus=args.cpus, memory_mib=args.memory, pids=args.pids), api_key=args.api_key,
    )
    stack = Stack(config)
    control = build_app(stack.plane)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            try:
                await stack.start()
                if args.no_sandbox:
                    _print_banner(stack, None)
                else:
                    await _first_sandbox(stack, args.sandbox)
            except (SandboxError, ApiError) as exc:
                print(f"error: {exc.message}", file=sys.stderr, flush=True)
                raise
            yield
        finally:
            print("Stopping sandboxes and the proxy...", flush=True)
            await stack.stop()

    control.router.lifespan_context = lifespan
    if stack.control_socket.exists() or stack.control_socket.is_symlink():
        stack.control_socket.unlink()
    server = uvicorn.Server(uvicorn.Config(control, uds=str(stack.control_socket), log_level="warning",
                                           access_log=False, lifespan="on", timeout_graceful_shutdown=5))
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    return 0 if server.started else 1


async def _first_sandbox(stack: Any, wanted: str | None) -> None:
    """The sandbox named `wanted` (created if missing), else the newest one, else a new one,
    in the default organization, started."""
    from controlplane.auth import Principal
    from controlplane.errors import NotFound
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
    if record is None:
        body = CreateSandbox(name=wanted, labels={"code-toolbox-language": "python"})
        record = await plane.sandboxes.create(who, body)
    elif record.state != "started":
        record = await plane.sandboxes.start(who, record.id)
    _print_banner(stack, record)


def _print_banner(stack: Any, record: Any) -> None:
    info = stack.info()
    lines = [
        f"Proxy:        {info['proxy_url']}",
        f"API:          {info['api_url']}  (Daytona's REST API; key "
        f"{'in ' + str(info['api_key_file']) if info['api_key_file'] else 'from --api-key'})",
        f"DAYTONA_API_URL={info['api_url']}",
        f"DAYTONA_API_KEY={stack.api_key}",
        f"Limits:       {info['limits_backend']}",
        f"Control:      python -m runtime --state-dir {stack.config.state_dir} list|create|stop|start|delete",
    ]
    if record is not None:
        urls = stack.urls(record.id, record.preview_token)
        lines += [
            f"Sandbox:      {record.id}",
            f"Toolbox URL:  {urls['toolbox']}   (Authorization: Bearer <API key>)",
            f"Preview URL:  {urls['example_preview']}   (any port: {urls['preview']})",
            f"Preview auth: X-Daytona-Preview-Token: {record.preview_token}",
            f"Terminal:     {urls['terminal']}",
        ]
    lines.append("Press Ctrl-C to stop.")
    print("\n".join(lines), flush=True)


# ---- client commands ---------------------------------------------------------------------

def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> int:
    import httpx

    socket = _state_dir(args) / "control" / "runtime.sock"
    if not socket.exists():
        print(f"error: no runtime is running (no {socket}); start one with: python -m runtime up",
              file=sys.stderr)
        return 1
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket)), base_url="http://runtime",
                      timeout=120) as client:
        try:
            response = client.request(method, path, json=body)
        except httpx.TransportError as exc:
            print(f"error: cannot reach the runtime at {socket}: {exc}", file=sys.stderr)
            return 1
    if response.status_code == 204:
        return 0
    data = response.json()
    if response.is_error:
        print(f"error: {data.get('error', data)}", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "up":
        return up(args)
    if args.command == "list":
        return _call(args, "GET", "/sandboxes")
    if args.command == "create":
        env = {}
        for item in args.env:
            key, sep, value = item.partition("=")
            if not sep or not key:
                parser.error(f"--env wants KEY=VALUE, got {item!r}")
            env[key] = value
        limits = {k: v for k, v in (("cpus", args.cpus), ("memory_mib", args.memory), ("pids", args.pids))
                  if v is not None}
        body: dict[str, Any] = {"env": env, "egress": args.egress, "public": args.public}
        if args.id:
            body["id"] = args.id
        if limits:
            body["limits"] = limits
        return _call(args, "POST", "/sandboxes", body)
    if args.command == "get":
        return _call(args, "GET", f"/sandboxes/{args.id}")
    if args.command in ("stop", "start"):
        return _call(args, "POST", f"/sandboxes/{args.id}/{args.command}")
    if args.command == "delete":
        return _call(args, "DELETE", f"/sandboxes/{args.id}")
    return 2
