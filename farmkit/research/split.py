"""In-sample / out-of-sample splits of bars, walk-forward windows, and out-of-sample figures.

A split cuts every symbol at the same timestamp. Parameters are chosen on the in-sample side only;
the out-of-sample side says how they did on bars the choice never saw.

>>> from farmkit.research.split import split_bars, walk_forward, WalkForward
>>> is_bars, oos_bars = split_bars(bars, 0.7)            # or split_bars(bars, "2024-01-05")
>>> [w.oos_start for w in walk_forward(bars, 4)]          # or anchored=True, train=0.5
>>> fk.sweep(SmaCross, bars, grid, split=WalkForward(windows=4), warmup_bars=60).summary()

Warm-up: an out-of-sample backtest that starts cold spends its first bars filling indicators.
``with_warmup`` prepends the ``warmup_bars`` bars before the out-of-sample start, and
``oos_curve`` measures only what happens from the out-of-sample start on: the equity curve is
cut at ``oos_start`` and rebased, trades opened during the warm-up are left out of the trade
statistics (counted in ``warmup_trades``), and a position carried out of the warm-up counts only
with its price moves from ``oos_start`` on.
"""

from __future__ import annotations

import datetime as _dt
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from farmkit import metrics as _metrics
from farmkit.research import trials
from farmkit.data.bars import Bars
from farmkit.errors import DataError, ParameterError


@dataclass(frozen=True, eq=False)  # eq would compare DataFrames, which have no single truth value
class Window:
    """One train/test pair. Starts and ends are the first and last bar timestamps (inclusive)."""

    index: int
    in_sample: Bars
    out_of_sample: Bars
    is_start: pd.Timestamp
    is_end: pd.Timestamp
    oos_start: pd.Timestamp
    oos_end: pd.Timestamp

    def __repr__(self) -> str:
        return (f"Window({self.index}: in-sample {self.is_start:%Y-%m-%d %H:%M} → {self.is_end:%Y-%m-%d %H:%M}, "
                f"out-of-sample {self.oos_start:%Y-%m-%d %H:%M} → {self.oos_end:%Y-%m-%d %H:%M} UTC)")


@dataclass(frozen=True)
class WalkForward:
    """Walk-forward as a ``split=`` for ``fk.sweep``; see :func:`walk_forward` for the meaning.

    >>> fk.sweep(SmaCross, bars, grid, split=WalkForward(windows=4, anchored=True))
    """

    windows: int = 4
    train: float | None = None
    anchored: bool = False

    def __post_init__(self):
        _check_windows(self.windows, self.train)


def _union(bars: Bars) -> pd.DatetimeIndex:
    index = pd.DatetimeIndex([], tz="UTC")
    for frame in bars.values():
        index = index.union(frame.index)
    if index.empty:
        raise DataError("there are no bars to split")
    return index


def _between(bars: Bars, start: pd.Timestamp, end: pd.Timestamp, side: str) -> Bars:
    out = Bars()
    for symbol, frame in bars.items():
        part = frame.loc[start:end]  # label slicing on a sorted index: both ends inclusive
        if part.empty:
            raise DataError(f"{symbol} has no bars {side} ({start} → {end}); move the split or drop "
                            f"the symbol")
        out[symbol] = part
    return out


def _window(bars: Bars, times: pd.DatetimeIndex, index: int, is_from: int, cut: int, oos_to: int) -> Window:
    # Positions in the union of timestamps: in-sample [is_from, cut), out-of-sample [cut, oos_to).
    is_start, is_end, oos_start, oos_end = times[is_from], times[cut - 1], times[cut], times[oos_to - 1]
    return Window(index, _between(bars, is_start, is_end, "in sample"),
                  _between(bars, oos_start, oos_end, "out of sample"), is_start, is_end, oos_start, oos_end)


def _as_utc(value) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"cannot read split={value!r} as a date; write e.g. '2024-01-05' or "
                             f"'2024-01-05 15:00'") from exc
    return ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")


