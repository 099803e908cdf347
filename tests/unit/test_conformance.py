"""Conformance with backtrader: farmkit computes exactly what plain backtrader computes.

The reference is plain backtrader: ``bt.Cerebro(stdstats=False, **mode)`` with one
``bt.feeds.PandasData`` per symbol. Under test, the same cerebro with ``farmkit.feeds.HistoryFeed``
instead, and ``fk.backtest``. Every indicator backtrader ships, and every order, trade, notification
and bar a trading strategy sees, must be equal (``==``, NaN equal to NaN), in every run mode.
"""

from __future__ import annotations

import datetime
import math
from collections import Counter
from typing import NamedTuple

import backtrader as bt
import numpy as np
import pandas as pd
import pytest

import farmkit as fk
from farmkit.feeds import HistoryFeed
from tests.conformance_strategies import (NEXT_FORCING, UNBUILDABLE, Bar, HeikinAshiCount, IndicatorBattery,
                                          OrderSeen, SmaCross, indicator_classes)


class Mode(NamedTuple):
    """A run mode: the reference's cerebro keywords, and whether the broker cheats on close."""

    id: str
    cerebro: dict
    coc: bool = False

    def backtest_kwargs(self) -> dict:
        """The same mode as ``fk.backtest`` keywords (only those that differ from the defaults)."""
        kwargs = {("coo" if key == "cheat_on_open" else key): value for key, value in self.cerebro.items()}
        return {**kwargs, "coc": True} if self.coc else kwargs


MODES = {m.id: m for m in (
    Mode("runonce", {}),
    Mode("next", {"runonce": False}),
    Mode("no-preload", {"preload": False}),
    Mode("exactbars-1", {"exactbars": -1}),
    Mode("exactbars-2", {"exactbars": -2}),
    Mode("exactbars+1", {"exactbars": 1}),
    Mode("coo", {"cheat_on_open": True}),
    Mode("coo-next", {"cheat_on_open": True, "runonce": False}),
    Mode("coc", {}, coc=True),
)}


class Costs(NamedTuple):
    """Broker settings, as the reference applies them and as ``fk.backtest`` takes them."""

    cash: float = 100_000.0
    commission: float = 0.001
    slippage_perc: float = 0.0
    slippage_fixed: float = 0.0
    slip: dict = {}                # slip_open/slip_limit/slip_match/slip_out; unset: backtrader's defaults
    sizer: tuple | None = None     # (class, params)

    def apply(self, cerebro: bt.Cerebro) -> None:
        cerebro.broker.setcash(self.cash)
        cerebro.broker.setcommission(commission=self.commission)
        if self.slippage_perc:
            cerebro.broker.set_slippage_perc(self.slippage_perc, **self.slip)
        if self.slippage_fixed:
            cerebro.broker.set_slippage_fixed(self.slippage_fixed, **self.slip)
        if self.sizer:
            cerebro.addsizer(self.sizer[0], **self.sizer[1])

    def backtest_kwargs(self) -> dict:
        kwargs = {"cash": self.cash, "commission": self.commission, **self.slip}
        if self.slippage_perc:
            kwargs["slippage_perc"] = self.slippage_perc
        if self.slippage_fixed:
            kwargs["slippage_fixed"] = self.slippage_fixed
        if self.sizer:
            kwargs.update(sizer=self.sizer[0], sizer_params=self.sizer[1])
        return kwargs


# -- frames ------------------------------------------------------------------------------------------

def daily_frame(seed: int, days: int = 280) -> pd.DataFrame:
    """Seeded daily OHLCV in cents, UTC midnight stamps, consistent OHLC."""
    rng = np.random.default_rng(seed)
    index = pd.bdate_range("2021-01-04", periods=days, tz="UTC", name="timestamp")
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.015, days)))
    open_ = np.r_[100.0, close[:-1]] * np.exp(rng.normal(0, 0.005, days))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.008, days)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.008, days)))
    ohlc = np.round(np.column_stack([open_, high, low, close]), 2)
    ohlc[:, 1] = ohlc.max(axis=1)
    ohlc[:, 2] = ohlc[:, [0, 2, 3]].min(axis=1)
    volume = rng.integers(10_000, 50_000, days).astype("float64")
    return pd.DataFrame(np.column_stack([ohlc, volume]), index=index,
                        columns=["open", "high", "low", "close", "volume"])


