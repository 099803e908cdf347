"""Track records: how long a run's record of daily returns is, and whether that is long enough to rank it.

Pure functions on an equity curve or a run's metrics; the leaderboard ranks a run only when
:func:`standing` says its record is long enough for its deflated Sharpe, and lists it apart with
what it needs otherwise.

>>> from farmkit.track_record import standing, track_record
>>> standing(track_record(res.equity))        # None: long enough to rank; else e.g. '12 days; needs 31 for its Sharpe'
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from farmkit import metrics as _metrics

# Skew and kurtosis of fewer daily returns say nothing; PSR on them would look precise and be noise.
MIN_DAYS = 3
_NAN = float("nan")


def daily_stats(equity: pd.Series) -> dict[str, float]:
    """Days, per-day Sharpe, skew and non-excess kurtosis of an equity curve's daily returns; NaN
    (but ``days``) with fewer than ``MIN_DAYS`` daily returns or flat equity."""
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


def track_record(equity: pd.Series) -> dict[str, float]:
    """What a board needs to rank a run, of the run alone: ``days`` (daily returns), ``psr`` (vs 0),
    ``dsr`` (a lone trial's, equal to its PSR; a backtest's is then deflated over its family) and
    ``min_track_record_days``.

    >>> track_record(res.equity)["min_track_record_days"]
    """
    stats = daily_stats(equity)
    sr, skew, kurt = stats["sharpe_daily"], stats["skew"], stats["kurtosis"]
    out = {"days": stats["days"], "psr": _NAN, "dsr": _NAN, "min_track_record_days": _NAN}
    if not any(math.isnan(x) for x in (sr, skew, kurt)):
        out["psr"] = out["dsr"] = _metrics.probabilistic_sharpe(sr, 0.0, stats["days"], skew, kurt)
        out["min_track_record_days"] = _metrics.min_track_record_length(sr, 0.0, skew, kurt, 0.95)
    return out


def standing(metrics: dict | None) -> str | None:
    """None when a run's track record is long enough to rank it; else what it needs, e.g.
    ``'12 days; needs 31 for its Sharpe'`` or ``'2 daily returns; needs at least 3'``.

    The rule: a finite deflated Sharpe (``MIN_DAYS`` daily returns, not flat) and, for a Sharpe above
    0, ``days >= min_track_record_days``. A Sharpe at or below 0 has an infinite minimum track
    record; it needs only the ``MIN_DAYS``, so a losing strategy with a long record ranks, low.
    """
    metrics = {} if metrics is None else metrics     # a dict, or res.metrics (a Series)
    days = _float(metrics.get("days"))
    if math.isnan(days):
        return "no track record measured (a run from before boards needed one): run it again"
    days = int(days)
    if _finite(metrics, "dsr") is None:
        if days < MIN_DAYS:
            return f"{days} daily return{'' if days == 1 else 's'}; needs at least {MIN_DAYS}"
        return f"{days} days of flat equity; needs returns that vary"
    needed = _float(metrics.get("min_track_record_days"))
    if math.isnan(needed):
        return f"{days} days; its minimum track record was not measured: run it again"
    if math.isfinite(needed) and days < needed:
        return f"{days} days; needs {math.ceil(needed)} for its Sharpe"
    return None


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return _NAN


def _finite(metrics: dict, name: str) -> float | None:
    value = _float(metrics.get(name))
    return value if math.isfinite(value) else None
