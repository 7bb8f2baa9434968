"""`sandbox-toolbox VERB ...`: the parser and the exit codes.

Exit codes: 0 done; 1 the API (or the connection, or the configuration) failed, with one
`error:` line on stderr; 2 bad usage (argparse's own); `exec`: the command's exit code
(124 when --timeout ended it, 130 on Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from client.config import ConfigError

OK, API_ERROR, USAGE = 0, 1, 2

_EPILOG = ("Configuration: DAYTONA_API_URL and DAYTONA_API_KEY (as the Daytona SDKs), else the file "
           "`sandbox-toolbox login` writes. Exit codes: 0 ok, 1 API error, 2 usage error; exec exits "
           "with the command's own code.")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


class _Version(argparse.Action):
    """Reads the installed version only when asked (importlib.metadata scans every dist)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        from importlib import metadata

        try:
            version = metadata.version("sandbox-toolbox")
        except metadata.PackageNotFoundError:
            version = "unknown"
        print(f"sandbox-toolbox {version}")
        parser.exit()


def _format_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=["table", "json"], default="table",
                        help="table (for people, the default) or json (for scripts)")


def _sub(commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, text: str,
         fmt: bool = True, **kwargs: object) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=text, description=text, formatter_class=_Formatter,
                                 **kwargs)  # type: ignore[arg-type]
    if fmt:
        _format_arg(parser)
    return parser


def _sandbox_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sandbox", metavar="SANDBOX", help="sandbox id or name")


