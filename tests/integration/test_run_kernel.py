"""One run kernel: a paper pod runs the notebook's whole broker model, strategy parameters never mix
with a session's options, and a backtest on too few bars says how many it needs."""

import inspect
import json

import backtrader as bt
import pandas as pd
import pytest

import farmkit as fk
from farmkit.brokers import BrokerConfig
from farmkit.bus import open_bus
from farmkit.errors import DataError, ShadowedParameter


class Crossing(fk.Strategy):
    """Market orders on SMA crosses, sized by the sizer; tracks its parameters so a test can see them."""

    params = dict(fast=5, slow=20, duration=1.5, history=3)

    def __init__(self):
        self.cross = bt.ind.CrossOver(bt.ind.SMA(period=self.p.fast), bt.ind.SMA(period=self.p.slow))
        self.track(duration=self.p.duration, history=self.p.history)

    def next(self):
        if self.cross > 0:
            self.buy(reason="up")
        elif self.cross < 0 and self.position:
            self.close(reason="down")


BROKER = dict(cash=50_000.0, commission=0.001, slippage_perc=0.002, coc=True, sizer=bt.sizers.FixedSize,
              sizer_params={"stake": 7})


def _pod(monkeypatch, replay_file, speed=20_000):
    monkeypatch.setenv("FARM_MODE", "paper")
    monkeypatch.setenv("FARM_BUS", "memory://")
    monkeypatch.setenv("FARM_REPLAY", str(replay_file))
    monkeypatch.setenv("FARM_REPLAY_SPEED", str(speed))
    monkeypatch.setenv("FARM_AGENT_ID", "crossing")


def _fills(res):
    done = res.orders[res.orders.executed_size.fillna(0) != 0]
    return [(r.side, r.executed_size, r.executed_price, r.commission) for r in done.itertuples()]


def _decisions(res):
    return [[(d["action"], d.get("size")) for d in json.loads(x)] for x in res.fmel.decisions]


@pytest.fixture
def day(tmp_path):
    data = fk.data.synthetic("AAPL", days=1, seed=11)["AAPL"]
    live = tmp_path / "live.csv"
    data.iloc[150:].rename_axis("timestamp").reset_index().to_csv(live, index=False)
    return data, live


def test_a_paper_pod_trades_on_the_notebooks_whole_broker_model(farm_home, monkeypatch, day):
    data, live = day
    reference = fk.backtest(Crossing, {"AAPL": data}, **BROKER)
    assert len(_fills(reference)) >= 4         # the model is exercised: slipped, close-filled, sized fills

    _pod(monkeypatch, live)
    res = fk.backtest(Crossing, {"AAPL": data}, **BROKER)
    assert fk.runs().set_index("run_id").loc[res.run_id, "mode"] == "paper"
    assert res.broker == BrokerConfig(**BROKER)
    assert len(res.fmel) == len(data)
    assert _decisions(res) == _decisions(reference)
    assert _fills(res) == _fills(reference)
    assert res.final_value == reference.final_value


def test_strategy_parameters_named_like_session_options_reach_the_strategy(farm_home, monkeypatch, day):
    data, live = day
    _pod(monkeypatch, live)
    # `duration` was taken as the session's run time (the session stopped at once) and `history`
    # clashed with the warm-up keyword.
    res = fk.backtest(Crossing, {"AAPL": data}, duration=0.01, history=7)
    tracked = json.loads(res.fmel.strategy_state.iloc[-1])["tracked"]
    assert tracked == {"duration": 0.01, "history": 7}
    assert len(res.fmel) == len(data)


def test_a_session_option_shadowing_a_strategy_parameter_is_said(farm_home, day):
    data, _ = day
    bus = open_bus("memory://")
    with pytest.warns(ShadowedParameter, match="params=\\{'duration'"):
        fk.paper(Crossing, ["AAPL"], bus=bus, history={"AAPL": data.iloc[:60]}, duration=0.2)
    bus.close()


def test_the_paper_feed_takes_the_bar_size_of_its_history(farm_home):
    five = {"AAPL": fk.data.synthetic("AAPL", days=2, seed=3)["AAPL"].iloc[::5]}
    seen = {}
    bus = open_bus("memory://")
    fk.paper(Crossing, ["AAPL"], bus=bus, history=five, duration=0.3,
             on_start=lambda session: seen.update(
                 {s: (f.p.timeframe, f.p.compression) for s, f in session.feeds.items()}))
    bus.close()
    assert seen == {"AAPL": (bt.TimeFrame.Minutes, 5)}


@pytest.mark.parametrize("runonce", [True, False], ids=["runonce", "next-mode"])
def test_too_few_bars_say_how_many_the_strategy_needs(farm_home, runonce):
    short = fk.data.synthetic("AAPL", days=1, seed=2)["AAPL"].iloc[:12]
    with pytest.raises(DataError, match=r"Crossing needs 21 bars of AAPL and got 12") as caught:
        fk.backtest(Crossing, {"AAPL": short}, runonce=runonce)
    run = fk.runs().iloc[-1]
    assert run.status == "failed" and "needs 21 bars of AAPL and got 12" in run.error
    assert "IndexError" not in str(caught.value)


def test_broker_keywords_default_to_backtraders():
    slip = inspect.signature(bt.brokers.BackBroker.set_slippage_perc).parameters
    fixed = inspect.signature(bt.brokers.BackBroker.set_slippage_fixed).parameters
    options = inspect.signature(fk.backtest).parameters
    for name in ("slip_open", "slip_limit", "slip_match", "slip_out"):
        assert options[name].default == slip[name].default == fixed[name].default, name
        assert getattr(BrokerConfig(), name) == slip[name].default, name
    cerebro = bt.Cerebro.params
    for name in ("runonce", "preload", "exactbars"):
        assert options[name].default == dict(cerebro._gettuple())[name], name


def test_fills_with_slippage_match_plain_backtrader(farm_home):
    data = fk.data.synthetic("AAPL", days=1, seed=11)["AAPL"]
    res = fk.backtest(Crossing, {"AAPL": data}, cash=50_000.0, slippage_fixed=0.05)

    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(bt.feeds.PandasData(dataname=data.tz_localize(None)), name="AAPL")
    cerebro.broker.setcash(50_000.0)
    cerebro.broker.set_slippage_fixed(0.05)
    fills = []

    class Logged(Crossing):
        def notify_order(self, order):
            if order.executed.size:
                fills.append(("buy" if order.isbuy() else "sell", order.executed.size, order.executed.price,
                              order.executed.comm))

    cerebro.addstrategy(Logged)
    cerebro.run()
    assert _fills(res) == fills and res.final_value == pytest.approx(cerebro.broker.getvalue(), abs=0)
    assert pd.Index(res.equity.index).is_monotonic_increasing


def test_a_paper_session_beats_for_readers_on_other_machines(farm_home, day):
    data, _ = day
    bus = open_bus("memory://")
    res = fk.paper(Crossing, ["AAPL"], bus=bus, history={"AAPL": data.iloc[:60]}, duration=0.3)
    bus.close()
    row = fk.fmel.stores.open_store(farm_home.store).runs.get(res.run_id)
    assert row["status"] == "done" and pd.notna(row["heartbeat_at"])
