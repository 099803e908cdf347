"""fk.backtest: parity with plain backtrader, FMEL completeness, failures and bad parameters."""

import datetime
import json

import backtrader as bt
import numpy as np
import pandas as pd
import pytest

import farmkit as fk
from farmkit.feeds import date2num
from farmkit.fmel import schema


class PlainSmaCross(bt.Strategy):
    params = dict(fast=10, slow=30)

    def __init__(self):
        self.cross = bt.ind.CrossOver(bt.ind.SMA(period=self.p.fast), bt.ind.SMA(period=self.p.slow))
        self.fills = []

    def notify_order(self, order):
        if order.status == order.Completed:
            self.fills.append((order.ref, order.isbuy(), order.executed.size, order.executed.price,
                               order.executed.comm))

    def next(self):
        if self.cross > 0:
            self.buy()
        elif self.cross < 0 and self.position:
            self.close()


class PlainBreakout(bt.Strategy):
    """Stop entries above the recent high, limit exits, a stop loss, and a sizer."""

    params = dict(lookback=20)

    def __init__(self):
        self.high = bt.ind.Highest(self.data.high, period=self.p.lookback)
        self.fills = []
        self.entry = None

    def notify_order(self, order):
        if order.status == order.Completed:
            self.fills.append((order.ref, order.isbuy(), order.executed.size, order.executed.price,
                               order.executed.comm))
            if order.isbuy():
                price = order.executed.price
                self.sell(exectype=bt.Order.Limit, price=price * 1.002, oco=None)
                self.sell(exectype=bt.Order.Stop, price=price * 0.997)

    def next(self):
        if not self.position and not any(o.alive() for o in self.broker.get_orders_open()):
            self.buy(exectype=bt.Order.Stop, price=self.high[0] * 1.0005, valid=datetime.timedelta(minutes=10))
        elif self.position and len(self) % 50 == 0:
            for order in self.broker.get_orders_open():
                self.cancel(order)
            self.close()


def plain_run(strategy, bars, cash, commission, sizer=None, **params):
    cerebro = bt.Cerebro()
    for symbol, frame in bars.items():
        cerebro.adddata(bt.feeds.PandasData(dataname=frame), name=symbol)
    cerebro.broker.setcash(cash)
    cerebro.broker.setcommission(commission=commission)
    if sizer:
        cerebro.addsizer(sizer[0], **sizer[1])
    cerebro.addstrategy(strategy, **params)
    strat = cerebro.run()[0]
    return cerebro.broker.getvalue(), strat.fills


def fk_fills(res):
    done = res.orders[res.orders.status == "filled"]
    return [(int(r.ref), r.side == "buy", r.executed_size, r.executed_price, r.commission) for r in done.itertuples()]


def test_date2num_matches_backtrader_bit_for_bit(minute_bars):
    index = minute_bars["AAPL"].index
    expected = np.array([bt.date2num(t.to_pydatetime()) for t in index])
    assert np.array_equal(date2num(index), expected)


@pytest.mark.parametrize("strategy,sizer,params", [
    (PlainSmaCross, None, {"fast": 5, "slow": 20}),
    (PlainBreakout, (bt.sizers.PercentSizer, {"percents": 20}), {"lookback": 15}),
])
def test_parity_with_plain_backtrader(farm_home, minute_bars, strategy, sizer, params):
    bars = fk.Bars(AAPL=minute_bars["AAPL"])
    value, fills = plain_run(strategy, bars, 50_000, 0.001, sizer, **params)
    res = fk.backtest(strategy, bars, cash=50_000, commission=0.001, sizer=sizer[0] if sizer else None,
                      sizer_params=sizer[1] if sizer else None, **params)
    assert len(fills) > 10
    assert res.final_value == pytest.approx(value, rel=0, abs=1e-9)
    # Order refs come from one counter per process: compare them relative to the run's first order.
    assert relative(fk_fills(res)) == relative(fills)


def relative(fills):
    first = min(f[0] for f in fills)
    return sorted((f[0] - first, *f[1:]) for f in fills)