@pytest.fixture(scope="module")
def frames() -> dict[str, dict[str, pd.DataFrame]]:
    intraday = fk.data.synthetic(["AAPL", "MSFT"], start="2024-01-02", days=3, freq="1min", seed=7)
    return {
        "daily": {"AAA": daily_frame(1), "BBB": daily_frame(2), "CCC": daily_frame(3)},
        "intraday": dict(intraday),
    }


def timeframe_of(frame: pd.DataFrame) -> tuple[int, int]:
    daily = frame.index[1] - frame.index[0] >= pd.Timedelta(days=1)
    return (bt.TimeFrame.Days, 1) if daily else (bt.TimeFrame.Minutes, 1)


# -- the three ways to run ---------------------------------------------------------------------------

def run_cerebro(strategy: type, frames: dict, mode: Mode, *, feed: str = "pandas", costs: Costs = Costs(),
                feed_params: dict | None = None, **params) -> tuple[list, bt.Cerebro]:
    """The reference (``feed="pandas"``) or the same cerebro over ``HistoryFeed`` (``feed="history"``)."""
    cerebro = bt.Cerebro(stdstats=False, **mode.cerebro)
    for symbol, frame in frames.items():
        timeframe, compression = timeframe_of(frame)
        common = dict(dataname=frame, timeframe=timeframe, compression=compression, **(feed_params or {}))
        if feed == "pandas":
            cerebro.adddata(bt.feeds.PandasData(**common), name=symbol)
        else:
            cerebro.adddata(HistoryFeed(name=symbol, **common))
    costs.apply(cerebro)
    if mode.coc:
        cerebro.broker.set_coc(True)
    journal: list = []
    cerebro.addstrategy(strategy, journal=journal, **params)
    cerebro.run()
    return journal, cerebro


def run_backtest(strategy: type, frames: dict, mode: Mode, *, costs: Costs = Costs(), window: dict | None = None,
                 **params) -> tuple[list, fk.BacktestResult]:
    journal: list = []
    result = fk.backtest(strategy, frames, **costs.backtest_kwargs(), **mode.backtest_kwargs(), **(window or {}),
                         journal=journal, **params)
    return journal, result


# -- comparing ---------------------------------------------------------------------------------------

