"""Performance metrics: pure functions on an equity curve, a trades frame and plain numbers.

Conventions: returns are daily (last equity value of each calendar day of the UTC index), annualised
with 252 trading days; calendar spans (CAGR, turnover) use 365.25-day years. Every function returns
a plain float, and NaN where the number is undefined (empty or flat input) instead of raising.

The overfitting-aware statistics follow Bailey & López de Prado, "The Sharpe Ratio Efficient
Frontier" (2012) and "The Deflated Sharpe Ratio" (2014); they take per-period Sharpe ratios and
non-excess kurtosis (3 for normal returns).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd

TRADING_DAYS = 252
YEAR = pd.Timedelta(days=365.25)
EULER_GAMMA = 0.5772156649015329
_NAN = float("nan")
_NORMAL = NormalDist()


def _clean(equity: pd.Series) -> pd.Series:
    equity = equity.dropna().astype("float64")
    return equity if equity.index.is_monotonic_increasing else equity.sort_index()


def _years(index: pd.Index) -> float:
    return (index[-1] - index[0]) / YEAR if len(index) else _NAN


def _daily_rate(annual_rate: float) -> float:
    # Compounded, so that 252 days at this rate earn exactly the annual rate.
    return (1.0 + annual_rate) ** (1.0 / TRADING_DAYS) - 1.0


def daily_returns(equity: pd.Series) -> pd.Series:
    """Return of each calendar day's last equity value; day one is measured from the first value."""
    equity = _clean(equity)
    if equity.empty:
        return pd.Series(dtype="float64", name="return")
    # US regular hours (13:30-21:00 UTC) never cross UTC midnight, so the UTC date is the session.
    closes = equity.groupby(equity.index.normalize()).last()
    previous = closes.shift(1)
    previous.iloc[0] = equity.iloc[0]
    return (closes / previous - 1.0).rename("return")


def total_return(equity: pd.Series) -> float:
    """Last equity value over the first, minus one."""
    equity = _clean(equity)
    return float(equity.iloc[-1] / equity.iloc[0] - 1.0) if len(equity) else _NAN


def cagr(equity: pd.Series) -> float:
    """Compound annual growth rate over the calendar time between the first and last timestamp."""
    equity = _clean(equity)
    years = _years(equity.index)
    if not years > 0 or not equity.iloc[0] > 0 or equity.iloc[-1] < 0:
        return _NAN
    # numpy rather than float ** so that a huge rate over a short span gives inf, not OverflowError.
    with np.errstate(over="ignore", divide="ignore"):
        return float(np.power(equity.iloc[-1] / equity.iloc[0], 1.0 / years) - 1.0)


def annual_volatility(equity: pd.Series) -> float:
    """Standard deviation (ddof=1) of daily returns times sqrt(252)."""
    return float(daily_returns(equity).std(ddof=1) * math.sqrt(TRADING_DAYS))


def sharpe(equity: pd.Series, risk_free: float = 0.0) -> float:
    """Annualised Sharpe ratio of daily returns in excess of an annual risk-free rate."""
    excess = daily_returns(equity) - _daily_rate(risk_free)
    mean, std = excess.mean(), excess.std(ddof=1)
    # A constant return leaves rounding noise in std; dividing by it would give a meaningless 1e16.
    if not std > 1e-12 * abs(mean):
        return _NAN
    return float(mean / std * math.sqrt(TRADING_DAYS))


def sortino(equity: pd.Series, risk_free: float = 0.0) -> float:
    """Annualised Sortino ratio; downside deviation is sqrt(mean(min(r, 0)^2)) over all days.

    Days with a gain count as zero downside (the denominator is the number of all days, not of
    losing days). With no losing day the ratio is inf if the mean is positive, NaN if it is zero.
    """
    excess = daily_returns(equity) - _daily_rate(risk_free)
    if len(excess) < 2:
        return _NAN
    mean = excess.mean()
    downside = math.sqrt((excess.clip(upper=0.0) ** 2).mean())
    if downside == 0:
        return math.inf if mean > 0 else _NAN
    return float(mean / downside * math.sqrt(TRADING_DAYS))


def drawdown(equity: pd.Series) -> pd.Series:
    """Equity over its running maximum, minus one (zero at a new high, negative under water)."""
    equity = _clean(equity)
    return (equity / equity.cummax() - 1.0).rename("drawdown")


def max_drawdown(equity: pd.Series) -> float:
    """Deepest drawdown as a negative fraction, e.g. -0.12 for a 12% fall from a peak."""
    series = drawdown(equity)
    return float(series.min()) if len(series) else _NAN


