"""The alpaca-paper:// broker reconciles with the account on start and resume, and keeps one virtual
sub-account per run on a shared account. Real alpaca-py against the local Alpaca-protocol server."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import backtrader as bt
import pytest

import farmkit as fk
from farmkit.brokers.alpaca_paper import AlpacaPaperBroker, client_order_id
from farmkit.live import checkpoint
from farmkit.live.checkpoint import Checkpoint
from tests.alpaca_server import AlpacaServer
from tests.integration import resting_orders_run as scenario
from tests.integration.test_alpaca_broker import drain, feed
from tests.integration.test_runner import eventually

pytest.importorskip("alpaca", reason="the alpaca extra is not installed: pip install 'thefarm[alpaca]'")

REPO = Path(__file__).resolve().parents[2]
ORDERS = "/v2/orders"


@pytest.fixture(scope="module")
def server():
    with AlpacaServer(cash=1_000_000.0) as srv:
        yield srv


@pytest.fixture(autouse=True)
def clean(server):
    server.reset()
    server.auto_fill, server.prices = True, {"AAPL": 100.0, "MSFT": 400.0}


def make_broker(server, run_id, **kwargs):
    kwargs = {"poll_interval": 0.0, "retry_wait": 0.0, "timeout": 2.0, **kwargs}
    broker = AlpacaPaperBroker.from_env(run_id, environ=server.environ, url_override=server.url, **kwargs)
    broker.start()
    return broker


def posts(server) -> list[str]:
    """The client_order_id of every order POSTed to the server, in order."""
    return [r.body["client_order_id"] for r in server.requests_to(ORDERS) if r.method == "POST"]


def by_hand(server, symbol, qty, side="buy"):
    """An order placed in Alpaca's dashboard: no agent's client_order_id, filled at once."""
    return server.fill(server.place(symbol, side, qty)["id"])


def actions(frame):
    return [a for x in frame.actions for a in json.loads(x)]


# --- restart ------------------------------------------------------------------------------------------------


def alpaca_env(server, monkeypatch) -> dict:
    """The local server's keys and URL in this process's environment (where the broker reads them)."""
    env = {**server.environ, "APCA_API_BASE_URL": server.url}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def kill_at_checkpoint(state, env, log, bars_written, orders, server, first=0, last=scenario.FIRST_RUN_BARS):
    """Run the scenario's pod in a process of its own on live bars ``first``..``last``-1 and SIGKILL it once
    the checkpoint has ``bars_written`` bars and the account ``orders`` orders: a pod dying."""
    with open(log, "ab") as out:
        child = subprocess.Popen([sys.executable, "-m", "tests.integration.resting_orders_run", str(state),
                                  str(first), str(last)],
                                 cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        eventually(lambda: child.poll() is not None or len(server.orders) == orders and
                   (saved := checkpoint.load(state)) is not None and saved.bars_written == bars_written, 60,
                   f"{orders} orders and the checkpoint at bar {bars_written}")
        assert child.poll() is None, log.read_text()[-3000:]
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)    # no flush, no goodbye
        child.wait(10)
    return checkpoint.load(state)


def check_every_fill_once(server, run_id, placed):
    """The restarted run's FMEL, orders and account after it closed what it held."""
    records = fk.fmel.load(run_id)
    assert list(records.bar_number) == list(range(70)) and records.record_id.is_unique
    # No order went to Alpaca twice: the restarted broker found them by their ids, and placed only the close.
    assert posts(server)[:len(placed)] == placed and posts(server)[len(placed):] == [client_order_id(run_id, 17)]
    # Every fill reached FMEL exactly once: the one before the kill, the fifteen during downtimes, the close.
    fills = [(a["side"], a["filled_size"]) for a in actions(records) if a["filled_size"]]
    assert sorted(fills) == sorted([("buy", 500.0)] + [("buy", 100.0)] * 15 + [("sell", -2000.0)])
    # The strategy's position was the account's when it decided to close: it closed all 2000, and the account
    # is flat. (The close's own fill reaches FMEL on the next bar.)
    at_close = json.loads(records[records.bar_number == 30 + scenario.CLOSE_AT].iloc[0].strategy_state)
    assert at_close["positions"]["AAPL"] == 2000 and at_close["tracked"]["position"] == 2000
    assert "AAPL" not in server.positions
    assert json.loads(records.iloc[-1].strategy_state)["cash"] == pytest.approx(server.cash_now())
    events = [e for x in records.market_state for e in json.loads(x).get("events", [])]
    assert any(e["event"] == "reconciled" for e in events)
    return records