def _mcp_commands() -> Any:
    """mcpserver.cli when the MCP server is installed alongside (it is its own package)."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("mcpserver") is None:
        return None
    return importlib.import_module("mcpserver.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sandbox-toolbox", formatter_class=_Formatter, epilog=_EPILOG,
                                     description="Manage sandboxes through Daytona's REST API (this project's "
                                                 "control plane, or any Daytona-compatible one).")
    parser.add_argument("--version", "-v", action=_Version, nargs=0, help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    create = _sub(commands, "create", "create a sandbox and wait until it is started")
    create.add_argument("--snapshot", help="snapshot to create it from (default: the server's)")
    create.add_argument("--name", help="sandbox name (default: its id)")
    create.add_argument("--env", "-e", action="append", default=[], metavar="KEY=VALUE",
                        help="environment variable (repeatable)")
    create.add_argument("--label", "-l", action="append", default=[], metavar="KEY=VALUE",
                        help="label (repeatable)")
    create.add_argument("--language", choices=["python", "typescript", "javascript"],
                        help="code-run language (label code-toolbox-language)")
    create.add_argument("--cpu", type=int, help="CPUs")
    create.add_argument("--memory", type=int, metavar="GIB", help="memory in GiB (the API's unit)")
    create.add_argument("--disk", type=int, metavar="GIB", help="disk in GiB")
    create.add_argument("--auto-stop", type=int, metavar="MINUTES",
                        help="auto-stop interval in minutes (0 means disabled)")
    create.add_argument("--auto-archive", type=int, metavar="MINUTES",
                        help="auto-archive interval in minutes (0 means the maximum)")
    create.add_argument("--auto-delete", type=int, metavar="MINUTES",
                        help="auto-delete interval in minutes (negative: disabled, 0: upon stopping)")
    create.add_argument("--public", action="store_true", help="previews reachable without a token")
    create.add_argument("--volume", "-v", action="append", default=[], metavar="VOLUME:MOUNT_PATH",
                        help="mount a volume (id or name; repeatable)")
    create.add_argument("--network-block-all", action=argparse.BooleanOptionalAction, default=None,
                        help="block all egress (default: the server's)")
    create.add_argument("--network-allow-list", metavar="CIDR,...", help="egress only to these (IPv4 CIDRs)")
    create.add_argument("--domain-allow-list", metavar="DOMAIN,...",
                        help="egress only to these domains (and their subdomains)")
    create.add_argument("--linked-sandbox", metavar="SANDBOX",
                        help="reach that sandbox by its name (makes this one ephemeral)")
    create.add_argument("--timeout", type=float, default=300, metavar="SECONDS",
                        help="how long to wait for the sandbox to start (default 300)")

    listing = _sub(commands, "list", "list sandboxes, newest first")
    listing.add_argument("--label", "-l", action="append", default=[], metavar="KEY=VALUE",
                         help="only sandboxes with this label (repeatable: all must match)")
    listing.add_argument("--state", action="append", default=[], metavar="STATE",
                         help="only sandboxes in this state (repeatable)")

    for name, text in (("info", "show a sandbox"), ("start", "start a stopped or archived sandbox"),
                       ("stop", "stop a sandbox (its files stay)"),
                       ("archive", "archive a stopped sandbox (files packed, disk freed; start restores it)"),
                       ("delete", "delete a sandbox and its files")):
        verb = _sub(commands, name, text)
        _sandbox_arg(verb)
        if name == "stop":
            verb.add_argument("--force", action="store_true", help="kill at once instead of a graceful stop")
        if name in ("start", "archive"):
            verb.add_argument("--timeout", type=float, default=600, metavar="SECONDS",
                              help="how long to wait (default 600)")

    ex = _sub(commands, "exec", "run a command in a sandbox with live output; exits with its exit code",
              fmt=False, usage="sandbox-toolbox exec SANDBOX [options] -- COMMAND [ARG ...]")
    _sandbox_arg(ex)
    ex.add_argument("--cwd", help="working directory (default: the sandbox's work dir)")
    ex.add_argument("--env", "-e", action="append", default=[], metavar="KEY=VALUE",
                    help="environment variable for the command (repeatable)")
    ex.add_argument("--timeout", type=float, metavar="SECONDS", help="stop the command after this long (exit 124)")
    ex.add_argument("--session", metavar="ID", help="run in this session (created if missing, kept afterwards) "
                                                    "instead of a throwaway one")
    ex.add_argument("--detach", "-d", action="store_true",
                    help="start the command and print SESSION COMMAND_ID; read it with `logs`")
    ex.add_argument("argv", nargs="*", metavar="COMMAND",
                    help="one argument: shell text (pipes, &&); several: an argv, quoted for the shell")

    logs = _sub(commands, "logs", "print the output of a session command (the session's newest by default)")
    _sandbox_arg(logs)
    logs.add_argument("session", metavar="SESSION", help="session id (`entrypoint`: the image's entrypoint)")
    logs.add_argument("command_id", metavar="COMMAND_ID", nargs="?", help="command id (default: the newest)")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the command ends")

    preview = _sub(commands, "preview-url", "print the URL of a port of the sandbox (opens in a browser as "
                                            "printed: the token rides in the query unless it is public)")
    _sandbox_arg(preview)
    preview.add_argument("port", metavar="PORT", type=int, nargs="?", help="port, 1-65535")
    preview.add_argument("--port", "-p", dest="port_flag", type=int, metavar="PORT", help="same as PORT")

    terminal = _sub(commands, "terminal", "print the browser terminal's URL (port 22222, with its token)")
    _sandbox_arg(terminal)

    upload = _sub(commands, "upload", "copy a local file into a sandbox (streamed; `-` reads stdin)")
    _sandbox_arg(upload)
    upload.add_argument("local", metavar="LOCAL", help="local file, or - for stdin")
    upload.add_argument("remote", metavar="REMOTE", help="path in the sandbox (relative: to its work dir)")
    download = _sub(commands, "download", "copy a file out of a sandbox (streamed; `-` writes stdout)")
    _sandbox_arg(download)
    download.add_argument("remote", metavar="REMOTE", help="path in the sandbox")
    download.add_argument("local", metavar="LOCAL", nargs="?",
                          help="local file or directory, or - for stdout (default: the file's name here)")

    volume = _sub(commands, "volume", "volumes", fmt=False)
    volume_commands = volume.add_subparsers(dest="volume_command", metavar="COMMAND", required=True)
    volume_create = _sub(volume_commands, "create", "create a volume")
    volume_create.add_argument("name", metavar="NAME")
    _sub(volume_commands, "list", "list volumes")
    volume_get = _sub(volume_commands, "info", "show a volume")
    volume_get.add_argument("volume", metavar="VOLUME", help="volume id or name")
    volume_delete = _sub(volume_commands, "delete", "delete a volume")
    volume_delete.add_argument("volume", metavar="VOLUME", help="volume id or name")

    snapshot = _sub(commands, "snapshot", "snapshots", fmt=False)
    snapshot_commands = snapshot.add_subparsers(dest="snapshot_command", metavar="COMMAND", required=True)
    _sub(snapshot_commands, "list", "list snapshots")
    snapshot_delete = _sub(snapshot_commands, "delete", "delete a snapshot")
    snapshot_delete.add_argument("snapshot", metavar="SNAPSHOT", help="snapshot id or name")

    mcp = _mcp_commands()
    if mcp is not None:
        # The MCP server's own verbs (mcpserver/cli.py, i20mcp's package): `mcp start|config`.
        mcp.add_commands(_sub(commands, "mcp", "the MCP server for coding agents: start (stdio) | config",
                              fmt=False))

    login = _sub(commands, "login", "check an API key and save it (0600) for later commands", fmt=False)
    login.add_argument("--api-url", help="the API's URL (default: DAYTONA_API_URL, the saved one, or "
                                         "http://localhost:8080/api)")
    login.add_argument("--api-key", help="the key (default: read from stdin, which keeps it out of `ps`)")
    _sub(commands, "logout", "forget the saved API key", fmt=False)
    return parser


def parse(parser: argparse.ArgumentParser, words: list[str]) -> argparse.Namespace:
    """Everything after exec's first `--` is the command, options and all (argparse alone
    would read `exec ID -- ls -la` 's `-la` as one of ours)."""
    if "--" in words:
        at = words.index("--")
        head = parser.parse_args(words[:at])
        if head.command == "exec":
            head.argv = [*head.argv, *words[at + 1:]]
            return head
    return parser.parse_args(words)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    words = sys.argv[1:] if argv is None else list(argv)
    args = parse(parser, words)
    # After parsing: --help and usage errors never pay for httpx.
    from client.cli import execute, files, verbs
    from client.errors import ApiError

    try:
        if args.command == "mcp":
            return int(_mcp_commands().run(args))
        if args.command == "exec":
            return execute.run_exec(parser, args)
        if args.command == "logs":
            return execute.run_logs(parser, args)
        if args.command == "upload":
            return files.run_upload(parser, args)
        if args.command == "download":
            return files.run_download(args)
        return verbs.run(parser, args)
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return API_ERROR
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return API_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `sandbox-toolbox list | head`: the reader left; say nothing more.
        sys.stderr.close()
        return OK