def max_drawdown_duration(equity: pd.Series) -> tuple[pd.Timedelta, int]:
    """Longest time under water and its bars, from the peak to the recovery (or to the end).

    A spell ends at the first bar back at or above its peak. The spell is chosen by time, and the
    bar count is that spell's (bars elapsed from peak to recovery). Empty input gives (NaT, 0).
    """
    equity = _clean(equity)
    if equity.empty:
        return pd.NaT, 0
    values = equity.to_numpy()
    under = values < np.maximum.accumulate(values)
    positions = np.arange(len(values))
    last_peak = np.maximum.accumulate(np.where(under, 0, positions))
    ends = np.flatnonzero(under[:-1] & ~under[1:]) + 1
    starts = last_peak[ends - 1]
    if under[-1]:
        ends = np.append(ends, len(values) - 1)
        starts = np.append(starts, last_peak[-1])
    if ends.size == 0:
        return pd.Timedelta(0), 0
    ns = equity.index.as_unit("ns").asi8
    longest = int(np.argmax(ns[ends] - ns[starts]))
    start, end = int(starts[longest]), int(ends[longest])
    return equity.index[end] - equity.index[start], end - start


def calmar(equity: pd.Series) -> float:
    """CAGR over the absolute maximum drawdown; NaN when there was no drawdown."""
    depth = max_drawdown(equity)
    return cagr(equity) / abs(depth) if depth < 0 else _NAN


def win_rate(trades: pd.DataFrame | None) -> float:
    """Share of closed trades with a positive net P&L (after commission)."""
    if trades is None or trades.empty:
        return _NAN
    return float((trades["pnl_net"] > 0).mean())


def profit_factor(trades: pd.DataFrame | None) -> float:
    """Sum of winning net P&L over the absolute sum of losing net P&L; inf with wins and no losses."""
    if trades is None or trades.empty:
        return _NAN
    pnl = trades["pnl_net"].astype("float64")
    wins, losses = float(pnl[pnl > 0].sum()), float(-pnl[pnl < 0].sum())
    if losses == 0:
        return math.inf if wins > 0 else _NAN
    return wins / losses


def avg_exposure(exposure: pd.Series | None) -> float:
    """Mean of gross position value over equity across bars."""
    if exposure is None or exposure.dropna().empty:
        return _NAN
    return float(exposure.mean())


def turnover(equity: pd.Series, traded_value: float | None) -> float:
    """Traded value over mean equity, per 365.25 days of calendar time."""
    equity = _clean(equity)
    years = _years(equity.index)
    if traded_value is None or not years > 0 or not equity.mean() > 0:
        return _NAN
    return float(traded_value / equity.mean() / years)


def summary(equity: pd.Series, trades: pd.DataFrame | None = None, *,
            exposure: pd.Series | None = None, traded_value: float | None = None,
            risk_free: float = 0.0) -> dict[str, float]:
    """All metrics of one run as a flat dict, e.g. ``summary(equity, trades)["sharpe"]``."""
    equity = _clean(equity)
    duration, bars = max_drawdown_duration(equity)
    return {
        "total_return": total_return(equity),
        "cagr": cagr(equity),
        "volatility": annual_volatility(equity),
        "sharpe": sharpe(equity, risk_free),
        "sortino": sortino(equity, risk_free),
        "max_drawdown": max_drawdown(equity),
        "max_drawdown_duration_days": _NAN if pd.isna(duration) else duration / pd.Timedelta(days=1),
        "max_drawdown_bars": int(bars),
        "calmar": calmar(equity),
        "trades": 0 if trades is None else int(len(trades)),
        "win_rate": win_rate(trades),
        "profit_factor": profit_factor(trades),
        "exposure": avg_exposure(exposure),
        "turnover": turnover(equity, traded_value),
        "final_value": float(equity.iloc[-1]) if len(equity) else _NAN,
        "start_value": float(equity.iloc[0]) if len(equity) else _NAN,
        "days": int(len(daily_returns(equity))),
    }


def buy_and_hold(prices, index: pd.Index, start_value: float) -> pd.Series:
    """The value of ``start_value`` split equally across the symbols and held: each symbol's share
    buys at its first close on ``index`` and is marked at its later closes (a symbol that has not
    started yet holds its share as cash). ``prices`` maps symbol -> bars with a ``close`` column.

    >>> buy_and_hold(res.prices, res.equity.index, res.equity.iloc[0])   # the tearsheet's benchmark
    """
    closes = pd.DataFrame({s: f["close"] for s, f in prices.items()}).reindex(index).ffill()
    if closes.empty or not len(index):
        return pd.Series(start_value, index=index, dtype="float64", name="buy and hold")
    growth = closes / closes.bfill().iloc[0]
    return (start_value * growth.fillna(1.0).mean(axis=1)).rename("buy and hold")


def relative(equity: pd.Series, benchmark: pd.Series) -> dict[str, float]:
    """Alpha, beta and information ratio of ``equity`` against ``benchmark`` (a value or price
    series), from the daily returns of both on the days they share.

    ``beta`` is the slope of the strategy's daily returns on the benchmark's, ``alpha`` its
    intercept compounded over ``TRADING_DAYS`` (empyrical's convention), ``information_ratio``
    the mean daily return in excess of the benchmark over its deviation, annualised.
    """
    ours, theirs = daily_returns(equity), daily_returns(benchmark)
    both = pd.concat([ours, theirs], axis=1, join="inner").dropna()
    nan = {"alpha": _NAN, "beta": _NAN, "information_ratio": _NAN}
    if len(both) < 2:
        return nan
    r, b = both.iloc[:, 0].to_numpy(), both.iloc[:, 1].to_numpy()
    var = float(np.var(b, ddof=1))
    beta = float(np.cov(r, b, ddof=1)[0, 1] / var) if var > 0 else _NAN
    alpha = float((1.0 + np.mean(r - beta * b)) ** TRADING_DAYS - 1.0) if beta == beta else _NAN
    active = r - b
    spread = float(np.std(active, ddof=1))
    ir = float(np.mean(active) / spread * math.sqrt(TRADING_DAYS)) if spread > 0 else _NAN
    return {"alpha": alpha, "beta": beta, "information_ratio": ir}


