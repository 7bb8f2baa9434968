"""`python -m toolbox serve`: start the daemon. Every option also reads an environment variable."""

from __future__ import annotations

import argparse
import os
import sys

from toolbox.options import env, env_float

DEFAULT_PORT = 2280
# Above Daytona's 70 s idle timeout: the SDK pools connections and only some of its
# transports retry a request on a connection the server closed (toolbox-api.md §1.6).
KEEP_ALIVE_SECONDS = 75


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m toolbox",
        description="The sandbox toolbox daemon: Daytona's Toolbox API over HTTP and WebSocket.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve the Toolbox API",
        description="Serve the Toolbox API on a TCP port or a Unix socket.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("--host", default=env("TOOLBOX_HOST", "127.0.0.1"),
                       help="address to listen on (env TOOLBOX_HOST)")
    serve.add_argument("--port", type=int, default=int(env("TOOLBOX_PORT", str(DEFAULT_PORT))),
                       help="TCP port to listen on (env TOOLBOX_PORT)")
    serve.add_argument("--uds", default=env("TOOLBOX_UDS"),
                       help="listen on this Unix socket path instead of TCP (env TOOLBOX_UDS)")
    serve.add_argument("--fd", type=int, default=int(env("TOOLBOX_FD", "-1") or -1),
                       help="serve on this inherited, bound Unix socket descriptor instead "
                            "(the local runtime binds it where the sandbox cannot reach; "
                            "env TOOLBOX_FD; -1: none)")
    serve.add_argument("--workdir", default=env("TOOLBOX_WORKDIR"),
                       help="work directory for relative paths, commands and sessions; "
                            "default: the directory the daemon starts in (env TOOLBOX_WORKDIR)")
    serve.add_argument("--sandbox-id", default=env("DAYTONA_SANDBOX_ID"),
                       help="this sandbox's id; routes are also served under /{id}/... "
                            "(env DAYTONA_SANDBOX_ID)")
    serve.add_argument("--log-level", default=env("TOOLBOX_LOG_LEVEL", "warning"),
                       choices=["critical", "error", "warning", "info", "debug"],
                       help="log level (env TOOLBOX_LOG_LEVEL)")
    return parser


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from toolbox.app import create_app
    from toolbox.config import Settings
    from toolbox.server import ReadyServer, limit_malloc_arenas, websocket_protocol

    limit_malloc_arenas(int(env_float("TOOLBOX_MALLOC_ARENAS", 2)))
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
        os.chdir(args.workdir)
    settings = Settings.from_environment(workdir=args.workdir, sandbox_id=args.sandbox_id)
    config = uvicorn.Config(
        create_app(settings),
        host=args.host,
        port=args.port,
        uds=None if args.fd >= 0 else args.uds,
        fd=args.fd if args.fd >= 0 else None,
        loop="uvloop",
        # httptools plus header/body deadlines and a header size cap (toolbox/protocol.py)
        http="toolbox.protocol:GuardedHttpToolsProtocol",
        # websockets-sansio, imported on the first upgrade; uvicorn calls any factory
        # (its annotation says a Protocol class)
        ws=websocket_protocol,  # type: ignore[arg-type]
        ws_max_size=64 * 1024 * 1024,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        log_level=args.log_level,
        access_log=False,
        server_header=False,
    )
    server = ReadyServer(config, banner=f"Starting toolbox server on {_where(args)}")
    server.run()
    return 0 if server.started else 1


def _where(args: argparse.Namespace) -> str:
    if args.fd >= 0:
        return f"inherited socket fd {args.fd}"
    return str(args.uds or f"{args.host}:{args.port}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
