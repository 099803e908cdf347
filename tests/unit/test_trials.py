"""farmkit.research.trials: families in the run registry, and PSR/DSR/MinTRL checked against the formulas."""

import math
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from farmkit import metrics
from farmkit.research import trials
from farmkit.fmel.stores import open_store

PHI = NormalDist()
GAMMA = 0.5772156649015329


def equity_from_daily_returns(returns, start="2024-01-02"):
    # One opening value, then one close per day: daily_returns gives back exactly `returns`.
    days = pd.date_range(start, periods=len(returns), freq="D", tz="UTC")
    index = pd.DatetimeIndex([days[0] + pd.Timedelta(hours=14, minutes=30)]).append(days + pd.Timedelta(hours=21))
    values = 100_000.0 * np.concatenate([[1.0], np.cumprod(1.0 + np.asarray(returns))])
    return pd.Series(values, index=index)


def by_hand(returns, n_trials, variance):
    r = np.asarray(returns)
    sr = r.mean() / r.std(ddof=1)
    m2 = ((r - r.mean()) ** 2).mean()
    skew = ((r - r.mean()) ** 3).mean() / m2 ** 1.5
    kurt = ((r - r.mean()) ** 4).mean() / m2 ** 2
    term = math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr ** 2)
    sr0 = math.sqrt(variance) * ((1 - GAMMA) * PHI.inv_cdf(1 - 1 / n_trials)
                                 + GAMMA * PHI.inv_cdf(1 - 1 / (n_trials * math.e)))
    return dict(sharpe_daily=sr, skew=skew, kurtosis=kurt,
                psr=PHI.cdf(sr * math.sqrt(len(r) - 1) / term),
                dsr=PHI.cdf((sr - sr0) * math.sqrt(len(r) - 1) / term),
                min_track_record_days=1 + term ** 2 * (PHI.inv_cdf(0.95) / sr) ** 2)


RETURNS = np.random.default_rng(3).standard_t(4, size=300) * 0.01 + 0.001


def test_honest_metrics_match_the_formulas():
    got = trials.honest_metrics(equity_from_daily_returns(RETURNS), n_trials=25, sharpe_variance=0.004)
    assert got["days"] == len(RETURNS)
    for key, value in by_hand(RETURNS, 25, 0.004).items():
        assert got[key] == pytest.approx(value, rel=1e-9), key
    assert got["dsr"] < got["psr"]


def test_a_single_trial_has_dsr_equal_to_psr_vs_zero():
    got = trials.honest_metrics(equity_from_daily_returns(RETURNS), n_trials=1, sharpe_variance=float("nan"))
    assert got["dsr"] == got["psr"] == pytest.approx(by_hand(RETURNS, 2, 0.0)["psr"])


def test_too_few_days_or_flat_equity_give_nan():
    short = trials.honest_metrics(equity_from_daily_returns([0.01, -0.02]), 10, 0.01)
    flat = trials.honest_metrics(equity_from_daily_returns([0.0] * 30), 10, 0.01)
    for got in (short, flat):
        assert all(math.isnan(got[k]) for k in ("sharpe_daily", "psr", "dsr", "min_track_record_days"))


def test_deflate_reproduces_the_published_example():
    # Bailey & López de Prado (2014): N=100 trials, variance of annual Sharpes 0.5, T=1250 days,
    # best annual Sharpe 2.5, skew -3, kurtosis 10, 250 days a year: DSR ~ 0.9004.
    stats = dict(sharpe_daily=2.5 / math.sqrt(250), days=1250, skew=-3.0, kurtosis=10.0)
    assert trials.deflate(stats, 100, 0.5 / 250)["dsr"] == pytest.approx(0.9004, abs=5e-5)
    assert metrics.deflated_sharpe(2.5 / math.sqrt(250), 1250, -3.0, 10.0, 100, 0.5 / 250) == pytest.approx(
        0.9004, abs=5e-5)


def test_family_is_the_done_runs_of_one_strategy_and_code(farm_home):
    store = open_store(farm_home.store)
    rows = [("a", "S", "h1", "done", 1.0), ("b", "S", "h1", "done", 2.0), ("c", "S", "h1", "failed", None),
            ("d", "S", "h2", "done", 5.0), ("e", "T", "h1", "done", 5.0), ("f", "S", "h1", "done", None)]
    for i, (run_id, strategy, code, status, sharpe) in enumerate(rows):
        store.runs.upsert(run_id, agent_id=strategy, strategy=strategy, mode="backtest", status=status,
                          code_hash=code, metrics=None if status == "failed" else {"sharpe": sharpe},
                          started_at=pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(minutes=i))
    fam = trials.family(store, "S", "h1")
    assert list(fam.run_id) == ["a", "b", "f"]
    assert fam.sharpe_daily.iloc[1] == pytest.approx(2.0 / math.sqrt(252)) and math.isnan(fam.sharpe_daily.iloc[2])
    n, variance = trials.family_stats(fam.sharpe_daily)
    assert n == 3 and variance == pytest.approx(np.var([1.0, 2.0], ddof=1) / 252)
    assert trials.family_stats([0.1]) == (1, 0.0)
    assert trials.family(store, "S", "nope").empty
    # Paper runs and parity replays of the same code are not research trials.
    store.runs.upsert("g", agent_id="S", strategy="S", mode="paper", status="done", code_hash="h1",
                      metrics={"sharpe": 9.0}, started_at=pd.Timestamp("2024-01-02", tz="UTC"))
    store.runs.upsert("h", agent_id="S/parity", strategy="S", mode="backtest", status="done", code_hash="h1",
                      segment="parity", metrics={"sharpe": 9.0}, started_at=pd.Timestamp("2024-01-03", tz="UTC"))
    assert list(trials.family(store, "S", "h1").run_id) == ["a", "b", "f"]
