"""fk check_lookahead: planted look-aheads are found at the right bar, a clean strategy passes."""

import json

import backtrader as bt
import numpy as np
import pytest

import farmkit as fk
from farmkit.errors import FarmError
from farmkit.research.lookahead import LookaheadError, check_lookahead


@pytest.fixture(scope="module")
def bars():
    return fk.data.synthetic("AAPL", days=3, seed=11)   # 1,170 minute bars, highest close at bar 760


class PeeksNextClose(fk.Strategy):
    """``close(1)`` is the *next* bar's close: runonce fills it from the preloaded future."""

    def __init__(self):
        self.next_close = self.data.close(1)
        self.track(next_close=self.next_close)

    def next(self):
        if self.next_close[0] > self.data.close[0] and not self.position:
            self.buy(size=1, reason="it will go up")
        elif self.next_close[0] < self.data.close[0] and self.position:
            self.close(reason="it will go down")


class NormalisesByFullMax(fk.Strategy):
    """The max of the whole preloaded close buffer includes prices not seen yet."""

    def start(self):
        self.top = max(self.data.close.array)

    def next(self):
        self.track(norm=self.data.close[0] / self.top)
        if self.data.close[0] / self.top > 0.99 and not self.position:
            self.buy(size=1, reason="near the high")


class SmaCross(fk.Strategy):
    params = dict(fast=5, slow=20)

    def __init__(self):
        self.fast, self.slow = bt.ind.SMA(period=self.p.fast), bt.ind.EMA(period=self.p.slow)
        self.cross = bt.ind.CrossOver(self.fast, self.slow)
        self.track(fast=self.fast, slow=self.slow, cross=self.cross, rsi=bt.ind.RSI(period=14))

    def next(self):
        self.track(bars_seen=len(self))
        if self.cross > 0:
            self.order_target_percent(target=0.5, reason="fast above slow")
        elif self.cross < 0 and self.position:
            self.close(reason="fast below slow")


class PeeksOnlyAtBar234(fk.Strategy):
    """Reads one bar ahead once: fine on the full data, IndexError when the data ends there."""

    def next(self):
        if len(self) == 234:
            self.track(peek=self.data.close[1])


def test_peeking_at_the_next_close_is_found_at_the_last_bar_before_each_cut(farm_home, bars):
    report = check_lookahead(PeeksNextClose, bars, cuts=5)
    closes = bars["AAPL"]["close"].to_numpy()
    assert report.cuts == (234, 453, 672, 892, 1111) and report.bars == 1170
    assert not report.ok and report.first_bar == 233
    assert report.first_timestamp == bars["AAPL"].index[233]
    d = report.differences
    # Only the last bar of each truncated run can see past the end: all earlier bars match.
    assert sorted(set(zip(d.cut, d.bar_number))) == [(c, c - 1) for c in report.cuts]
    first = d[(d.bar_number == 233) & (d.field == "tracked.next_close")].iloc[0]
    assert first.full_value == pytest.approx(closes[234])                 # the future close
    assert first.truncated_value != pytest.approx(closes[234])
    assert "decisions" in set(d.field)                                    # and it traded on it
    text = str(report)
    assert "looks ahead: at bar 233" in text and "tracked.next_close" in text
    assert "bar 233" in report._repr_html_()
    with pytest.raises(LookaheadError, match="at bar 233 .*tracked.next_close") as info:
        report.raise_if_leaky()
    assert isinstance(info.value, FarmError)


def test_normalising_by_the_full_series_max_is_found_from_the_first_bar(farm_home, bars):
    closes = bars["AAPL"]["close"].to_numpy()
    assert int(np.argmax(closes)) == 760          # between the cuts: early cuts miss the max, late ones don't
    report = check_lookahead(NormalisesByFullMax, bars, cuts=5)
    assert not report.ok and report.first_bar == 0
    d = report.differences
    assert set(d.cut) == {234, 453, 672}          # cuts after bar 760 see the same max: no difference there
    assert set(d.field) >= {"tracked.norm"}
    first = d[(d.bar_number == 0) & (d.cut == 234) & (d.field == "tracked.norm")].iloc[0]
    assert first.full_value == pytest.approx(closes[0] / closes.max())
    assert first.truncated_value == pytest.approx(closes[0] / closes[:234].max())
    assert (d[d.field == "tracked.norm"].groupby("cut").size() == [234, 453, 672]).all()  # every bar differs
    assert "at bar 0" in str(report) and "tracked.norm" in str(report)
    with pytest.raises(LookaheadError, match="tracked.norm"):
        report.raise_if_leaky()


def test_clean_sma_crossover_has_no_false_positives(farm_home, bars):
    report = check_lookahead(SmaCross, bars, cuts=12, commission=0.0005, fast=4)
    assert report.ok and report.first_bar is None and report.first_timestamp is None
    assert report.differences.empty and len(report.cuts) == 12 and report.cuts[-1] == 1111
    assert report.raise_if_leaky() is report
    assert "no look-ahead found" in str(report)
    # Not vacuous: the strategy traded, and on a cut's last bar too its orders had not filled yet.
    full = fk.fmel.load(report.full_run_id)
    actions = [d["action"] for ds in full.decisions.map(json.loads) for d in ds]
    assert actions.count("target_percent") > 5 and actions.count("close") > 5
    runs = fk.runs()
    assert set(runs.agent_id) == {"SmaCross/lookahead"} and sorted(runs.bars) == sorted([1170, *report.cuts])


