"""Look-ahead check: does a strategy decide differently when the future is not there?

A strategy that only uses the past makes the same decisions and tracks the same values on bar ``k``
whether the data ends at bar ``k`` or goes on for a year. So: backtest once on all the data, backtest
again on the data cut at a few points, and compare each truncated run, bar by bar, with the full run.

>>> from farmkit.research.lookahead import check_lookahead
>>> report = check_lookahead(SmaCross, bars, cuts=5, fast=5)
>>> report.ok, report.first_bar
>>> report.differences.head()
>>> report.raise_if_leaky()          # in a notebook cell that gates a sweep

A notebook's path checks the whole notebook instead, every cell re-run on cut data
(:mod:`farmkit.research.lookahead_notebook`): ``check_lookahead("notebooks/strategies/sma_crossover.ipynb")``.
"""

from __future__ import annotations

import os

from farmkit.data.bars import Bars, to_bars
from farmkit.errors import StrategyError
from farmkit.fmel.stores import open_store
from farmkit.research import lookahead_notebook
from farmkit.research.backtest import backtest
from farmkit.research.lookahead_report import (
    CHECK_SEGMENT,
    COLUMNS,
    LookaheadError,
    LookaheadReport,
    _clock,
    _compare,
    _cut_points,
    _differences,
)
from farmkit.result import BacktestResult
from farmkit.settings import Settings

__all__ = ["CHECK_SEGMENT", "COLUMNS", "LookaheadError", "LookaheadReport", "check_lookahead", "check_notebook"]


def check_lookahead(strategy, data=None, *, cuts: int | None = None, cash: float | None = None,
                    commission: float | None = None, settings: Settings | None = None, recursive: bool = True,
                    starts: int = 1, **params):
    """Backtest ``strategy`` on all of ``data`` and on ``cuts`` (default 5) truncations of it (cut
    evenly between 20% and 95% of the bars, every symbol at the same timestamp), and report where its
    decisions (action, symbol, size) or tracked values differ from the full run on the same bar.

    ``strategy`` may also be a finished backtest: its strategy, data, parameters and broker are reused.
    A notebook's path checks the whole notebook (every cell re-run on cut data, ``cuts`` default 3,
    ``params`` its parameters, ``recursive``/``starts`` the warm-up check): see
    :func:`farmkit.research.lookahead_notebook.check_notebook`.

    >>> check_lookahead(SmaCross, bars, fast=5).raise_if_leaky()
    >>> check_lookahead(res)            # res = fk.backtest(...)
    >>> check_lookahead("notebooks/strategies/sma_crossover.ipynb", days=5)
    """
    if isinstance(strategy, (str, os.PathLike)):
        # A notebook's cash and commission are parameters of the notebook like any other.
        given = {k: v for k, v in (("cash", cash), ("commission", commission)) if v is not None}
        return check_notebook(strategy, {**given, **params}, cuts=3 if cuts is None else cuts,
                              recursive=recursive, starts=starts, settings=settings)
    cuts = 5 if cuts is None else cuts
    cash = 100_000.0 if cash is None else cash
    commission = 0.0 if commission is None else commission
    broker = dict(cash=cash, commission=commission)
    if isinstance(strategy, BacktestResult):
        done = strategy
        strategy, data = done.strategy_class, done.prices if data is None else data
        params = {**done.params, **params}
        broker = done.broker.as_kwargs() if done.broker is not None else broker
    if data is None:
        raise TypeError("check_lookahead needs the data: check_lookahead(MyStrategy, bars, ...) or check_lookahead(res)")
    bars = to_bars(data)
    # A lookahead run must not take the id `farm backtest` queued for the notebook's own backtest. Its
    # runs are a check, not research: off the leaderboard, and out of the strategy's family of trials
    # (segment "lookahead"), so a truncated leaky run can neither top a board nor deflate anyone.
    settings = (settings or Settings.from_env()).replace(run_id=None, redis="off")
    store = open_store(settings.store)
    run = dict(**broker, settings=settings, store=store, agent_id=f"{strategy.__name__}/lookahead", **params)
    done_full = backtest(strategy, bars, **run)
    store.runs.upsert(done_full.run_id, segment=CHECK_SEGMENT)
    full = done_full.fmel
    clock = _clock(bars)
    found, counts, run_ids = [], [], []
    warmup = (store.runs.get(done_full.run_id) or {}).get("warmup_bars")
    for n in _cut_points(bars, clock, cuts, 0 if warmup is None or warmup != warmup else int(warmup)):
        last = clock[n - 1]
        part = Bars({s: f.iloc[: f.index.searchsorted(last, side="right")] for s, f in bars.items()})
        try:
            result = backtest(strategy, part, **run)
            records, run_id = result.fmel, result.run_id
        except StrategyError as exc:
            # Raising only when the data is cut (e.g. reading close[1] on the last bar) is a look-ahead
            # too; the bars before the error are still recorded and compared.
            records, run_id = store.fmel(exc.run_id), exc.run_id
            bar = exc.bar_number if exc.bar_number is not None else 0   # None: raised before the first bar
            found.append((n, bar, exc.timestamp, "error", None, str(exc).split(". FMEL")[0]))
        store.runs.upsert(run_id, segment=CHECK_SEGMENT)
        counts.append(n)
        run_ids.append(run_id)
        found.extend(_compare(full, records, n))
    return LookaheadReport(strategy.__name__, len(full), tuple(counts), _differences(found),
                           str(full.run_id.iloc[0]) if len(full) else "", tuple(run_ids))


def check_notebook(path, params: dict | None = None, **options):
    """The whole-notebook check (:func:`farmkit.research.lookahead_notebook.check_notebook`)."""
    return lookahead_notebook.check_notebook(path, params, **options)
