"""`Strategy`: a backtrader Strategy whose orders carry a reason, and whose state is tracked.

Everything here only notes what the strategy says; the FMEL recorder (an analyzer) reads it each bar.
"""

from __future__ import annotations

from contextlib import contextmanager

import backtrader as bt

from farmkit.model import Decision


class FreshPerBar(dict):
    """A tracked dict made anew for each bar and not changed after it: the FMEL recorder records it
    without a copy."""

    __slots__ = ()
    _fk_fresh_per_bar = True


class Strategy(bt.Strategy):
    """Write strategies as with backtrader, and say why.

    ``buy/sell/close/order_target_*`` take ``reason=``, ``confidence=`` and ``signals=`` (a dict of
    the numbers the decision rests on); ``self.track(name=line_or_value)`` declares state to record
    every bar; ``self.hold(reason=...)`` explains a bar without an order (a bar with no order is a
    ``hold`` decision either way).

    >>> class SmaCross(fk.Strategy):
    ...     params = dict(fast=10, slow=30)
    ...     def __init__(self):
    ...         self.cross = bt.ind.CrossOver(bt.ind.SMA(period=self.p.fast), bt.ind.SMA(period=self.p.slow))
    ...         self.track(cross=self.cross)
    ...     def next(self):
    ...         if self.cross > 0:
    ...             self.buy(reason="fast SMA crossed above slow", confidence=0.6)
    """

    # -- state -----------------------------------------------------------------------------------
    @property
    def tracked(self) -> dict:
        """Tracked names and their current line or value."""
        try:
            return self._fk_tracked
        except AttributeError:
            self._fk_tracked = {}
            return self._fk_tracked

    def track(self, **values) -> None:
        """Record these lines (indicators) or plain values in the strategy state of every bar.

        Lines are read at each bar; plain values are recorded as last set, so call ``track`` again in
        ``next()`` to update them. A value that can change in place (a dict, a list, an object) is
        recorded as a copy taken at each bar: mutating it later does not rewrite earlier bars.
        """
        self.tracked.update(values)

    _OPS = {">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b,
            "<=": lambda a, b: a <= b}

    def condition(self, name: str, value: float, op: str, threshold: float) -> bool:
        """Record a trading condition and whether it holds this bar; returns it, so it can gate an order.
        ``fk.fmel.why_not`` later shows how far each condition was from being met on a hold.

        >>> if self.condition("fast above slow", self.fast[0] - self.slow[0], ">", 0):
        ...     self.buy(reason="fast SMA above slow")
        """
        if op not in self._OPS:
            raise ValueError(f"op must be one of {', '.join(self._OPS)}, got {op!r}")
        value, threshold = float(value), float(threshold)
        met = value == value and self._OPS[op](value, threshold)   # NaN (warm-up) is never met
        conditions = self.tracked.get("conditions")
        if conditions is None or getattr(self, "_fk_conditions_bar", None) != len(self):
            # a fresh dict per bar: earlier bars keep theirs, so the recorder need not copy it
            conditions = self.tracked["conditions"] = FreshPerBar()
            self._fk_conditions_bar = len(self)
        conditions[name] = {"value": value if value == value else None, "op": op, "threshold": threshold,
                            "met": bool(met)}
        return bool(met)

    # -- decisions -------------------------------------------------------------------------------
    @property
    def decisions(self) -> list:
        """:class:`~farmkit.model.Decision` records noted since the recorder last took them; the
        recorder drains this list at the end of every bar."""
        try:
            return self._fk_decisions
        except AttributeError:
            self._fk_decisions = []
            return self._fk_decisions

    def hold(self, reason: str | None = None, confidence: float | None = None,
             signals: dict | None = None, data=None) -> None:
        """Explain a bar on which the strategy chose not to trade."""
        self._note("hold", data, None, reason, confidence, signals, [])

    def _note(self, action, data, size, reason, confidence, signals, orders):
        data = data if data is not None else self.datas[0]
        if isinstance(data, (str, int)):
            data = self.getdatabyname(data) if isinstance(data, str) else self.datas[data]
        refs = [o.ref for o in orders if o is not None]
        if size is None and orders:
            size = sum(o.size for o in orders if o is not None and o.parent is None)
        self.decisions.append(Decision(action, data._name, size, reason, confidence,
                                       dict(signals) if signals else None, refs))

    @contextmanager
    def _deciding(self, action, data, reason, confidence, signals):
        # close() and order_target_*() call buy()/sell() inside: only the outermost call is a decision.
        if getattr(self, "_fk_in_decision", False):
            yield []
            return
        self._fk_in_decision = True
        orders: list = []
        try:
            yield orders
        finally:
            self._fk_in_decision = False
        if orders and orders[0] is None and len(orders) == 1:
            orders = []
        self._note(action, data, None, reason, confidence, signals, orders)

    def _decide(self, action, method, args, kwargs, reason, confidence, signals):
        data = kwargs.get("data", args[0] if args else None)
        with self._deciding(action, data, reason, confidence, signals) as orders:
            result = method(*args, **kwargs)
            orders.extend(result if isinstance(result, list) else [result])
        return result

    def buy(self, *args, reason=None, confidence=None, signals=None, **kwargs):
        return self._decide("buy", super().buy, args, kwargs, reason, confidence, signals)

    def sell(self, *args, reason=None, confidence=None, signals=None, **kwargs):
        return self._decide("sell", super().sell, args, kwargs, reason, confidence, signals)

    def close(self, *args, reason=None, confidence=None, signals=None, **kwargs):
        return self._decide("close", super().close, args, kwargs, reason, confidence, signals)

    def order_target_size(self, *args, reason=None, confidence=None, signals=None, **kwargs):
        return self._decide("target_size", super().order_target_size, args, kwargs, reason, confidence, signals)

    def order_target_value(self, *args, reason=None, confidence=None, signals=None, **kwargs):
        return self._decide("target_value", super().order_target_value, args, kwargs, reason, confidence, signals)

    def order_target_percent(self, *args, reason=None, confidence=None, signals=None, **kwargs):
        return self._decide("target_percent", super().order_target_percent, args, kwargs, reason, confidence,
                            signals)

    def buy_bracket(self, *args, reason=None, confidence=None, signals=None, **kwargs):
        return self._decide("buy", super().buy_bracket, args, kwargs, reason, confidence, signals)

    def sell_bracket(self, *args, reason=None, confidence=None, signals=None, **kwargs):
        return self._decide("sell", super().sell_bracket, args, kwargs, reason, confidence, signals)

    def cancel(self, order, reason=None):
        """Cancel an order; the cancellation is a decision with its reason."""
        result = super().cancel(order)
        self._note("cancel", order.data, order.size, reason, None, None, [order])
        return result
