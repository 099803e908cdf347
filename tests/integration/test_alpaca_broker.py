"""AlpacaPaperBroker through the real alpaca-py client against the local Alpaca-protocol server on loopback."""

import backtrader as bt
import pandas as pd
import pytest

import farmkit as fk
from farmkit.brokers import open_broker
from farmkit.brokers.alpaca_paper import AlpacaPaperBroker, client_order_id
from farmkit.brokers import BrokerConfig
from farmkit.errors import MissingCredentials
from tests.alpaca_server import AlpacaServer

ORDERS = "/v2/orders"
LOOKUP = "/v2/orders:by_client_order_id"


@pytest.fixture(scope="module")
def server():
    with AlpacaServer(prices={"AAPL": 100.0, "MSFT": 400.0}) as srv:
        yield srv


@pytest.fixture(autouse=True)
def clean(server):
    server.reset()
    server.auto_fill, server.prices = True, {"AAPL": 100.0, "MSFT": 400.0}


def make_broker(server, run_id="run-1", **kwargs):
    kwargs = {"poll_interval": 0.0, "retry_wait": 0.0, "timeout": 2.0, **kwargs}
    broker = AlpacaPaperBroker.from_env(run_id, environ=server.environ, url_override=server.url, **kwargs)
    broker.start()
    return broker


def feed(symbol="AAPL", close=100.0):
    """A backtrader feed with one loaded bar, which is what backtrader orders need to be created."""
    frame = pd.DataFrame({"open": [close], "high": [close], "low": [close], "close": [close], "volume": [1.0]},
                         index=pd.DatetimeIndex([pd.Timestamp("2024-01-02 14:30")]))
    data = bt.feeds.PandasData(dataname=frame, name=symbol)
    bt.Cerebro().adddata(data)
    data._start()
    data.load()
    return data


def drain(broker):
    """Poll once and return the notifications as (status name, executed size, executed price)."""
    broker.next()
    out = []
    while broker.notifs:
        order = broker.notifs.popleft()
        if order is not None:
            out.append((order.getstatusname(), order.executed.size, round(order.executed.price, 6)))
    return out


def test_market_order_is_accepted_then_filled_with_price_and_size(server):
    broker = make_broker(server)
    order = broker.buy(None, feed(), 10)

    assert drain(broker) == [("Submitted", 0, 0), ("Accepted", 0, 0), ("Completed", 10, 100.0)]
    assert broker.getposition(order.data).size == 10 and broker.getposition(order.data).price == 100.0
    assert broker.getcash() == pytest.approx(100_000 - 1_000) and broker.getvalue() == pytest.approx(100_000)
    sent = server.requests_to(ORDERS)[0].body
    assert sent == {"symbol": "AAPL", "qty": 10.0, "side": "buy", "type": "market", "time_in_force": "day",
                    "client_order_id": "run-1-1"}
    assert order.executed.comm == 0


def test_partial_then_complete_fill_and_a_sell(server):
    server.auto_fill = False
    broker = make_broker(server)
    data = feed()
    order = broker.buy(None, data, 10)
    assert drain(broker) == [("Submitted", 0, 0), ("Accepted", 0, 0)]

    alpaca_id = order.info["alpaca_id"]
    server.fill(alpaca_id, 4, 100.0)
    assert drain(broker) == [("Partial", 4, 100.0)]
    server.fill(alpaca_id, 6, 102.0)
    assert drain(broker) == [("Completed", 10, 101.2)]
    assert broker.getposition(data).size == 10 and broker.getposition(data).price == pytest.approx(101.2)
    assert drain(broker) == []                      # nothing new, nothing notified twice

    server.auto_fill = True
    sell = broker.sell(None, data, 15, exectype=bt.Order.Limit, price=99.0)   # marketable: fills at 100
    assert drain(broker)[-1] == ("Completed", -15, 100.0)
    assert broker.getposition(data).size == -5 and sell.executed.pnl == pytest.approx(10 * (100 - 101.2))
    assert server.requests_to(ORDERS)[-1].body["limit_price"] == 99.0


