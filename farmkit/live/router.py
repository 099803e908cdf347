"""From bus messages to live feeds: parse, dedupe, order, route — and account for everything.

Policy (Pub/Sub delivers at least once, and may reorder):
- a malformed message is acked (redelivering it cannot fix it), counted, kept in ``rejected`` for
  inspection, and noted as a data event;
- a bar whose (symbol, timestamp) was already routed is a duplicate: acked, counted, dropped (an
  updated bar, ``revision`` > 0, is noted as a ``revision`` event — a live strategy does not rewrite
  the past);
- a bar older than the last routed bar of its symbol is late: acked, counted, dropped, noted as a
  ``late`` data event in the FMEL of the next bar (saying so when it belongs to a recorded gap). Order
  across symbols does not matter: each symbol has its own feed, and backtrader lines the feeds up by time;
- with a ``backfill`` (:mod:`farmkit.live.backfill`), a bar that comes more than one bar after its
  symbol's last one, with the market open in between, reveals a hole: the missing bars are fetched
  and routed first (a ``backfill`` data event), what cannot be found is a ``gap`` data event; and a
  symbol silent for a while has its tail fetched (:meth:`BarRouter.fill_tail`). Filled bars are not
  messages: ``backfilled`` counts them;
- bars of symbols the run did not ask for are acked and counted as ``ignored``;
- a bar that starts more than ``max_future`` seconds after now, or off the bar grid (``bar_seconds``), is
  malformed: it never becomes a symbol's last bar, so it cannot make the real bars after it late;
- anything else that goes wrong with a message (a bug, a feed that raises) is logged, acked and
  counted as ``failed``: the message is not redelivered, and the log says so;
- a resumed run passes ``after`` (last processed timestamp per symbol, from its checkpoint): bars at
  or before it were processed before the restart and count as duplicates.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable

from farmkit.model import Bar, MalformedMessage, parse_message

log = logging.getLogger(__name__)
OUTCOMES = ("routed", "duplicate", "late", "ignored", "malformed", "failed")
MAX_FUTURE = 300.0      # seconds a bar's start may be ahead of this machine's clock (skew between hosts)


class BarRouter:
    """Routes bar messages to one feed per symbol. ``on_event(symbol, kind, detail)`` receives data
    events (late, duplicate revision, malformed); ``counts`` says what happened to every message, one
    of :data:`OUTCOMES` each. ``bar_seconds``: bars start on multiples of it (None: no grid check);
    ``clock``: the wall clock in epoch seconds (a test passes its own)."""

    def __init__(self, feeds: dict, on_event: Callable[[str | None, str, str], None] | None = None,
                 keep_rejected: int = 1000, after: dict | None = None, *, bar_seconds: int | None = None,
                 max_future: float = MAX_FUTURE, clock: Callable[[], float] = time.time, backfill=None):
        self.feeds = feeds
        self.backfill = backfill          # a farmkit.live.backfill.Backfill, or None: holes go unnoticed
        self.backfilled = 0               # bars routed from the backfill source
        self.routed_at: dict[str, float] = {}   # symbol -> wall time its last bar was routed
        self.bar_ns = int(bar_seconds * 1e9) if bar_seconds else None
        self.max_future_ns = int(max_future * 1e9)
        self.clock = clock
        self.on_event = on_event or (lambda *_: None)
        self.counts: Counter = Counter()
        self.rejected: deque = deque(maxlen=keep_rejected)
        self._last: dict[str, object] = {}
        self._seen: dict[str, set] = {s: set() for s in feeds}
        self._after = {s: t for s, t in (after or {}).items() if s in feeds}   # symbol -> pd.Timestamp
        self._lock = threading.Lock()   # callbacks run on a thread pool
        # Held while a symbol's hole is filled: none of its bars is routed in between.
        self._filling = {s: threading.Lock() for s in feeds}
        self._gaps: dict[str, deque] = {s: deque(maxlen=100) for s in feeds}   # recorded (first, last) missing

    @property
    def symbols(self) -> list[str]:
        return list(self.feeds)

    def on_message(self, message) -> None:
        """Bus callback: always acks (see the module's policy), after the bar is queued. A feed with
        ``takes_ack`` receives the ack with its bar and acks once the strategy thread has taken it."""
        handed = []
        try:
            self.route(message.data, dict(message.attributes), ack=message.ack, handed=handed)
        finally:
            if not handed:
                message.ack()

    def route(self, data: bytes, attributes: dict | None = None, *, ack=None, handed: list | None = None) -> str:
        """Route one message; returns what was done with it (routed, duplicate, late, ...). ``ack``
        goes with a routed bar to a feed that ``takes_ack`` (then ``handed`` gets True)."""
        try:
            return self._route(data, attributes, ack, handed)
        except Exception as exc:  # noqa: BLE001 - whatever it is, the message is accounted for
            log.exception("routing a message failed (%s: %s); it is acked, not redelivered", type(exc).__name__, exc)
            self.on_event(None, "failed", f"a message could not be routed: {type(exc).__name__}: {str(exc)[:200]}")
            return self._count("failed")

    def _route(self, data, attributes, ack, handed) -> str:
        try:
            record = parse_message(data, attributes or {})
        except MalformedMessage as exc:
            return self._reject(data, attributes, exc.reason)
        if not isinstance(record, Bar):
            return self._count("ignored")
        feed = self.feeds.get(record.symbol)
        if feed is None:
            return self._count("ignored")
        key = record.timestamp.value
        ahead = key - int(self.clock() * 1e9)
        if ahead > self.max_future_ns:
            return self._reject(data, attributes, f"bar {record.timestamp} starts {ahead / 1e9:.0f} s in the future "
                                f"(more than {self.max_future_ns / 1e9:g} s ahead of this clock)", record.symbol)
        if self.bar_ns and key % self.bar_ns:
            return self._reject(data, attributes, f"bar {record.timestamp} is off the bar grid (bars start on "
                                f"multiples of {self.bar_ns / 1e9:g} s)", record.symbol)
        symbol = record.symbol
        with self._filling[symbol]:
            with self._lock:
                refused = self._refused(record)
                if refused:
                    return self._count(refused)
                last = self._last.get(symbol) or self._after.get(symbol)
            if self.backfill is not None and last is not None:
                span = self.backfill.hole(symbol, last, record.timestamp)
                if span is not None:
                    self._fill_hole(symbol, last, span, record.timestamp)
            with self._lock:
                self._accept(record)
                if ack is not None and getattr(feed, "takes_ack", False):
                    feed.put(record, ack)
                    if handed is not None:
                        handed.append(True)
                else:
                    feed.put(record)
        return self._count("routed")

    def _refused(self, record: Bar) -> str | None:
        # Under the lock: "duplicate" or "late" (with its data event), or None for a bar to route.
        symbol, key = record.symbol, record.timestamp.value
        after = self._after.get(symbol)
        if key in self._seen[symbol] or (after is not None and record.timestamp <= after):
            if record.revision:
                self.on_event(symbol, "revision", f"updated bar {record.timestamp} (revision "
                              f"{record.revision}) arrived after the bar was used; not applied")
            return "duplicate"
        last = self._last.get(symbol)
        if last is not None and record.timestamp < last:
            gap = next((g for g in self._gaps[symbol] if g[0] <= record.timestamp <= g[1]), None)
            where = f", in the recorded gap {gap[0]}..{gap[1]}" if gap else ""
            self.on_event(symbol, "late", f"bar {record.timestamp} arrived after bar {last}{where}; dropped")
            return "late"
        return None

    def _accept(self, record: Bar) -> None:
        # Under the lock: the bar is the symbol's latest now.
        self._seen[record.symbol].add(record.timestamp.value)
        self._last[record.symbol] = record.timestamp
        self.routed_at[record.symbol] = self.clock()

    def _route_filled(self, symbol: str, bars) -> list[Bar]:
        # Backfilled bars newer than the symbol's last one, in order; the others are known already.
        routed = []
        with self._lock:
            for bar in sorted(bars, key=lambda b: b.timestamp):
                last = self._last.get(symbol) or self._after.get(symbol)
                if bar.symbol != symbol or bar.timestamp.value in self._seen[symbol] or (
                        last is not None and bar.timestamp <= last):
                    continue
                if bar.source != "backfill":
                    bar = dataclasses.replace(bar, source="backfill")
                self._accept(bar)
                self.feeds[symbol].put(bar)
                routed.append(bar)
            self.backfilled += len(routed)
        return routed

    def _fill_hole(self, symbol: str, last, span, until) -> None:
        fill = self.backfill.fill(symbol, span[0], span[1], until)
        routed = self._route_filled(symbol, fill.bars)
        if routed:
            self.on_event(symbol, "backfill", f"{len(routed)} bar(s) {routed[0].timestamp}..{routed[-1].timestamp} "
                          f"from the {self.backfill.name}: bar {until} came after bar {last}")
        if fill.missing:
            self._gaps[symbol].append((fill.missing[0], fill.missing[-1]))
            why = f" ({fill.error})" if fill.error else ""
            self.on_event(symbol, "gap", f"{len(fill.missing)} bar(s) {fill.missing[0]}..{fill.missing[-1]} missing: "
                          f"not delivered before bar {until}, and not in the {self.backfill.name}{why}")

    def fill_tail(self, symbol: str) -> int:
        """Route the bars the backfill source has after the symbol's last one (it has been silent);
        returns how many. Nothing before the symbol's first bar (or the checkpoint's) is fetched."""
        if self.backfill is None:
            return 0
        with self._filling[symbol]:
            with self._lock:
                last = self._last.get(symbol) or self._after.get(symbol)
                since = self.routed_at.get(symbol)
            if last is None:
                return 0
            fill = self.backfill.tail(symbol, last)
            if fill.error:
                log.warning("backfill of %s after %s failed: %s", symbol, last, fill.error)
            routed = self._route_filled(symbol, fill.bars)
        if routed:
            quiet = f"no bar for {self.clock() - since:.1f} s" if since is not None else "no bar since the restart"
            self.on_event(symbol, "backfill", f"{len(routed)} bar(s) {routed[0].timestamp}..{routed[-1].timestamp} "
                          f"from the {self.backfill.name}: {quiet} after bar {last}")
        return len(routed)

    def _reject(self, data, attributes, reason: str, symbol: str | None = None) -> str:
        try:
            kept = bytes(data[:2000])
        except TypeError:
            kept = repr(data)[:2000].encode()
        self.rejected.append({"data": kept, "attributes": attributes, "reason": reason})
        self.on_event(symbol, "malformed", reason)
        return self._count("malformed")

    def _count(self, outcome: str) -> str:
        self.counts[outcome] += 1
        return outcome

    def stop(self) -> None:
        for feed in self.feeds.values():
            feed.stop_feed()
