"""Trials: every backtest is one trial of its family, and a family's best result is deflated by it.

A family is a strategy by its name where it lives: ``NOTEBOOK::Name`` for a class in a notebook,
``agent:AGENT::Name`` in an agent, the class name alone in a plain script (see
:func:`farmkit.kernel.strategy_family`; the registry's ``family`` column, set when a run registers;
runs registered before it count under their strategy name). Every code version of it is a trial of
the same family: editing one line does not start the count over. Trying many parameters or
versions and keeping the best inflates its Sharpe; the deflated Sharpe ratio (Bailey & López de
Prado, 2014) asks how likely the best one still beats what the best of that many unskilled trials
would show. :func:`lineage` shows the family's versions.

Every Sharpe ratio here is per day (mean over standard deviation of daily returns, not annualised),
and all Sharpe ratios of a family must be on that same scale: the registry stores the annualised
Sharpe (times sqrt(252)), so :func:`family` divides it back.

>>> from farmkit.research import trials
>>> run = fk.runs().set_index("run_id").loc[res.run_id]
>>> fam = trials.family(res.store, run.strategy, key=run.family)
>>> n, variance = trials.family_stats(fam["sharpe_daily"])
>>> trials.honest_metrics(res.equity, n, variance)["dsr"]
>>> trials.lineage(res.store, run.family)      # one row per code version
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from farmkit import metrics as _metrics
from farmkit import track_record

MIN_DAYS = track_record.MIN_DAYS
_NAN = float("nan")
# Research trials only: paper runs, parity replays, look-ahead checks' and `farm promote --check`'s
# runs are not choices made.
_TRIALS = ("status = 'done' AND coalesce(mode, 'backtest') = 'backtest' "
           "AND coalesce(segment, '') NOT IN ('parity', 'lookahead', 'promote-check')")


def family(store, strategy: str | None = None, code_hash: str | None = None, *, key: str | None = None) -> pd.DataFrame:
    """The finished backtests (status ``done``; not paper runs, parity replays or look-ahead checks'
    runs) of a family, every code version of it, with a ``sharpe_daily`` column: by ``key`` (the
    registry's ``family``; a run without one counts under its strategy name), or the runs of
    ``strategy`` with ``code_hash`` (one code version).

    >>> trials.family(res.store, key=run.family).sharpe_daily.describe()
    >>> trials.family(res.store, "SmaCross", run.code_hash)          # one version only
    """
    if key is not None:
        frame = store.runs.frame(f"WHERE coalesce(family, strategy) = ? AND {_TRIALS}", (key,))
    else:
        frame = store.runs.frame(f"WHERE strategy = ? AND code_hash = ? AND {_TRIALS}", (strategy, code_hash))
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
    (:func:`farmkit.track_record.daily_stats`, which the leaderboard needs to rank a run of any kind.)
    """
    return track_record.daily_stats(equity)


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


def trial_metrics(store, strategy: str, code: str, result, *, family_key: str | None = None) -> dict:
    """PSR, DSR and minimum track record of a finished backtest as one more trial of its strategy
    family (``family_key``, every code version of it; without one, the runs of this strategy name
    and code hash): every backtest counts, whatever started it."""
    family_runs = family(store, strategy, code, key=family_key)
    sharpe_daily = result.metrics.get("sharpe", float("nan")) / math.sqrt(_metrics.TRADING_DAYS)
    n_trials, variance = family_stats([*family_runs["sharpe_daily"], sharpe_daily])
    honest = honest_metrics(result.equity, n_trials, variance)
    return {"days": honest["days"], "psr": honest["psr"], "dsr": honest["dsr"],
            "min_track_record_days": honest["min_track_record_days"], "trials": n_trials}


def lineage(store, name: str) -> pd.DataFrame:
    """The code versions of a family, oldest first: ``family``, ``code_hash``, ``first_seen`` and
    ``last_seen`` (when its trials started), ``trials`` (its finished research backtests),
    ``best_sharpe``, ``best_dsr``, ``best_run_id`` (the run of the best DSR, else of the best Sharpe)
    and ``lookahead`` ('failed' when a check of it failed, 'passed', or None). ``name`` is a family
    key, or an agent id or strategy name: then the families of its backtests.

    >>> trials.lineage(store, "notebooks/strategies/sma_crossover.ipynb::SmaCross")
    >>> trials.lineage(store, "SmaCross")
    """
    runs = store.runs.frame(f"WHERE coalesce(family, strategy) = ? AND {_TRIALS}", (name,))
    if runs.empty:
        keys = store.runs.frame(f"WHERE (agent_id = ? OR strategy = ?) AND {_TRIALS}", (name, name))
        keys = keys["family"].where(keys["family"].notna(), keys["strategy"]).drop_duplicates()
        runs = pd.concat([store.runs.frame(f"WHERE coalesce(family, strategy) = ? AND {_TRIALS}", (k,))
                          for k in keys], ignore_index=True) if len(keys) else runs
    checks = store.runs.frame("WHERE lookahead IS NOT NULL")
    verdicts = {}
    for strategy, code, verdict in zip(checks["strategy"], checks["code_hash"], checks["lookahead"]):
        if verdicts.get((strategy, code)) != "failed":
            verdicts[(strategy, code)] = verdict
    rows = []
    runs = runs.assign(family=runs["family"].where(runs["family"].notna(), runs["strategy"]))
    for (key, code), version in runs.groupby(["family", "code_hash"], sort=False, dropna=False):
        metric = version["metrics"].map(lambda m: m if isinstance(m, dict) else {})
        sharpe = pd.to_numeric(metric.map(lambda m: m.get("sharpe")), errors="coerce").astype("float64")
        dsr = pd.to_numeric(metric.map(lambda m: m.get("dsr")), errors="coerce").astype("float64")
        by = dsr if dsr.notna().any() else sharpe
        best = version["run_id"].iloc[int(np.nanargmax(by.to_numpy()))] if by.notna().any() else None
        rows.append({"family": key, "code_hash": code, "first_seen": version["started_at"].min(),
                     "last_seen": version["started_at"].max(), "trials": len(version),
                     "best_sharpe": sharpe.max(), "best_dsr": dsr.max(), "best_run_id": best,
                     "lookahead": verdicts.get((version["strategy"].iloc[0], code))})
    columns = ["family", "code_hash", "first_seen", "last_seen", "trials", "best_sharpe", "best_dsr",
               "best_run_id", "lookahead"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values(["family", "first_seen"], kind="stable").reset_index(drop=True)
