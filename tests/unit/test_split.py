"""farmkit.research.split: cuts of bars, walk-forward windows, out-of-sample curves. No backtests here."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import farmkit as fk
from farmkit.data.bars import Bars
from farmkit.research.split import (OosCurve, WalkForward, oos_curve, split_bars, split_windows, stitch, walk_forward,
                           with_warmup)


@pytest.fixture(scope="module")
def bars():
    full = fk.data.synthetic(["AAPL", "MSFT"], start="2024-01-02", days=5, freq="1min", seed=7)
    # MSFT misses its first 10 bars: cuts are taken on the union of timestamps, not one symbol's.
    return Bars({"AAPL": full["AAPL"], "MSFT": full["MSFT"].iloc[10:]})


@pytest.fixture(scope="module")
def times(bars):
    return bars["AAPL"].index  # AAPL has every timestamp of the union: 5 days x 390 minutes


def _assert_cut(bars, is_bars, oos_bars, cut):
    for symbol, frame in bars.items():
        assert is_bars[symbol].index.max() < cut and oos_bars[symbol].index.min() == cut
        # Nothing lost, nothing doubled.
        pd.testing.assert_frame_equal(pd.concat([is_bars[symbol], oos_bars[symbol]]), frame)


def test_split_by_fraction_cuts_every_symbol_at_the_same_timestamp(bars, times):
    assert len(times) == 1950
    is_bars, oos_bars = split_bars(bars, 0.7)
    _assert_cut(bars, is_bars, oos_bars, times[1365])  # int(0.7 * 1950)
    assert len(is_bars["AAPL"]) == 1365 and len(is_bars["MSFT"]) == 1355 and len(oos_bars["MSFT"]) == 585
    assert isinstance(is_bars, Bars) and isinstance(oos_bars, Bars)


def test_split_by_date_starts_out_of_sample_at_the_first_bar_at_or_after_it(bars):
    _assert_cut(bars, *split_bars(bars, "2024-01-04"), pd.Timestamp("2024-01-04 14:30", tz="UTC"))
    _assert_cut(bars, *split_bars(bars, "2024-01-04 15:00:30"), pd.Timestamp("2024-01-04 15:01", tz="UTC"))
    new_york = pd.Timestamp("2024-01-05 10:00", tz="America/New_York")
    _assert_cut(bars, *split_bars(bars, new_york), pd.Timestamp("2024-01-05 15:00", tz="UTC"))


@pytest.mark.parametrize("split, message", [
    (0, "between 0 and 1"), (1, "between 0 and 1"), (1.5, "between 0 and 1"), (-0.2, "between 0 and 1"),
    (0.0001, "leaves one side empty"), (True, "must be a fraction"), ([0.7], "must be a fraction"),
    ("not a date", "cannot read"), ("2023-12-01", "outside the data"), ("2024-01-02 14:30", "outside the data"),
    ("2024-02-01", "outside the data"),
])
def test_bad_splits_say_what_to_give(bars, split, message):
    with pytest.raises(fk.ParameterError, match=message):
        split_bars(bars, split)


def test_a_symbol_without_bars_on_one_side_is_named(bars):
    early = Bars({"AAPL": bars["AAPL"], "MSFT": bars["MSFT"].loc[:"2024-01-03"]})
    with pytest.raises(fk.DataError, match="MSFT has no bars out of sample"):
        split_bars(early, 0.7)


def test_rolling_walk_forward_windows_follow_each_other(bars, times):
    windows = walk_forward(bars, 3)
    # First in-sample window: int(1950 / 4) = 487 bars; the other 1463 in 3 out-of-sample windows.
    cuts = [487, 975, 1462, 1950]
    assert [w.index for w in windows] == [1, 2, 3]
    for w, start, end in zip(windows, cuts, cuts[1:]):
        assert (w.oos_start, w.oos_end) == (times[start], times[end - 1])
        assert (w.is_start, w.is_end) == (times[start - 487], times[start - 1])  # rolling: same length
        assert w.out_of_sample["AAPL"].index.equals(times[start:end])
        assert w.in_sample["AAPL"].index.equals(times[start - 487:start])
    oos = pd.concat([w.out_of_sample["AAPL"] for w in windows])
    assert oos.index.is_unique and oos.index.equals(times[487:])  # no overlap, no gap, to the end


def test_anchored_walk_forward_grows_from_the_first_bar(bars, times):
    windows = walk_forward(bars, 3, anchored=True, train=0.5)
    cuts = [975, 1300, 1625, 1950]
    assert [w.oos_start for w in windows] == [times[c] for c in cuts[:3]]
    assert [w.is_start for w in windows] == [times[0]] * 3
    assert [len(w.in_sample["AAPL"]) for w in windows] == cuts[:3]
    assert [w.index for w in split_windows(bars, WalkForward(3, train=0.5, anchored=True))] == [1, 2, 3]
    assert [w.oos_start for w in split_windows(bars, WalkForward(3, train=0.5))] == [times[c] for c in cuts[:3]]


@pytest.mark.parametrize("kwargs, message", [
    (dict(windows=0), "windows must be"), (dict(windows=2.5), "windows must be"),
    (dict(windows=3, train=1.0), "train must be"), (dict(windows=2000), "cannot hold"),
])
def test_bad_walk_forwards_are_rejected(bars, kwargs, message):
    with pytest.raises(fk.ParameterError, match=message):
        walk_forward(bars, **kwargs)
    if "cannot hold" not in message:
        with pytest.raises(fk.ParameterError, match=message):
            WalkForward(**kwargs)


def test_warmup_prepends_the_bars_before_the_out_of_sample_start(bars, times):
    (window,) = split_windows(bars, 0.7)
    warm = with_warmup(bars, window, 30)
    assert warm["AAPL"].index[0] == times[1365 - 30] and warm["AAPL"].index[-1] == times[-1]
    assert warm["MSFT"].index[0] == times[1365 - 30]
    assert with_warmup(bars, window, 0) is window.out_of_sample
    assert with_warmup(bars, window, 10_000)["AAPL"].index[0] == times[0]  # no more than there is
    with pytest.raises(fk.ParameterError, match="warmup_bars"):
        with_warmup(bars, window, -1)


def _result(equity: pd.Series, trades: pd.DataFrame) -> SimpleNamespace:
    """The parts of a BacktestResult that oos_curve reads."""
    index = equity.index
    orders = pd.DataFrame({"executed_size": [10.0, -10.0], "executed_price": [100.0, 101.0],
                           "executed_at": [index[1], index[-2]]})
    return SimpleNamespace(run_id="bt-x", equity=equity, trades=trades, orders=orders,
                           positions=pd.DataFrame({"AAPL": 0.0}, index=index),
                           prices={"AAPL": pd.DataFrame({"close": 100.0}, index=index)})


def test_oos_curve_leaves_the_warmup_out():
    index = pd.date_range("2024-01-02 14:30", periods=10, freq="1min", tz="UTC")
    equity = pd.Series([100.0, 100, 90, 90, 95, 99, 108.9, 99, 99, 110], index=index)
    trades = pd.DataFrame({"opened_at": [index[1], index[5]], "closed_at": [index[6], index[8]],
                           "pnl": [5.0, -1.0], "pnl_net": [5.0, -1.0]})
    curve = oos_curve(_result(equity, trades), index[5])
    assert curve.equity.index.equals(index[5:])
    # Rebased to the run's start: 99 at the out-of-sample start becomes 100.
    assert curve.equity.iloc[0] == pytest.approx(100.0) and curve.equity.iloc[1] == pytest.approx(110.0)
    assert curve.warmup_trades == 1 and len(curve.trades) == 1 and curve.trades.pnl.iloc[0] == -1.0
    assert curve.traded_value == pytest.approx(10 * 101.0 * 100 / 99)  # only the fill after the start
    figures = curve.metrics()
    assert figures["total_return"] == pytest.approx(110 / 99 - 1) and figures["trades"] == 1
    assert figures["max_drawdown"] == pytest.approx(99 / 108.9 - 1) and figures["warmup_trades"] == 1


def test_stitch_chains_the_returns_of_consecutive_windows():
    first = pd.Series([100.0, 110.0], index=pd.date_range("2024-01-02 15:00", periods=2, freq="1min", tz="UTC"))
    second = pd.Series([100.0, 90.0, 120.0],
                       index=pd.date_range("2024-01-03 15:00", periods=3, freq="1min", tz="UTC"))
    empty = pd.DataFrame({"pnl": []})
    curves = [OosCurve(s, empty, s * 0, 1000.0, warmup_trades=1) for s in (first, second)]
    stitched = stitch(curves)
    assert stitched.equity.tolist() == pytest.approx([100.0, 110.0, 110.0, 99.0, 132.0])
    assert stitched.equity.index.equals(first.index.append(second.index))
    assert stitched.traded_value == pytest.approx(1000.0 + 1100.0) and stitched.warmup_trades == 2
    assert stitched.metrics()["total_return"] == pytest.approx(1.1 * 1.2 - 1)
    assert np.isnan(stitched.metrics()["sharpe_daily"])  # two days say nothing about skew
