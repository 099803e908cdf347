"""backtrader feeds. `HistoryFeed` serves a validated OHLCV frame; it preloads its line buffers
straight from numpy arrays instead of building one bar at a time, which is where a backtest over
millions of minute bars spends much of its time."""

from __future__ import annotations

import logging
import queue
from array import array

import backtrader as bt
import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

_UNIX_EPOCH_ORDINAL = 719163     # date(1970, 1, 1).toordinal()
_NS_PER_DAY = 86_400_000_000_000


def date2num(index: pd.DatetimeIndex) -> np.ndarray:
    """backtrader's ``date2num`` for a whole UTC index at once, bit for bit the same floats."""
    ns = index.as_unit("ns").asi8 if index.tz is not None else index.tz_localize("UTC").as_unit("ns").asi8
    days, rest = np.divmod(ns, _NS_PER_DAY)
    hours, rest = np.divmod(rest, 3_600_000_000_000)
    minutes, rest = np.divmod(rest, 60_000_000_000)
    seconds, rest = np.divmod(rest, 1_000_000_000)
    micros = rest // 1000
    # Same operations in the same order as backtrader.utils.dateintern.date2num.
    fraction = hours / 24.0 + minutes / 1440.0 + seconds / 86400.0 + micros / 86400e6
    return (days + _UNIX_EPOCH_ORDINAL).astype("float64") + fraction


