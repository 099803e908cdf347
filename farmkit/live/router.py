"""From bus messages to live feeds: parse, dedupe, order, route — and account for everything.

Policy (Pub/Sub delivers at least once, and may reorder):
- a malformed message is acked (redelivering it cannot fix it), counted, kept in ``rejected`` for
  inspection, and noted as a data event;
- a bar whose (symbol, timestamp) was already routed is a duplicate: acked, counted, dropped (an
  updated bar, ``revision`` > 0, is noted as a ``revision`` event — a live strategy does not rewrite
  the past);
- a bar older than the last routed bar of its symbol is late: acked, counted, dropped, noted as a
  ``late`` data event in the FMEL of the next bar. Order across symbols does not matter: each
  symbol has its own feed, and backtrader lines the feeds up by time;
- bars of symbols the run did not ask for are acked and counted as ``ignored``;
- a resumed run passes ``after`` (last processed timestamp per symbol, from its checkpoint): bars at
  or before it were processed before the restart and count as duplicates.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable

from farmkit.model import Bar, MalformedMessage, parse_message


class BarRouter:
    """Routes bar messages to one feed per symbol. ``on_event(symbol, kind, detail)`` receives data
    events (late, duplicate revision, malformed); ``counts`` says what happened to every message."""

    def __init__(self, feeds: dict, on_event: Callable[[str | None, str, str], None] | None = None,
                 keep_rejected: int = 1000, after: dict | None = None):
        self.feeds = feeds
        self.on_event = on_event or (lambda *_: None)
        self.counts: Counter = Counter()
        self.rejected: deque = deque(maxlen=keep_rejected)
        self._last: dict[str, object] = {}
        self._seen: dict[str, set] = {s: set() for s in feeds}
        self._after = {s: t for s, t in (after or {}).items() if s in feeds}   # symbol -> pd.Timestamp
        self._lock = threading.Lock()   # callbacks run on a thread pool

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
            record = parse_message(data, attributes or {})
        except MalformedMessage as exc:
            return self._reject(data, attributes, exc.reason)
        if not isinstance(record, Bar):
            return self._count("ignored")
        feed = self.feeds.get(record.symbol)
        if feed is None:
            return self._count("ignored")
        with self._lock:
            seen = self._seen[record.symbol]
            key = record.timestamp.value
            after = self._after.get(record.symbol)
            if key in seen or (after is not None and record.timestamp <= after):
                if record.revision:
                    self.on_event(record.symbol, "revision", f"updated bar {record.timestamp} (revision "
                                  f"{record.revision}) arrived after the bar was used; not applied")
                return self._count("duplicate")
            last = self._last.get(record.symbol)
            if last is not None and record.timestamp < last:
                self.on_event(record.symbol, "late", f"bar {record.timestamp} arrived after bar {last}; dropped")
                return self._count("late")
            seen.add(key)
            self._last[record.symbol] = record.timestamp
            if ack is not None and getattr(feed, "takes_ack", False):
                feed.put(record, ack)
                if handed is not None:
                    handed.append(True)
            else:
                feed.put(record)
        return self._count("routed")

    def _reject(self, data, attributes, reason: str) -> str:
        self.rejected.append({"data": bytes(data[:2000]), "attributes": attributes, "reason": reason})
        self.on_event(None, "malformed", reason)
        return self._count("malformed")

    def _count(self, outcome: str) -> str:
        self.counts[outcome] += 1
        return outcome

    def stop(self) -> None:
        for feed in self.feeds.values():
            feed.stop_feed()