def same(a, b) -> bool:
    """Equal, with NaN equal to NaN, through tuples."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def assert_same_journal(expected: list, actual: list, what: str) -> None:
    first = next((i for i, (e, a) in enumerate(zip(expected, actual)) if not same(e, a)), None)
    if first is None and len(expected) == len(actual):
        return
    if first is None:
        first = min(len(expected), len(actual))

    def at(journal, i):
        return "\n      ".join(f"[{k}] {journal[k]!r}" for k in range(max(0, i - 2), min(len(journal), i + 1)))

    pytest.fail(f"{what}: first difference at entry {first} (backtrader has {len(expected)} entries, "
                f"farmkit {len(actual)})\n  backtrader:\n      {at(expected, first) or '<end>'}\n"
                f"  farmkit:\n      {at(actual, first) or '<end>'}", pytrace=False)


def assert_same_indicators(expected: list, actual: list, what: str) -> None:
    """Battery journals: the header names the lines; on a difference, say which lines and values."""
    assert expected[0] == actual[0], f"{what}: a different set of indicator lines was built"
    names, expected, actual = expected[0][1], expected[1:], actual[1:]
    for i, (e, a) in enumerate(zip(expected, actual)):
        if e[:3] != a[:3]:
            break
        if not same(e, a):
            wrong = [f"{names[k]}: backtrader {x!r}, farmkit {y!r}" for k, (x, y) in enumerate(zip(e[3], a[3]))
                     if not same(x, y)]
            pytest.fail(f"{what}: first difference at bar entry {i} {e[:3]}, {len(wrong)} line(s) differ:\n  "
                        + "\n  ".join(wrong[:8]), pytrace=False)
    assert_same_journal([r[:3] for r in expected], [r[:3] for r in actual], f"{what}, (phase, len, dt) of the bars")


def assert_same_calls(expected: list, actual: list, what: str) -> None:
    """How often each strategy method was called for a bar: the plainest symptom of a frame served twice."""
    def calls(journal):
        return Counter(e.phase for e in journal if isinstance(e, Bar))
    assert calls(actual) == calls(expected), \
        f"{what}: strategy calls per method {dict(calls(actual))}, backtrader {dict(calls(expected))}"


def check_result(journal: list, result: fk.BacktestResult) -> None:
    """The result agrees with what the strategy saw: one FMEL record and one equity point per bar."""
    bars = [e for e in journal if isinstance(e, Bar) and e.phase in ("prenext", "next")]
    assert result.equity.index.is_monotonic_increasing and result.equity.index.is_unique, \
        "res.equity's index is not strictly increasing"
    assert len(result.fmel) == len(bars), \
        f"{len(result.fmel)} FMEL records for {len(bars)} bars the strategy was called for"


# -- 1. every indicator backtrader ships -------------------------------------------------------------

# exactbars=-1 serves the feeds as exactbars=-2 does (only indicator buffers differ), and cheat-on-close
# changes fills, not indicators: the trading tests below cover both, the battery leaves them out to stay fast.
BATTERY_MODES = ["runonce", "next", "no-preload", "exactbars-2", "exactbars+1", "coo"]

# Left out per mode, with why: these would not let the reference run that mode.
BATTERY_LEAVE_OUT = {
    # HeikinAshi (also inside haDelta) switches cerebro to next mode: with them, runonce is not run.
    "runonce": tuple(sorted(NEXT_FORCING)),
    "coo": tuple(sorted(NEXT_FORCING)),
    # With exactbars=1 PandasData keeps numpy float64 values in its deque buffers; DemarkPivotPoint's
    # cmp() then subtracts numpy booleans, which raises TypeError in backtrader itself.
    "exactbars+1": ("DemarkPivotPoint",),
}


@pytest.fixture(scope="module")
def battery_reference(frames):
    """Reference battery journals, one run per mode, made on first use."""
    runs: dict[str, list] = {}

    def get(mode_id: str) -> list:
        if mode_id not in runs:
            journal, cerebro = run_cerebro(IndicatorBattery, battery_frames(frames), MODES[mode_id],
                                           leave_out=BATTERY_LEAVE_OUT.get(mode_id, ()))
            # A runonce battery really ran vectorised: nothing in it switched cerebro to next mode.
            vectorised = cerebro._dopreload and cerebro._dorunonce
            assert vectorised == (mode_id in ("runonce", "coo")), f"the {mode_id} battery ran in another mode"
            runs[mode_id] = journal
        return runs[mode_id]
    return get


def battery_frames(frames) -> dict:
    return {s: frames["daily"][s] for s in ("AAA", "BBB")}


def test_the_battery_builds_every_indicator_but_the_documented_ones(battery_reference):
    classes = {cls.__name__ for cls in indicator_classes()}
    names = battery_reference("next")[0][1]
    built = {name.split(".")[0] for name in names}
    assert set(UNBUILDABLE) <= classes, f"documented but not in bt.indicators: {set(UNBUILDABLE) - classes}"
    assert built == classes - set(UNBUILDABLE), f"neither built nor documented: {classes - set(UNBUILDABLE) - built}"
    assert len(built) >= 100 and len(names) > len(built)
    print(f"\n{len(built)} indicators built ({len(names)} lines); not built:\n"
          + "\n".join(f"  {name}: {why}" for name, why in sorted(UNBUILDABLE.items())))


@pytest.mark.parametrize("mode_id", BATTERY_MODES)
def test_every_indicator_on_history_feed_equals_pandas_data(frames, battery_reference, mode_id):
    actual, _ = run_cerebro(IndicatorBattery, battery_frames(frames), MODES[mode_id], feed="history",
                            leave_out=BATTERY_LEAVE_OUT.get(mode_id, ()))
    assert_same_indicators(battery_reference(mode_id), actual, f"HistoryFeed, {mode_id}")


@pytest.mark.parametrize("mode_id", BATTERY_MODES)
def test_every_indicator_in_backtest_equals_backtrader(farm_home, frames, battery_reference, mode_id):
    actual, _ = run_backtest(IndicatorBattery, battery_frames(frames), MODES[mode_id],
                             leave_out=BATTERY_LEAVE_OUT.get(mode_id, ()))
    assert_same_indicators(battery_reference(mode_id), actual, f"fk.backtest, {mode_id}")


# -- 2. orders, trades, notifications, bars ----------------------------------------------------------

class Case(NamedTuple):
    frames: str                      # key in the frames fixture
    params: dict                     # SmaCross parameters
    costs: Costs = Costs()
    window: dict = {}                # fromdate/todate for every feed


CASES = {
    "daily-market": Case("daily", {"stake": 10}),
    "daily-sizer-slippage": Case("daily", {}, Costs(slippage_perc=0.001,
                                                    sizer=(bt.sizers.PercentSizer, {"percents": 10}))),
    "daily-bracket-fixed-slippage": Case("daily", {"entry": "bracket", "stake": 20},
                                         Costs(slippage_fixed=0.03, slip={"slip_match": False, "slip_out": True})),
    "daily-window": Case("daily", {"stake": 10}, window={"fromdate": datetime.datetime(2021, 3, 1),
                                                         "todate": datetime.datetime(2021, 11, 30)}),
    "intraday-market": Case("intraday", {"stake": 50, "period": 30}, Costs(commission=0.0005)),
    "intraday-stoplimit": Case("intraday", {"entry": "stoplimit", "stake": 50}),
    "intraday-window": Case("intraday", {"stake": 50}, window={"fromdate": datetime.datetime(2024, 1, 3, 15, 0),
                                                               "todate": datetime.datetime(2024, 1, 4, 18, 30)}),
    "daily-at-open": Case("daily", {"stake": 10, "at_open": True}),
}

TRADING = [
    *[("daily-market", m) for m in MODES],
    *[("intraday-market", m) for m in ("runonce", "next", "no-preload", "exactbars+1", "coo", "coc")],
    ("daily-sizer-slippage", "runonce"), ("daily-sizer-slippage", "next"),
    ("daily-bracket-fixed-slippage", "runonce"), ("daily-bracket-fixed-slippage", "next"),
    ("daily-bracket-fixed-slippage", "exactbars+1"),
    ("intraday-stoplimit", "runonce"), ("intraday-stoplimit", "no-preload"),
    ("daily-window", "runonce"), ("daily-window", "next"), ("daily-window", "no-preload"),
    ("intraday-window", "runonce"), ("intraday-window", "exactbars-1"),
]
TRADING_IDS = [f"{case}-{mode}" for case, mode in TRADING]


@pytest.fixture(scope="module")
def trading_reference(frames):
    runs: dict[tuple, list] = {}

    def get(case_id: str, mode_id: str) -> list:
        if (case_id, mode_id) not in runs:
            case = CASES[case_id]
            runs[case_id, mode_id], _ = run_cerebro(SmaCross, frames[case.frames], MODES[mode_id], costs=case.costs,
                                                    feed_params=case.window, **case.params)
        return runs[case_id, mode_id]
    return get


def test_the_reference_trades_and_reads_the_frames_as_utc(frames, trading_reference):
    journal = trading_reference("daily-market", "next")
    bars = [e for e in journal if isinstance(e, Bar)]
    index = frames["daily"]["AAA"].index
    assert [b.datetimes[0] for b in bars] == [bt.date2num(t.to_pydatetime().replace(tzinfo=None)) for t in index]
    done = [e for e in journal if isinstance(e, OrderSeen) and e.status == "Completed"]
    assert len(done) > 20, "the trading strategy hardly trades: the comparison would prove little"


@pytest.mark.parametrize("case_id,mode_id", TRADING, ids=TRADING_IDS)
def test_history_feed_trades_like_pandas_data(frames, trading_reference, case_id, mode_id):
    case = CASES[case_id]
    actual, _ = run_cerebro(SmaCross, frames[case.frames], MODES[mode_id], feed="history", costs=case.costs,
                            feed_params=case.window, **case.params)
    expected = trading_reference(case_id, mode_id)
    assert_same_calls(expected, actual, f"HistoryFeed, {case_id}, {mode_id}")
    assert_same_journal(expected, actual, f"HistoryFeed, {case_id}, {mode_id}")


@pytest.mark.parametrize("case_id,mode_id", TRADING, ids=TRADING_IDS)
def test_backtest_trades_like_backtrader(farm_home, frames, trading_reference, case_id, mode_id):
    case = CASES[case_id]
    actual, result = run_backtest(SmaCross, frames[case.frames], MODES[mode_id], costs=case.costs, window=case.window,
                                  **case.params)
    expected = trading_reference(case_id, mode_id)
    assert_same_calls(expected, actual, f"fk.backtest, {case_id}, {mode_id}")
    assert_same_journal(expected, actual, f"fk.backtest, {case_id}, {mode_id}")
    check_result(actual, result)


@pytest.mark.parametrize("mode_id", ["runonce", "next"])
def test_feed_filters_apply_to_history_feed_as_to_pandas_data(frames, mode_id):
    # SessionFilter drops the bars outside sessionstart..sessionend; HeikinAshi rewrites every bar.
    params = {"sessionstart": datetime.time(15, 0), "sessionend": datetime.time(19, 59),
              "filters": [bt.filters.SessionFilter, bt.filters.HeikinAshi]}
    one = {"AAPL": frames["intraday"]["AAPL"]}
    expected, _ = run_cerebro(SmaCross, one, MODES[mode_id], feed_params=params, stake=50)
    assert len([e for e in expected if isinstance(e, Bar)]) < len(one["AAPL"]) * 0.9
    actual, _ = run_cerebro(SmaCross, one, MODES[mode_id], feed="history", feed_params=params, stake=50)
    assert_same_journal(expected, actual, f"HistoryFeed with filters, {mode_id}")


def test_the_strategy_parameters_can_come_as_one_mapping(farm_home, frames, trading_reference):
    expected = trading_reference("daily-market", "runonce")
    journal: list = []
    fk.backtest(SmaCross, frames["daily"], cash=100_000.0, commission=0.001, params={"stake": 10}, journal=journal)
    assert_same_journal(expected, journal, "fk.backtest(params={...})")


def test_every_mode_keyword_at_its_default_is_a_plain_backtest(farm_home, frames, trading_reference):
    expected = trading_reference("daily-sizer-slippage", "runonce")
    case = CASES["daily-sizer-slippage"]
    journal: list = []
    fk.backtest(SmaCross, frames["daily"], **case.costs.backtest_kwargs(), runonce=True, preload=True, exactbars=0,
                coo=False, coc=False, fromdate=None, todate=None, slip_open=True, slip_limit=True, slip_match=True,
                slip_out=False, params={"journal": journal})
    assert_same_journal(expected, journal, "fk.backtest with every mode keyword at its default")


# -- 3. the doubled frame ----------------------------------------------------------------------------

@pytest.mark.parametrize("side", ["history-feed", "backtest"])
def test_heikin_ashi_on_three_bars_sees_three_bars(farm_home, frames, side):
    three = {"AAA": frames["daily"]["AAA"].iloc[:3]}
    expected, _ = run_cerebro(HeikinAshiCount, three, MODES["runonce"])
    assert [e[:2] for e in expected] == [("prenext", 1), ("next", 2), ("next", 3)]
    if side == "history-feed":
        actual, _ = run_cerebro(HeikinAshiCount, three, MODES["runonce"], feed="history")
    else:
        actual, result = run_backtest(HeikinAshiCount, three, MODES["runonce"])
    assert_same_journal(expected, actual, f"HeikinAshi on 3 bars, {side}")
    if side == "backtest":
        assert len(result.fmel) == 3


# -- 4. cheat-on-open --------------------------------------------------------------------------------

@pytest.mark.parametrize("side", ["history-feed", "backtest"])
@pytest.mark.parametrize("mode_id", ["coo", "coo-next"])
def test_orders_placed_in_next_open_fill_at_that_bars_open(farm_home, frames, trading_reference, mode_id, side):
    expected = trading_reference("daily-at-open", mode_id)
    opens = {s: dict(zip((bt.date2num(t.to_pydatetime()) for t in f.index), f["open"])) for s, f in
             frames["daily"].items()}
    done = [e for e in expected if isinstance(e, OrderSeen) and e.status == "Completed"]
    # A sanity check of the reference itself; its executed price is a size-weighted average, off by an ulp.
    assert len(done) > 20 and all(e.executed_dt == e.created_dt and
                                  e.executed_price == pytest.approx(opens[e.data][e.executed_dt], rel=1e-12)
                                  for e in done), "the reference does not fill next_open orders at the open"
    assert sum(isinstance(e, Bar) and e.phase == "next_open" for e in expected) > 200
    what = f"{side}, cheat-on-open, {mode_id}"
    if side == "history-feed":
        actual, _ = run_cerebro(SmaCross, frames["daily"], MODES[mode_id], feed="history",
                                **CASES["daily-at-open"].params)
    else:
        actual, result = run_backtest(SmaCross, frames["daily"], MODES[mode_id], **CASES["daily-at-open"].params)
    assert_same_calls(expected, actual, what)
    assert_same_journal(expected, actual, what)
    if side == "backtest":
        check_result(actual, result)