def test_cancel_and_expiry_are_notified(server):
    server.auto_fill = False
    broker = make_broker(server)
    data = feed()
    resting = broker.buy(None, data, 5, exectype=bt.Order.Limit, price=95.0)
    other = broker.sell(None, data, 5, exectype=bt.Order.Stop, price=90.0)
    drain(broker)

    broker.cancel(resting)
    server.set_status(other.info["alpaca_id"], "expired")
    assert sorted(drain(broker)) == [("Canceled", 0, 0), ("Expired", 0, 0)]
    assert server.orders[resting.info["alpaca_id"]]["status"] == "canceled"
    assert [r.method for r in server.requests if r.path.startswith(ORDERS + "/")] == ["DELETE"]


def test_client_order_id_is_deterministic_and_within_alpacas_limit(server):
    assert client_order_id("run-1", 7) == "run-1-7"
    long_id = "paper-" + "x" * 60
    assert client_order_id(long_id, 12) == client_order_id(long_id, 12)
    assert len(client_order_id(long_id, 10**6)) <= 48 and client_order_id(long_id, 1) != client_order_id(long_id, 2)

    broker = make_broker(server, run_id="sess-42")
    data = feed()
    orders = [broker.buy(None, data, 1), broker.sell(None, data, 1)]
    assert [o.info["client_order_id"] for o in orders] == ["sess-42-1", "sess-42-2"]
    assert sorted(o["client_order_id"] for o in server.orders.values()) == ["sess-42-1", "sess-42-2"]


def test_a_504_before_the_order_is_made_is_retried_once_into_one_order(server):
    server.fail_next(ORDERS, 504, method="POST")
    broker = make_broker(server)
    broker.buy(None, feed(), 3)

    assert len(server.orders) == 1 and len(server.requests_to(ORDERS)) == 2
    assert drain(broker)[-1] == ("Completed", 3, 100.0)


def test_a_lost_504_answer_is_adopted_not_duplicated(server):
    # Alpaca made the order but the answer was lost: the retry must find it, not place a second one.
    server.fail_next(ORDERS, 504, method="POST", after=True)
    broker = make_broker(server)
    order = broker.buy(None, feed(), 3)

    assert len(server.orders) == 1 and len(server.requests_to(ORDERS)) == 1
    assert [r.query["client_order_id"] for r in server.requests_to(LOOKUP)] == ["run-1-1", "run-1-1"]
    assert drain(broker) == [("Submitted", 0, 0), ("Accepted", 0, 0), ("Completed", 3, 100.0)]
    assert broker.getposition(order.data).size == 3


def test_a_timed_out_submit_is_adopted_not_duplicated(server):
    server.fail_next(ORDERS, None, method="POST", delay=1.0)      # answered after the client gave up
    broker = make_broker(server, timeout=0.3)
    order = broker.buy(None, feed(), 2)

    assert len(server.orders) == 1 and order.info["alpaca_id"] in server.orders
    assert drain(broker)[-1] == ("Completed", 2, 100.0)


def test_when_every_attempt_fails_the_next_poll_places_it_exactly_once(server):
    server.fail_next(ORDERS, 503, method="POST", times=3)
    broker = make_broker(server, submit_attempts=3)
    order = broker.buy(None, feed(), 1)
    assert server.orders == {} and drain(broker)[-1] == ("Completed", 1, 100.0)
    assert len(server.orders) == 1 and order.status == order.Completed


def test_a_restarted_broker_adopts_its_orders_instead_of_resubmitting(server):
    server.auto_fill = False
    first = make_broker(server, run_id="paper-7")
    data = feed()
    first.buy(None, data, 4)                       # resting when the process "dies"
    filled = first.buy(None, data, 6)
    server.fill(filled.info["alpaca_id"], 6, 101.0)
    posts = len(server.requests_to(ORDERS))

    second = make_broker(server, run_id="paper-7")  # a new process: positions from Alpaca
    assert second.getposition(data).size == 6
    again = [second.buy(None, data, 4), second.buy(None, data, 6)]

    assert len(server.requests_to(ORDERS)) == posts == 2 and len(server.orders) == 2
    assert [o.info["alpaca_id"] for o in again] == [o["id"] for o in server.orders.values()]
    notes = drain(second)
    assert ("Completed", 6, 101.0) in notes and notes.count(("Accepted", 0, 0)) == 2
    assert second.getposition(data).size == 6      # the adopted fill is not counted twice
    server.fill(again[0].info["alpaca_id"], 4, 99.0)
    assert drain(second) == [("Completed", 4, 99.0)] and second.getposition(data).size == 10


