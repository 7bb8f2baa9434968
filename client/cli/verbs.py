"""The verbs that are one or two API calls: sandboxes, previews, volumes, snapshots, login."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import Any

from client.api import Client
from client.cli import output
from client.config import DEFAULT_API_URL, Config, config_path, load_config, read_file, remove_config, save_config
from client.errors import ApiError


def pairs(parser: argparse.ArgumentParser, items: list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"{flag} wants KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def client() -> Client:
    return Client(load_config())


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    command = args.command
    if command == "login":
        return login(args)
    if command == "logout":
        removed = remove_config()
        print(f"Removed {config_path()}" if removed else f"Not logged in ({config_path()} does not exist)")
        return 0
    # Usage is checked before the configuration: a bad flag is exit 2 even without a key.
    body, mounts = create_body(parser, args) if command == "create" else ({}, [])
    labels = pairs(parser, args.label, "--label") if command == "list" else {}
    port = preview_port(parser, args) if command in ("preview-url", "terminal") else 0
    with client() as api:
        if command == "create":
            return create(api, args, body, mounts)
        if command == "list":
            return show_sandboxes(api.list_sandboxes(labels=labels or None, states=args.state), args.format)
        if command == "info":
            return show_sandbox(api.get_sandbox(args.sandbox), args.format)
        if command in ("start", "stop", "archive", "delete"):
            return lifecycle(api, args)
        if command in ("preview-url", "terminal"):
            return preview(api, args, port)
        if command == "volume":
            return volume(api, args)
        if command == "snapshot":
            return snapshot(api, args)
    parser.error(f"unknown command {command}")
    return 2


# ---- sandboxes ------------------------------------------------------------------------------

def create_body(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The CreateSandbox body, and the (volume, mount path) pairs still to resolve."""
    labels = pairs(parser, args.label, "--label")
    if args.language:
        labels["code-toolbox-language"] = args.language
    body: dict[str, Any] = {"env": pairs(parser, args.env, "--env"), "labels": labels}
    optional = {"name": args.name, "snapshot": args.snapshot, "cpu": args.cpu, "memory": args.memory,
                "disk": args.disk, "autoStopInterval": args.auto_stop, "autoArchiveInterval": args.auto_archive,
                "autoDeleteInterval": args.auto_delete, "public": True if args.public else None,
                "networkBlockAll": args.network_block_all, "networkAllowList": args.network_allow_list,
                "domainAllowList": args.domain_allow_list, "linkedSandbox": args.linked_sandbox}
    if args.linked_sandbox and args.auto_delete is None:
        optional["autoDeleteInterval"] = 0  # Daytona's rule: a linked sandbox is ephemeral
    body.update({k: v for k, v in optional.items() if v is not None})
    mounts = []
    for item in args.volume:
        name, sep, mount = item.partition(":")
        if not sep or not name or not mount.startswith("/"):
            parser.error(f"--volume wants VOLUME:/ABSOLUTE/MOUNT/PATH, got {item!r}")
        mounts.append((name, mount))
    return body, mounts


def create(api: Client, args: argparse.Namespace, body: dict[str, Any], mounts: list[tuple[str, str]]) -> int:
    if mounts:
        body["volumes"] = [{"volumeId": api.get_volume(name)["id"], "mountPath": mount} for name, mount in mounts]
    with output.progress(f"Creating sandbox{' ' + args.name if args.name else ''}") as shown:
        sandbox = api.create_sandbox(body)
        if sandbox.get("state") != "started":
            # A server that answers before the sandbox runs (a snapshot build, Daytona's cloud).
            def tick(current: Any) -> None:
                shown.update(f"Sandbox {current.get('id')}: {current.get('state')}")

            sandbox = api.wait_for_state(sandbox["id"], ["started"], timeout=args.timeout, on_poll=tick)
    return show_sandbox(sandbox, args.format)


