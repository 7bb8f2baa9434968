"""The process bubblewrap starts inside a sandbox: a pre-imported daemon waiting for its id.

Importing the daemon costs ~150 ms, so a pooled sandbox does it ahead of time (and starts
the interpreter that code runs fork, toolbox/process/execute/zygote.py), reports
``pooled`` on stdout and blocks on stdin for one JSON line, the claim:
``{"id": "...", "env": {...}}``. It then applies the environment and serves the Toolbox
API on the Unix socket the runtime bound and passed as descriptor $TOOLBOX_FD (the socket
file lives where no sandbox can reach it: runtime/sockets.py); the daemon's readiness line
on stdout tells the runtime that the sandbox answers.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

# Names (comma-separated) of variables the daemon's start needs and its children must not see.
DAEMON_ONLY_ENV = "RUNTIME_DAEMON_ONLY_ENV"


def preload() -> None:
    import uvicorn  # noqa: F401
    import uvicorn.loops.uvloop  # noqa: F401
    import uvicorn.protocols.http.httptools_impl  # noqa: F401
    import uvicorn.protocols.websockets.websockets_sansio_impl  # noqa: F401
    import uvicorn.lifespan.on  # noqa: F401

    from toolbox import app, cli, server  # noqa: F401

    for name in app.AREAS:
        importlib.import_module(name)

    # Code runs: their models built and the interpreter they fork started now, not in
    # the first run after the claim.
    from toolbox.process.execute import routes as execute_routes
    from toolbox.process.execute import zygote

    execute_routes.preload()
    zygote.prestart(Path(os.environ.get("HOME", os.getcwd())).resolve())


def drop_daemon_only_env() -> None:
    """Forget the variables only this interpreter needed to start (its PYTHONPATH on a
    snapshot's root, runtime/codemount.py), before any sandbox process is started: the
    snapshot's own python3 must never import our packages instead of the user's."""
    for name in filter(None, os.environ.pop(DAEMON_ONLY_ENV, "").split(",")):
        os.environ.pop(name, None)


def main() -> int:
    drop_daemon_only_env()
    # Group-writable by default, so sandboxes sharing a volume (through its shared gid,
    # see runtime.volumes) can change each other's files there; the sandbox's own group
    # has no other member, so its private files stay private.
    os.umask(0o002)
    preload()
    print("pooled", flush=True)
    line = sys.stdin.readline()
    if not line:
        return 0  # the runtime went away before claiming us
    claim = json.loads(line)
    sandbox_id = claim["id"]
    os.environ.update({str(k): str(v) for k, v in (claim.get("env") or {}).items()})
    os.environ["DAYTONA_SANDBOX_ID"] = sandbox_id
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)

    from toolbox import cli

    fd = os.environ.pop("TOOLBOX_FD")  # not inherited by the sandbox's own processes
    os.set_inheritable(int(fd), False)
    return cli.main(["serve", "--fd", fd, "--workdir", os.environ.get("HOME", os.getcwd()),
                     "--sandbox-id", sandbox_id])


if __name__ == "__main__":
    sys.exit(main())
