"""Drift alarms: the baseline read from FMEL, round trips, and the CUSUM's false-alarm rate and detection
delay on simulated paper runs (seeded: the same figures every time, no timing)."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

import farmkit as fk
from farmkit.live.drift import (
    Baseline,
    DriftMonitor,
    Fill,
    RoundTrips,
    calibrate,
    fills_from_fmel,
    simulate,
)
from tests.unit.test_engine import TrackedCross

ROOT = Path(__file__).resolve().parents[2]


def bench():
    spec = importlib.util.spec_from_file_location("bench_drift", ROOT / "bench" / "drift.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def backtest(farm_home):
    # Opens moved off the previous close, so that fills slip against the decision bar's close.
    data = bench().gapped(fk.data.synthetic("AAPL", days=1, seed=5), 3.0, seed=5)
    return fk.backtest(TrackedCross, data, fast=3, slow=8, commission=0.0005)


def fill(bar, side, size, price, symbol="AAPL", commission=0.0, reference=None):
    return Fill(bar, symbol, side, size, price, reference or price, commission, 100_000.0)


def test_round_trips_close_when_the_position_is_flat_and_split_a_reversal():
    trips = RoundTrips()
    assert trips.add(fill(1, 1, 10, 100.0, commission=1.0)) == []
    assert trips.add(fill(2, 1, 10, 102.0, commission=1.0)) == []
    assert trips.add(fill(3, -1, 20, 103.0, commission=2.0)) == [pytest.approx(20 * 103 - 10 * 100 - 10 * 102 - 4)]
    # Short 5 then buy 15: the first 5 close the short, the other 10 open a long.
    assert trips.add(fill(4, -1, 5, 50.0, symbol="MSFT")) == []
    assert trips.add(fill(5, 1, 15, 49.0, symbol="MSFT", commission=3.0)) == [pytest.approx(5 * 1.0 - 1.0)]
    assert trips.add(fill(6, -1, 10, 51.0, symbol="MSFT")) == [pytest.approx(10 * 2.0 - 2.0)]


def test_the_baseline_from_fmel_has_every_fill_and_backtraders_own_trades(backtest):
    fills = fills_from_fmel(backtest.fmel)
    trades = backtest.trades
    assert len(fills) - 2 * len(trades) in (0, 1) and len(trades) > 20     # each trade: a buy and a sell
    baseline = Baseline.from_fmel(backtest.fmel, backtest.run_id)
    assert np.allclose(np.sort(baseline.samples["trade_pnl"]), np.sort(trades.pnl_net.to_numpy()))
    expected = baseline.expected()
    assert expected["win_rate"] == pytest.approx(backtest.metrics["win_rate"])
    assert expected["trades_per_day"] == len(trades) and expected["fills_per_day"] == len(fills)
    # The reference is the decision bar's close; market orders fill at the next bar's open.
    market = backtest.fmel.set_index("bar_number").market_state
    first = fills[0]
    submitted = next(b for b in range(first.bar, -1, -1) if json.loads(market[b])["AAPL"]["close"] == first.reference)
    assert submitted == first.bar - 1 and first.reference != first.price and math.isfinite(expected["slippage_bps"])
    assert first.price == json.loads(market[first.bar])["AAPL"]["open"]
    assert expected["turnover_per_day"] == pytest.approx(sum(abs(f.size * f.price) / f.equity for f in fills))


def test_calibrated_limits_grow_with_the_horizon_and_shrink_with_the_level():
    z = np.random.default_rng(3).standard_normal(200)
    assert calibrate(z, k=0.25, horizon=500, level=0.002) > calibrate(z, k=0.25, horizon=100, level=0.002)
    assert calibrate(z, k=0.25, horizon=500, level=0.02) < calibrate(z, k=0.25, horizon=500, level=0.002)
    assert calibrate(z, k=0.25, horizon=500, level=0.002, seed=1) == calibrate(z, k=0.25, horizon=500, level=0.002,
                                                                             seed=1)


def test_false_alarm_rate_and_detection_delay_on_simulated_paper_runs(backtest):
    monitor = DriftMonitor(Baseline.from_fmel(backtest.fmel, backtest.run_id), alpha=0.01, horizon=500)
    assert monitor.watched == ["fill_gap_bars", "notional", "slippage_bps", "trade_pnl", "trade_win"]
    figures = bench().measure(monitor, runs=300, seed=11)
    assert figures["false_alarm_rate"] <= 0.02        # stated: 1%; 300 runs measure it to about +-0.6%
    assert figures["slippage_doubled_detected"] >= 0.95 and figures["slippage_doubled_delay_median"] <= 100
    assert figures["slippage_plus_5bps_detected"] >= 0.95 and figures["slippage_plus_5bps_delay_median"] <= 200
    assert figures["trade_rate_doubled_detected"] >= 0.95 and figures["trade_rate_doubled_delay_median"] <= 200
    # A win rate of 19% halved moves each round trip by ~0.24 sd: within 500 trades only a part is caught.
    assert figures["win_rate_halved_detected"] >= 0.15


def test_a_stream_with_too_few_baseline_observations_is_not_watched_and_alarms_stay_raised():
    fills = [fill(i * 10, 1 if i % 2 == 0 else -1, 10, 100.0 + (i % 3), reference=100.0) for i in range(30)]
    baseline = Baseline.from_fills(fills, days=1)
    monitor = DriftMonitor(baseline, min_samples=20)
    assert monitor.watched == ["notional", "slippage_bps"]      # 15 round trips only; fills every 10 bars
    assert simulate(monitor, runs=20, seed=2) == [None] * 20
    raised = []
    for i in range(30):      # every fill 30% worse than its decision bar's close
        side = 1 if i % 2 == 0 else -1
        raised += monitor.add_fill(fill(1000 + i * 10, side, 10, 100.0 + side * 30.0, reference=100.0))
    assert monitor.drifting and {a.stream for a in raised} >= {"slippage_bps"}
    alarm = next(a for a in raised if a.stream == "slippage_bps")
    assert alarm.direction == "up" and alarm.observed > alarm.expected
    assert monitor.state()["drifting"] and monitor.state()["alarms"][0]["stream"] == raised[0].stream
    monitor.reset()
    assert not monitor.drifting


def test_a_stream_constant_in_the_baseline_is_not_watched():
    # Synthetic bars open at the previous close: a market order fills at its decision bar's close.
    fills = [fill(i * 10, 1 if i % 2 == 0 else -1, 10, 100.0 + (i % 3)) for i in range(60)]
    baseline = Baseline.from_fills(fills, days=1)
    assert set(baseline.samples["slippage_bps"]) == {0.0}
    assert "slippage_bps" not in DriftMonitor(baseline).watched