class TrackedCross(fk.Strategy):
    params = dict(fast=5, slow=20)

    def __init__(self):
        self.fast, self.slow = bt.ind.SMA(period=self.p.fast), bt.ind.SMA(period=self.p.slow)
        self.cross = bt.ind.CrossOver(self.fast, self.slow)
        self.track(fast=self.fast, slow=self.slow)

    def next(self):
        self.track(bars_seen=len(self))
        if self.cross > 0:
            self.buy(size=10, reason="fast above slow", confidence=0.6, signals={"fast": self.fast[0]})
        elif self.cross < 0 and self.position:
            self.close(reason="fast below slow")


class MutatingState(fk.Strategy):
    """Tracks a dict and a list once, then changes them in place on every bar."""

    def start(self):
        self.state, self.closes = {"bars": 0}, []
        self.track(state=self.state, closes=self.closes)

    def next(self):
        self.state["bars"] += 1
        self.closes.append(round(self.data.close[0], 4))
        del self.closes[:-2]
        self.condition("close above 0", self.data.close[0], ">", 0)


def test_a_tracked_value_changed_in_place_is_recorded_as_it_was_at_each_bar(farm_home, minute_bars):
    frame = minute_bars["AAPL"].iloc[:30]
    res = fk.backtest(MutatingState, fk.Bars(AAPL=frame))
    tracked = [json.loads(s)["tracked"] for s in fk.fmel.load(res.run_id).strategy_state]
    assert [t["state"]["bars"] for t in tracked] == list(range(1, 31))
    closes = [round(c, 4) for c in frame.close]
    assert [t["closes"] for t in tracked] == [closes[max(0, k - 1):k + 1] for k in range(30)]
    assert all(t["conditions"]["close above 0"]["met"] for t in tracked)


def test_fmel_has_one_complete_record_per_bar(farm_home, minute_bars):
    res = fk.backtest(TrackedCross, minute_bars, cash=100_000, commission=0.0005)
    records = fk.fmel.load(res.run_id)
    n = len(minute_bars["AAPL"])
    assert list(records.bar_number) == list(range(n))
    assert records.record_id.is_unique and records.record_id.iloc[3] == f"{res.run_id}:3"
    assert (records.timestamp.to_numpy() == minute_bars["AAPL"].index.to_numpy()).all()
    assert list(records.columns) == schema.names("fmel")

    row = records.iloc[100]
    market = json.loads(row.market_state)
    assert market["MSFT"]["close"] == minute_bars["MSFT"]["close"].iloc[100]
    state = json.loads(row.strategy_state)
    closes = minute_bars["AAPL"]["close"].to_numpy()
    assert state["tracked"]["slow"] == pytest.approx(closes[81:101].mean())
    assert state["tracked"]["bars_seen"] == 101
    early = json.loads(records.iloc[2].strategy_state)["tracked"]
    assert early["slow"] is None  # not yet defined during warm-up: null, not NaN

    decisions = records.decisions.map(json.loads)
    buys = [b for b, ds in enumerate(decisions) if ds[0]["action"] == "buy"]
    holds = sum(ds[0]["action"] == "hold" for ds in decisions)
    assert buys and holds == n - sum(ds[0]["action"] != "hold" for ds in decisions)
    first = decisions[buys[0]][0]
    assert first["reason"] == "fast above slow" and first["confidence"] == 0.6
    # The order is filled at the next bar's open, and that bar's actions say so.
    actions = json.loads(records.actions.iloc[buys[0] + 1])
    fill = [a for a in actions if a["event"] == "filled"][0]
    assert fill["fill_price"] == minute_bars["AAPL"]["open"].iloc[buys[0] + 1]
    perf = json.loads(records.performance.iloc[-1])
    assert perf["equity"] == pytest.approx(res.final_value)
    position_after = json.loads(records.strategy_state.iloc[buys[0] + 1])["positions"]["AAPL"]
    assert position_after == 10


def test_plain_strategy_records_orders_and_performance(farm_home, minute_bars):
    res = fk.backtest(PlainSmaCross, fk.Bars(AAPL=minute_bars["AAPL"]), cash=10_000)
    records = res.fmel
    assert len(records) == len(minute_bars["AAPL"])
    events = [a["event"] for acts in records.actions.map(json.loads) for a in acts]
    assert events.count("filled") == len(res.orders[res.orders.status == "filled"]) > 0


