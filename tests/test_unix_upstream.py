"""The proxy and the daemon's forwarder reach Unix-socket upstreams without following a
symlink: a sandbox can write the directory its daemon's socket is in, and must not be able
to point the host side at another socket (the control plane's, a container engine's)."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from toolbox.forward.pool import open_connection


class _Protocol(asyncio.Protocol):
    pass


def test_a_real_socket_connects_and_a_symlink_to_one_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "host-only.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(target))
    server.listen()
    link = tmp_path / "toolbox.sock"
    link.symlink_to(target)
    regular = tmp_path / "file.sock"
    regular.write_text("")

    async def attempt(path: Path) -> None:
        protocol = await open_connection(_Protocol, str(path), "localhost", 0)
        assert isinstance(protocol, _Protocol)

    try:
        asyncio.run(attempt(target))
        accepted, _ = server.accept()
        accepted.close()
        server.setblocking(False)
        with pytest.raises(ConnectionRefusedError, match="not a socket"):
            asyncio.run(attempt(link))
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing reached the socket behind the link
        with pytest.raises(ConnectionRefusedError, match="not a socket"):
            asyncio.run(attempt(regular))
        with pytest.raises(FileNotFoundError):
            asyncio.run(attempt(tmp_path / "missing.sock"))
        assert not any(os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path))
                       for fd in map(int, os.listdir("/proc/self/fd")) if _is_link(fd))
    finally:
        server.close()


def _is_link(fd: int) -> bool:
    try:
        os.readlink(f"/proc/self/fd/{fd}")
        return True
    except OSError:
        return False