def lifecycle(api: Client, args: argparse.Namespace) -> int:
    command, target = args.command, args.sandbox
    doing = {"start": "Starting", "stop": "Stopping", "archive": "Archiving", "delete": "Deleting"}[command]
    with output.progress(f"{doing} sandbox {target}") as shown:
        if command == "start":
            sandbox = api.start_sandbox(target)
            if sandbox.get("state") != "started":
                sandbox = api.wait_for_state(sandbox["id"], ["started"], timeout=args.timeout,
                                             on_poll=lambda s: shown.update(f"Sandbox {target}: {s.get('state')}"))
        elif command == "stop":
            sandbox = api.stop_sandbox(target, force=args.force)
        elif command == "archive":
            sandbox = api.archive_sandbox(target)
            if sandbox.get("state") != "archived":
                sandbox = api.wait_for_state(sandbox["id"], ["archived"], timeout=args.timeout,
                                             on_poll=lambda s: shown.update(f"Sandbox {target}: {s.get('state')}"))
        else:
            sandbox = api.delete_sandbox(target)
    if args.format == "json":
        output.print_json(sandbox)
    elif sandbox is None:  # an ephemeral sandbox's stop deletes it
        print(f"Sandbox {target} stopped and deleted (ephemeral)")
    else:
        state = "deleted" if command == "delete" else sandbox.get("state", "?")
        print(f"Sandbox {sandbox.get('name') or sandbox.get('id')} ({sandbox.get('id')}) "
              f"{output.paint(state, output.STATE_COLOURS.get(state), sys.stdout)}")
    return 0


def show_sandboxes(items: list[Any], fmt: str) -> int:
    if fmt == "json":
        output.print_json(items)
        return 0
    if not items:
        print("No sandboxes")
        return 0
    rows = [[s.get("id", ""), s.get("name", ""), s.get("state", ""), str(s.get("cpu", "")),
             f"{s.get('memory', '')} GiB", f"{s.get('disk', '')} GiB", output.age(s.get("createdAt")),
             ",".join(f"{k}={v}" for k, v in sorted((s.get("labels") or {}).items())
                      if k != "code-toolbox-language")]
            for s in items]
    output.table(["ID", "NAME", "STATE", "CPU", "MEMORY", "DISK", "CREATED", "LABELS"], rows, colour_column=2)
    return 0


def _minutes(value: Any, zero: str) -> str:
    if value is None:
        return "-"
    return zero if value == 0 else f"{value} min"


