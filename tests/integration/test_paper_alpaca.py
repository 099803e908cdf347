"""A paper run on Alpaca's side of things, against the local Alpaca server with the real alpaca-py:
warm-up from Alpaca's historical REST API, and orders through the alpaca-paper:// broker."""

import json

import pandas as pd
import pytest

import farmkit as fk
from farmkit.brokers.alpaca_paper import client_order_id
from farmkit.bus import open_bus
from farmkit.data.bars import Bars
from farmkit.live.session import paper
from farmkit.live.warmup import warmup_history
from tests.alpaca_server import AlpacaServer
from tests.integration.test_paper import bars_of
from tests.integration.test_runner import publish_on_start
from tests.unit.test_engine import TrackedCross

pytest.importorskip("alpaca", reason="the alpaca extra is not installed: pip install 'thefarm[alpaca]'")

BARS = fk.data.synthetic(["AAPL", "MSFT"], start="2024-03-04", days=3, seed=21)
NOW = BARS["AAPL"].index[779] + pd.Timedelta(minutes=1)      # the end of the second day


@pytest.fixture
def server(monkeypatch):
    with AlpacaServer(stock_bars={s: f[f.index < NOW] for s, f in BARS.items()}, page_size=200,
                      prices={"AAPL": 100.0, "MSFT": 100.0}) as srv:
        for key, value in srv.environ.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("APCA_API_DATA_URL", srv.url)
        monkeypatch.setenv("APCA_API_BASE_URL", srv.url)
        yield srv


def test_warm_up_takes_the_latest_bars_from_alpaca(farm_home, server):
    history = warmup_history("alpaca", ["AAPL", "MSFT"], 120, now=NOW)
    for symbol in ("AAPL", "MSFT"):
        expected = BARS[symbol][BARS[symbol].index < NOW].iloc[-120:]
        assert list(history[symbol].index) == list(expected.index)
        assert history[symbol]["close"].to_numpy() == pytest.approx(expected["close"].to_numpy())
    assert server.requests_to("/v2/stocks/bars"), "the bars came from the server"


def test_a_paper_run_warmed_up_on_alpaca_trades_through_alpacas_paper_api(farm_home, server):
    history = warmup_history("alpaca", ["AAPL"], 60, now=NOW)
    live = BARS["AAPL"][BARS["AAPL"].index >= NOW].iloc[:200]
    bus = open_bus("memory://")
    res = paper(TrackedCross, ["AAPL"], bus=bus, history=history, broker_url="alpaca-paper://",
                on_start=publish_on_start(bus, bars_of(live, "AAPL")), max_bars=260, duration=120)
    records = fk.fmel.load(res.run_id)
    assert list(records.bar_number) == list(range(260))
    assert list(records.timestamp) == list(history["AAPL"].index) + list(live.index)

    actions = [a for x in records.actions for a in json.loads(x)]
    submitted = [a for a in actions if a["event"] == "submitted"]
    orders = server.orders if isinstance(server.orders, list) else list(server.orders.values())
    assert submitted and len(orders) == len(submitted), "one Alpaca order per decision, none twice"
    assert sorted(o["client_order_id"] for o in orders) == sorted(
        client_order_id(res.run_id, n) for n in range(1, len(orders) + 1))
    filled = [a for a in actions if a["event"] in ("filled", "completed")]
    assert filled, "Alpaca's fills came back into backtrader's order notifications"

    # Same decisions as a backtest on the bars the run saw: the broker changes who fills, not what is decided.
    reference = fk.backtest(TrackedCross, Bars({"AAPL": pd.concat([history["AAPL"], live])}))
    decided = [[(d["action"], d.get("size")) for d in json.loads(x)] for x in records.decisions]
    expected = [[(d["action"], d.get("size")) for d in json.loads(x)] for x in fk.fmel.load(reference.run_id).decisions]
    assert decided == expected
    # The account on Alpaca's side agrees with the strategy's position at the end.
    bought = sum(d[1] or 0 for bar in decided for d in bar if d[0] == "buy")
    closed = sum(-(d[1] or 0) for bar in decided for d in bar if d[0] == "close")
    assert bought > 0 and closed > 0
    assert server.positions.get("AAPL", {}).get("qty", 0) == pytest.approx(bought - closed)