def test_orders_resting_at_a_sigkill_and_filled_while_down_are_seen_after_the_restart(farm_home, server, tmp_path,
                                                                                        monkeypatch):
    state = tmp_path / "state"
    env = {**os.environ, **alpaca_env(server, monkeypatch), "PYTHONPATH": str(REPO)}
    # Orders 1-15 on checkpointed bars, 16 on a bar only the inbox holds: then the pod dies.
    saved = kill_at_checkpoint(state, env, tmp_path / "pod.log", 50, 16, server)
    run_id = saved.run_id
    assert saved.orders_placed == 15 and saved.positions == {"AAPL": [500.0, 100.0]}
    assert [o["client_order_id"] for o in saved.open_orders] == [client_order_id(run_id, n) for n in range(2, 16)]
    assert all(o["filled"] == 0 for o in saved.open_orders)

    # While the pod is down every resting order fills: the account now holds 2000, the checkpoint says 500.
    resting = server.open_orders(prefix=f"{run_id}-")
    assert len(resting) == 15
    for order in resting:
        server.fill(order["id"], price=90.0)
    assert server.positions["AAPL"]["qty"] == 2000
    placed = posts(server)
    assert sorted(placed) == sorted(client_order_id(run_id, n) for n in range(1, 17))

    res = scenario.run(state, scenario.LIVE.iloc[20:40], max_bars=20, duration=60)
    assert res.run_id == run_id
    check_every_fill_once(server, run_id, placed)


def test_orders_restored_after_one_kill_survive_the_next(farm_home, server, tmp_path, monkeypatch):
    state = tmp_path / "state"
    env = {**os.environ, **alpaca_env(server, monkeypatch), "PYTHONPATH": str(REPO)}
    run_id = kill_at_checkpoint(state, env, tmp_path / "pod.log", 50, 16, server).run_id
    resting = server.open_orders(prefix=f"{run_id}-")
    for order in resting[:7]:                       # the first downtime fills half of them
        server.fill(order["id"], price=90.0)

    # The second pod restores the rest, adopts order 16 on the bar it decides again, and dies at bar 60.
    saved = kill_at_checkpoint(state, env, tmp_path / "pod.log", 60, 16, server, first=20, last=30)
    assert saved.positions == {"AAPL": [1200.0, saved.positions["AAPL"][1]]}
    assert sorted(o["client_order_id"] for o in saved.open_orders) == sorted(
        client_order_id(run_id, n) for n in range(9, 17))
    assert all(o["filled"] == 0 for o in saved.open_orders)
    for order in server.open_orders(prefix=f"{run_id}-"):      # the second downtime fills the rest
        server.fill(order["id"], price=90.0)

    scenario.run(state, scenario.LIVE.iloc[30:40], max_bars=10, duration=60)
    check_every_fill_once(server, run_id, [client_order_id(run_id, n) for n in range(1, 17)])


