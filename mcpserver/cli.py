"""`mcp start` (the server over stdio) and `mcp config` (the JSON agent apps take).

Reachable as `python -m mcpserver start|config` and as `sandbox-toolbox mcp start|config`.
Over stdio, stdout carries the protocol and nothing else: messages go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

SERVER_NAME = "sandbox-toolbox"


def add_commands(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="mcp_command", required=True)
    verbs.add_parser("start", help="serve MCP over stdio (what an agent app runs)",
                     description="Serve the Model Context Protocol over stdin/stdout. The control plane and key "
                                 "come from DAYTONA_API_URL and DAYTONA_API_KEY.")
    config = verbs.add_parser("config", help="print the JSON snippet for Claude Code, Cursor or Windsurf",
                              description="Print the mcpServers entry agent apps take: one that runs this "
                                          "command over stdio, and one for the main job's HTTP endpoint.")
    config.add_argument("--transport", choices=["stdio", "http", "both"], default="both",
                        help="which snippet (default both)")
    config.add_argument("--no-key", action="store_true",
                        help="leave the API key out (write it in by hand)")


def run(args: argparse.Namespace) -> int:
    if args.mcp_command == "start":
        return start()
    return print_config(args.transport, include_key=not args.no_key)


def start() -> int:
    import signal

    import anyio

    from client import Client, ConfigError, load_config
    from mcpserver.sandboxes import TOOLBOX_URLS
    from mcpserver.server import build_server
    from mcpserver.started import StartedCommands
    from mcpserver.transport import SharedTransport

    try:
        config = load_config()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    client = Client(config, transport=SharedTransport())
    started = StartedCommands()
    server = build_server(lambda ctx: client, started)

    def clean() -> None:
        """The sessions start_command made go (mcpserver/started.py), in bounded time that
        another signal must not cut short."""
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, signal.SIG_IGN)
        toolbox_url = TOOLBOX_URLS.get(config.api_url)
        if toolbox_url is not None:  # else no tool reached a toolbox: nothing was started
            started.clean(client, toolbox_url)

    def end(_signal: int, _frame: object) -> None:
        # SIGTERM (an agent app closing us) or Ctrl-C before stdin's EOF: unwinding the
        # event loop would wait for its stdin reader, a worker thread that returns only at
        # EOF, so the session ends here and the process leaves at once.
        clean()
        os._exit(0)

    signal.signal(signal.SIGTERM, end)
    signal.signal(signal.SIGINT, end)
    anyio.run(server.run_stdio_async)  # returns at stdin's EOF: the client hung up
    clean()
    return 0


def _where() -> tuple[str, str]:
    """(API URL, key or "") as `mcp start` would find them; no key is fine for a snippet."""
    from client import ConfigError, load_config
    from client.config import DEFAULT_API_URL

    try:
        config = load_config()
    except ConfigError:
        return (os.environ.get("DAYTONA_API_URL") or DEFAULT_API_URL).rstrip("/"), ""
    return config.api_url, config.api_key


def _start_command() -> dict[str, object]:
    """`sandbox-toolbox mcp start` by the absolute path of the installed command (agent apps
    spawn it without the venv on PATH), else this interpreter with `-m mcpserver start`."""
    script = Path(sys.executable).parent / "sandbox-toolbox"
    if script.is_file() and os.access(script, os.X_OK):
        return {"command": str(script), "args": ["mcp", "start"]}
    return {"command": sys.executable, "args": ["-m", "mcpserver", "start"]}


def config_snippets(api_url: str, api_key: str, include_key: bool = True) -> dict[str, dict[str, object]]:
    key = api_key if include_key and api_key else "<your API key>"
    stdio: dict[str, object] = {**_start_command(), "env": {"DAYTONA_API_URL": api_url, "DAYTONA_API_KEY": key}}
    http: dict[str, object] = {"type": "http", "url": f"{api_url}/mcp", "headers": {"Authorization": f"Bearer {key}"}}
    return {"stdio": stdio, "http": http}


def print_config(transport: str, include_key: bool = True) -> int:
    snippets = config_snippets(*_where(), include_key=include_key)
    if transport == "both":
        out = {"mcpServers": {SERVER_NAME: snippets["stdio"], f"{SERVER_NAME}-http": snippets["http"]}}
    else:
        out = {"mcpServers": {SERVER_NAME: snippets[transport]}}
    print(json.dumps(out, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mcpserver", description="The sandbox-toolbox MCP server")
    add_commands(parser)
    return run(parser.parse_args(argv))
