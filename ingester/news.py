"""News polling through alpaca-py's ``NewsClient``: a high-water mark on ``updated_at``, dedupe on
(``id``, ``updated_at``), within a REST request budget shared with the backfill.

    cursor = NewsCursor(start=now - 5 minutes)
    fresh = cursor.accept(items)            # new articles and new versions of known ones, oldest first
    cursor.since()                          # where the next poll starts (the mark, less an overlap)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

import pandas as pd

from farmkit.model import MalformedMessage, NewsItem
from ingester.wire import rest_news

log = logging.getLogger("ingester.news")
PAGE_SIZE = 50            # alpaca-py asks for news 50 at a time


class RestBudget:
    """A token bucket: at most ``per_minute`` REST requests a minute, shared by every caller."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        self.per_minute, self.clock = per_minute, clock
        self._tokens = float(per_minute)
        self._at = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(float(self.per_minute), self._tokens + (now - self._at) * self.per_minute / 60.0)
        self._at = now

    def try_take(self, n: int = 1) -> float:
        """Take ``n`` tokens if there are; else take none and return the seconds to wait (0.0: taken)."""
        with self._lock:
            self._refill()
            if self._tokens >= n:
                self._tokens -= n
                return 0.0
            return (n - self._tokens) * 60.0 / self.per_minute

    def take(self, n: int = 1, stop: threading.Event | None = None) -> bool:
        """Block until ``n`` tokens are taken; False if ``stop`` was set first."""
        n = min(n, self.per_minute)
        while (wait := self.try_take(n)) > 0:
            if stop is not None and stop.wait(wait):
                return False
            if stop is None:
                time.sleep(wait)
        return True


class NewsCursor:
    """Which articles are new. An article is new when its (id, updated_at) was not seen; the mark is the
    greatest ``updated_at`` seen, and the next poll starts ``overlap`` before it (articles can become
    visible late), so keys seen within the overlap are remembered to drop the repeats."""

    def __init__(self, start: pd.Timestamp, overlap: pd.Timedelta = pd.Timedelta(minutes=1)):
        self.mark = pd.Timestamp(start).tz_convert("UTC") if pd.Timestamp(start).tzinfo else \
            pd.Timestamp(start).tz_localize("UTC")
        self.overlap = overlap
        self._seen: dict[tuple[str, int], pd.Timestamp] = {}

    def since(self) -> pd.Timestamp:
        return self.mark - self.overlap

    def accept(self, items: Iterable[NewsItem]) -> list[NewsItem]:
        fresh: list[NewsItem] = []
        for item in sorted(items, key=lambda i: (i.updated_at, str(i.id))):
            key = (str(item.id), item.updated_at.value)
            if key in self._seen or item.updated_at < self.since():
                continue
            self._seen[key] = item.updated_at
            fresh.append(item)
            if item.updated_at > self.mark:
                self.mark = item.updated_at
        floor = self.since()
        self._seen = {k: t for k, t in self._seen.items() if t >= floor}
        return fresh


class NewsPoller:
    """Polls every ``interval`` seconds and hands new articles to ``publish``. ``fetch(since)`` returns the
    raw REST items (dicts) and how many requests it took; the default uses alpaca-py."""

    def __init__(self, fetch: Callable[[pd.Timestamp], list[dict]], publish: Callable[[NewsItem], None],
                 cursor: NewsCursor, interval: float, budget: RestBudget, *, on_malformed=None, on_poll=None):
        self.fetch, self.publish, self.cursor = fetch, publish, cursor
        self.interval, self.budget = interval, budget
        self.on_malformed = on_malformed or (lambda reason: None)
        self.on_poll = on_poll or (lambda ok: None)
        self.last_success: float | None = None
        self.error: str | None = None

    def poll_once(self) -> int:
        items, bad = [], 0
        for raw in self.fetch(self.cursor.since()):
            try:
                items.append(rest_news(raw))
            except MalformedMessage as exc:
                bad += 1
                self.on_malformed(exc.reason)
        fresh = self.cursor.accept(items)
        for item in fresh:
            self.publish(item)
        return len(fresh)

    def run(self, stop: threading.Event) -> None:
        failures = 0
        while not stop.is_set():
            if not self.budget.take(1, stop):
                return
            try:
                count = self.poll_once()
                self.last_success, self.error, failures = time.monotonic(), None, 0
                self.on_poll(True)
                if count:
                    log.info("news: %d new article(s), mark %s", count, self.cursor.mark)
            except Exception as exc:  # noqa: BLE001 - a failed poll is retried at the next interval
                failures += 1
                self.error = f"{type(exc).__name__}: {exc}"
                self.on_poll(False)
                log.warning("news poll failed (%d in a row): %s; retrying in %.0f s (check APCA_API_KEY_ID, "
                            "APCA_API_SECRET_KEY and FARM_INGEST_DATA_URL)", failures, self.error,
                            self.interval * min(failures, 6))
            stop.wait(self.interval * min(max(failures, 1), 6))


def alpaca_news_fetch(key: str, secret: str, symbols: tuple[str, ...], url: str | None,
                      budget: RestBudget, stop: threading.Event, pages_per_poll: int = 4):
    """``fetch(since)`` for :class:`NewsPoller` over alpaca-py: oldest first from ``since``, at most
    ``pages_per_poll`` pages a poll (the next poll continues from the new mark)."""
    from alpaca.data.historical.news import NewsClient
    from alpaca.data.requests import NewsRequest

    client = NewsClient(key, secret, raw_data=True, url_override=url or None)
    wanted = None if not symbols or "*" in symbols else ",".join(symbols)

    def fetch(since: pd.Timestamp) -> list[dict]:
        # One token was taken by the poll; the pages beyond the first take theirs here.
        budget.take(pages_per_poll - 1, stop)
        request = NewsRequest(start=since.to_pydatetime(), symbols=wanted, sort="asc",
                              limit=PAGE_SIZE * pages_per_poll, include_content=False)
        return list((client.get_news(request) or {}).get("news", []))

    return fetch