def test_clean_strategy_on_two_symbols_with_gaps_cut_at_the_same_timestamp(farm_home):
    pair = fk.data.synthetic(["AAPL", "MSFT"], days=2, seed=3)
    msft = pair["MSFT"]
    pair = fk.Bars(AAPL=pair["AAPL"], MSFT=msft[np.random.default_rng(0).random(len(msft)) > 0.3])
    report = check_lookahead(SmaCross, pair, cuts=4)
    assert report.ok, str(report)


def test_reading_past_the_end_of_a_truncated_run_is_a_leak(farm_home, bars):
    report = check_lookahead(PeeksOnlyAtBar234, bars, cuts=2)
    assert report.cuts == (234, 1111)
    assert not report.ok and report.first_bar == 233
    error = report.differences[report.differences.field == "error"].iloc[0]
    assert error.cut == 234 and "IndexError" in error.truncated_value


# -- the whole-notebook check's parts: the data window and the leak patterns ------------------------

@pytest.fixture
def data_window():
    from farmkit.data import window
    yield window
    window.limit()          # no window for the tests that follow


def test_every_data_source_keeps_only_the_bars_inside_the_window(data_window, tmp_path):
    full = fk.data.synthetic(["AAPL", "MSFT"], days=2, seed=4)
    stamps = full["AAPL"].index
    data_window.limit(until=stamps[99])
    cut = fk.data.synthetic(["AAPL", "MSFT"], days=2, seed=4)
    assert [len(f) for f in cut.values()] == [100, 100] and cut["MSFT"].equals(full["MSFT"].iloc[:100])
    data_window.limit(start=stamps[700].tz_convert("America/New_York"))     # any zone: compared in UTC
    assert fk.data.synthetic("AAPL", days=2, seed=4)["AAPL"].equals(full["AAPL"].iloc[700:])
    path = tmp_path / "AAPL.csv"
    full["AAPL"].to_csv(path)
    data_window.limit(start=stamps[10], until="2024-01-02 15:00")           # naive means UTC
    assert list(fk.data.load(path)["AAPL"].index) == list(stamps[10:31])
    data_window.limit()
    assert len(fk.data.load(path)["AAPL"]) == len(stamps)
    assert [len(ix) for ix in data_window.seen()] == [len(stamps)]           # what was returned, uncut


@pytest.mark.parametrize("source, kind", [
    ("signal = frame.close.shift(-5) > frame.close", "negative shift"),
    ("x = close.shift(periods=-n)", "negative shift"),
    ("m = close.rolling(21, center=True).mean()", "centred rolling window"),
    ("z = (close - close.mean()) / close.std()", "whole-series statistic"),
    ("norm = close / close.max()", "whole-series statistic"),
    ("top = close[::-1].cummax()[::-1]", "reversed cumulative operation"),
    ("s = close.iloc[::-1].cumsum()", "reversed cumulative operation"),
    ("bars15 = frame.resample('15min').agg(ohlc)", "resample labelled by the period's start"),
    ("bars15 = frame.resample('15min', closed='right', label='left').last()", "resample labelled by the period's start"),
    ("f = marks.bfill()", "backward fill"),
    ("f = marks.fillna(method='backfill')", "backward fill"),
])
def test_known_leak_patterns_are_recognised(source, kind):
    from farmkit.research.leak_patterns import leak_patterns
    assert [p.kind for p in leak_patterns("%matplotlib inline\n" + source)] == [kind]
    assert leak_patterns("%matplotlib inline\n" + source)[0].line == 2


def test_past_only_code_has_no_leak_pattern():
    from farmkit.research.leak_patterns import leak_patterns
    clean = """
feature = close / close.rolling(20).mean() - 1
z = (close - close.expanding(20).mean()) / close.expanding(20).std()
prev = close.shift(1) / close.shift(2) - 1
e = close.ewm(span=10, adjust=True).mean()
bars15 = frame.resample("15min", label="right", closed="right").agg(ohlc)
top = close.cummax()
marks = marks.ffill()
"""
    assert leak_patterns(clean) == []
    assert leak_patterns("this is not python (") == []


def test_cuts_leave_the_warm_up_and_one_bar_so_a_long_warm_up_is_no_look_ahead(farm_home):
    class LongWarmup(fk.Strategy):
        params = dict(period=300)

        def __init__(self):
            self.sma = bt.ind.SMA(period=self.p.period)

        def next(self):
            if self.data.close[0] > self.sma[0] and not self.position:
                self.buy(size=1, reason="above its average")
            elif self.data.close[0] < self.sma[0] and self.position:
                self.close(reason="below its average")

    # Two days of minute bars (780): cuts at 20% of them (156 bars) would leave no bar for next().
    report = fk.check_lookahead(LongWarmup, fk.data.synthetic("AAPL", days=2, seed=5), cuts=5)
    assert report.ok, report
    assert report.cuts and min(report.cuts) >= 301