def _cut_position(times: pd.DatetimeIndex, split) -> int:
    if isinstance(split, numbers.Real) and not isinstance(split, bool):
        if not 0.0 < split < 1.0:  # NaN fails this too
            raise ParameterError(f"split={split!r}: a fraction must be between 0 and 1 (exclusive), "
                                 f"e.g. 0.7 for 70% in sample")
        cut = int(split * len(times))
        if not 0 < cut < len(times):
            raise ParameterError(f"split={split!r} leaves one side empty: there are only {len(times)} bars")
        return cut
    if isinstance(split, (str, _dt.date, pd.Timestamp)):
        ts = _as_utc(split)
        if not times[0] < ts <= times[-1]:
            raise ParameterError(f"split date {ts} is outside the data ({times[0]} → {times[-1]}); "
                                 f"both sides need bars")
        return int(times.searchsorted(ts, side="left"))
    raise ParameterError(f"split must be a fraction (0.7), a date ('2024-01-05') or WalkForward(...), "
                         f"got {split!r}")


def split_bars(bars: Bars, split) -> tuple[Bars, Bars]:
    """``(in_sample, out_of_sample)``, cut at the same timestamp for every symbol.

    ``split`` is a fraction of the bars' timestamps (all symbols together) that goes in sample, or
    a date: the out-of-sample side starts at the first bar at or after it (naive dates are UTC).

    >>> is_bars, oos_bars = split_bars(bars, 0.7)
    """
    window = split_windows(bars, split)[0]
    return window.in_sample, window.out_of_sample


def _check_windows(windows, train) -> None:
    if isinstance(windows, bool) or not isinstance(windows, numbers.Integral) or windows < 1:
        raise ParameterError(f"windows must be a whole number of at least 1, got {windows!r}")
    if train is not None and (isinstance(train, bool) or not isinstance(train, numbers.Real)
                              or not 0.0 < train < 1.0):
        raise ParameterError(f"train must be a fraction between 0 and 1 (exclusive), got {train!r}")


def walk_forward(bars: Bars, windows: int, *, train: float | None = None, anchored: bool = False) -> list[Window]:
    """Walk-forward windows: out-of-sample windows of equal length that follow each other to the
    end of the data, each with an in-sample window right before it.

    ``train`` is the fraction of the bars in the first in-sample window (default: one part in
    ``windows + 1``, so that every window has as many bars as one out-of-sample window). Rolling
    windows keep that length; ``anchored=True`` starts every in-sample window at the first bar.

    >>> for w in walk_forward(bars, 3, anchored=True): print(w)
    """
    _check_windows(windows, train)
    times = _union(bars)
    n = len(times)
    first = int((train if train is not None else 1.0 / (windows + 1)) * n)
    if first < 1 or n - first < windows:
        raise ParameterError(f"{n} bars cannot hold a first in-sample window of {first} bars and "
                             f"{windows} out-of-sample windows; use fewer windows or another train=")
    cuts = [first + round(k * (n - first) / windows) for k in range(windows + 1)]
    return [_window(bars, times, k + 1, 0 if anchored else max(0, cuts[k] - first), cuts[k], cuts[k + 1])
            for k in range(windows)]


def split_windows(bars: Bars, split) -> list[Window]:
    """The windows a ``split=`` of ``fk.sweep`` stands for: one for a fraction or a date, several
    for a :class:`WalkForward`."""
    if isinstance(split, WalkForward):
        return walk_forward(bars, split.windows, train=split.train, anchored=split.anchored)
    times = _union(bars)
    return [_window(bars, times, 1, 0, _cut_position(times, split), len(times))]


def with_warmup(bars: Bars, window: Window, warmup_bars: int) -> Bars:
    """The window's out-of-sample bars with the ``warmup_bars`` timestamps before its start in front
    (fewer where the data begins later), for indicators to fill before the out-of-sample start."""
    if isinstance(warmup_bars, bool) or not isinstance(warmup_bars, numbers.Integral) or warmup_bars < 0:
        raise ParameterError(f"warmup_bars must be a whole number of at least 0, got {warmup_bars!r}")
    if warmup_bars == 0:
        return window.out_of_sample
    times = _union(bars)
    start = times[max(0, int(times.searchsorted(window.oos_start)) - warmup_bars)]
    return _between(bars, start, window.oos_end, "in the out-of-sample window")


