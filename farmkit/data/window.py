"""The data window: the bars every ``fk.data`` source returns can be limited to a span of time.

The whole-notebook look-ahead check (:mod:`farmkit.research.lookahead`) re-runs a notebook with its
data cut: a first cell, added to the notebook's copy before any of its own cells run, calls
:func:`limit` in the kernel, and from then on :func:`~farmkit.data.synthetic`,
:func:`~farmkit.data.load` and :func:`~farmkit.data.alpaca` keep only the bars stamped at or after
``start`` and at or before ``until``. Outside a check there is no window and nothing is cut.

The window belongs to the kernel it is set in (one notebook at a time); data read by other means
(``pd.read_csv``, a database query) is not cut, and the check cannot see past it.

>>> from farmkit.data import window
>>> window.limit(until="2024-01-03 15:00Z")
>>> fk.data.synthetic("AAPL", days=3)["AAPL"].index[-1]
Timestamp('2024-01-03 15:00:00+0000', tz='UTC')
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from farmkit.data.bars import Bars


@dataclass(frozen=True)
class DataWindow:
    """Bars stamped in ``[start, until]`` (either end open when None), UTC."""

    start: pd.Timestamp | None = None
    until: pd.Timestamp | None = None

    def apply(self, bars: Bars) -> Bars:
        out = Bars()
        for symbol, frame in bars.items():
            lo = 0 if self.start is None else frame.index.searchsorted(self.start, side="left")
            hi = len(frame) if self.until is None else frame.index.searchsorted(self.until, side="right")
            out[symbol] = frame.iloc[lo:hi]
        return out


_window = DataWindow()
_seen: list[pd.DatetimeIndex] = []     # the timestamps each source returned before the window cut them


def limit(start=None, until=None) -> None:
    """Limit what ``fk.data`` sources return from now on; ``limit()`` lifts the limit."""
    global _window
    _window = DataWindow(_utc(start), _utc(until))
    _seen.clear()


def current() -> DataWindow:
    return _window


def clip(bars: Bars) -> Bars:
    """``bars`` cut to the current window; what every ``fk.data`` source returns goes through here."""
    for frame in bars.values():
        _seen.append(frame.index)
    if _window.start is None and _window.until is None:
        return bars
    return _window.apply(bars)


def seen() -> list[pd.DatetimeIndex]:
    """The timestamps of every frame the sources returned since the last :func:`limit`, uncut."""
    return list(_seen)


def _utc(value) -> pd.Timestamp | None:
    if value is None:
        return None
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tz is None else stamp.tz_convert("UTC")
