"""Missing minute bars from Alpaca's historical REST API (alpaca-py), fetched on a thread within the
REST budget: gap requests queued meanwhile are merged into one multi-symbol request per feed."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

import pandas as pd

from farmkit.model import Bar, MalformedMessage
from ingester.news import RestBudget
from ingester.sequencer import GapRequest
from ingester.wire import rest_bar

log = logging.getLogger("ingester.backfill")
Fetch = Callable[[list[str], pd.Timestamp, pd.Timestamp], dict[str, list[dict]]]


def alpaca_bars_fetch(feed: str, key: str, secret: str, stock_feed: str, url: str | None) -> Fetch:
    """``fetch(symbols, start, end)`` -> {symbol: [REST bar dicts]} for the stocks or crypto feed."""
    from alpaca.data.enums import DataFeed
    from alpaca.data.historical import CryptoHistoricalDataClient, StockHistoricalDataClient
    from alpaca.data.requests import CryptoBarsRequest, StockBarsRequest
    from alpaca.data.timeframe import TimeFrame

    if feed == "crypto":
        client = CryptoHistoricalDataClient(key or None, secret or None, raw_data=True, url_override=url or None)
        return lambda symbols, start, end: client.get_crypto_bars(CryptoBarsRequest(
            symbol_or_symbols=symbols, timeframe=TimeFrame.Minute, start=start.to_pydatetime(),
            end=end.to_pydatetime())) or {}
    client = StockHistoricalDataClient(key, secret, raw_data=True, url_override=url or None)
    return lambda symbols, start, end: client.get_stock_bars(StockBarsRequest(
        symbol_or_symbols=symbols, timeframe=TimeFrame.Minute, start=start.to_pydatetime(),
        end=end.to_pydatetime(), feed=DataFeed(stock_feed))) or {}


class Backfiller:
    """``request(gap)`` queues a gap; ``on_filled(symbol, bars)`` or ``on_failed(symbol, reason)`` is called
    on the backfill thread once it is fetched (or after ``attempts`` failures)."""

    def __init__(self, feed: str, fetch: Fetch, budget: RestBudget, on_filled: Callable[[str, list[Bar]], None],
                 on_failed: Callable[[str, str], None], *, attempts: int = 4, on_malformed=None):
        self.feed, self.fetch, self.budget = feed, fetch, budget
        self.on_filled, self.on_failed, self.attempts = on_filled, on_failed, attempts
        self.on_malformed = on_malformed or (lambda reason: None)
        self._queue: queue.Queue[GapRequest] = queue.Queue()

    def request(self, gap: GapRequest) -> None:
        self._queue.put(gap)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                gaps = [self._queue.get(timeout=0.2)]
            except queue.Empty:
                continue
            while True:
                try:
                    gaps.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._fill(gaps, stop)

    def _fill(self, gaps: list[GapRequest], stop: threading.Event) -> None:
        now = pd.Timestamp.now(tz="UTC")
        start = min(g.start for g in gaps)
        end = max(g.end if g.end is not None else now for g in gaps)
        symbols = sorted({g.symbol for g in gaps})
        error = ""
        for attempt in range(1, self.attempts + 1):
            if not self.budget.take(1, stop):
                error = "stopping"
                break
            try:
                raw = self.fetch(symbols, start, end)
                break
            except Exception as exc:  # noqa: BLE001 - retried, then reported per symbol
                error = f"{type(exc).__name__}: {exc}"
                log.warning("backfill of %d %s symbol(s) %s..%s failed (attempt %d of %d): %s", len(symbols),
                            self.feed, start, end, attempt, self.attempts, error)
                if stop.wait(min(2.0 ** attempt * 0.25, 10.0)):
                    break
        else:
            raw = None
        if raw is None or error == "stopping":
            for symbol in symbols:
                self.on_failed(symbol, error or "stopped")
            return
        for gap in gaps:
            bars = []
            for row in raw.get(gap.symbol, []) or []:
                try:
                    bar = rest_bar(gap.symbol, row)
                except MalformedMessage as exc:
                    self.on_malformed(exc.reason)
                    continue
                if bar.timestamp >= gap.start and (gap.end is None or bar.timestamp <= gap.end):
                    bars.append(bar)
            self.on_filled(gap.symbol, bars)