@dataclass(frozen=True)
class OosCurve:
    """What an out-of-sample run did from its out-of-sample start on: ``equity`` rebased to the
    run's starting cash, the trades opened from then on, exposure, and the value traded."""

    equity: pd.Series
    trades: pd.DataFrame
    exposure: pd.Series
    traded_value: float
    warmup_trades: int = 0

    def metrics(self) -> dict[str, float]:
        """``metrics.summary`` of the curve, its daily statistics, and PSR vs 0: one set of chosen
        parameters is not a selection, so its DSR is its PSR."""
        stats = trials.daily_stats(self.equity)
        return {**_metrics.summary(self.equity, self.trades, exposure=self.exposure,
                                   traded_value=self.traded_value),
                **stats, **trials.deflate(stats, 1, 0.0), "warmup_trades": self.warmup_trades}


def oos_curve(result, oos_start: pd.Timestamp) -> OosCurve:
    """The part of a backtest result (``fk.backtest``) from ``oos_start`` on; warm-up bars before
    it are left out. ``oos_curve(res, window.oos_start).metrics()["sharpe"]``"""
    equity = result.equity[result.equity.index >= oos_start]
    if equity.empty:
        raise DataError(f"run {result.run_id} has no bars at or after {oos_start}")
    scale = float(result.equity.iloc[0]) / float(equity.iloc[0])
    trades = result.trades
    warm = trades["opened_at"] < oos_start
    orders = result.orders
    filled = orders[(orders["executed_size"].fillna(0) != 0) & (orders["executed_at"] >= oos_start)]
    traded_value = float((filled["executed_size"].abs() * filled["executed_price"]).sum())
    closes = pd.DataFrame({s: f["close"] for s, f in result.prices.items()}).reindex(equity.index).ffill()
    positions = result.positions.reindex(equity.index)
    exposure = (positions.abs() * closes[positions.columns]).sum(axis=1) / equity.where(equity != 0)
    return OosCurve(equity=(equity * scale).rename("equity"), trades=trades[~warm].reset_index(drop=True),
                    exposure=exposure, traded_value=traded_value * scale, warmup_trades=int(warm.sum()))


def stitch(curves: list[OosCurve]) -> OosCurve:
    """Out-of-sample curves one after the other as one curve: each window's returns are chained
    onto the value where the previous window ended."""
    if not curves:
        raise ValueError("no out-of-sample curves to stitch")
    level = float(curves[0].equity.iloc[0])
    parts, traded = [], 0.0
    for curve in curves:
        scale = level / float(curve.equity.iloc[0])
        parts.append(curve.equity * scale)
        traded += curve.traded_value * scale
        level = float(parts[-1].iloc[-1])
    return OosCurve(equity=pd.concat(parts).rename("equity"),
                    trades=pd.concat([c.trades for c in curves], ignore_index=True),
                    exposure=pd.concat([c.exposure for c in curves]), traded_value=traded,
                    warmup_trades=sum(c.warmup_trades for c in curves))


# Figures put side by side in SweepResult.oos, as is_<name> and oos_<name>.
SIDE_BY_SIDE = ("sharpe", "total_return", "max_drawdown", "trades")


def run_out_of_sample(strategy: type, bars: Bars, window: Window, params: dict, *, backtest: Callable,
                      warmup_bars: int, sweep_id: str, segment: str, store, board=None,
                      **backtest_kwargs) -> tuple[str | None, OosCurve | None, str | None]:
    """One ``backtest`` (``fk.backtest``, passed in: the engine reads splits, so this module does not
    import it) of the chosen ``params`` on the window's out-of-sample bars (after
    ``warmup_bars`` of warm-up), registered with ``sweep_id`` and ``segment``, its registry
    metrics replaced by those of the out-of-sample part alone. ``(run_id, curve, error)``.

    ``board`` (Settings) puts the run on the leaderboard once its figures are the out-of-sample
    ones; run it with ``settings`` whose ``redis`` is off, so the kernel does not publish the
    figures that include the warm-up first."""
    from farmkit import leaderboard

    try:
        res = backtest(strategy, with_warmup(bars, window, warmup_bars), store=store, progress="off",
                       **backtest_kwargs, **params)
    except Exception as exc:  # reported in the oos table, like a failing in-sample trial
        run_id = getattr(exc, "run_id", None)
        if run_id is not None:
            store.runs.upsert(run_id, sweep_id=sweep_id, segment=segment)
        return run_id, None, f"{type(exc).__name__}: {exc}"
    curve = oos_curve(res, window.oos_start)
    # The registry must not show figures that include the warm-up under an out-of-sample label.
    store.runs.upsert(res.run_id, sweep_id=sweep_id, segment=segment,
                      metrics={**curve.metrics(), "warmup_bars": int(warmup_bars)})
    if board is not None:
        leaderboard.publish(board, store.runs.get(res.run_id))   # logged on failure; never breaks the sweep
    return res.run_id, curve, None


