"""backtrader feeds. `HistoryFeed` serves a validated OHLCV frame; it preloads its line buffers
straight from numpy arrays instead of building one bar at a time, which is where a backtest over
millions of minute bars spends much of its time."""

from __future__ import annotations

from array import array

import backtrader as bt
import numpy as np
import pandas as pd

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


class HistoryFeed(bt.feed.DataBase):
    """A backtrader data feed over one symbol's OHLCV frame (UTC index, float columns).

    In a preloaded backtest (backtrader's default) the whole frame is copied into the line buffers
    in one step; with ``preload=False`` it is served bar by bar like any other feed.
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
        for name, values in self._columns.items():
            buffer = array("d")
            buffer.frombytes(np.ascontiguousarray(values).tobytes())
            getattr(self.lines, name).array = buffer
        self.lines.openinterest.array = array("d", bytes(8 * self._n))
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
