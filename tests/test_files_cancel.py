"""A walk or grep stops in its worker thread when the client disconnects mid-request."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import RunningDaemon, start_daemon


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def big_tree_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    """8,000 files of 2,000 short lines: a full grep costs the daemon several CPU seconds."""
    tmp = tmp_path_factory.mktemp("cancel")
    content = b"ab\n" * 2000
    for d in range(80):
        folder = tmp / "work" / "big" / f"d{d:02}"
        folder.mkdir(parents=True)
        for f in range(100):
            (folder / f"f{f:03}.txt").write_bytes(content)
    daemon = start_daemon(tmp)
    yield daemon
    daemon.stop()


def disconnect_mid_request(daemon: RunningDaemon, target: str) -> None:
    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(0.4)  # the grep is well under way


def test_find_stops_when_the_client_disconnects(big_tree_daemon: RunningDaemon) -> None:
    pid = big_tree_daemon.process.pid
    disconnect_mid_request(big_tree_daemon, "/files/find?path=big&pattern=needle")
    time.sleep(0.5)  # noticing the disconnect and reaching the next entry
    before = cpu_seconds(pid)
    time.sleep(1.0)
    busy = cpu_seconds(pid) - before
    # Still grepping, this would be close to a full CPU second.
    assert busy < 0.2, f"the daemon used {busy:.2f} s of CPU after the client left"
    # The daemon still answers, and a search that runs to the end still completes.
    response = httpx.get(f"{big_tree_daemon.url}/files/search", params={"path": "big", "pattern": "f000.txt"})
    assert response.status_code == 200 and len(response.json()["files"]) == 80
