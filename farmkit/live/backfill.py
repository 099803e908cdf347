"""Filling the holes in a paper run's bars from a backfill source, as the ingester does upstream.

Pub/Sub delivers at least once, but not always in time: a pod killed while it held messages may not
see them again for minutes (on the emulator, an ordering key can stay blocked far longer). A run does
not wait for that. Two things reveal a hole, and both are filled from the source (``FARM_BACKFILL``:
the market archive ``farm archive`` keeps, or Alpaca's REST bars):

- a bar of a symbol arrives more than one bar after the symbol's last bar (the last bar routed, the
  last journaled one after a restart, or the checkpoint's), with its market open in between (a night or
  a weekend is not a hole). The missing bars are fetched and routed first, then the bar; the source is
  asked again for up to ``wait`` seconds until it has caught up (it holds the bar that revealed the hole);
- a symbol gets no bar for ``wait`` seconds (``FARM_STALE_AFTER``): the source is asked for its bars
  after the last one (the tail), and again after longer and longer pauses while it has none.

Filled bars carry ``source: backfill``, go through the inbox like any other bar, and each fill is a
``backfill`` data event in the FMEL of the next bar; the original, if Pub/Sub delivers it later, is a
duplicate. Missing bars the source does not have either are a ``gap`` data event: never silent. Only
minute bars are filled (what the archive and the ingester keep).

    source = open_source("archive", store="local://.farm")
    backfill = Backfill(source, calendars={"AAPL": calendar_for("AAPL")}, wait=180.0)
    router = BarRouter(feeds, backfill=backfill, ...); backfill.watch(router)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import pandas as pd

from farmkit.errors import ConfigError, DataError
from farmkit.model import Bar

__all__ = ["SOURCES", "AlpacaSource", "ArchiveSource", "Backfill", "BarSource", "Fill", "missing_span",
           "open_source"]

log = logging.getLogger(__name__)
SOURCES = ("off", "archive", "alpaca")
MINUTE = pd.Timedelta(minutes=1)
MAX_SPAN = 5000              # bars per request: a tail after a long outage is fetched in steps
MAX_BACKOFF = 16             # a silent symbol is asked at most every 16 x wait seconds
_SCAN = 20_000               # minutes scanned for the open market around a hole (two weeks of closures)


class BarSource(Protocol):
    """Where missing minute bars come from. ``bars`` returns those of ``symbol`` from ``start`` to
    ``end`` inclusive, oldest first (none is not an error); it raises when the source cannot answer."""

    name: str

    def bars(self, symbol: str, start: pd.Timestamp, end: pd.Timestamp) -> list[Bar]: ...


class ArchiveSource:
    """The market archive of a store (``local://`` Parquet, ``bigquery://`` tables), the latest
    revision of each bar."""

    name = "archive"

    def __init__(self, archive):
        self.archive = archive

    def bars(self, symbol, start, end):
        n = int((end - start) / MINUTE) + 1
        frame = self.archive.latest_bars([symbol], n, before=end + MINUTE).get(symbol)
        return _bars(symbol, frame, start, end)


class AlpacaSource:
    """Alpaca's historical minute bars (``fk.data.alpaca``: keys and ``APCA_API_DATA_URL`` from ``environ``)."""

    name = "alpaca"

    def __init__(self, environ: Mapping[str, str] | None = None):
        self.environ = environ

    def bars(self, symbol, start, end):
        from farmkit.data.alpaca_history import alpaca

        try:
            bars = alpaca(symbol, start=start, end=end + MINUTE, environ=self.environ)
        except DataError as exc:
            if "returned no bars" in str(exc):
                return []
            raise
        return _bars(symbol, next(iter(bars.values()), None), start, end)


def _bars(symbol: str, frame, start, end) -> list[Bar]:
    if frame is None or not len(frame):
        return []
    out = []
    for stamp, row in zip(frame.index, frame.itertuples(index=False)):
        if start <= stamp <= end:
            try:
                out.append(Bar(symbol, stamp, row.open, row.high, row.low, row.close, row.volume, source="backfill"))
            except DataError as exc:
                log.warning("backfill: skipped an invalid bar of %s at %s (%s)", symbol, stamp, exc)
    return out


def open_source(name: str, *, store: str | None = None, home=None, environ=None) -> BarSource | None:
    """The backfill source ``FARM_BACKFILL`` names: ``archive`` (the archive of ``store``, else the
    embedded one under ``home``), ``alpaca``, or None for ``off``."""
    if name == "off":
        return None
    if name == "archive":
        from farmkit.live.warmup import open_market_archive

        return ArchiveSource(open_market_archive(store, home, environ))
    if name == "alpaca":
        return AlpacaSource(environ)
    raise ConfigError(f"FARM_BACKFILL must be one of {', '.join(SOURCES)}, got {name!r}")


def missing_span(calendar, last: pd.Timestamp, bar: pd.Timestamp,
                 step: pd.Timedelta = MINUTE) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """The first and last bar expected between ``last`` and ``bar`` (both exclusive) while the market
    is open, or None when there is none: no hole, or just a night or a weekend.

    >>> missing_span(calendar_for("AAPL"), pd.Timestamp("2024-01-03 15:00Z"), pd.Timestamp("2024-01-03 15:04Z"))
    (Timestamp('2024-01-03 15:01:00+0000', tz='UTC'), Timestamp('2024-01-03 15:03:00+0000', tz='UTC'))
    """
    first, end = last + step, bar - step
    for _ in range(_SCAN):
        if first > end or calendar.is_open(first.timestamp()):
            break
        first += step
    if first > end:
        return None
    for _ in range(_SCAN):
        if end <= first or calendar.is_open(end.timestamp()):
            break
        end -= step
    return first, end


def expected(calendar, start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta = MINUTE) -> list[pd.Timestamp]:
    """The bars expected from ``start`` to ``end`` inclusive while the market is open."""
    out, stamp = [], start
    while stamp <= end and len(out) < MAX_SPAN:
        if calendar.is_open(stamp.timestamp()):
            out.append(stamp)
        stamp += step
    return out


@dataclass(frozen=True)
class Fill:
    """What a backfill found: the ``bars``, the expected bars it did not find (``missing``), and why
    the source could not answer (``error``), if it could not."""

    bars: list[Bar]
    missing: list[pd.Timestamp]
    error: str | None = None


class Backfill:
    """Fills holes from ``source`` (None: nothing is fetched, holes are only recorded). ``calendars``
    maps each symbol to its market hours (see :mod:`farmkit.live.staleness`); ``wait`` is how long a
    hole waits for the source to catch up, and how long a symbol may be silent before its tail is
    fetched. ``clock`` and ``sleep`` are the wall clock and the pause (a test passes its own)."""

    def __init__(self, source: BarSource | None, *, calendars: Mapping, wait: float, step: pd.Timedelta = MINUTE,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], object] | None = None):
        self.source, self.calendars, self.wait, self.step = source, calendars, float(wait), step
        self.clock = clock
        self._stop = threading.Event()
        self.sleep = sleep or self._stop.wait
        self._thread: threading.Thread | None = None
        self._asked: dict[str, tuple[float, int]] = {}     # symbol -> (when its tail was last asked, backoff)

    @property
    def name(self) -> str:
        return self.source.name if self.source is not None else "no source"

    def hole(self, symbol: str, last: pd.Timestamp, bar: pd.Timestamp) -> tuple[pd.Timestamp, pd.Timestamp] | None:
        """The missing span between the symbol's ``last`` bar and the ``bar`` that arrived, if any."""
        return missing_span(self.calendars[symbol], last, bar, self.step)

    def fill(self, symbol: str, start: pd.Timestamp, end: pd.Timestamp, until: pd.Timestamp) -> Fill:
        """The bars from ``start`` to ``end``; asks again (for up to ``wait`` seconds) until the source
        has them all or has ``until`` (the bar that revealed the hole: then it has caught up)."""
        wanted = expected(self.calendars[symbol], start, end, self.step)
        if self.source is None:
            return Fill([], wanted, "no backfill source (FARM_BACKFILL=off)")
        deadline, pause = self.clock() + self.wait, 0.1
        while True:
            try:
                found = self.source.bars(symbol, start, until)
                error = None
            except Exception as exc:  # noqa: BLE001 - a source that fails leaves a recorded gap, not a crash
                found, error = [], f"{type(exc).__name__}: {str(exc)[:200]}"
            bars = [b for b in found if b.timestamp <= end]
            have = {b.timestamp for b in bars}
            missing = [t for t in wanted if t not in have]
            caught_up = any(b.timestamp >= until for b in found)
            if not missing or caught_up or self.clock() >= deadline or self._stop.is_set():
                return Fill(bars, missing, error)
            self.sleep(pause)
            pause = min(pause * 2, 1.0)

    def tail(self, symbol: str, after: pd.Timestamp) -> Fill:
        """The symbol's bars after ``after``, as far as the source has them (up to :data:`MAX_SPAN`)."""
        if self.source is None:
            return Fill([], [])
        start = after + self.step
        end = min(pd.Timestamp(self.clock(), unit="s", tz="UTC").floor(self.step), start + (MAX_SPAN - 1) * self.step)
        if end < start:
            return Fill([], [])
        try:
            return Fill(self.source.bars(symbol, start, end), [])
        except Exception as exc:  # noqa: BLE001 - asked again after the next pause
            return Fill([], [], f"{type(exc).__name__}: {str(exc)[:200]}")

    def due(self, symbol: str, routed_at: float | None, started: float, now: float) -> bool:
        """Whether a silent symbol's tail should be asked for now (``routed_at``: wall time of its last bar)."""
        quiet = routed_at if routed_at is not None else started
        asked, backoff = self._asked.get(symbol, (None, 1))
        if asked is None or asked < quiet:            # not asked since its last bar
            self._asked.pop(symbol, None)
            return now - quiet >= self.wait
        return now - asked >= self.wait * backoff

    def asked(self, symbol: str, now: float, found: int) -> None:
        """The tail was asked for at ``now`` and gave ``found`` bars: none doubles the next pause."""
        _, backoff = self._asked.get(symbol, (None, 1))
        self._asked[symbol] = (now, 1 if found else min(backoff * 2, MAX_BACKOFF))

    def watch(self, router, every: float = 0.25) -> "Backfill":
        """Ask for the tails of ``router``'s silent symbols on a thread of its own until :meth:`close`."""
        if self.source is None or self._thread is not None:
            return self
        started = self.clock()

        def run():
            while not self._stop.wait(every):
                for symbol in router.symbols:
                    now = self.clock()
                    if self.due(symbol, router.routed_at.get(symbol), started, now):
                        self.asked(symbol, now, router.fill_tail(symbol))

        self._thread = threading.Thread(target=run, daemon=True, name="farm-backfill")
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
