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


class RunRecords:
    """Finished runs' FMEL records held whole, at most ``max_rows`` records in all (least recently
    used runs out first; a run larger than a quarter of that is not held). Exploring a run means asking
    for many of its bars: the first one reads the run, the others are lookups. One reader per run:
    concurrent requests for a run not yet held wait for the same read."""

    def __init__(self, max_rows: int = 2_000_000):
        self.max_rows = max_rows
        self._runs: OrderedDict = OrderedDict()     # run_id -> (records frame, bar_number -> position)
        self._rows = 0
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def row(self, run_id: str, bar: int, load) -> dict | None:
        """The record of ``bar`` as a dict, or None when the run is not held (too large) or has no such
        bar; ``load()`` reads the run's records (a DataFrame in bar order) the first time."""
        held = self._get(run_id)
        if held is None:
            with self._lock:
                gate = self._loading.setdefault(run_id, threading.Lock())
            with gate:
                held = self._get(run_id)
                if held is None:
                    held = self._put(run_id, load())
            with self._lock:
                self._loading.pop(run_id, None)
        if held is None:
            return None
        frame, positions = held
        position = positions.get(int(bar))
        return None if position is None else frame.iloc[position].to_dict()

    def _get(self, run_id: str):
        with self._lock:
            held = self._runs.get(run_id)
            if held is not None:
                self._runs.move_to_end(run_id)
            return held

    def _put(self, run_id: str, frame):
        if len(frame) > self.max_rows // 4:
            return None
        held = (frame, {int(b): i for i, b in enumerate(frame["bar_number"].to_numpy())})
        with self._lock:
            self._runs[run_id] = held
            self._rows += len(frame)
            while self._rows > self.max_rows and len(self._runs) > 1:
                _, (old, _) = self._runs.popitem(last=False)
                self._rows -= len(old)
        return held