def test_an_order_never_placed_again_counts_once_across_two_restarts(server):
    first = make_broker(server, "twice-1", cash=100_000.0)
    data = feed()
    first.buy(None, data, 10)
    first.buy(None, data, 7)                             # after the checkpoint; the restarted run never re-places it
    saved = Checkpoint(run_id="twice-1", agent_id="a", bars_written=5, cash=99_000.0,
                       positions={"AAPL": [10.0, 100.0]}, orders_placed=1)
    second = AlpacaPaperBroker.from_env("twice-1", environ=server.environ, url_override=server.url, cash=100_000.0)
    second.resume(saved)
    second.start()
    assert second.getposition(data).size == 17 and second.getcash() == pytest.approx(100_000 - 1_700)
    # Its next checkpoint: FMEL never heard of the 7, the broker's cash paid for them.
    again = Checkpoint(run_id="twice-1", agent_id="a", bars_written=9, cash=second.getcash(),
                       positions={"AAPL": [10.0, 100.0]}, orders_placed=second.orders_numbered)
    third = AlpacaPaperBroker.from_env("twice-1", environ=server.environ, url_override=server.url, cash=100_000.0)
    third.resume(again)
    third.start()
    assert third.getposition(data).size == 17 and third.getcash() == pytest.approx(100_000 - 1_700)


def test_a_kill_before_the_first_checkpoint_adopts_every_order_once(server):
    first = make_broker(server, "early-1", cash=100_000.0)
    data = feed()
    first.buy(None, data, 10)
    server.auto_fill = False
    first.buy(None, data, 5, exectype=bt.Order.Limit, price=95.0)
    saved = Checkpoint(run_id="early-1", agent_id="a", bars_written=0)     # what a run saves as it starts
    server.fill(server.open_orders("early-1-")[0]["id"], price=95.0)      # while down

    second = AlpacaPaperBroker.from_env("early-1", environ=server.environ, url_override=server.url,
                                        poll_interval=0.0, cash=100_000.0)
    second.resume(saved)
    second.start()
    assert second.getposition(data).size == 15 and second.getcash() == pytest.approx(100_000 - 1_000 - 475)
    # The bars are decided again from the inbox: the same orders, adopted, each fill told once.
    again = [second.buy(None, data, 10), second.buy(None, data, 5, exectype=bt.Order.Limit, price=95.0)]
    notes = drain(second)
    assert ("Completed", 10, 100.0) in notes and ("Completed", 5, 95.0) in notes
    assert [o.status for o in again] == [bt.Order.Completed] * 2 and second.getposition(data).size == 15
    assert posts(server) == ["early-1-1", "early-1-2"]


def test_a_resumed_broker_reports_each_fill_since_the_checkpoint_once_partial_fills_included(server):
    server.auto_fill = False
    first = make_broker(server, "resume-1", cash=100_000.0)
    data = feed()
    orders = [first.buy(None, data, 10, exectype=bt.Order.Limit, price=95.0),
              first.buy(None, data, 20, exectype=bt.Order.Limit, price=94.0)]
    server.fill(orders[0].info["alpaca_id"], 4, 95.0)
    drain(first)
    # The checkpoint as farmkit.live.resume.Snapshots writes it, at this moment.
    saved = Checkpoint(run_id="resume-1", agent_id="a", bars_written=10, cash=first.getcash(),
                       positions={"AAPL": [4.0, 95.0]}, orders_placed=2, open_orders=[
                           {"ref": o.ref, "symbol": "AAPL", "side": "buy", "size": o.size, "exectype": "limit",
                            "price": o.price, "client_order_id": o.info["client_order_id"],
                            "filled": abs(o.executed.size), "filled_price": o.executed.price} for o in orders])
    # Down: the first order completes at 96, the second fills 5 at 94.
    server.fill(orders[0].info["alpaca_id"], 6, 96.0)
    server.fill(orders[1].info["alpaca_id"], 5, 94.0)

    second = AlpacaPaperBroker.from_env("resume-1", environ=server.environ, url_override=server.url,
                                        poll_interval=0.0, cash=100_000.0)
    second.resume(saved)
    second.start()
    assert second.getposition(data).size == 4          # as at the checkpoint, until its orders are restored
    strategy = SimpleNamespace(datas=[data])            # what restore_orders reads of the strategy
    second.restore_orders(strategy, saved.open_orders)
    notes = drain(second)
    assert sorted(notes) == sorted([("Accepted", 0, 0), ("Accepted", 0, 0), ("Completed", 6, 96.0),
                                    ("Partial", 5, 94.0)])
    assert second.getposition(data).size == 15
    assert second.getcash() == pytest.approx(100_000 - 4 * 95 - 6 * 96 - 5 * 94)
    assert drain(second) == []
    server.fill(orders[1].info["alpaca_id"], 15, 93.0)
    assert drain(second) == [("Completed", 20, 93.25)] and second.getposition(data).size == 30
    assert posts(server) == ["resume-1-1", "resume-1-2"]