def date2num_ns(ns: int) -> float:
    """:func:`date2num` of one UTC instant given in nanoseconds, bit for bit the same float, without
    building an index (about 2 µs instead of about 50: a live feed does this for every bar)."""
    days, rest = divmod(ns, _NS_PER_DAY)
    hours, rest = divmod(rest, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    seconds, rest = divmod(rest, 1_000_000_000)
    micros = rest // 1000
    return float(days + _UNIX_EPOCH_ORDINAL) + (hours / 24.0 + minutes / 1440.0 + seconds / 86400.0 + micros / 86400e6)


class HistoryFeed(bt.feed.DataBase):
    """A backtrader data feed over one symbol's OHLCV frame (UTC index, float columns).

    In a preloaded backtest (backtrader's default) the whole frame is copied into the line buffers
    in one step, keeping backtrader's ``fromdate``/``todate`` (bars before ``fromdate`` skipped, the
    feed ends at the first bar after ``todate``); with ``preload=False``, filters (``addfilter``,
    resampling, replay) or ``tzinput`` it is served bar by bar through backtrader's own loading step.
    Either way it serves what ``bt.feeds.PandasData`` would serve, once.
    """

    params = (("dataname", None),)
    _fields = ("open", "high", "low", "close", "volume")

    def start(self):
        super().start()
        frame = self.p.dataname
        self._columns = {"datetime": date2num(frame.index)}
        for name in self._fields:
            self._columns[name] = frame[name].to_numpy("float64")
        self._n = len(frame)
        self._i = 0

    def preload(self):
        if self._filters or self._tzinput is not None:
            super().preload()
            return
        stamps = self._columns["datetime"]
        past = np.flatnonzero(stamps > self.todate)
        end = int(past[0]) if len(past) else self._n
        rows = np.flatnonzero(stamps[:end] >= self.fromdate)
        whole = len(rows) == self._n
        for name, values in self._columns.items():
            buffer = array("d")
            buffer.frombytes(np.ascontiguousarray(values if whole else values[rows]).tobytes())
            getattr(self.lines, name).array = buffer
        self.lines.openinterest.array = array("d", bytes(8 * len(rows)))
        self._i = self._n     # everything is in the buffers: a later load() (next mode) finds no more bars
        self.home()

    def _load(self):
        i = self._i
        if i >= self._n:
            return False
        lines = self.lines
        for name, values in self._columns.items():
            getattr(lines, name)[0] = float(values[i])
        lines.openinterest[0] = 0.0
        self._i = i + 1
        return True


STOP = object()   # put on a LiveFeed's queue to end the feed


class LiveFeed(bt.feed.DataBase):
    """A live backtrader feed for one symbol, fed bars from another thread with :meth:`put`.

    Optional ``history`` (an OHLCV frame) is served first to prime the indicators, with the feed
    in DELAYED state; then it goes LIVE. ``_load`` blocks on the queue for at most ``qcheck``
    seconds, so a waiting runner sleeps instead of spinning.

    A bar may come with its bus message's ``ack``, called on the strategy thread once the bar is in
    the line buffers and the strategy's ``next()`` for it has run: by default the next time a feed
    is asked for a bar. Acking from the bus callback instead wakes the bus client's ack dispatch
    right when the strategy thread needs the GIL to reach ``next()``. Feeds of one run share their
    list of acks (:meth:`share_acks`): on an ordered subscription a symbol's next bar comes only
    after the ack, so every bar taken is acked before the strategy thread waits on any feed, not
    just on its own. With ``after_next`` the run acks them itself with :func:`ack_taken` right after
    ``next()``: then none is acked while the bars of one timestamp are still being loaded, which
    would wake the bus client's threads in the middle of it. :meth:`release_acks` acks the rest.
    """

    params = (("history", None), ("qcheck", 0.5))
    takes_ack = True

    def __init__(self):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._history: list[tuple] = []
        self._state = None
        self._acks: list = []       # acks of bars taken off the queue, called on the next _load
        self._ack_on_load = True

    def start(self):
        super().start()
        history = self.p.history
        if history is not None and len(history):
            stamps = date2num(history.index)
            values = history[["open", "high", "low", "close", "volume"]].to_numpy("float64")
            self._history = [(t, *row) for t, row in zip(stamps.tolist(), values.tolist())]
            self._history.reverse()   # pop() from the end is O(1)
            self._status(self.DELAYED)
        else:
            self._status(self.LIVE)

    def islive(self) -> bool:
        return True

    def haslivedata(self) -> bool:
        return bool(self._history) or not self._queue.empty()

    def put(self, bar, ack=None) -> None:
        """Queue one bar (anything with timestamp, open, high, low, close, volume); ``ack`` (no
        arguments) is called once the strategy thread has taken the bar."""
        self._queue.put(bar if ack is None else _Acked(bar, ack))

    def share_acks(self, acks: list, *, after_next: bool = False) -> None:
        """Use ``acks`` (one list for every feed of a run) for the acks of bars taken. With
        ``after_next``, ``_load`` leaves them to the run, which calls :func:`ack_taken` on the
        strategy thread after each ``next()``."""
        acks.extend(self._acks)
        self._acks = acks
        self._ack_on_load = not after_next

    def release_acks(self) -> None:
        """Ack every bar taken or still queued (the run is over: as if acked when queued)."""
        acks = self._acks[:]
        self._acks.clear()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if type(item) is _Acked:
                acks.append(item.ack)
        _ack_all(acks)

    def stop_feed(self) -> None:
        self._queue.put(STOP)

    def broken(self) -> None:
        """The stream broke: strategies see CONNBROKEN until bars flow again."""
        self._queue.put(_BROKEN)

    def _status(self, status) -> None:
        if status != self._state:
            self._state = status
            self.put_notification(status)

    def _load(self):
        if self._acks and self._ack_on_load:
            ack_taken(self._acks)
        if self._history:
            return self._fill(*self._history.pop())
        while True:
            try:
                # cerebro sets _qcheck for each loop: 0 when another feed already has a bar waiting,
                # so one quiet symbol does not hold up the others; qcheck when every feed is idle.
                item = self._queue.get(timeout=getattr(self, "_qcheck", self.p.qcheck))
            except queue.Empty:
                return None
            if item is STOP:
                self._status(self.DISCONNECTED)
                return False
            if item is _BROKEN:
                self._status(self.CONNBROKEN)
                continue
            if type(item) is _Acked:
                self._acks.append(item.ack)
                item = item.bar
            self._status(self.LIVE)
            return self._fill(date2num_ns(item.timestamp.value), item.open, item.high, item.low, item.close, item.volume)

    def _fill(self, stamp, open_, high, low, close, volume) -> bool:
        lines = self.lines
        lines.datetime[0] = stamp
        lines.open[0], lines.high[0], lines.low[0], lines.close[0] = open_, high, low, close
        lines.volume[0] = volume
        lines.openinterest[0] = 0.0
        return True


_BROKEN = object()


def ack_taken(acks: list) -> None:
    """Call and clear the acks a run's feeds collected (see :meth:`LiveFeed.share_acks`)."""
    if acks:
        taken = acks[:]
        acks.clear()
        _ack_all(taken)


def _ack_all(acks) -> None:
    for ack in acks:
        try:
            ack()
        except Exception as exc:  # noqa: BLE001 - an ack that fails is redelivered; the strategy goes on
            log.warning("could not ack a bar (%s: %s); the bus will deliver it again", type(exc).__name__, exc)


class _Acked:
    __slots__ = ("bar", "ack")

    def __init__(self, bar, ack):
        self.bar, self.ack = bar, ack
