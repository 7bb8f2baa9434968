"""`list()` over 1,000 sandbox records: server time of `GET /api/sandbox`, every page.

Runs the real control plane app (SQLite in WAL mode in a temporary state dir) in process
and calls it over ASGI, so the figure is the server's own time (no network, no SDK; the
CPU figure, which includes httpx's small share, is the one to trust on a loaded machine):
1,000 records inserted as the service would, then the pages the SDK walks
(`limit` 100, its default server page, and 200, the most it may ask for), and one label-
filtered listing.

    .venv/bin/python benchmarks/controlplane_list.py
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from controlplane.app import build_app
from controlplane.plane import ControlPlane, PlaneConfig
from controlplane.sandboxes.records import SandboxRecord
from controlplane.sandboxes.routes import PublicUrls
from runtime.backend import LocalBackend
from runtime.manager import Runtime
from runtime.sandbox import new_id


def records(organization: str, count: int) -> list[SandboxRecord]:
    now = time.time()
    return [SandboxRecord(
        id=new_id(), organization_id=organization, name=f"sbx-{i}", state="started" if i % 3 else "stopped",
        desired_state="started" if i % 3 else "stopped", pending=False, os_user="daytona", env={"A": "1"},
        labels={"code-toolbox-language": "python", "team": f"t{i % 10}"}, public=False, target="local", cpu=1,
        gpu=0, memory=1, disk=3, auto_stop_interval=15, auto_archive_interval=10080, auto_delete_interval=-1,
        network_block_all=True, preview_token="x" * 32, created_at=now + i / 1000, updated_at=now,
        snapshot="default", last_activity_at=now) for i in range(count)]


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        plane = ControlPlane(PlaneConfig(state_dir=state, urls=PublicUrls("http", "localhost", 8080),
                                         registry_path=state / "registry.json"),
                             LocalBackend(Runtime(state, pool_size=0, write_registry=False)))
        await plane.open()
        key = (await plane.create_key()).key
        org = plane.keys.authenticate(key)
        assert org is not None
        for record in records(org.organization_id, 1000):
            plane.records.insert(record)
        transport = httpx.ASGITransport(app=build_app(plane))
        async with httpx.AsyncClient(transport=transport, base_url="http://cp/api",
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            for limit in (100, 200):
                totals, pages, cpu = [], [], []
                for _ in range(10):
                    cursor, total, seen = None, 0.0, 0
                    cpu_started = time.process_time()
                    while True:
                        started = time.perf_counter()
                        response = await client.get("/sandbox", params={"limit": limit, **({"cursor": cursor} if cursor else {})})
                        elapsed = time.perf_counter() - started
                        pages.append(elapsed)
                        total += elapsed
                        body = response.json()
                        seen += len(body["items"])
                        cursor = body["nextCursor"]
                        if not cursor:
                            break
                    assert seen == 1000, seen
                    totals.append(total)
                    cpu.append(time.process_time() - cpu_started)
                print(f"limit {limit}: all 1,000 records p50 {statistics.median(totals) * 1000:.1f} ms wall, "
                      f"{statistics.median(cpu) * 1000:.1f} ms CPU (client included; one page p50 "
                      f"{statistics.median(pages) * 1000:.1f} ms, max {max(pages) * 1000:.1f} ms)")
            times = []
            for _ in range(10):
                started = time.perf_counter()
                response = await client.get("/sandbox", params={"labels": '{"team": "t3"}', "limit": 200})
                times.append(time.perf_counter() - started)
            assert len(response.json()["items"]) == 100
            print(f"label filter over 1,000 records: p50 {statistics.median(times) * 1000:.1f} ms")
        await plane.close()


if __name__ == "__main__":
    asyncio.run(main())
