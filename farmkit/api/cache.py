"""A small thread-safe LRU cache with an optional time to live, for answers that cannot change
(a finished run's records) or may be a moment old (leaderboards)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

_MISSING = object()


class TtlCache:
    """``ttl=None``: entries live until evicted (least recently used first, beyond ``maxsize``)."""

    def __init__(self, maxsize: int, ttl: float | None = None, clock=time.monotonic):
        self.maxsize, self.ttl, self.clock = maxsize, ttl, clock
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key, default=None):
        with self._lock:
            entry = self._items.get(key, _MISSING)
            if entry is not _MISSING and (self.ttl is None or self.clock() - entry[0] < self.ttl):
                self._items.move_to_end(key)
                self.hits += 1
                return entry[1]
            if entry is not _MISSING:
                del self._items[key]
            self.misses += 1
            return default

    def put(self, key, value) -> None:
        with self._lock:
            self._items[key] = (self.clock(), value)
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