def oos_row(window: Window, params: dict, chosen: dict, run_id: str | None, curve: OosCurve | None,
            error: str | None) -> dict:
    """One row of ``SweepResult.oos``: the window, the chosen parameters, the in-sample trial's
    figures (``chosen``, a row of the in-sample table) next to the out-of-sample ones."""
    oos = curve.metrics() if curve is not None else {}
    row = {"window": window.index, **params, "is_run_id": chosen.get("run_id"), "oos_run_id": run_id,
           "is_start": window.is_start, "is_end": window.is_end,
           "oos_start": window.oos_start, "oos_end": window.oos_end}
    for name in SIDE_BY_SIDE:
        row[f"is_{name}"] = chosen.get(name, math.nan)
        row[f"oos_{name}"] = oos.get(name, math.nan)
    row.update(is_dsr=chosen.get("dsr", math.nan), oos_psr=oos.get("psr", math.nan),
               oos_warmup_trades=oos.get("warmup_trades", math.nan), oos_error=error)
    return row


def check_select(select: str) -> None:
    """``select`` must name a metric every trial has: one of ``fk.backtest``'s or a deflated one."""
    one_bar = pd.Series([1.0], index=pd.DatetimeIndex(["2024-01-02"], tz="UTC"))
    known = [*_metrics.summary(one_bar), "sharpe_daily", "psr", "dsr"]
    if select not in known:
        raise ParameterError(f"select={select!r} is not a metric; choose one of {', '.join(known)}")


def best_trial(table: pd.DataFrame, metric: str, sweep_id: str = "") -> pd.Series:
    """The done row of a trials table with the highest ``metric``."""
    done = table[table["status"] == "done"]
    if metric not in table.columns and not done.empty:
        raise KeyError(f"no metric {metric!r}; the table has: {', '.join(table.columns)}")
    ranked = pd.to_numeric(done.get(metric, pd.Series(dtype="float64")), errors="coerce").dropna()
    if ranked.empty:  # no done trial at all (a table of failures has no metric columns) or all NaN
        raise ValueError(f"no done trial{f' of sweep {sweep_id}' if sweep_id else ''} has a {metric}")
    return done.loc[ranked.idxmax()]


@dataclass(frozen=True)
class SplitOutcome:
    table: pd.DataFrame          # the in-sample trials of every window, with a segment column
    oos: pd.DataFrame            # one oos_row per window
    curve: OosCurve | None       # the out-of-sample curves stitched; None when none ran
    windows: int                 # out-of-sample runs in the curve
    interrupted: bool