def test_plain_dataframe_and_dict_inputs(farm_home, minute_bars):
    frame = minute_bars["AAPL"]
    one = fk.backtest(PlainSmaCross, frame, cash=10_000)
    two = fk.backtest(PlainSmaCross, {"X": frame}, cash=10_000)
    assert one.final_value == two.final_value
    assert list(two.positions.columns) == ["X"]
    naive = frame.tz_convert(None)
    with pytest.raises(fk.DataError, match="no timezone"):
        fk.backtest(PlainSmaCross, naive)
    three = fk.backtest(PlainSmaCross, naive, tz="UTC", cash=10_000)
    assert three.final_value == one.final_value


class Exploding(fk.Strategy):
    def next(self):
        if len(self) == 42:
            raise ZeroDivisionError("boom at 42")


def test_strategy_that_raises_is_recorded(farm_home, minute_bars):
    with pytest.raises(fk.StrategyError, match="ZeroDivisionError: boom at 42 at bar 41") as info:
        fk.backtest(Exploding, minute_bars)
    err = info.value
    run = fk.runs().set_index("run_id").loc[err.run_id]
    assert run.status == "failed" and run.failed_bar == 41 and "boom at 42" in run.error
    records = fk.fmel.load(err.run_id)
    assert list(records.bar_number) == list(range(42))
    last = json.loads(records.decisions.iloc[-1])
    assert last[-1]["action"] == "error" and "Traceback" in last[-1]["traceback"]


def test_invalid_parameters_fail_before_the_run(farm_home, minute_bars):
    with pytest.raises(fk.ParameterError, match="no parameter.*fsat.*fast=5"):
        fk.backtest(TrackedCross, minute_bars, fsat=3)
    with pytest.raises(fk.ParameterError, match="fast expects int"):
        fk.backtest(TrackedCross, minute_bars, fast="5")
    assert fk.runs().empty


def test_run_registry_records_the_run(farm_home, minute_bars):
    res = fk.backtest(TrackedCross, minute_bars, fast=3)
    run = fk.runs().set_index("run_id").loc[res.run_id]
    assert run.status == "done" and run.params == {"fast": 3} and run.strategy == "TrackedCross"
    assert run.data_fingerprint == minute_bars.fingerprint() and len(run.code_hash) == 16
    assert run.metrics["total_return"] == pytest.approx(res.metrics["total_return"])
    assert run.bars == len(minute_bars["AAPL"])


def test_tearsheet_of_a_real_run_marks_every_fill(farm_home, minute_bars):
    res = fk.backtest(TrackedCross, minute_bars)
    fig = res.plot()
    names = {trace.name: trace for trace in fig.data}
    filled = res.orders[(res.orders.status == "filled") & (res.orders.symbol == "AAPL")]
    assert len(names["AAPL buys"].x) == (filled.side == "buy").sum() > 0
    assert len(names["AAPL sells"].x) == (filled.side == "sell").sum() > 0
    # the tracked SMAs are drawn on the price, as backtrader computed them
    np.testing.assert_allclose(names["fast"].y[-1], res.indicators["fast"].iloc[-1])
    assert res.indicator_symbols == {"fast": "AAPL", "slow": "AAPL"}
    assert {"alpha", "beta", "information_ratio"} <= set(res.metrics.index)
    path = res.to_html()
    assert path == farm_home.home / "runs" / res.run_id / "tearsheet.html" and path.stat().st_size < 1_000_000
    assert list((farm_home.home / "runs").glob("plotly-*.min.js"))   # the bundle every run's page shares


class Interrupted(fk.Strategy):
    def next(self):
        if len(self) == 10:
            raise KeyboardInterrupt


def test_ctrl_c_keeps_the_fmel_recorded_so_far(farm_home, minute_bars):
    with pytest.raises(KeyboardInterrupt):
        fk.backtest(Interrupted, minute_bars)
    run = fk.runs().iloc[-1]
    assert run.status == "interrupted" and run.bars == 9
    assert len(fk.fmel.load(run.run_id)) == 9


def test_every_backtest_is_a_trial_of_its_family(farm_home):
    bars = fk.data.synthetic("AAPL", days=12, seed=3)
    first = fk.backtest(TrackedCross, bars, fast=3)
    second = fk.backtest(TrackedCross, bars, fast=7)
    other = fk.backtest(PlainSmaCross, bars)
    assert first.metrics["trials"] == 1 and second.metrics["trials"] == 2 and other.metrics["trials"] == 1
    # One trial: nothing was selected, so the deflated Sharpe is the probabilistic one.
    assert first.metrics["dsr"] == pytest.approx(first.metrics["psr"])
    assert 0.0 <= second.metrics["dsr"] <= 1.0 and 0.0 <= second.metrics["psr"] <= 1.0
    assert second.metrics["dsr"] <= second.metrics["psr"] + 1e-12  # deflating never helps


