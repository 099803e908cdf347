"""Per-symbol staleness of a paper run's bars, against each market's trading hours.

A symbol is **stale** when its market is open and no bar of it has been accepted from the bus for
more than ``stale_after`` seconds (default: three bar sizes; ``FARM_STALE_AFTER`` sets it). Age is
wall time since the symbol's last bar arrived, or since the session started when none has: after a
restart with a silent feed, the symbol goes stale ``stale_after`` seconds later. A bar's own
timestamp is not used: replays and backfills carry old timestamps by design.

Markets (:func:`calendar_for`): a symbol with a ``/`` (``BTC/USD``) is a crypto pair, always open;
any other is a US equity, open in the regular session 9:30-16:00 America/New_York on weekdays. That
calendar ignores exchange holidays and early closes (on those a silent equity feed reads stale) and
the extended sessions (bars then never make a symbol stale, and are not expected).

A decision is **taken on stale data** when, at the bar it is decided on, any symbol of the strategy is
stale: backtrader then decides on the fresh symbols' bars with the stale symbol's last bar. Such a
bar's FMEL ``market_state.events`` holds one ``stale`` event per stale symbol (its age in the detail),
and the session counts these bars (``stale_decisions``: status file, leaderboard row, run metrics).

    staleness = Staleness(["AAPL", "BTC/USD"], stale_after=180.0)
    staleness.arrived("BTC/USD")          # a bar came in (any thread)
    staleness.stale()                     # {"AAPL": 212.4}: open market, silent too long
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable, Iterable, Mapping
from zoneinfo import ZoneInfo

import backtrader as bt

__all__ = ["AlwaysOpen", "StaleMarks", "Staleness", "UsEquityHours", "calendar_for", "default_stale_after"]

BARS_BEFORE_STALE = 3     # the default threshold, in bar sizes


class AlwaysOpen:
    """A market that never closes (crypto)."""

    name = "always-open"

    def is_open(self, at: float) -> bool:
        return True


class UsEquityHours:
    """The US equities regular session, 9:30-16:00 America/New_York, Monday to Friday (no holidays,
    no early closes, no extended hours). ``is_open`` keeps the current open or closed stretch, so a
    call per bar costs a comparison.

    >>> UsEquityHours().is_open(pd.Timestamp("2024-01-02 15:00", tz="UTC").timestamp())   # 10:00 New York
    True
    """

    name = "us-equities"
    zone = ZoneInfo("America/New_York")
    opens, closes = _dt.time(9, 30), _dt.time(16, 0)

    def __init__(self):
        self._span = (0.0, 0.0, False)     # [start, end) in epoch seconds, and whether open in it

    def is_open(self, at: float) -> bool:
        start, end, state = self._span
        if not start <= at < end:
            self._span = start, end, state = self._stretch(at)
        return state

    def _stretch(self, at: float) -> tuple[float, float, bool]:
        # The open or closed stretch holding ``at``: from the last session boundary to the next one.
        local = _dt.datetime.fromtimestamp(at, self.zone)
        day = local.date()
        edges = []
        for offset in range(-7, 8):
            d = day + _dt.timedelta(days=offset)
            if d.weekday() < 5:
                edges.append((_local(d, self.opens, self.zone), True))
                edges.append((_local(d, self.closes, self.zone), False))
        before = [e for e in edges if e[0] <= at]
        after = [e for e in edges if e[0] > at]
        start, state = before[-1] if before else (at - 7 * 86400.0, False)
        end = after[0][0] if after else at + 7 * 86400.0
        return start, end, state


def _local(day: _dt.date, clock: _dt.time, zone: ZoneInfo) -> float:
    return _dt.datetime.combine(day, clock, tzinfo=zone).timestamp()


def calendar_for(symbol: str):
    """The market hours of a symbol: crypto pairs (``BTC/USD``) are always open, others are US equities."""
    return AlwaysOpen() if "/" in symbol else UsEquityHours()


def default_stale_after(timeframe: int, compression: int) -> float:
    """Three bar sizes, in seconds (backtrader's ``timeframe``, ``compression``)."""
    seconds = {bt.TimeFrame.Seconds: 1, bt.TimeFrame.Minutes: 60, bt.TimeFrame.Days: 86400,
               bt.TimeFrame.Weeks: 7 * 86400}.get(timeframe, 60)
    return float(BARS_BEFORE_STALE * seconds * max(1, compression))


class Staleness:
    """Arrival times of each symbol's bars and, from them, which symbols are stale now.

    ``arrived`` is called from the bus's threads (a dict store: no lock needed); the rest from any
    thread. ``calendars`` (symbol -> object with ``is_open(epoch_seconds)``) overrides
    :func:`calendar_for`; ``clock`` is the wall clock (a test passes its own)."""

    def __init__(self, symbols: Iterable[str], stale_after: float, *, calendars: Mapping | None = None,
                 clock: Callable[[], float] = time.time):
        if not stale_after > 0:
            raise ValueError(f"stale_after is a number of seconds > 0, got {stale_after!r}")
        self.symbols = list(symbols)
        self.stale_after, self.clock = float(stale_after), clock
        self.calendars = {s: (calendars or {}).get(s) or calendar_for(s) for s in self.symbols}
        self.started = clock()
        self.last: dict[str, float | None] = {s: None for s in self.symbols}
        self.marked = 0           # decisions taken while a symbol was stale (StaleMarks counts them)

    def arrived(self, symbol: str, at: float | None = None) -> None:
        """A bar of ``symbol`` was accepted at wall time ``at`` (default now)."""
        self.last[symbol] = self.clock() if at is None else at

    def ages(self, now: float | None = None) -> dict[str, float]:
        """Seconds since each symbol's last bar (since the start when none came yet)."""
        now = self.clock() if now is None else now
        return {s: max(0.0, now - (t if t is not None else self.started)) for s, t in self.last.items()}

    def stale(self, now: float | None = None) -> dict[str, float]:
        """Stale symbols and their ages: market open, no bar for more than ``stale_after`` seconds."""
        now = self.clock() if now is None else now
        limit, started, out = self.stale_after, self.started, {}
        for symbol, last in self.last.items():
            age = now - (last if last is not None else started)
            if age > limit and self.calendars[symbol].is_open(now):
                out[symbol] = age
        return out

    def report(self, now: float | None = None) -> dict:
        """What the status file carries: the threshold, each symbol's age and market, the stale ones."""
        now = self.clock() if now is None else now
        stale = self.stale(now)
        return {"stale_after": self.stale_after,
                "symbols": {s: {"age": round(a, 3), "open": self.calendars[s].is_open(now), "stale": s in stale}
                            for s, a in self.ages(now).items()},
                "stale_symbols": {s: round(a, 3) for s, a in stale.items()}}


class StaleMarks(bt.Analyzer):
    """Marks, in FMEL, every bar decided while a symbol of the strategy is stale (a ``stale`` data
    event per stale symbol in the bar's ``market_state.events``) and counts those bars. Bars served
    from the warm-up history (``live()`` false) and bars replayed after a restart are not marked.
    Runs before the recorder, so the events land on the bar they are about."""

    params = (("staleness", None), ("recorder", None), ("live", None))

    def start(self):
        self._live = False

    def next(self):
        recorder, staleness = self.p.recorder, self.p.staleness
        if recorder.replaying:
            return
        if not self._live:
            self._live = self.p.live is None or self.p.live()
            if not self._live:
                return
        stale = staleness.stale()
        if stale:
            staleness.marked += 1
            for symbol, age in stale.items():
                recorder.note_event(symbol, "stale", f"no bar for {age:.1f} s at decision time "
                                    f"(stale after {staleness.stale_after:g} s)")

    def get_analysis(self):
        return {"stale_decisions": self.p.staleness.marked}
