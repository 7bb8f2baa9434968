"""A bounded ring of watch events read by cursor: one producer, any number of readers.

Readers never slow the producer down: each keeps its own cursor (the last sequence number
it saw), and a reader that falls more than `capacity` events behind gets one explicit
`overflow` event saying how many it missed instead of a silent gap.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

Event = dict[str, Any]


class EventRing:
    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._events: deque[Event] = deque(maxlen=capacity)
        self._last_seq = 0
        self._changed = asyncio.Condition()
        self.closed = False

    @property
    def last_seq(self) -> int:
        return self._last_seq

    async def publish(self, events: list[Event]) -> None:
        if not events:
            return
        for event in events:
            self._last_seq += 1
            event["seq"] = self._last_seq
            self._events.append(event)
        async with self._changed:
            self._changed.notify_all()

    async def close(self) -> None:
        self.closed = True
        async with self._changed:
            self._changed.notify_all()

    def read(self, cursor: int, limit: int) -> tuple[list[Event], int]:
        """Events after `cursor` (at most `limit`) and the cursor to pass next time."""
        cursor = max(0, min(cursor, self._last_seq))
        out: list[Event] = []
        oldest = self._events[0]["seq"] if self._events else self._last_seq + 1
        if cursor + 1 < oldest:
            # The reader fell behind the ring: say so, then carry on from the oldest kept.
            missed = oldest - cursor - 1
            out.append({"seq": oldest - 1, "type": "overflow", "dropped": missed})
            cursor = oldest - 1
        if self._events:
            start = cursor + 1 - oldest  # index of the first wanted event
            for index in range(max(start, 0), len(self._events)):
                if len(out) >= limit:
                    break
                out.append(self._events[index])
        next_cursor = out[-1]["seq"] if out else cursor
        return out, next_cursor

    async def wait(self, cursor: int, limit: int, timeout: float) -> tuple[list[Event], int]:
        """Like `read`, but wait up to `timeout` seconds for something to happen."""
        events, next_cursor = self.read(cursor, limit)
        if events or timeout <= 0 or self.closed:
            return events, next_cursor
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self._last_seq > next_cursor or self.closed), timeout
                )
            except asyncio.TimeoutError:
                pass
        return self.read(cursor, limit)
