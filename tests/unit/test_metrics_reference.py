"""farmkit.metrics against empyrical-reloaded (the statistics library of zipline and pyfolio) on the
same daily returns: Sharpe, Sortino, volatility, drawdown and the tail figures agree to rounding.

Where the conventions differ on purpose, the test says so: CAGR and Calmar here span calendar time
between the first and last timestamp (empyrical counts 252-day years of returns), so those two are
compared on the span empyrical would use."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import empyrical     # empyrical-reloaded, in the test extra
import pytest

from farmkit import metrics


def equity_curve(seed: int, days: int = 300, drift: float = 0.0004, vol: float = 0.012) -> pd.Series:
    """Daily closes of a random walk, one per business day, with an opening value the day before."""
    rng = np.random.default_rng(seed)
    index = pd.bdate_range("2023-01-02", periods=days + 1, tz="UTC")
    returns = rng.normal(drift, vol, days)
    return pd.Series(100_000.0 * np.cumprod(np.r_[1.0, 1.0 + returns]), index=index)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_ratios_and_volatility_match_empyrical(seed):
    equity = equity_curve(seed)
    daily = metrics.daily_returns(equity)     # what every figure here is computed from
    returns = daily.iloc[1:]                  # without day one, the opening value's zero return
    assert metrics.sharpe(equity) == pytest.approx(empyrical.sharpe_ratio(daily), rel=1e-9)
    assert metrics.sortino(equity) == pytest.approx(empyrical.sortino_ratio(daily), rel=1e-9)
    assert metrics.annual_volatility(equity) == pytest.approx(empyrical.annual_volatility(daily), rel=1e-9)
    # Drawdown: from the equity curve itself, which empyrical rebuilds from the returns.
    assert metrics.max_drawdown(equity) == pytest.approx(empyrical.max_drawdown(returns), rel=1e-9)


@pytest.mark.parametrize("rate", [0.02, 0.05])
def test_sharpe_with_a_risk_free_rate_matches_empyrical_with_its_daily_rate(rate):
    equity = equity_curve(7)
    daily_rate = (1 + rate) ** (1 / metrics.TRADING_DAYS) - 1
    assert metrics.sharpe(equity, risk_free=rate) == pytest.approx(
        empyrical.sharpe_ratio(metrics.daily_returns(equity), risk_free=daily_rate), rel=1e-9)


def test_cagr_matches_empyrical_over_the_same_span():
    equity = equity_curve(5, days=504)
    returns = metrics.daily_returns(equity).iloc[1:]
    # empyrical: 504 returns are two 252-day years; here the span is calendar time, so stretch the
    # index to exactly two 365.25-day years for the two to mean the same thing.
    stretched = pd.Series(equity.to_numpy(), index=pd.date_range(
        equity.index[0], equity.index[0] + 2 * metrics.YEAR, periods=len(equity)))
    assert metrics.cagr(stretched) == pytest.approx(empyrical.cagr(returns), rel=1e-9)
    assert metrics.calmar(stretched) == pytest.approx(empyrical.calmar_ratio(returns), rel=1e-9)


def test_a_flat_curve_is_nan_here_where_empyrical_gives_nan_or_inf():
    flat = pd.Series(100.0, index=pd.bdate_range("2024-01-01", periods=30, tz="UTC"))
    assert math.isnan(metrics.sharpe(flat)) and math.isnan(empyrical.sharpe_ratio(metrics.daily_returns(flat)))


@pytest.mark.parametrize("seed", [5, 6])
def test_alpha_beta_and_information_ratio_match_empyrical(seed):
    market = equity_curve(seed, drift=0.0003)
    noise = equity_curve(seed + 100, drift=0.0002, vol=0.006)
    # a strategy that is 0.8 of the market plus returns of its own
    returns = 0.8 * metrics.daily_returns(market) + metrics.daily_returns(noise)
    equity = pd.Series(100_000.0 * np.cumprod(1.0 + returns.to_numpy()), index=market.index)
    equity.iloc[0] = 100_000.0
    ours = metrics.relative(equity, market)
    daily, factor = metrics.daily_returns(equity), metrics.daily_returns(market)
    alpha, beta = empyrical.alpha_beta(daily, factor)
    assert ours["beta"] == pytest.approx(beta, rel=1e-9) and 0.6 < ours["beta"] < 1.0
    assert ours["alpha"] == pytest.approx(alpha, rel=1e-9)
    # empyrical's excess Sharpe is the daily information ratio
    assert ours["information_ratio"] == pytest.approx(
        empyrical.excess_sharpe(daily, factor) * math.sqrt(metrics.TRADING_DAYS), rel=1e-9)


def test_buy_and_hold_splits_the_start_value_across_the_symbols():
    index = pd.date_range("2024-01-02", periods=4, freq="1D", tz="UTC")
    prices = {"A": pd.DataFrame({"close": [10.0, 11.0, 12.0, 13.0]}, index=index),
              "B": pd.DataFrame({"close": [50.0, 45.0]}, index=index[2:])}    # starts on day three
    held = metrics.buy_and_hold(prices, index, 1_000.0)
    assert list(held) == pytest.approx([1_000.0, 1_050.0, 1_100.0, 500.0 * 1.3 + 500.0 * 0.9])