def run_split(windows: list[Window], names: list[str], *, run_grid: Callable, run_oos: Callable,
              select: str, walk: bool, tick: Callable | None = None) -> SplitOutcome:
    """Per window: ``run_grid(in_sample_bars, segment)`` -> ``(table, interrupted)``, the trial
    with the highest ``select`` chosen in sample, then ``run_oos(window, params, segment=...)``."""
    tables, rows, curves, interrupted = [], [], [], False
    for window in windows:
        prefix = f"wf{window.index}/" if walk else ""
        table, interrupted = run_grid(window.in_sample, prefix + "in_sample")
        tables.append(table.assign(segment=prefix + "in_sample"))
        if interrupted:
            break
        try:
            chosen = best_trial(table, select).to_dict()
        except ValueError as exc:  # every in-sample trial failed: nothing to take out of sample
            rows.append(oos_row(window, {}, {}, None, None, f"in sample: {exc}"))
            continue
        # Read back from a table they are numpy scalars; the strategy and the registry want Python ones.
        params = {n: chosen[n].item() if hasattr(chosen[n], "item") else chosen[n] for n in names}
        try:
            run_id, curve, error = run_oos(window, params, segment=prefix + "out_of_sample")
        except KeyboardInterrupt:
            interrupted = True
            break
        rows.append(oos_row(window, params, chosen, run_id, curve, error))
        curves += [curve] if curve is not None else []
        if tick is not None:
            tick(1)
    table = pd.concat(tables, ignore_index=True)
    table.insert(0, "segment", table.pop("segment"))
    return SplitOutcome(table, pd.DataFrame.from_records(rows), stitch(curves) if curves else None,
                        len(curves), interrupted)


# -- a notebook sweep's split trials ----------------------------------------------------------------
#
# A notebook makes its own bars, so a notebook sweep cannot hand a trial its in-sample bars. It asks
# instead: the trial's queued registry row carries ``split`` (the split, the side, the warm-up), and
# the notebook's first fk.backtest (the one that claims the queued run) cuts its bars accordingly.

SIDES = ("in_sample", "out_of_sample")


def trial_split(split, side: str, warmup_bars: int = 0) -> dict:
    """What a notebook trial's registry row asks of its backtest: ``split`` (a fraction or a date;
    walk-forward windows are for Strategy classes), ``side`` and ``warmup_bars``."""
    if isinstance(split, WalkForward):
        raise ParameterError("walk-forward windows are not supported for notebook sweeps; split at a fraction "
                             "or a date (--split 0.7), or sweep the notebook's Strategy class with "
                             "fk.sweep(..., split=WalkForward(...))")
    if isinstance(split, numbers.Real) and not isinstance(split, bool):
        if not 0.0 < split < 1.0:  # NaN fails this too
            raise ParameterError(f"split={split!r}: a fraction must be between 0 and 1 (exclusive), "
                                 f"e.g. 0.7 for 70% in sample")
        split = float(split)
    elif isinstance(split, (str, _dt.date, pd.Timestamp)):
        split = _as_utc(split).isoformat()   # kept in the registry as JSON
    else:
        raise ParameterError(f"a notebook sweep splits at a fraction (0.7) or a date ('2024-01-05'), got {split!r}")
    if isinstance(warmup_bars, bool) or not isinstance(warmup_bars, numbers.Integral) or warmup_bars < 0:
        raise ParameterError(f"warmup_bars must be a whole number of at least 0, got {warmup_bars!r}")
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    return {"split": split, "side": side, "warmup_bars": int(warmup_bars)}


def claimed_bars(bars: Bars, asked: dict) -> tuple[Bars, Window]:
    """The bars a split trial runs on (its in-sample side, or its out-of-sample side after its
    warm-up) and the window they were cut from."""
    window = split_windows(bars, asked["split"])[0]
    if asked["side"] == "in_sample":
        return window.in_sample, window
    return with_warmup(bars, window, int(asked.get("warmup_bars") or 0)), window


def window_record(asked: dict, window: Window) -> dict:
    """The registry's ``split`` of a trial: what was asked and where the bars were cut."""
    return {**asked, **{name: getattr(window, name).isoformat()
                        for name in ("is_start", "is_end", "oos_start", "oos_end")}}


def finish_out_of_sample(result, window: Window, asked: dict, store, settings) -> dict:
    """Replace an out-of-sample trial's figures (registry and ``result.metrics``) by those of its
    out-of-sample part, and put it on the leaderboard with them. Returns the figures."""
    from farmkit import leaderboard

    figures = {**oos_curve(result, window.oos_start).metrics(), "warmup_bars": int(asked.get("warmup_bars") or 0)}
    store.runs.upsert(result.run_id, metrics=figures)
    result.figures.clear()
    result.figures.update(figures)
    leaderboard.publish(settings, store.runs.get(result.run_id))   # logged on failure; replaces the first figures
    return figures
