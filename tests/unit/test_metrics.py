"""farmkit.metrics against numbers worked out by hand or by plain loops in the test itself."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from farmkit import metrics

EXPECTED_KEYS = {
    "total_return", "cagr", "volatility", "sharpe", "sortino", "max_drawdown",
    "max_drawdown_duration_days", "max_drawdown_bars", "calmar", "trades", "win_rate",
    "profit_factor", "exposure", "turnover", "final_value", "start_value", "days",
}


def daily(values, start="2024-01-01"):
    return pd.Series(values, pd.date_range(start, periods=len(values), freq="D", tz="UTC"), dtype=float)


def at(stamps, values):
    return pd.Series(values, pd.DatetimeIndex(stamps, tz="UTC"), dtype=float)


def trades_frame(pnl_net, pnl=None):
    n = len(pnl_net)
    pnl = pnl_net if pnl is None else pnl
    return pd.DataFrame({
        "pnl": pnl, "pnl_net": pnl_net, "commission": [1.0] * n, "size": [10.0] * n,
        "entry_price": [100.0] * n, "exit_price": [101.0] * n,
        "opened_at": pd.date_range("2024-01-01", periods=n, tz="UTC"),
        "closed_at": pd.date_range("2024-01-02", periods=n, tz="UTC"),
        "bars_held": [1] * n, "symbol": ["SPY"] * n,
    })


def empty_equity():
    return pd.Series([], index=pd.DatetimeIndex([], tz="UTC"), dtype=float)


# Minute bars over three sessions with a missing day between: 2024-01-02, 01-03, (none on 01-04), 01-05.
MINUTES = at(
    ["2024-01-02 14:30", "2024-01-02 14:31", "2024-01-02 20:59",
     "2024-01-03 14:30", "2024-01-03 20:59",
     "2024-01-05 14:30", "2024-01-05 15:00", "2024-01-05 20:59"],
    [100.0, 103.0, 102.0, 99.0, 96.9, 98.0, 110.0, 101.745],
)


def test_daily_returns_use_the_last_bar_of_each_day_and_skip_days_without_bars():
    returns = metrics.daily_returns(MINUTES)
    assert list(returns.index.strftime("%Y-%m-%d")) == ["2024-01-02", "2024-01-03", "2024-01-05"]
    # 102/100 - 1, 96.9/102 - 1, 101.745/96.9 - 1
    assert returns.tolist() == pytest.approx([0.02, -0.05, 0.05])


def test_daily_returns_on_daily_bars_start_with_zero_from_the_first_value():
    assert metrics.daily_returns(daily([100, 110, 99])).tolist() == pytest.approx([0.0, 0.1, -0.1])


def test_daily_returns_of_empty_equity_is_empty():
    assert metrics.daily_returns(empty_equity()).empty


def test_total_return_and_cagr_over_calendar_time():
    # 730.5 days is exactly two 365.25-day years: 100 -> 121 is 10% a year.
    equity = at(["2020-01-01 00:00", "2021-01-01 00:00", "2021-12-31 12:00"], [100.0, 130.0, 121.0])
    assert metrics.total_return(equity) == pytest.approx(0.21)
    assert metrics.cagr(equity) == pytest.approx(0.10)


def test_cagr_of_a_single_point_is_nan():
    assert math.isnan(metrics.cagr(daily([100.0])))


VALUES = [100.0, 101.0, 99.5, 102.0, 101.0, 104.0, 103.5]


def loop_daily_returns(values):
    out, previous = [], values[0]
    for value in values:
        out.append(value / previous - 1.0)
        previous = value
    return out


def loop_mean_std(xs):
    mean = sum(xs) / len(xs)
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


def test_annual_volatility_is_daily_std_times_sqrt_252():
    _, std = loop_mean_std(loop_daily_returns(VALUES))
    assert metrics.annual_volatility(daily(VALUES)) == pytest.approx(std * math.sqrt(252))


def test_sharpe_without_and_with_a_risk_free_rate():
    returns = loop_daily_returns(VALUES)
    mean, std = loop_mean_std(returns)
    assert metrics.sharpe(daily(VALUES)) == pytest.approx(mean / std * math.sqrt(252))
    rf_daily = 1.05 ** (1 / 252) - 1
    mean_x, std_x = loop_mean_std([r - rf_daily for r in returns])
    expected = mean_x / std_x * math.sqrt(252)
    assert metrics.sharpe(daily(VALUES), risk_free=0.05) == pytest.approx(expected)


def test_sharpe_by_hand_on_three_days():
    # Returns 0, +10%, -10%: mean 0, so Sharpe 0 exactly.
    assert metrics.sharpe(daily([100, 110, 99])) == pytest.approx(0.0, abs=1e-12)


def test_sortino_counts_every_day_in_the_downside_deviation():
    returns = loop_daily_returns(VALUES)
    mean = sum(returns) / len(returns)
    downside = math.sqrt(sum(min(r, 0.0) ** 2 for r in returns) / len(returns))
    assert metrics.sortino(daily(VALUES)) == pytest.approx(mean / downside * math.sqrt(252))


def test_sortino_without_a_losing_day_is_inf():
    assert metrics.sortino(daily([100, 101, 103])) == math.inf


def test_flat_equity_gives_nan_ratios_not_errors():
    flat = daily([100.0] * 10)
    assert math.isnan(metrics.sharpe(flat))
    assert math.isnan(metrics.sortino(flat))
    assert math.isnan(metrics.calmar(flat))
    assert metrics.annual_volatility(flat) == 0.0
    assert metrics.max_drawdown(flat) == 0.0
    assert metrics.max_drawdown_duration(flat) == (pd.Timedelta(0), 0)


def test_constant_growth_does_not_give_a_huge_sharpe_from_rounding_noise():
    # An opening bar on the first day makes every daily return 1%, up to rounding.
    closes = daily([100 * 1.01 ** i for i in range(1, 21)]).set_axis(
        pd.date_range("2024-01-01 20:00", periods=20, freq="D", tz="UTC"))
    opening = at(["2024-01-01 14:30"], [100.0])
    equity = pd.concat([opening, closes])
    assert metrics.daily_returns(equity).tolist() == pytest.approx([0.01] * 20)
    assert math.isnan(metrics.sharpe(equity))


# Two spells under water: peak 110 on 01-02 back to 110 on 01-05 (3 days, 3 bars), and peak 120
# on 01-06 never recovered by 01-20 (14 days, 2 bars). The longer one in time wins.
PATH = at(["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05", "2024-01-06",
           "2024-01-10", "2024-01-20"],
          [100.0, 110.0, 99.0, 105.0, 110.0, 120.0, 90.0, 100.0])


def test_drawdown_path_by_hand():
    expected = [0.0, 0.0, 99 / 110 - 1, 105 / 110 - 1, 0.0, 0.0, 90 / 120 - 1, 100 / 120 - 1]
    assert metrics.drawdown(PATH).tolist() == pytest.approx(expected)
    assert metrics.max_drawdown(PATH) == pytest.approx(-0.25)


def test_max_drawdown_duration_runs_to_the_end_when_not_recovered():
    assert metrics.max_drawdown_duration(PATH) == (pd.Timedelta(days=14), 2)


def test_max_drawdown_duration_of_a_recovered_spell():
    path = at(["2024-01-01", "2024-01-02", "2024-01-08", "2024-01-09", "2024-01-10", "2024-01-11"],
              [100.0, 95.0, 97.0, 101.0, 100.5, 102.0])
    # Peak 100 on 01-01, back above it on 01-09: 8 days, 3 bars. Then 01-09 -> 01-11: 2 days.
    assert metrics.max_drawdown_duration(path) == (pd.Timedelta(days=8), 3)


def test_max_drawdown_duration_of_empty_equity():
    duration, bars = metrics.max_drawdown_duration(empty_equity())
    assert pd.isna(duration) and bars == 0


def test_calmar_is_cagr_over_max_drawdown():
    # 100 -> 80 -> 121 over two 365.25-day years: CAGR 10%, max drawdown -20%.
    equity = at(["2020-01-01 00:00", "2020-06-01 00:00", "2021-12-31 12:00"], [100.0, 80.0, 121.0])
    assert metrics.calmar(equity) == pytest.approx(0.10 / 0.20)


def test_win_rate_and_profit_factor_use_net_pnl():
    # Gross P&L would count 3 winners; after commission only two trades won.
    trades = trades_frame(pnl_net=[10.0, -5.0, 0.0, 20.0, -15.0], pnl=[11.0, -4.0, 1.0, 21.0, -14.0])
    assert metrics.win_rate(trades) == pytest.approx(2 / 5)
    assert metrics.profit_factor(trades) == pytest.approx(30.0 / 20.0)


def test_profit_factor_all_winners_is_inf_and_no_trades_is_nan():
    assert metrics.profit_factor(trades_frame([5.0, 7.0])) == math.inf
    assert metrics.win_rate(trades_frame([5.0, 7.0])) == 1.0
    assert math.isnan(metrics.profit_factor(trades_frame([])))
    assert math.isnan(metrics.profit_factor(None))
    assert math.isnan(metrics.win_rate(trades_frame([])))
    assert math.isnan(metrics.profit_factor(trades_frame([0.0, 0.0])))


def test_avg_exposure_and_turnover():
    equity = at(["2020-01-01 00:00", "2020-07-01 00:00", "2021-12-31 12:00"], [100.0, 110.0, 120.0])
    exposure = pd.Series([0.0, 0.5, 1.0], index=equity.index)
    assert metrics.avg_exposure(exposure) == pytest.approx(0.5)
    assert math.isnan(metrics.avg_exposure(None))
    # 660 traded over mean equity 110 is 6 times, over two years: 3 a year.
    assert metrics.turnover(equity, 660.0) == pytest.approx(3.0)
    assert math.isnan(metrics.turnover(equity, None))


def test_summary_keys_and_values():
    trades = trades_frame(pnl_net=[10.0, -5.0, 20.0])
    exposure = pd.Series(0.25, index=PATH.index)
    result = metrics.summary(PATH, trades, exposure=exposure, traded_value=1000.0)
    assert set(result) == EXPECTED_KEYS
    assert result["total_return"] == pytest.approx(0.0)
    assert result["max_drawdown"] == pytest.approx(-0.25)
    assert result["max_drawdown_duration_days"] == pytest.approx(14.0)
    assert result["max_drawdown_bars"] == 2 and isinstance(result["max_drawdown_bars"], int)
    assert result["trades"] == 3 and isinstance(result["trades"], int)
    assert result["win_rate"] == pytest.approx(2 / 3)
    assert result["profit_factor"] == pytest.approx(6.0)
    assert result["exposure"] == pytest.approx(0.25)
    assert result["final_value"] == 100.0 and result["start_value"] == 100.0
    mean_equity = sum(PATH) / len(PATH)
    assert result["turnover"] == pytest.approx(1000.0 / mean_equity / (19 / 365.25))
    assert result["sharpe"] == pytest.approx(metrics.sharpe(PATH))
    for key, value in result.items():
        assert type(value) in (float, int), key


def test_summary_of_empty_and_flat_equity_does_not_raise():
    empty = metrics.summary(empty_equity())
    assert set(empty) == EXPECTED_KEYS
    assert math.isnan(empty["sharpe"]) and math.isnan(empty["final_value"]) and empty["trades"] == 0
    flat = metrics.summary(daily([100.0] * 5), trades_frame([]))
    assert math.isnan(flat["sharpe"]) and flat["total_return"] == 0.0 and flat["trades"] == 0


# Bailey & López de Prado (2014), "The Deflated Sharpe Ratio", numerical example: 100 trials whose
# annualised Sharpe ratios have variance 0.5, five years of daily returns (T = 1250, 250 a year),
# best annualised Sharpe 2.5, skewness -3, kurtosis 10. The paper gives E[max SR] ~ 0.1132 per day
# and DSR ~ 0.9004.
N_TRIALS, YEARLY_VARIANCE, T, PERIODS = 100, 0.5, 1250, 250
DAILY_SR = 2.5 / math.sqrt(PERIODS)


def test_expected_max_sharpe_reproduces_the_deflated_sharpe_paper():
    emax = metrics.expected_max_sharpe(N_TRIALS, YEARLY_VARIANCE / PERIODS)
    assert emax == pytest.approx(0.1132, abs=5e-5)
    # Annualised: 0.1131720 * sqrt(250) = 1.78941.
    assert emax * math.sqrt(PERIODS) == pytest.approx(1.7894, abs=5e-5)


def test_deflated_sharpe_reproduces_the_paper():
    dsr = metrics.deflated_sharpe(DAILY_SR, T, -3.0, 10.0, N_TRIALS, YEARLY_VARIANCE / PERIODS)
    assert dsr == pytest.approx(0.9004, abs=5e-5)


def test_expected_max_sharpe_by_simulation():
    # The formula is an approximation of the mean of the largest of N standard normals.
    rng = np.random.default_rng(7)
    simulated = rng.standard_normal((20_000, 100)).max(axis=1).mean()
    assert metrics.expected_max_sharpe(100, 1.0) == pytest.approx(simulated, abs=0.05)
    assert metrics.expected_max_sharpe(1, 1.0) == 0.0
    assert math.isnan(metrics.expected_max_sharpe(0, 1.0))


def test_probabilistic_sharpe_by_hand():
    # Normal returns: z = 0.1 * sqrt(251) / sqrt(1 + 0.5 * 0.01) = 1.580352...
    z = 0.1 * math.sqrt(251) / math.sqrt(1.005)
    assert z == pytest.approx(1.580352, abs=1e-6)
    psr = metrics.probabilistic_sharpe(0.1, 0.0, 252, 0.0, 3.0)
    assert psr == pytest.approx(NormalDist().cdf(z), abs=1e-12)
    assert psr == pytest.approx(0.942987, abs=1e-6)
    assert metrics.probabilistic_sharpe(0.2, 0.2, 100, -1.0, 6.0) == pytest.approx(0.5)
    assert math.isnan(metrics.probabilistic_sharpe(0.1, 0.0, 1, 0.0, 3.0))


def test_negative_skew_and_fat_tails_lower_the_psr():
    normal = metrics.probabilistic_sharpe(0.1, 0.0, 252, 0.0, 3.0)
    assert metrics.probabilistic_sharpe(0.1, 0.0, 252, -3.0, 10.0) < normal


def test_min_track_record_length_by_hand_and_round_trip():
    # Normal returns, SR 0.1 per period against 0 at 95%: 1 + 1.005 * (1.644854 / 0.1)^2 = 272.907.
    assert metrics.min_track_record_length(0.1, 0.0, 0.0, 3.0) == pytest.approx(272.907, abs=1e-3)
    n = metrics.min_track_record_length(DAILY_SR, 0.05, -3.0, 10.0, prob=0.9)
    assert metrics.probabilistic_sharpe(DAILY_SR, 0.05, n, -3.0, 10.0) == pytest.approx(0.9)
    assert metrics.min_track_record_length(0.05, 0.1, 0.0, 3.0) == math.inf
    assert math.isnan(metrics.min_track_record_length(0.1, 0.0, 0.0, 3.0, prob=1.0))
