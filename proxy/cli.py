"""`python -m proxy serve|preview-url`. Every option also reads an environment variable."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys

from toolbox.options import env

# Above common load-balancer idle timeouts (60 s), as Daytona's 70 s.
KEEP_ALIVE_SECONDS = 75


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--domain", default=env("PROXY_DOMAIN"),
                        help="preview domain: hosts are {port}-{sandboxId}.{domain} (env PROXY_DOMAIN)")
    parser.add_argument("--registry", default=env("PROXY_REGISTRY"),
                        help="sandbox registry: file:PATH, template:URL with {id}, or redis://HOST:PORT/DB "
                             "(env PROXY_REGISTRY)")
    parser.add_argument("--public-url", default=env("PROXY_PUBLIC_URL"),
                        help="scheme://domain[:port] as clients reach the proxy, used in minted URLs "
                             "(env PROXY_PUBLIC_URL; default http://{domain}:{port})")
    parser.add_argument("--secret", default=env("PROXY_SECRET"),
                        help="HMAC secret for preview tokens, signed URLs and cookies; every replica needs "
                             "the same one (env PROXY_SECRET; default: random per start)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m proxy", description="The sandbox preview proxy.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve previews and the toolbox path",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    serve.add_argument("--host", default=env("PROXY_HOST", "127.0.0.1"), help="listen address (env PROXY_HOST)")
    serve.add_argument("--port", type=int, default=int(env("PROXY_PORT", "8080") or 8080),
                       help="listen port (env PROXY_PORT)")
    _common(serve)
    serve.add_argument("--api-keys-file", default=env("PROXY_API_KEYS_FILE"),
                       help="file with one API key per line, in addition to env PROXY_API_KEYS "
                            "(comma-separated) (env PROXY_API_KEYS_FILE)")
    serve.add_argument("--api-upstream", default=env("PROXY_API_UPSTREAM"),
                       help="forward /api/... on the proxy's own host (HTTP and WebSocket, streamed) to this "
                            "control plane: unix:PATH or http://host:port (env PROXY_API_UPSTREAM)")
    serve.add_argument("--workers", type=int, default=int(env("PROXY_WORKERS", "1") or 1),
                       help="worker processes (env PROXY_WORKERS)")
    serve.add_argument("--preserve-host", action="store_true",
                       default=(env("PROXY_PRESERVE_HOST", "") or "").lower() in ("1", "true", "yes"),
                       help="apps see the public Host instead of localhost:{port} (env PROXY_PRESERVE_HOST)")
    serve.add_argument("--drain-seconds", type=float, default=float(env("PROXY_DRAIN_SECONDS", "10") or 10),
                       help="on SIGTERM, wait this long for open requests and WebSockets (env PROXY_DRAIN_SECONDS)")
    serve.add_argument("--forwarded-allow-ips", default=env("PROXY_FORWARDED_ALLOW_IPS", ""),
                       help="comma-separated addresses of load balancers whose X-Forwarded-For/Proto are "
                            "believed (the client address the proxy forwards); none by default "
                            "(env PROXY_FORWARDED_ALLOW_IPS)")
    serve.add_argument("--cookie-samesite", default=(env("PROXY_COOKIE_SAMESITE", "lax") or "lax").lower(),
                       choices=["lax", "none"],
                       help="SameSite of the preview cookie: 'none' lets private previews work inside another "
                            "site's iframe (https public URL only; the cookie is Partitioned) "
                            "(env PROXY_COOKIE_SAMESITE)")
    serve.add_argument("--log-level", default=env("PROXY_LOG_LEVEL", "warning"),
                       choices=["critical", "error", "warning", "info", "debug"], help="(env PROXY_LOG_LEVEL)")
    url = commands.add_parser("preview-url", help="print a preview URL for a sandbox port",
                              description="Print a browser-ready preview URL: signed and expiring with "
                                          "--expires, else carrying the sandbox's preview token.")
    _common(url)
    url.add_argument("sandbox_id")
    url.add_argument("port", type=int)
    url.add_argument("--expires", type=int, default=None, help="seconds until a signed URL expires (1-86400)")
    return parser


def _require(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    for name in names:
        if not getattr(args, name):
            parser.error(f"--{name.replace('_', '-')} (or env PROXY_{name.upper()}) is required")


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from proxy.app import app_from_environment
    from proxy.config import ProxyConfig
    from toolbox.server import ReadyServer, websocket_protocol

    if parent := os.environ.get("PROXY_PARENT_PID"):
        from toolbox.lifeline import die_with_parent

        die_with_parent(int(parent))  # the runtime's child: never outlive it, nor keep its port
    # Workers are separate processes: hand every option over through the environment.
    os.environ["PROXY_DOMAIN"] = args.domain
    os.environ["PROXY_REGISTRY"] = args.registry
    os.environ["PROXY_PUBLIC_URL"] = args.public_url or f"http://{args.domain}:{args.port}"
    os.environ["PROXY_COOKIE_SAMESITE"] = args.cookie_samesite
    if not args.secret:
        print("warning: no PROXY_SECRET: derived preview tokens, signed URLs and cookies stop working "
              "at the next restart and differ between replicas", file=sys.stderr, flush=True)
    os.environ["PROXY_SECRET"] = args.secret or secrets.token_hex(32)
    os.environ["PROXY_PRESERVE_HOST"] = "1" if args.preserve_host else ""
    if args.api_keys_file:
        os.environ["PROXY_API_KEYS_FILE"] = args.api_keys_file
    os.environ["PROXY_API_UPSTREAM"] = args.api_upstream or ""
    try:  # what every worker will read, checked once here for a clear error at start
        ProxyConfig.from_environment()
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    common = dict(
        host=args.host, port=args.port, loop="uvloop", http="toolbox.protocol:GuardedHttpToolsProtocol", ws=websocket_protocol,
        ws_max_size=64 * 1024 * 1024, ws_per_message_deflate=False, timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=args.drain_seconds, log_level=args.log_level, access_log=False,
        server_header=False, lifespan="on",
        proxy_headers=bool(args.forwarded_allow_ips), forwarded_allow_ips=args.forwarded_allow_ips or None,
    )
    if args.workers > 1:
        print(f"Starting proxy on {args.host}:{args.port} with {args.workers} workers", flush=True)
        uvicorn.run("proxy.app:app_from_environment", factory=True, workers=args.workers, **common)
        return 0
    config = uvicorn.Config(app_from_environment(), **common)
    server = ReadyServer(config, banner=f"Starting proxy on {args.host}:{args.port}")
    server.run()
    return 0 if server.started else 1


def preview_url(args: argparse.Namespace) -> int:
    from proxy.auth import (
        QUERY_PARAM,
        SIGNED_MAX_SECONDS,
        SIGNED_MIN_SECONDS,
        Auth,
        SignedExpiryError,
        SignedLabelError,
    )
    from proxy.config import ProxyConfig
    from proxy.registry import Sandbox, open_registry

    config = ProxyConfig(domain=args.domain, registry=args.registry, public_url=args.public_url or "",
                         secret=args.secret.encode())
    auth = Auth(config.secret, ())

    async def lookup() -> Sandbox | None:
        registry = open_registry(config.registry)
        try:
            return await registry.get(args.sandbox_id)
        finally:
            await registry.close()

    sandbox = asyncio.run(lookup())
    if sandbox is None:
        print(f"error: sandbox {args.sandbox_id!r} is not in the registry {config.registry}", file=sys.stderr)
        return 1
    if args.expires is not None:
        try:
            label = auth.sign_preview(sandbox, args.port, args.expires)
        except SignedExpiryError:
            print(f"error: --expires must be from {SIGNED_MIN_SECONDS} to {SIGNED_MAX_SECONDS} seconds",
                  file=sys.stderr)
            return 2
        except SignedLabelError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(config.preview_url(label, args.port) + "/")
    elif sandbox.public and args.port not in config.private_ports:
        print(config.preview_url(sandbox.id, args.port) + "/")
    else:
        print(f"{config.preview_url(sandbox.id, args.port)}/?{QUERY_PARAM}={auth.preview_token(sandbox)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _require(parser, args, "domain", "registry")
    if args.command == "serve":
        return serve(args)
    if args.command == "preview-url":
        _require(parser, args, "secret")
        return preview_url(args)
    return 2
