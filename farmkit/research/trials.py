"""Trials: every backtest is one trial of its family, and a family's best result is deflated by it.

A family is the runs of one strategy with the same code, i.e. the same ``(strategy, code_hash)``
in the run registry. Trying many parameters and keeping the best inflates its Sharpe; the deflated
Sharpe ratio (Bailey & López de Prado, 2014) asks how likely the best one still beats what the
best of that many unskilled trials would show.

Every Sharpe ratio here is per day (mean over standard deviation of daily returns, not annualised),
and all Sharpe ratios of a family must be on that same scale: the registry stores the annualised
Sharpe (times sqrt(252)), so :func:`family` divides it back.

>>> from farmkit import trials
>>> run = fk.runs().set_index("run_id").loc[res.run_id]
>>> fam = trials.family(res.store, run.strategy, run.code_hash)
>>> n, variance = trials.family_stats(fam["sharpe_daily"])
>>> trials.honest_metrics(res.equity, n, variance)["dsr"]
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from farmkit import metrics as _metrics

# Skew and kurtosis of fewer daily returns say nothing; PSR on them would look precise and be noise.
MIN_DAYS = 3
_NAN = float("nan")


def family(store, strategy: str, code_hash: str) -> pd.DataFrame:
    """The finished backtests (status ``done``; not paper runs, parity replays or look-ahead checks' runs) of one family, with a
    ``sharpe_daily`` column.

    >>> trials.family(res.store, "SmaCross", run.code_hash).sharpe_daily.describe()
    """
    # Research trials only: paper runs, parity replays and look-ahead checks' runs are not choices made.
    frame = store.runs.frame("WHERE strategy = ? AND code_hash = ? AND status = 'done' "
                             "AND coalesce(mode, 'backtest') = 'backtest' "
                             "AND coalesce(segment, '') NOT IN ('parity', 'lookahead')", (strategy, code_hash))
    annual = frame["metrics"].map(lambda m: m.get("sharpe") if isinstance(m, dict) else None)
    frame["sharpe_daily"] = pd.to_numeric(annual, errors="coerce").astype("float64") / math.sqrt(
        _metrics.TRADING_DAYS)
    return frame.reset_index(drop=True)


def family_stats(sharpes_daily) -> tuple[int, float]:
    """``(n_trials, variance)`` of a family's daily Sharpe ratios; NaN Sharpes (flat equity) are
    still trials but carry no variance. One trial has variance 0: nothing was selected."""
    values = pd.Series(sharpes_daily, dtype="float64")
    n_trials = len(values)
    finite = values.dropna()
    variance = float(finite.var(ddof=1)) if len(finite) > 1 else (0.0 if n_trials == 1 else _NAN)
    return n_trials, variance


def daily_stats(equity: pd.Series) -> dict[str, float]:
    """Per-day Sharpe, skew and non-excess kurtosis of an equity curve's daily returns.

    These are all a trial needs to be deflated later, so a sweep keeps them instead of the curve.
    """
    returns = _metrics.daily_returns(equity).to_numpy(dtype="float64")
    days = len(returns)
    out = {"days": days, "sharpe_daily": _NAN, "skew": _NAN, "kurtosis": _NAN}
    if days < MIN_DAYS:
        return out
    mean, std = returns.mean(), returns.std(ddof=1)
    centred = returns - mean
    m2 = float(np.mean(centred ** 2))
    # Same guard as metrics.sharpe: a constant return leaves only rounding noise in std.
    if not std > 1e-12 * abs(mean) or not m2 > 0:
        return out
    out["sharpe_daily"] = float(mean / std)
    out["skew"] = float(np.mean(centred ** 3) / m2 ** 1.5)
    out["kurtosis"] = float(np.mean(centred ** 4) / m2 ** 2)
    return out


def deflate(stats: dict, n_trials: int, sharpe_variance: float) -> dict[str, float]:
    """PSR vs 0, DSR for ``n_trials`` with this variance of daily Sharpes, and the minimum track
    record (in days) for 95% confidence that the Sharpe is above 0, from :func:`daily_stats`."""
    sr, n, skew, kurt = stats["sharpe_daily"], stats["days"], stats["skew"], stats["kurtosis"]
    if any(math.isnan(x) for x in (sr, skew, kurt)):
        return {"psr": _NAN, "dsr": _NAN, "min_track_record_days": _NAN}
    if n_trials == 1:
        sharpe_variance = 0.0  # a lone trial is not a selection: its DSR is its PSR vs 0
    return {
        "psr": _metrics.probabilistic_sharpe(sr, 0.0, n, skew, kurt),
        "dsr": _metrics.deflated_sharpe(sr, n, skew, kurt, n_trials, sharpe_variance),
        "min_track_record_days": _metrics.min_track_record_length(sr, 0.0, skew, kurt, 0.95),
    }


def honest_metrics(equity: pd.Series, n_trials: int, sharpe_variance: float) -> dict[str, float]:
    """Daily Sharpe, skew, kurtosis, ``psr``, ``dsr`` and ``min_track_record_days`` of one trial.

    ``sharpe_variance`` is the variance of the family's *daily* Sharpe ratios (see
    :func:`family_stats`). NaN where undefined: fewer than ``MIN_DAYS`` daily returns, flat equity.

    >>> trials.honest_metrics(res.equity, n_trials=40, sharpe_variance=0.002)["dsr"]
    """
    stats = daily_stats(equity)
    return {**stats, **deflate(stats, n_trials, sharpe_variance)}


def trial_metrics(store, strategy: str, code: str, result) -> dict:
    """PSR, DSR and minimum track record of a finished backtest as one more trial of its strategy
    family (same strategy name and code hash): every backtest counts, whatever started it."""
    family_runs = family(store, strategy, code)
    sharpe_daily = result.metrics.get("sharpe", float("nan")) / math.sqrt(_metrics.TRADING_DAYS)
    n_trials, variance = family_stats([*family_runs["sharpe_daily"], sharpe_daily])
    honest = honest_metrics(result.equity, n_trials, variance)
    return {"psr": honest["psr"], "dsr": honest["dsr"], "min_track_record_days": honest["min_track_record_days"],
            "trials": n_trials}
