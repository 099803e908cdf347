"""`BacktestResult`: what a backtest returns — metrics, equity, trades, orders, FMEL, charts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from farmkit import metrics as _metrics
from farmkit.data.bars import Bars
from farmkit.fmel.recorder import num2ns

_ORDER_COLUMNS = ["ref", "symbol", "side", "type", "status", "created_at", "size", "price",
                  "executed_at", "executed_size", "executed_price", "commission", "reason"]
_TRADE_COLUMNS = ["symbol", "opened_at", "closed_at", "size", "entry_price", "exit_price", "pnl",
                  "pnl_net", "commission", "bars_held"]


def _times(nums) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(num2ns(np.asarray(nums, dtype="float64")).view("datetime64[ns]")).tz_localize("UTC")


@dataclass
class BacktestResult:
    """The outcome of ``fk.backtest``.

    ``metrics`` (a Series: one figure per metric, keyed and ordered as :func:`farmkit.report.metrics_table`
    lists them; ``figures`` is the same as a dict), ``equity``/``drawdown`` (Series), ``positions`` (DataFrame, one column per
    symbol), ``trades`` and ``orders`` (DataFrames), ``fmel`` (the records, loaded on first use),
    ``plot()``, ``to_html(path)``, ``explain(bar)``.
    """

    run_id: str
    agent_id: str
    strategy: str
    params: dict
    prices: Bars
    equity: pd.Series
    drawdown: pd.Series
    positions: pd.DataFrame
    trades: pd.DataFrame
    orders: pd.DataFrame
    figures: dict
    store: object = field(repr=False)
    strategy_class: type | None = field(default=None, repr=False)
    broker: object = field(default=None, repr=False)     # the BrokerConfig it ran with
    _fmel: pd.DataFrame | None = field(default=None, repr=False)
    exposure: pd.Series | None = field(default=None, repr=False)      # gross exposure / equity per bar
    indicators: pd.DataFrame | None = field(default=None, repr=False)  # the tracked lines per bar
    indicator_symbols: dict = field(default_factory=dict, repr=False)  # tracked line -> its symbol, if known

    @classmethod
    def from_run(cls, *, run_id, agent_id, strategy, params, bars, recorder, store, broker) -> "BacktestResult":
        index = _times(recorder.timestamps)
        equity = pd.Series(np.frombuffer(recorder.value, "f8").copy(), index=index, name="equity")
        drawdown = _metrics.drawdown(equity) if len(equity) else equity.copy()
        positions = cls._positions(recorder, index)
        orders = cls._orders(recorder)
        trades = pd.DataFrame(recorder.trades, columns=_TRADE_COLUMNS)
        for col in ("opened_at", "closed_at"):
            trades[col] = _times(trades[col].to_numpy()) if len(trades) else pd.Series(dtype="datetime64[ns, UTC]")
        closes = pd.DataFrame({s: f["close"] for s, f in bars.items()}).reindex(index).ffill()
        gross = (positions.abs() * closes[positions.columns]).sum(axis=1)
        exposure = gross / equity.where(equity != 0)
        filled = orders[orders["executed_size"].fillna(0) != 0]
        traded_value = float((filled["executed_size"].abs() * filled["executed_price"]).sum())
        summary = _metrics.summary(equity, trades, exposure=exposure, traded_value=traded_value)
        if len(equity):   # against buy-and-hold of the traded universe, the tearsheet's default benchmark
            summary.update(_metrics.relative(equity, _metrics.buy_and_hold(bars, index, float(equity.iloc[0]))))
        lines, owners = recorder.tracked_lines()
        indicators = pd.DataFrame({k: v for k, v in lines.items() if len(v) == len(index)}, index=index)
        return cls(run_id=run_id, agent_id=agent_id, strategy=strategy.__name__, params=dict(params),
                   prices=bars, equity=equity, drawdown=drawdown, positions=positions, trades=trades,
                   orders=orders, figures=summary, store=store, strategy_class=strategy, broker=broker,
                   exposure=exposure.rename("exposure"), indicators=indicators, indicator_symbols=owners)

    @staticmethod
    def _positions(recorder, index) -> pd.DataFrame:
        positions = np.cumsum(recorder.position_deltas(0, len(index)), axis=0)
        return pd.DataFrame(positions, index=index, columns=recorder.symbols)

    @staticmethod
    def _orders(recorder) -> pd.DataFrame:
        reasons = {}
        for noted in recorder.decisions.values():
            for decision in noted:
                for ref in decision.orders:
                    reasons.setdefault(ref, decision.reason)
        rows: dict[int, dict] = {}
        for o in recorder.orders:
            row = rows.setdefault(o.ref, {"ref": o.ref, "symbol": o.symbol, "side": o.side, "type": o.type,
                                          "created_at": o.created_at, "size": o.size,
                                          "price": o.price, "executed_at": np.nan, "executed_size": 0.0,
                                          "executed_value": 0.0, "commission": 0.0,
                                          "reason": reasons.get(o.ref, o.reason)})
            row["status"] = o.event
            row["commission"] = o.commission
            if o.filled_size:
                row["executed_size"] += o.filled_size
                row["executed_value"] += o.filled_size * o.fill_price
                row["executed_at"] = o.executed_at
        frame = pd.DataFrame(list(rows.values()))
        if frame.empty:
            return pd.DataFrame(columns=_ORDER_COLUMNS)
        with np.errstate(invalid="ignore", divide="ignore"):
            frame["executed_price"] = np.where(frame["executed_size"] != 0,
                                               frame["executed_value"] / frame["executed_size"], np.nan)
        for col in ("created_at", "executed_at"):
            frame[col] = _times(frame[col].to_numpy(dtype="float64"))
        frame["price"] = frame["price"].astype("float64")
        return frame[_ORDER_COLUMNS]

    # -- views -----------------------------------------------------------------------------------
    @property
    def metrics(self) -> pd.Series:
        """The figures as a Series, ``res.metrics["sharpe"]``; the index holds the keys the table
        (``res.summary()``) is indexed by, in its order."""
        from farmkit import report
        figures = {key: self.figures[key] for key in report.metric_keys(self.figures)}
        try:
            return pd.Series(figures, name="metrics", dtype="float64")
        except (TypeError, ValueError):   # a paper run's counters (a dict) among the figures
            return pd.Series(figures, name="metrics", dtype=object)

    @property
    def final_value(self) -> float:
        return float(self.equity.iloc[-1]) if len(self.equity) else float("nan")

    @property
    def fmel(self) -> pd.DataFrame:
        """The FMEL records of this run (one row per bar), read from the store."""
        if self._fmel is None:
            self._fmel = self.store.fmel(self.run_id)
        return self._fmel

    def explain(self, bar: int | None = None, timestamp=None) -> pd.DataFrame:
        """One bar's record as a readable table: market, strategy state, decision and reason, actions,
        performance."""
        from farmkit.fmel.query import explain
        return explain(self.run_id, bar=bar, timestamp=timestamp, store=self.store)

    def plot(self, symbol: str | None = None, benchmark=None):
        """The tearsheet as a plotly figure: every symbol's price with its fills and tracked
        indicators (a selector picks the symbol), equity against ``benchmark`` (default buy-and-hold
        of the traded symbols), underwater curve, exposure, trade P&L and monthly returns."""
        from farmkit import report
        return report.tearsheet(self, symbol=symbol, benchmark=benchmark)

    def to_html(self, path: str | Path | None = None, benchmark=None) -> Path:
        """Write the HTML tearsheet (opens offline). Given a ``path``, the page is self-contained
        (plotly.js inline, ~5 MB); by default it goes to the run's folder, ``runs/RUN_ID/tearsheet.html``,
        and loads the one copy of plotly.js that every run's page shares in ``runs/``."""
        from farmkit import report
        if path is not None:
            return report.to_html(self, path, benchmark=benchmark)
        folder = self.store.run_dir(self.run_id)
        return report.to_html(self, folder / "tearsheet.html", plotlyjs=folder.parent, benchmark=benchmark)

    def summary(self) -> pd.DataFrame:
        from farmkit import report
        return report.metrics_table(self.figures)

    def __repr__(self) -> str:
        m = self.figures
        return (f"BacktestResult({self.strategy} run={self.run_id} final_value={self.final_value:,.2f} "
                f"return={m.get('total_return', float('nan')):.2%} sharpe={m.get('sharpe', float('nan')):.2f} "
                f"max_dd={m.get('max_drawdown', float('nan')):.2%} trades={m.get('trades', 0)})")

    def _repr_html_(self) -> str:
        return (f"<b>{self.strategy}</b> run <code>{self.run_id}</code>, params {self.params}"
                + self.summary().to_html())
