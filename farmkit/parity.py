"""Backtest/live parity: replay the bars a paper run consumed through ``fk.backtest`` and compare
the decisions bar by bar. Same strategy, same bars, same broker model: any difference is a bug in
the live path (or a strategy that depends on wall time)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from farmkit.data.bars import Bars
from farmkit.fmel.query import _store


@dataclass(frozen=True)
class Parity:
    """The outcome of :func:`parity`. ``differences`` has one row per bar whose decisions differ;
    ``side_by_side`` shows both records of the first such bar."""

    paper_run_id: str
    backtest_run_id: str
    bars: int
    differences: pd.DataFrame
    side_by_side: pd.DataFrame | None

    @property
    def identical(self) -> bool:
        return self.differences.empty

    def __str__(self) -> str:
        if self.identical:
            return (f"paper run {self.paper_run_id} and its replay {self.backtest_run_id} took identical "
                    f"decisions on all {self.bars} bars")
        first = self.differences.iloc[0]
        return (f"paper run {self.paper_run_id} and its replay {self.backtest_run_id} first differ at "
                f"{first.timestamp} (paper bar {first.paper_bar}): paper decided {first.paper}, the "
                f"backtest decided {first.backtest}; {len(self.differences)} bar(s) differ in all")

    def _repr_html_(self) -> str:
        head = f"<p>{'Identical' if self.identical else 'Divergence'}: {self}</p>"
        return head + ("" if self.side_by_side is None else self.side_by_side.to_html())


def consumed_bars(records: pd.DataFrame) -> Bars:
    """The bars a run saw, rebuilt from its FMEL market state (one frame per symbol)."""
    rows: dict[str, list] = {}
    for ts, market in zip(records.timestamp, records.market_state):
        for symbol, ohlcv in json.loads(market).items():
            if isinstance(ohlcv, dict) and symbol != "events":
                rows.setdefault(symbol, []).append((ts, *(ohlcv[k] for k in ("open", "high", "low", "close", "volume"))))
    bars = Bars()
    for symbol, values in rows.items():
        frame = pd.DataFrame(values, columns=["timestamp", "open", "high", "low", "close", "volume"])
        frame = frame.drop_duplicates("timestamp", keep="first").set_index("timestamp").sort_index()
        bars[symbol] = frame.astype("float64")
    return bars


def _decisions(text: str) -> list[tuple]:
    return [(d.get("action"), d.get("symbol"), d.get("size")) for d in json.loads(text)]


def parity(paper_run_id: str, strategy: type, *, store=None, cash: float | None = None,
           commission: float = 0.0, **params) -> Parity:
    """Replay a paper run's bars through ``fk.backtest(strategy)`` and compare the decisions.

    Parameters default to the paper run's own (from the run registry); ``cash`` to its starting value.

    >>> fk.parity(paper_res.run_id, SmaCross).identical
    """
    from farmkit.engine import backtest

    store = _store(store)
    records = store.fmel(paper_run_id)
    if records.empty:
        raise KeyError(f"no FMEL records for run {paper_run_id!r}; fk.runs() lists the runs")
    run = store.runs.get(paper_run_id) or {}
    params = {**(run.get("params") or {}), **params}
    if cash is None:
        first = json.loads(records.performance.iloc[0])
        cash = first["equity"] - first["pnl"]
    replay = backtest(strategy, consumed_bars(records), cash=cash, commission=commission, store=store,
                      agent_id=f"{run.get('agent_id') or strategy.__name__}/parity", **params)
    theirs = replay.fmel.set_index("timestamp")
    rows = []
    for bar, ts, text in zip(records.bar_number, records.timestamp, records.decisions):
        if ts not in theirs.index:
            rows.append((ts, bar, None, _decisions(text), "(no bar)"))
            continue
        mine, other = _decisions(text), _decisions(theirs.at[ts, "decisions"])
        if mine != other:
            rows.append((ts, bar, int(theirs.at[ts, "bar_number"]), mine, other))
    differences = pd.DataFrame(rows, columns=["timestamp", "paper_bar", "backtest_bar", "paper", "backtest"])
    side = None
    if rows:
        from farmkit.fmel.query import explain
        first = differences.iloc[0]
        side = pd.concat({"paper": explain(paper_run_id, bar=int(first.paper_bar), store=store)["value"],
                          "backtest": explain(replay.run_id, timestamp=first.timestamp, store=store)["value"]},
                         axis=1)
    return Parity(paper_run_id, replay.run_id, len(records), differences, side)