def test_an_order_placed_after_the_checkpoint_is_adopted_or_kept_when_the_strategy_decides_otherwise(server):
    first = make_broker(server, "resume-2", cash=100_000.0)
    data, other = feed(), feed("MSFT", 400.0)
    first.buy(None, data, 10)                            # on a checkpointed bar
    first.buy(None, data, 7)                             # after the checkpoint: placed, never recorded
    saved = Checkpoint(run_id="resume-2", agent_id="a", bars_written=5, cash=100_000.0 - 1_000,
                       positions={"AAPL": [10.0, 100.0]}, orders_placed=1)

    second = AlpacaPaperBroker.from_env("resume-2", environ=server.environ, url_override=server.url,
                                        poll_interval=0.0, cash=100_000.0)
    second.resume(saved)
    second.start()
    second.restore_orders(SimpleNamespace(datas=[data, other]), [])    # the end of the warm-up replay
    assert second.getposition(data).size == 17          # the account's, fills after the checkpoint included
    # Decided differently after the restart: MSFT, not AAPL. It gets a number of its own; nothing is refused.
    order = second.buy(None, other, 2)
    assert order.status == order.Completed and order.info["client_order_id"] == "resume-2-3"
    notes = drain(second)
    assert ("Completed", 7, 100.0) in notes             # the earlier order's fill reaches backtrader once
    assert second.getposition(data).size == 17 and second.getposition(other).size == 2
    assert posts(server) == ["resume-2-1", "resume-2-2", "resume-2-3"]


# --- virtual sub-accounts -----------------------------------------------------------------------------------


def test_three_agents_on_one_account_see_only_their_own_and_sum_to_the_account(server):
    alpha, beta, gamma = (make_broker(server, name, cash=10_000.0) for name in ("alpha-1", "beta-1", "gamma-1"))
    data = feed()
    alpha.buy(None, data, 30)                                    # 30 at 100
    server.prices["AAPL"] = 110.0
    beta.buy(None, data, 20)                                     # 20 at 110
    gamma.sell(None, data, 10)                                   # gamma goes short: its own decision
    server.auto_fill = False
    resting = beta.sell(None, data, 5, exectype=bt.Order.Limit, price=111.0)
    server.fill(resting.info["alpaca_id"], price=111.0)          # fills while the others poll too
    for broker in (alpha, beta, gamma):
        drain(broker)

    sizes = [b.getposition(data).size for b in (alpha, beta, gamma)]
    assert sizes == [30, 15, -10] and sum(sizes) == server.positions["AAPL"]["qty"] == 35
    assert [b.getcash() for b in (alpha, beta, gamma)] == pytest.approx(
        [10_000 - 3_000, 10_000 - 2_200 + 555, 10_000 + 1_100])
    assert [b.getvalue() for b in (alpha, beta, gamma)] == pytest.approx(   # marked at the feed's close, 100
        [10_000, 8_355 + 1_500, 11_100 - 1_000])
    # Their PnL adds up to the account's.
    account_pnl = server.cash_now() + 35 * 100.0 - server.cash
    assert sum(b.getvalue() - 10_000 for b in (alpha, beta, gamma)) == pytest.approx(account_pnl)

    # Restarted, each agent finds its own again, by its client_order_ids.
    again = [make_broker(server, name, cash=10_000.0) for name in ("alpha-1", "beta-1", "gamma-1")]
    assert [b.getposition(data).size for b in again] == [30, 15, -10]
    assert [b.getcash() for b in again] == pytest.approx([b.getcash() for b in (alpha, beta, gamma)])


