"""Strategies for tests/unit/test_conformance.py: each writes what it sees into the list passed as its
``journal`` parameter, so the same class runs under plain backtrader and under ``fk.backtest`` (which
runs in-process and hands the parameter through) and the two journals can be compared entry by entry.
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import NamedTuple

import backtrader as bt


class Bar(NamedTuple):
    phase: str                    # which strategy method saw it: prenext, next, prenext_open, next_open
    length: int                   # len(strategy)
    datetimes: tuple              # every feed's datetime[0], backtrader's float
    value: float
    cash: float
    positions: tuple              # every feed's position size


class OrderSeen(NamedTuple):
    ref: int                      # relative to the run's first notified order: refs count per process
    data: str
    status: str
    kind: str
    isbuy: bool
    size: float
    price: float | None
    created_dt: float
    executed_size: float
    executed_price: float
    executed_comm: float
    executed_dt: float | None


class TradeSeen(NamedTuple):
    ref: int                      # relative to the run's first notified trade
    data: str
    status: str
    pnl: float
    pnlcomm: float
    dtopen: float
    dtclose: float
    barlen: int


class DataSeen(NamedTuple):
    data: str
    status: str


class Journaled(bt.Strategy):
    """Logs every bar it is called for, every order, trade and data notification."""

    params = dict(journal=None)

    def start(self):
        self._order0 = self._trade0 = None

    def _bar(self, phase: str) -> None:
        self.p.journal.append(Bar(phase, len(self), tuple(d.datetime[0] for d in self.datas),
                                  self.broker.getvalue(), self.broker.getcash(),
                                  tuple(self.getposition(d).size for d in self.datas)))

    def prenext(self):
        self._bar("prenext")

    def next(self):
        self._bar("next")

    def notify_order(self, order):
        if self._order0 is None:
            self._order0 = order.ref
        executed = order.executed
        self.p.journal.append(OrderSeen(
            order.ref - self._order0, order.data._name, order.getstatusname(), order.getordername(),
            order.isbuy(), order.created.size, order.created.price, order.created.dt, executed.size, executed.price,
            executed.comm, executed.dt))

    def notify_trade(self, trade):
        if self._trade0 is None:
            self._trade0 = trade.ref
        self.p.journal.append(TradeSeen(trade.ref - self._trade0, trade.data._name, trade.status_names[trade.status],
                                        trade.pnl, trade.pnlcomm, trade.dtopen, trade.dtclose, trade.barlen))

    def notify_data(self, data, status, *args, **kwargs):
        self.p.journal.append(DataSeen(data._name, data._getstatusname(status)))


class SmaCross(Journaled):
    """On every feed: enter when the close crosses above its SMA, leave when it crosses below.

    ``entry`` is ``market`` (buy, then close), ``bracket`` (a limit entry at the close with a stop
    and a take-profit, left to run) or ``stoplimit`` (a stop-limit entry above the high, valid for
    three bars, then close). ``stake`` 0 leaves the size to the sizer. With ``at_open`` decisions are
    taken in ``next_open`` (cheat-on-open) on the previous bar's cross.
    """

    params = dict(period=15, entry="market", stake=0, at_open=False)

    def __init__(self):
        self.cross = {d: bt.ind.CrossOver(d.close, bt.ind.SMA(d.close, period=self.p.period)) for d in self.datas}

    def _size(self) -> dict:
        return {"size": self.p.stake} if self.p.stake else {}

    def _decide(self) -> None:
        for d, cross in self.cross.items():
            position = self.getposition(d).size
            pending = [o for o in self.broker.get_orders_open() if o.data is d]
            if self.p.entry == "bracket":
                if not position and not pending and cross[0] > 0:
                    close = d.close[0]
                    self.buy_bracket(data=d, price=close, stopprice=close * 0.97, limitprice=close * 1.03,
                                     **self._size())
                continue
            if not position and not pending and cross[0] > 0:
                if self.p.entry == "stoplimit":
                    self.buy(data=d, exectype=bt.Order.StopLimit, price=d.high[0] * 1.001,
                             plimit=d.high[0] * 1.004, valid=self._valid(d), **self._size())
                else:
                    self.buy(data=d, **self._size())
            elif position and cross[0] < 0:
                self.close(data=d)

    @staticmethod
    def _valid(d) -> float:
        # Three bars of this feed's spacing from now, as a date number.
        return d.datetime[0] + 3 * (d.datetime[0] - d.datetime[-1])

    def next(self):
        super().next()
        if not self.p.at_open:
            self._decide()

    def prenext_open(self):
        self._bar("prenext_open")

    def next_open(self):
        self._bar("next_open")
        if self.p.at_open:
            self._decide()


class HeikinAshiCount(bt.Strategy):
    """The reproduction of the doubled frame: HeikinAshi forces backtrader's next mode. Its minimum
    period is 2, so of 3 bars the first goes to ``prenext`` and the other two to ``next``."""

    params = dict(journal=None)

    def __init__(self):
        self.ha = bt.ind.HeikinAshi(self.data)

    def prenext(self):
        self.p.journal.append(("prenext", len(self), self.data.datetime[0], self.ha.ha_close[0]))

    def next(self):
        self.p.journal.append(("next", len(self), self.data.datetime[0], self.ha.ha_close[0]))


# -- every indicator backtrader ships ------------------------------------------------------------

def indicator_classes() -> list[type]:
    """Every indicator class in ``bt.indicators``, one per computation: backtrader makes an alias a
    subclass of its own (not the same object) and names the original in ``aliased``."""
    found = []
    for _, cls in inspect.getmembers(bt.indicators, inspect.isclass):
        canonical = issubclass(cls, bt.Indicator) and cls is not bt.Indicator and not cls.__dict__.get("aliased")
        if canonical and cls not in found:
            found.append(cls)
    return sorted(found, key=lambda cls: cls.__name__)


_NO_STATSMODELS = importlib.util.find_spec("statsmodels") is None

# Classes not built, and why. Anything else in bt.indicators is built, so a new one cannot slip by.
UNBUILDABLE = {
    "MovingAverageBase": "abstract base of the moving averages: no lines, no calculation",
    "OperationN": "abstract base: subclasses supply func",
    "PeriodN": "abstract base: no lines",
    "BaseApplyN": "abstract base of ApplyN: no lines",
    "OscillatorMixIn": "a mixin for the generated *Oscillator classes, not an indicator of its own",
    "FindFirstIndex": "base of FindFirstIndexHighest/Lowest, which are it with _evalfunc max/min",
    "FindLastIndex": "base of FindLastIndexHighest/Lowest, which are it with _evalfunc max/min",
    "OLS_BetaN": "calls pandas.ols, removed from pandas in 0.20",
    **({name: "needs statsmodels, which is not installed"
        for name in ("CointN", "OLS_Slope_InterceptN", "OLS_TransformationN")} if _NO_STATSMODELS else {}),
}

# Indicators of two datas: data0.close against data1.close.
PAIRED = {"CrossOver", "CrossUp", "CrossDown", "NonZeroDifference", "Oscillator", "CointN",
          "OLS_Slope_InterceptN", "OLS_TransformationN"}

# Indicators that make cerebro fall back to next mode (``_nextforce``, or one built inside); left out
# of a runonce battery, or it would not run in runonce mode at all.
NEXT_FORCING = {"HeikinAshi", "haDelta"}


def _spread(window) -> float:
    return max(window) - min(window)


def _build(cls: type, d0, d1):
    name = cls.__name__
    if name in PAIRED:
        return cls(d0.close, d1.close)
    # No usable default: the one argument each needs, as plain as it can be.
    if name == "ApplyN":
        return cls(d0, func=_spread)
    if name == "ReduceN":
        return cls(d0, function=max)
    if name == "ExponentialSmoothingDynamic":
        return cls(d0, alpha=d0.low / d0.high)
    return cls(d0)


class IndicatorBattery(bt.Strategy):
    """Every buildable indicator on data0 (and data1 for the paired ones), with default parameters,
    but those named in ``leave_out``. The journal's first entry is ``("lines", names)`` naming every
    line recorded; then each bar adds ``(phase, len, dt, values)`` with every line's current value."""

    params = dict(journal=None, leave_out=())

    def __init__(self):
        self._lines, names = [], []
        for cls in indicator_classes():
            if cls.__name__ in UNBUILDABLE or cls.__name__ in self.p.leave_out:
                continue
            indicator = _build(cls, self.data0, self.data1)
            for i, line in enumerate(indicator.lines):
                self._lines.append(line)
                names.append(f"{cls.__name__}.{indicator.lines._getlinealias(i)}")
        self.p.journal.append(("lines", tuple(names)))

    def _row(self, phase: str) -> None:
        self.p.journal.append((phase, len(self), self.data0.datetime[0], tuple(line[0] for line in self._lines)))

    def prenext(self):
        self._row("prenext")

    def next(self):
        self._row("next")

    def prenext_open(self):
        self._row("prenext_open")

    def next_open(self):
        self._row("next_open")
