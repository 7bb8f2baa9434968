"""Auto-stop, auto-archive and auto-delete, decided in one place, plus the periodic
reconcile that notices sandboxes that died on their own.

Auto-stop reads the proxy's last-activity records (real traffic only: requests and
WebSocket data frames, not pings) and stops a sandbox idle for `autoStopInterval` minutes
since max(that, the recorded last activity: its last start, `POST .../last-activity`);
editing the record (labels, intervals) is not activity. Auto-archive archives a sandbox
stopped for `autoArchiveInterval` minutes (when the backend can archive); auto-delete
deletes one stopped for `autoDeleteInterval` minutes (0 means on stop, handled by stop
itself). "Stopped for" still counts from the record's last change (`updated_at`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio

from controlplane.auth import Principal
from controlplane.backend import Unsupported
from controlplane.errors import ApiError
from controlplane.reconcile import reconcile
from controlplane.sandboxes.states import State

if TYPE_CHECKING:
    from controlplane.plane import ControlPlane

log = logging.getLogger("controlplane.policies")

ActivitySource = Callable[[], Awaitable[dict[str, float]]]


class Policies:
    def __init__(self, plane: ControlPlane, activity: ActivitySource | None, *, minute: float = 60.0,
                 interval: float = 5.0) -> None:
        self.plane = plane
        self.activity = activity
        self.minute = minute  # seconds per policy minute (tests shorten it)
        self.interval = interval
        self._cannot_archive = False

    async def check(self, now: float | None = None) -> list[str]:
        """One pass; returns what it did ("stop ID", "archive ID", "delete ID")."""
        now = time.time() if now is None else now
        seen: dict[str, float] = {}
        if self.activity is not None:
            try:
                seen = await self.activity()
            except Exception as exc:  # noqa: BLE001 -- the proxy restarting: decide nothing on no data
                log.warning("could not read last activity from the proxy: %s", exc)
                return []
        done: list[str] = []
        service = self.plane.sandboxes
        for record in await anyio.to_thread.run_sync(self.plane.records.all):
            if record.pending:
                continue
            who = Principal(record.organization_id, "policy")
            # Idle since the last activity: traffic the proxy saw, a start, a create, a
            # POST last-activity; never a record edit (labels, intervals), as in Daytona.
            recorded = record.last_activity_at or record.created_at
            last = max(recorded, seen.get(record.id, 0.0))
            if last > recorded:
                await anyio.to_thread.run_sync(lambda r=record, t=last: self.plane.records.change(  # type: ignore[misc]
                    r.organization_id, r.id, last_activity_at=t))
            try:
                if record.state == State.STARTED and record.auto_stop_interval > 0:
                    if now - last >= record.auto_stop_interval * self.minute:
                        log.info("auto-stopping %s: idle for %.0f s", record.id, now - last)
                        await service.stop(who, record.id)
                        done.append(f"stop {record.id}")
                elif record.state == State.STOPPED:
                    stopped_for = now - record.updated_at
                    if record.auto_delete_interval >= 0 and stopped_for >= record.auto_delete_interval * self.minute:
                        await service.delete(who, record.id)
                        done.append(f"delete {record.id}")
                    elif (not self._cannot_archive and record.auto_archive_interval > 0
                          and stopped_for >= record.auto_archive_interval * self.minute):
                        await service.archive(who, record.id)
                        done.append(f"archive {record.id}")
            except ApiError as exc:
                if exc.status == Unsupported("x").status:
                    self._cannot_archive = True  # TODO(runtime archive): until the backend can
                else:
                    log.warning("policy on %s failed: %s", record.id, exc.message)
        return done

    async def run(self) -> None:
        while True:
            await anyio.sleep(self.interval)
            try:
                await reconcile(self.plane, at_start=False)
                await self.check()
                # Also picks up keys another process wrote into the database (the key
                # command goes through this process and is published at once).
                await self.plane.view.publish()
            except Exception:
                log.exception("policy pass failed")