class BrokenInit(fk.Strategy):
    def __init__(self):
        raise ValueError("bad setup")


class BrokenStart(fk.Strategy):
    def start(self):
        raise ValueError("bad start")


@pytest.mark.parametrize("strategy,message", [(BrokenInit, "bad setup"), (BrokenStart, "bad start")])
def test_strategy_failing_before_its_first_bar_says_so(farm_home, minute_bars, strategy, message):
    with pytest.raises(fk.StrategyError, match=f"ValueError: {message} before the first bar"):
        fk.backtest(strategy, minute_bars)
    run = fk.runs().iloc[-1]
    assert run.status == "failed" and message in run.error and run.bars == 0


def test_code_hash_is_stable_for_notebook_style_classes_and_changes_with_the_code():
    from farmkit.kernel import code_hash
    source = ("import farmkit as fk\nclass S(fk.Strategy):\n    params = dict(n=3)\n"
              "    def next(self):\n        return {}\n")
    hashes = []
    for body in ("1", "1", "2"):
        namespace = {"__name__": "__main__"}
        exec(compile(source.replace("{}", body), f"<cell-{len(hashes)}>", "exec"), namespace)
        hashes.append(code_hash(namespace["S"]))
    assert hashes[0] == hashes[1] != hashes[2]


def test_a_resumed_run_starts_with_a_clean_row(farm_home, minute_bars):
    from farmkit.fmel.stores import open_store
    from farmkit.kernel import Run

    with pytest.raises(fk.StrategyError) as info:
        fk.backtest(Exploding, minute_bars)
    run_id = info.value.run_id
    store = open_store(farm_home.store)
    before = store.runs.get(run_id)
    assert before["status"] == "failed" and before["error"] and before["failed_bar"] == 41
    again = Run(Exploding, {}, mode="paper", broker=None, settings=farm_home, store=store,
                agent_id=before["agent_id"], run_id=run_id)
    again.register(data_fingerprint=None)
    row = store.runs.get(run_id)
    assert row["status"] == "running"
    assert row["error"] is None and row["failed_bar"] is None and pd.isna(row["finished_at"])


class LeaksItsKey(fk.Strategy):
    def next(self):
        import os
        if len(self) == 5:
            raise RuntimeError(f"Alpaca refused key {os.environ['APCA_API_SECRET_KEY']}")


def test_a_credential_in_a_strategys_error_never_reaches_fmel_or_the_registry(farm_home, minute_bars, monkeypatch):
    secret = "sk-live-8f3a0c9e71d24b55"
    monkeypatch.setenv("APCA_API_SECRET_KEY", secret)
    with pytest.raises(fk.StrategyError) as info:
        fk.backtest(LeaksItsKey, minute_bars)
    assert secret not in str(info.value) and "***" in str(info.value)
    run = fk.runs().set_index("run_id").loc[info.value.run_id]
    assert secret not in run.error and "***" in run.error
    records = fk.fmel.load(info.value.run_id)
    assert not any(secret in str(v) for v in records.astype(str).to_numpy().ravel())


def test_a_credential_in_a_failing_notebook_cell_never_reaches_the_registry(farm_home, monkeypatch, tmp_path):
    from papermill.exceptions import PapermillExecutionError

    from farmkit.fmel.stores import open_store
    from farmkit.research import notebooks

    secret = "sk-live-8f3a0c9e71d24b55"
    monkeypatch.setenv("APCA_API_SECRET_KEY", secret)
    store = open_store(farm_home.store)
    run_id, _, started = notebooks._register(store, tmp_path / "x.ipynb", {}, None)
    failure = PapermillExecutionError(3, 3, "raise RuntimeError(key)", "RuntimeError", f"refused {secret}", [])
    message = notebooks._cell_failed(store, run_id, tmp_path / "x.ipynb", started, failure)
    row = store.runs.get(run_id)
    assert secret not in message and secret not in row["error"] and "refused ***" in row["error"]
