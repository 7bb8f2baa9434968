"""A dict that forgets everything when it reaches its limit.

The proxy's and the control plane's lookup caches (parsed Host headers, upstream addresses,
sandbox records, API keys) hold answers that are cheap to compute again, and a client that
sends endless distinct keys must not grow them without bound. Clearing all at the limit is
cruder than LRU but costs nothing per hit, which is what these hot paths need.
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedDict(dict[K, V]):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: K, value: V) -> None:
        if len(self) >= self.limit and key not in self:
            self.clear()
        super().__setitem__(key, value)
