"""`upload` and `download`: one file each way, streamed (never whole in memory), with a byte
count on stderr when it is a terminal. A download lands under a temp name beside its
target and is renamed only once complete, so a failed one leaves no half-written file."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from client.api import Client
from client.cli import output
from client.config import load_config

CHUNK = 1 << 16


def _size(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"


def _counted(chunks: Iterable[bytes], shown: output.Progress, verb: str, total: int | None) -> Iterator[bytes]:
    done = 0
    for chunk in chunks:
        done += len(chunk)
        shown.update(f"{verb} {_size(done)}" + (f" of {_size(total)}" if total else ""))
        yield chunk


def run_upload(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    source: Path | None = None if args.local == "-" else Path(args.local)
    if source is not None and not source.is_file():
        parser.error(f"{args.local} is not a file")
    with Client(load_config()) as api, api.toolbox(args.sandbox, timeout=60) as toolbox:
        with output.progress(f"Uploading to {args.remote}") as shown:
            if source is None:
                reader = sys.stdin.buffer
                chunks = iter(lambda: reader.read(CHUNK), b"")
                toolbox.upload(args.remote, _counted(chunks, shown, "Uploaded", None))
            else:
                total = source.stat().st_size
                with source.open("rb") as local:
                    chunks = iter(lambda: local.read(CHUNK), b"")
                    toolbox.upload(args.remote, _counted(chunks, shown, "Uploaded", total))
    if args.format == "json":
        output.print_json({"path": args.remote, "uploaded": True})
    else:
        print(f"Uploaded {args.local} to {args.remote}", file=sys.stderr if source is None else sys.stdout)
    return 0


def run_download(args: argparse.Namespace) -> int:
    local = args.local or os.path.basename(args.remote.rstrip("/")) or "download"
    with Client(load_config()) as api, api.toolbox(args.sandbox, timeout=60) as toolbox:
        with output.progress(f"Downloading {args.remote}") as shown:
            chunks = _counted(toolbox.download(args.remote, CHUNK), shown, "Downloaded", None)
            if local == "-":
                for chunk in chunks:
                    sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
                return 0
            target = Path(local)
            if target.is_dir():
                target = target / (os.path.basename(args.remote.rstrip("/")) or "download")
            fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out:
                    for chunk in chunks:
                        out.write(chunk)
                os.chmod(temp, 0o644 & ~_umask())
                os.replace(temp, target)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
    if args.format == "json":
        output.print_json({"path": args.remote, "savedTo": str(target)})
    else:
        print(f"Downloaded {args.remote} to {target}")
    return 0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