# How many daily returns (or trades) a figure needs before it means much. Below these, the figure
# is still given, with a note saying what it was computed from.
MIN_DAYS = {"sharpe": 30, "sortino": 30, "volatility": 30, "calmar": 63, "cagr": 63,
            "psr": 30, "dsr": 30, "alpha": 30, "beta": 30, "information_ratio": 30}
MIN_TRADES = {"win_rate": 10, "profit_factor": 10}


def caveats(metrics) -> dict[str, str]:
    """Metric -> a note for each figure computed from fewer observations than it needs.

    ``metrics`` is a mapping (or Series) as :func:`summary` returns it: ``days`` counts its daily
    returns and ``trades`` its closed trades. Annualised figures from a few days (a Sharpe ratio
    of -149 from 2 daily returns) say so instead of passing for a result.

    >>> caveats({"sharpe": -149.56, "days": 2, "trades": 1, "win_rate": 0.0})
    {'sharpe': 'from 2 daily returns; needs 30 or more', 'win_rate': 'from 1 trade; needs 10 or more'}
    """
    notes = {}
    days, trades = metrics.get("days"), metrics.get("trades")
    if isinstance(days, (int, float)) and not math.isnan(days):
        days = int(days)
        for key, need in MIN_DAYS.items():
            if key in metrics and days < need:
                notes[key] = f"from {days} daily return{'s' if days != 1 else ''}; needs {need} or more"
    if isinstance(trades, (int, float)) and not math.isnan(trades):
        trades = int(trades)
        for key, need in MIN_TRADES.items():
            if key in metrics and trades < need:
                notes[key] = f"from {trades} trade{'s' if trades != 1 else ''}; needs {need} or more"
    return notes


# Overfitting-aware statistics. Sharpe ratios here are per period (e.g. daily, not annualised),
# n is the number of return observations and kurtosis is non-excess (3 for a normal).

def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _sharpe_variance_term(sr: float, skew: float, kurtosis: float) -> float:
    return 1.0 - skew * sr + (kurtosis - 1.0) / 4.0 * sr * sr


def probabilistic_sharpe(sr: float, sr_benchmark: float, n: float, skew: float,
                         kurtosis: float) -> float:
    """Probability that the true Sharpe exceeds ``sr_benchmark`` given the observed ``sr`` (PSR).

    >>> round(probabilistic_sharpe(0.1, 0.0, 252, 0.0, 3.0), 3)
    0.943
    """
    term = _sharpe_variance_term(sr, skew, kurtosis)
    if not n > 1 or not term > 0:
        return _NAN
    return _normal_cdf((sr - sr_benchmark) * math.sqrt(n - 1.0) / math.sqrt(term))


def expected_max_sharpe(n_trials: float, variance_of_sharpes: float) -> float:
    """Expected maximum Sharpe among ``n_trials`` unskilled trials with this Sharpe variance.

    One trial has no selection bias, so its expected maximum is the mean, zero.
    """
    if n_trials == 1 and variance_of_sharpes >= 0:
        return 0.0
    if not n_trials > 1 or not variance_of_sharpes >= 0:
        return _NAN
    quantiles = ((1.0 - EULER_GAMMA) * _NORMAL.inv_cdf(1.0 - 1.0 / n_trials)
                 + EULER_GAMMA * _NORMAL.inv_cdf(1.0 - 1.0 / (n_trials * math.e)))
    return math.sqrt(variance_of_sharpes) * quantiles


def deflated_sharpe(sr: float, n: float, skew: float, kurtosis: float, n_trials: float,
                    variance_of_sharpes: float) -> float:
    """PSR against the Sharpe that the best of ``n_trials`` unskilled trials would show (DSR)."""
    benchmark = expected_max_sharpe(n_trials, variance_of_sharpes)
    return probabilistic_sharpe(sr, benchmark, n, skew, kurtosis)


def min_track_record_length(sr: float, sr_benchmark: float, skew: float, kurtosis: float,
                            prob: float = 0.95) -> float:
    """Observations needed for PSR to reach ``prob``; inf when ``sr`` does not beat the benchmark."""
    term = _sharpe_variance_term(sr, skew, kurtosis)
    if not 0 < prob < 1 or not term > 0 or math.isnan(sr_benchmark):
        return _NAN
    if not sr > sr_benchmark:
        return math.inf
    return 1.0 + term * (_NORMAL.inv_cdf(prob) / (sr - sr_benchmark)) ** 2
