"""Prometheus text metrics, kept by hand: a few counters do not justify a dependency."""

from __future__ import annotations

import asyncio
from collections import Counter

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.websockets_open = 0
        self._latency_buckets = [0] * len(_BUCKETS)
        self._latency_count = 0
        self._latency_sum = 0.0

    def observe_upstream(self, seconds: float) -> None:
        self._latency_count += 1
        self._latency_sum += seconds
        for index, bound in enumerate(_BUCKETS):
            if seconds <= bound:
                self._latency_buckets[index] += 1
                break

    def render(self, last_activity: dict[str, float]) -> bytes:
        lines = [
            "# HELP proxy_requests_total Requests received, by route kind.",
            "# TYPE proxy_requests_total counter",
        ]
        lines += [f'proxy_requests_total{{kind="{k}"}} {v}' for k, v in sorted(self.requests.items())]
        lines += ["# HELP proxy_errors_total Errors the proxy answered itself, by X-Proxy-Error code.",
                  "# TYPE proxy_errors_total counter"]
        lines += [f'proxy_errors_total{{code="{_escape(k)}"}} {v}' for k, v in sorted(self.errors.items())]
        lines += ["# HELP proxy_websockets_open WebSocket connections being relayed now.",
                  "# TYPE proxy_websockets_open gauge", f"proxy_websockets_open {self.websockets_open}",
                  "# HELP proxy_upstream_latency_seconds Time until the daemon answered with headers.",
                  "# TYPE proxy_upstream_latency_seconds histogram"]
        cumulative = 0
        for bound, count in zip(_BUCKETS, self._latency_buckets, strict=True):
            cumulative += count
            lines.append(f'proxy_upstream_latency_seconds_bucket{{le="{bound}"}} {cumulative}')
        lines += [f'proxy_upstream_latency_seconds_bucket{{le="+Inf"}} {self._latency_count}',
                  f"proxy_upstream_latency_seconds_sum {self._latency_sum:.6f}",
                  f"proxy_upstream_latency_seconds_count {self._latency_count}",
                  "# HELP proxy_sandbox_last_activity_seconds Unix time of the last real traffic, by sandbox.",
                  "# TYPE proxy_sandbox_last_activity_seconds gauge"]
        lines += [f'proxy_sandbox_last_activity_seconds{{sandbox="{_escape(k)}"}} {v:.3f}'
                  for k, v in sorted(last_activity.items())]
        # Leak detection under load (stress/load.py): flat once the traffic stops.
        lines += ["# HELP proxy_asyncio_tasks Tasks alive in this worker's event loop.",
                  "# TYPE proxy_asyncio_tasks gauge", f"proxy_asyncio_tasks {len(asyncio.all_tasks())}"]
        return ("\n".join(lines) + "\n").encode()
