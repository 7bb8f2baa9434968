"""Build logs (controlplane/snapshots/logs.py) on their own: followers get every line as it
is written and end when the build does; a log that would grow without bound is cut."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from controlplane.snapshots import logs
from controlplane.snapshots.logs import BuildLogs


def test_followers_see_lines_as_written_and_end_with_the_build(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[bytes], list[bytes], bytes]:
        store = BuildLogs(tmp_path / "build-logs")
        log = store.open("s1")

        async def follow() -> list[bytes]:
            return [chunk async for chunk in store.read("s1", follow=True)]

        first, second = asyncio.ensure_future(follow()), asyncio.ensure_future(follow())
        for n in range(5):
            log.line(f"line {n}")
            await asyncio.sleep(0.01)
        log.last("done")
        log.close()
        done = await asyncio.wait_for(asyncio.gather(first, second), 10)
        later = b"".join([chunk async for chunk in store.read("s1", follow=True)])  # a finished log: at once
        return done[0], done[1], later

    one, two, later = asyncio.run(scenario())
    expected = b"".join(f"line {n}\n".encode() for n in range(5)) + b"done\n"
    assert b"".join(one) == b"".join(two) == later == expected
    mode = os.stat(tmp_path / "build-logs" / "s1.log").st_mode
    assert stat.S_IMODE(mode) == 0o600


def test_a_log_is_cut_at_its_limit_but_keeps_its_last_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "MAX_LOG", 10_000)
    store = BuildLogs(tmp_path)
    log = store.open("big")
    for _ in range(2_000):
        log.line("x" * 99)
    log.last("Build failed: the reason")
    log.close()
    text = (tmp_path / "big.log").read_text()
    assert len(text) < 10_200 and "build log cut at" in text and text.endswith("Build failed: the reason\n")
