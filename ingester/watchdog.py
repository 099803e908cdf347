"""Staleness watchdog: a connection that is "connected" but silent while the market is open is reconnected.

Alpaca streams can stay connected for hours without data (alpaca-py issue 740); only the application can
tell, because only it knows whether data should be flowing. Stocks ask ``/v2/clock`` (cached); crypto
trades around the clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("ingester.watchdog")


def is_stale(now: float, last_message_at: float | None, connected_at: float | None, market_open: bool,
             limit: float) -> bool:
    """Whether to reconnect: connected, the market open, and nothing for more than ``limit`` seconds
    since the last message (or since the connection, for one that never had any)."""
    if not market_open or connected_at is None:
        return False
    since = connected_at if last_message_at is None else max(last_message_at, connected_at)
    return now - since > limit


class MarketClock:
    """``is_open(feed)``: crypto always; stocks as Alpaca's ``/v2/clock`` says, asked at most every
    ``ttl`` seconds. If the clock cannot be reached the market counts as open (the watchdog stays armed)."""

    def __init__(self, ask: Callable[[], bool] | None, ttl: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.ask, self.ttl, self.clock = ask, ttl, clock
        self._value: bool | None = None
        self._at = float("-inf")
        self._lock = threading.Lock()

    def is_open(self, feed: str) -> bool:
        if feed == "crypto" or self.ask is None:
            return True
        with self._lock:
            if self.clock() - self._at >= self.ttl:
                try:
                    self._value = bool(self.ask())
                except Exception as exc:  # noqa: BLE001 - the watchdog must keep working without the clock
                    log.warning("cannot ask Alpaca's clock (%s: %s); treating the market as open",
                                type(exc).__name__, exc)
                    self._value = True
                self._at = self.clock()
            return bool(self._value)


def alpaca_clock(key: str, secret: str, url: str | None) -> Callable[[], bool]:
    """Ask ``/v2/clock`` through alpaca-py's TradingClient (paper endpoint unless ``url`` says otherwise)."""
    from alpaca.trading.client import TradingClient

    client = TradingClient(key, secret, paper=True, url_override=url or None)
    return lambda: client.get_clock().is_open


class Watchdog:
    """Checks ``connections`` every ``period`` seconds; calls ``conn.reconnect(reason)`` on stale ones."""

    def __init__(self, connections: list, market: MarketClock, limit: float, period: float | None = None):
        self.connections, self.market, self.limit = connections, market, limit
        self.period = period if period is not None else max(0.05, min(1.0, limit / 4))

    def check(self, now: float | None = None) -> list[str]:
        now = time.monotonic() if now is None else now
        fired = []
        for conn in self.connections:
            if is_stale(now, conn.last_message_at, conn.connected_at, self.market.is_open(conn.feed), self.limit):
                reason = f"no data for more than {self.limit:g} s while the market is open"
                fired.append(conn.name)
                conn.reconnect(reason)
        return fired

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.period):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the watchdog itself must not die
                log.exception("watchdog check failed")