def test_an_order_in_a_symbol_the_account_holds_for_no_agent_is_refused_with_the_reason(server):
    alpha = make_broker(server, "alpha-2", cash=10_000.0)
    events = []
    alpha.on_event = lambda symbol, kind, detail: events.append((symbol, kind, detail))
    data, other = feed(), feed("MSFT", 400.0)
    alpha.buy(None, data, 5)
    by_hand(server, "AAPL", 7)                                   # someone trades the account by hand

    order = alpha.buy(None, data, 5)
    assert order.status == order.Rejected
    assert "belong to no agent" in order.info["error"] and "12" in order.info["error"]
    assert drain(alpha)[-1] == ("Rejected", 0, 0)
    assert [(s, k) for s, k, _ in events] == [("AAPL", "order_refused")] and order.info["error"] in events[0][2]
    assert alpha.getposition(data).size == 5                     # the hand-placed 7 are not the agent's
    assert alpha.buy(None, other, 1).status == bt.Order.Completed   # other symbols trade on
    assert posts(server) == ["alpha-2-1", "alpha-2-3"]


def test_closing_a_long_that_would_take_the_account_net_short_is_refused(server):
    alpha, beta = make_broker(server, "alpha-3", cash=10_000.0), make_broker(server, "beta-3", cash=10_000.0)
    data = feed()
    alpha.buy(None, data, 30)
    beta.sell(None, data, 50)                                    # the account is net short 20
    close = alpha.sell(None, data, 30)
    assert close.status == close.Rejected and "short sale" in close.info["error"]
    assert server.positions["AAPL"]["qty"] == -20
    beta.buy(None, data, 50)                                     # beta covers: the account holds alpha's 30
    assert alpha.sell(None, data, 30).status == bt.Order.Completed
    assert "AAPL" not in server.positions
    assert [b.getposition(data).size for b in (alpha, beta)] == [0, 0]


def test_crypto_positions_are_matched_though_alpaca_names_them_without_the_slash(server):
    server.prices["BTC/USD"] = 60_000.0
    alpha, beta = make_broker(server, "alpha-4", cash=100_000.0), make_broker(server, "beta-4", cash=100_000.0)
    coin = feed("BTC/USD", 60_000.0)
    assert alpha.buy(None, coin, 0.5).status == bt.Order.Completed
    assert alpha.buy(None, coin, 0.25).status == bt.Order.Completed     # the account's BTCUSD is alpha's
    assert beta.buy(None, coin, 0.2).status == bt.Order.Completed       # and now alpha's and beta's
    assert [b.getposition(coin).size for b in (alpha, beta)] == pytest.approx([0.75, 0.2])


def test_a_refusal_reaches_fmel_and_the_run_goes_on(farm_home, server, monkeypatch):
    by_hand(server, "AAPL", 7)
    alpaca_env(server, monkeypatch)
    res = scenario.run(None, scenario.LIVE.iloc[:3], max_bars=33, duration=30)
    records = fk.fmel.load(res.run_id)
    assert list(records.bar_number) == list(range(33))
    # The three live bars each decided a buy; each was refused and said why on its bar, and the run went on.
    # (Order events reach FMEL with the next bar's notifications: the last bar's come after the run stopped.)
    decided = [d for x in records.decisions for d in json.loads(x) if d["action"] == "buy"]
    refused = [(n, e) for n, x in zip(records.bar_number, records.market_state)
               for e in json.loads(x).get("events", []) if e["event"] == "order_refused"]
    assert len(decided) == 3 and [n for n, _ in refused] == [30, 31, 32]
    assert all(e["symbol"] == "AAPL" and "belong to no agent" in e["detail"] for _, e in refused)
    events = [a["event"] for a in actions(records)]
    assert events == ["submitted", "rejected"] * 2
    assert posts(server) == []                                   # nothing reached the account