def show_sandbox(sandbox: Any, fmt: str) -> int:
    if fmt == "json":
        output.print_json(sandbox)
        return 0
    labels = sandbox.get("labels") or {}
    volumes = sandbox.get("volumes") or []
    lines = [
        ("ID", sandbox.get("id", "")), ("Name", sandbox.get("name", "")), ("State", sandbox.get("state", "")),
        ("Snapshot", sandbox.get("snapshot") or "-"),
        ("Resources", f"{sandbox.get('cpu')} CPU, {sandbox.get('memory')} GiB memory, {sandbox.get('disk')} GiB disk"),
        ("Public", "yes" if sandbox.get("public") else "no"),
        ("Network", "egress blocked" if sandbox.get("networkBlockAll")
         else f"egress to {sandbox['networkAllowList']}" if sandbox.get("networkAllowList") else "egress allowed"),
        ("Auto-stop", _minutes(sandbox.get("autoStopInterval"), "never")),
        ("Auto-archive", _minutes(sandbox.get("autoArchiveInterval"), "the maximum")),
        ("Auto-delete", "never" if (sandbox.get("autoDeleteInterval") or 0) < 0
         else _minutes(sandbox.get("autoDeleteInterval"), "upon stopping")),
        ("Labels", ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"),
        ("Created", f"{sandbox.get('createdAt', '-')} ({output.age(sandbox.get('createdAt'))})"),
    ]
    if volumes:
        lines.append(("Volumes", ", ".join(f"{v.get('volumeId')}:{v.get('mountPath')}" for v in volumes)))
    if sandbox.get("errorReason"):
        lines.append(("Error", str(sandbox["errorReason"])))
    output.block(lines)
    return 0


def preview_port(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.command == "terminal":
        return 22222
    port: int | None = args.port if args.port is not None else args.port_flag
    if port is None:
        parser.error("preview-url needs a PORT")
    if not 1 <= port <= 65535:
        parser.error(f"PORT must be from 1 to 65535, got {port}")
    return port


def preview(api: Client, args: argparse.Namespace, port: int) -> int:
    link = api.preview_url(args.sandbox, port)
    public = bool(api.get_sandbox(link["sandboxId"]).get("public"))
    base = link["url"].rstrip("/") + "/"
    # The token in the query becomes the proxy's cookie, so the URL opens in a browser as printed.
    url = base if public else f"{base}?DAYTONA_SANDBOX_AUTH_KEY={link['token']}"
    if args.format == "json":
        output.print_json({**link, "public": public, "browserUrl": url})
    else:
        print(url)
    return 0


# ---- volumes and snapshots ---------------------------------------------------------------------

def volume(api: Client, args: argparse.Namespace) -> int:
    sub = args.volume_command
    if sub == "create":
        made = api.create_volume(args.name)
        return _show_volumes([made], args.format, single=True)
    if sub == "list":
        return _show_volumes(api.list_volumes(), args.format)
    if sub == "info":
        return _show_volumes([api.get_volume(args.volume)], args.format, single=True)
    found = api.get_volume(args.volume)
    api.delete_volume(found["id"])
    if args.format == "json":
        output.print_json({"id": found["id"], "name": found.get("name"), "deleted": True})
    else:
        print(f"Volume {found.get('name')} ({found['id']}) deleted")
    return 0


def _show_volumes(items: list[Any], fmt: str, single: bool = False) -> int:
    if fmt == "json":
        output.print_json(items[0] if single else items)
    elif not items:
        print("No volumes")
    else:
        output.table(["ID", "NAME", "STATE", "CREATED"],
                     [[v.get("id", ""), v.get("name", ""), v.get("state", ""), output.age(v.get("createdAt"))]
                      for v in items], colour_column=2)
    return 0


def snapshot(api: Client, args: argparse.Namespace) -> int:
    if args.snapshot_command == "list":
        items = api.list_snapshots()
        if args.format == "json":
            output.print_json(items)
        elif not items:
            print("No snapshots")
        else:
            output.table(["ID", "NAME", "STATE", "IMAGE", "CPU", "MEMORY", "DISK"],
                         [[s.get("id", ""), s.get("name", ""), s.get("state", ""), s.get("imageName") or "-",
                           str(s.get("cpu", "")), f"{s.get('mem', '')} GiB", f"{s.get('disk', '')} GiB"]
                          for s in items], colour_column=2)
        return 0
    api.delete_snapshot(args.snapshot)
    if args.format == "json":
        output.print_json({"id": args.snapshot, "deleted": True})
    else:
        print(f"Snapshot {args.snapshot} deleted")
    return 0


# ---- login ------------------------------------------------------------------------------------

def login(args: argparse.Namespace) -> int:
    stored = read_file(config_path())
    url = (args.api_url or os.environ.get("DAYTONA_API_URL") or stored.get("apiUrl") or DEFAULT_API_URL).rstrip("/")
    if not url.startswith(("http://", "https://")):
        print(f"error: --api-url must be an http:// or https:// URL, got {url!r}", file=sys.stderr)
        return 2
    key = args.api_key
    if not key:
        if sys.stdin.isatty():
            key = getpass.getpass("API key: ")
        else:
            key = sys.stdin.readline()
    key = (key or "").strip()
    if not key:
        print("error: no API key given: pass --api-key KEY or write it to stdin", file=sys.stderr)
        return 2
    with Client(Config(url, key, "login")) as api:
        try:
            count = len(api.list_sandboxes())
        except ApiError as exc:
            if exc.status == 401:
                print(f"error: {url} refused the key: {exc.message}; nothing saved", file=sys.stderr)
            else:
                print(f"error: cannot log in to {url}: {exc}; nothing saved", file=sys.stderr)
            return 1
    path = save_config(url, key)
    print(f"Logged in to {url} ({count} sandbox{'es' if count != 1 else ''}); key saved to {path}")
    if os.environ.get("DAYTONA_API_KEY"):
        print("note: DAYTONA_API_KEY is set and wins over the saved key", file=sys.stderr)
    return 0
