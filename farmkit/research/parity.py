"""Backtest/live parity: replay the bars a paper run consumed through ``fk.backtest`` and compare
the decisions bar by bar. Same strategy, same bars, same broker model: any difference is a bug in
the live path (or a strategy that depends on wall time)."""

from __future__ import annotations

import json

import pandas as pd

from farmkit.data.bars import Bars
from farmkit.fmel.query import Comparison, compare, default_store
from farmkit.settings import Settings


class Parity(Comparison):
    """:class:`~farmkit.fmel.query.Comparison` of a paper run (``run_a``) with its replay (``run_b``)."""

    def __str__(self) -> str:
        if self.identical:
            return (f"paper run {self.run_a} and its replay {self.run_b} took identical decisions on all "
                    f"{self.bars} bars")
        first = self.differences.iloc[0]
        return (f"paper run {self.run_a} and its replay {self.run_b} first differ at {first.timestamp} "
                f"(paper bar {first.bar_a}): paper decided {first.decisions_a}, the backtest decided "
                f"{first.decisions_b}; {len(self.differences)} bar(s) differ in all")


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


def load_strategy(spec: str) -> type:
    """The strategy class ``spec`` names: ``path/to/file.py:ClassName`` or ``package.module:ClassName``.

    >>> fk.parity(run_id, load_strategy("strategies.py:SmaCross"))
    """
    import importlib
    import runpy

    from farmkit.errors import ParameterError

    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise ParameterError(f"a strategy is named as FILE.py:CLASS or module:CLASS, got {spec!r}")
    namespace = runpy.run_path(where) if where.endswith(".py") else vars(importlib.import_module(where))
    if name not in namespace:
        raise ParameterError(f"{where} defines no {name}; it defines: "
                             + ", ".join(k for k, v in namespace.items() if isinstance(v, type)))
    return namespace[name]


def parity(paper_run_id: str, strategy: type, *, store=None, cash: float | None = None,
           commission: float = 0.0, **params) -> Parity:
    """Replay a paper run's bars through ``fk.backtest(strategy)`` and compare the decisions.

    Parameters default to the paper run's own (from the run registry); ``cash`` to its starting value.

    >>> fk.parity(paper_res.run_id, SmaCross).identical
    """
    from farmkit.research.backtest import backtest

    store = default_store(store)
    records = store.fmel(paper_run_id)
    if records.empty:
        raise KeyError(f"no FMEL records for run {paper_run_id!r}; fk.runs() lists the runs")
    run = store.runs.get(paper_run_id) or {}
    params = {**(run.get("params") or {}), **params}
    if cash is None:
        first = json.loads(records.performance.iloc[0])
        cash = first["equity"] - first["pnl"]
    # The replay is a check, not research: it stays off the leaderboard and out of the strategy's
    # family of trials (segment "parity"), so it cannot deflate anyone's Sharpe ratio.
    quiet = Settings.from_env().replace(redis="off", progress="off")
    replay = backtest(strategy, consumed_bars(records), cash=cash, commission=commission, store=store,
                      settings=quiet, agent_id=f"{run.get('agent_id') or strategy.__name__}/parity", **params)
    store.runs.upsert(replay.run_id, segment="parity")
    found = compare(paper_run_id, replay.run_id, store=store)
    return Parity(found.run_a, found.run_b, found.bars, found.differences, found.side_by_side)