def test_an_id_that_names_a_different_order_is_refused(server):
    make_broker(server, run_id="paper-8").buy(None, feed(), 4)
    clash = make_broker(server, run_id="paper-8").buy(None, feed("MSFT"), 4)
    assert clash.status == clash.Rejected and "new run id" in clash.info["error"]
    assert len(server.orders) == 1


def test_alpaca_refusal_rejects_the_order_with_alpacas_message(server):
    broker = make_broker(server)
    order = broker.buy(None, feed(), 10_000)         # $1M with $100k cash
    assert drain(broker) == [("Submitted", 0, 0), ("Rejected", 0, 0)]
    assert "insufficient buying power" in order.info["error"] and "403" in order.info["error"]


def test_unsupported_order_types_are_refused_before_anything_is_sent(server):
    broker = make_broker(server)
    with pytest.raises(ValueError, match="Market, Limit, Stop and StopLimit"):
        broker.buy(None, feed(), 1, exectype=bt.Order.StopTrail, trailamount=1.0)
    assert server.requests_to(ORDERS) == []


def test_missing_keys_name_both_variables(server):
    with pytest.raises(MissingCredentials) as info:
        AlpacaPaperBroker.from_env("run-1", environ={}, url_override=server.url)
    assert "APCA_API_KEY_ID and APCA_API_SECRET_KEY are not set" in str(info.value)
    with pytest.raises(MissingCredentials, match="APCA_API_SECRET_KEY is not set"):
        open_broker("alpaca-paper://", BrokerConfig(), environ={"APCA_API_KEY_ID": "k"}, run_id="r")
    assert server.requests == []


class BuyOnceThenSell(bt.Strategy):
    def __init__(self):
        self.seen = []

    def next(self):
        if len(self) == 2:
            self.buy(size=5)
        elif len(self) == 4:
            self.close()

    def notify_order(self, order):
        self.seen.append((order.getstatusname(), order.executed.size, order.executed.price))


def test_a_cerebro_run_through_open_broker(server):
    environ = {**server.environ, "APCA_API_BASE_URL": server.url}
    broker = open_broker("alpaca-paper://", BrokerConfig(), environ=environ, run_id="cerebro-1")
    broker.poll_interval = 0.0
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(bt.feeds.PandasData(dataname=fk.data.synthetic("AAPL", days=1)["AAPL"].iloc[:6].tz_localize(None),
                                        name="AAPL"))
    cerebro.setbroker(broker)
    cerebro.addstrategy(BuyOnceThenSell)
    strat = cerebro.run()[0]

    assert [s for s in strat.seen if s[0] == "Completed"] == [("Completed", 5, 100.0), ("Completed", -5, 100.0)]
    assert sorted(o["client_order_id"] for o in server.orders.values()) == ["cerebro-1-1", "cerebro-1-2"]
    assert broker.getposition(strat.data).size == 0


def test_polls_are_rate_limited_and_a_failed_poll_does_not_stop_the_loop(server):
    now = [0.0]
    broker = make_broker(server, poll_interval=5.0, clock=lambda: now[0])
    server.auto_fill = False
    order = broker.buy(None, feed(), 1)
    before = len(server.requests)
    broker.next()
    assert len(server.requests) == before + 2           # a poll: the orders list and the account
    server.fill(order.info["alpaca_id"], 1, 100.0)
    now[0] = 4.9
    broker.next()
    assert len(server.requests) == before + 2 and order.status == order.Accepted

    now[0] = 5.0
    server.fail_next("/v2/orders", 500, method="GET")
    broker.next()
    assert broker.poll_errors == 1 and order.status == order.Accepted
    now[0] = 10.0
    broker.next()
    assert order.status == order.Completed and broker.poll_errors == 1
