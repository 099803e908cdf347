"""Per-symbol order and gap filling for minute bars: the pure core of "consumers see no hole".

A symbol whose next live bar is more than a minute after its last published bar has a gap (a dropped
connection, a silent stall, or just a quiet minute): the bar is held, a backfill of the missing minutes is
asked for, and when the REST answer comes the missing bars are released first, then the held ones — so a
consumer gets every bar once, in order per symbol. After a reconnect, symbols whose next live bar does not
come within ``wait`` seconds are backfilled up to now (the tail of the gap).

    seq = BarSequencer()
    out, gap = seq.live(bar, now)          # bars to publish now; a GapRequest to fetch, or None
    out = seq.filled("AAPL", rest_bars)    # after the backfill: missing bars, then the held ones
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from farmkit.model import Bar

MINUTE = pd.Timedelta(minutes=1)


@dataclass(frozen=True)
class GapRequest:
    """Minute bars to fetch for ``symbol`` from ``start`` to ``end`` inclusive (``end`` None: up to now)."""

    symbol: str
    start: pd.Timestamp
    end: pd.Timestamp | None


@dataclass
class BarSequencer:
    """``backfill=False`` publishes every new bar at once and never asks for gaps."""

    backfill: bool = True
    step: pd.Timedelta = MINUTE
    last: dict[str, pd.Timestamp] = field(default_factory=dict)
    held: dict[str, list[Bar]] = field(default_factory=dict)
    resync: dict[str, float] = field(default_factory=dict)

    def live(self, bar: Bar, now: float) -> tuple[list[Bar], GapRequest | None, str]:
        """(bars to publish, gap to backfill, what happened: published | held | duplicate | gap)."""
        symbol = bar.symbol
        if symbol in self.held:
            self.held[symbol].append(bar)
            return [], None, "held"
        if bar.revision:                      # a correction of a minute already published (or not): pass on
            return [bar], None, "published"
        last = self.last.get(symbol)
        if last is not None and bar.timestamp <= last:
            return [], None, "duplicate"
        self.resync.pop(symbol, None)
        if self.backfill and last is not None and bar.timestamp > last + self.step:
            self.held[symbol] = [bar]
            return [], GapRequest(symbol, last + self.step, bar.timestamp - self.step), "gap"
        self.last[symbol] = bar.timestamp
        return [bar], None, "published"

    def reconnected(self, now: float) -> None:
        """The stream came back: every known symbol may have missed bars."""
        if self.backfill:
            for symbol in self.last:
                self.resync.setdefault(symbol, now)

    def due(self, now: float, wait: float) -> list[GapRequest]:
        """Tails to backfill: symbols with no live bar ``wait`` seconds after a reconnect (they are held)."""
        due = [s for s, since in self.resync.items() if now - since >= wait and s not in self.held]
        for symbol in due:
            del self.resync[symbol]
            self.held[symbol] = []
        return [GapRequest(s, self.last[s] + self.step, None) for s in due]

    def filled(self, symbol: str, bars: list[Bar]) -> list[Bar]:
        """The backfill for ``symbol`` arrived: the missing bars in order, then what was held."""
        out: list[Bar] = []
        last = self.last.get(symbol)
        for bar in sorted(bars, key=lambda b: b.timestamp):
            if last is None or bar.timestamp > last:
                out.append(bar)
                last = bar.timestamp
        for bar in self.held.pop(symbol, []):
            if bar.revision:
                out.append(bar)
            elif last is None or bar.timestamp > last:
                out.append(bar)
                last = bar.timestamp
        if last is not None:
            self.last[symbol] = last
        return out

    def failed(self, symbol: str) -> list[Bar]:
        """The backfill gave up: release the held bars (the hole stays, and is reported)."""
        return self.filled(symbol, [])

    @property
    def holding(self) -> int:
        return len(self.held)
