import pandas as pd

from farmkit.model import Bar
from ingester.sequencer import BarSequencer, GapRequest
from ingester.watchdog import MarketClock, Watchdog, is_stale

T = pd.Timestamp("2024-01-02 14:30", tz="UTC")
M = pd.Timedelta(minutes=1)


def bar(minute, symbol="AAPL", revision=0, source="alpaca_stock"):
    return Bar(symbol, T + minute * M, 10, 11, 9, 10, 100, source=source, revision=revision)


def test_stale_only_when_connected_market_open_and_silent_too_long():
    assert is_stale(100.0, 50.0, 10.0, True, 30.0)
    assert not is_stale(100.0, 80.0, 10.0, True, 30.0)
    assert not is_stale(100.0, 50.0, 10.0, False, 30.0)          # market closed: silence is normal
    assert not is_stale(100.0, 50.0, None, True, 30.0)           # not connected: alpaca-py reconnects itself
    assert not is_stale(100.0, 50.0, 90.0, True, 30.0)           # a fresh connection gets the full limit
    assert is_stale(100.0, None, 60.0, True, 30.0)               # connected, never a message


def test_market_clock_is_cached_and_crypto_always_open():
    asked, now = [], [0.0]
    clock = MarketClock(lambda: asked.append(1) or False, ttl=60, clock=lambda: now[0])
    assert clock.is_open("crypto") and not clock.is_open("stocks") and not clock.is_open("stocks")
    assert len(asked) == 1
    now[0] = 61
    clock.is_open("stocks")
    assert len(asked) == 2


def test_market_clock_failure_counts_as_open():
    def broken():
        raise OSError("unreachable")
    assert MarketClock(broken).is_open("stocks")


class FakeConn:
    feed, name = "stocks", "stocks:iex"

    def __init__(self, last, connected):
        self.last_message_at, self.connected_at, self.reasons = last, connected, []

    def reconnect(self, reason):
        self.reasons.append(reason)


def test_watchdog_reconnects_stale_connections():
    stale, fresh = FakeConn(0.0, 0.0), FakeConn(95.0, 0.0)
    dog = Watchdog([stale, fresh], MarketClock(lambda: True), limit=30)
    assert dog.check(now=100.0) == ["stocks:iex"] and len(stale.reasons) == 1 and fresh.reasons == []
    closed = Watchdog([FakeConn(0.0, 0.0)], MarketClock(lambda: False), limit=30)
    assert closed.check(now=100.0) == []


def test_sequencer_holds_a_gap_until_the_backfill_then_keeps_order():
    seq = BarSequencer()
    assert seq.live(bar(0), 0)[0] == [bar(0)]
    out, gap, what = seq.live(bar(3), 0)
    assert (out, what) == ([], "gap") and gap == GapRequest("AAPL", T + M, T + 2 * M)
    assert seq.live(bar(4), 0)[2] == "held" and seq.live(bar(3, revision=1), 0)[2] == "held"
    assert seq.live(bar(0, "MSFT"), 0)[0] == [bar(0, "MSFT")]      # other symbols flow on
    released = seq.filled("AAPL", [bar(2, source="backfill"), bar(1, source="backfill"), bar(3, source="backfill")])
    assert [(b.timestamp, b.source, b.revision) for b in released] == [
        (T + M, "backfill", 0), (T + 2 * M, "backfill", 0), (T + 3 * M, "backfill", 0),
        (T + 4 * M, "alpaca_stock", 0), (T + 3 * M, "alpaca_stock", 1)]
    assert seq.live(bar(4), 0)[2] == "duplicate" and seq.live(bar(5), 0)[2] == "published"


def test_sequencer_tail_backfill_after_a_reconnect_and_failure_releases():
    seq = BarSequencer()
    seq.live(bar(0), 0.0)
    seq.reconnected(10.0)
    assert seq.due(50.0, 90.0) == []
    assert seq.due(100.0, 90.0) == [GapRequest("AAPL", T + M, None)]
    assert seq.live(bar(5), 101.0)[2] == "held"
    assert seq.failed("AAPL") == [bar(5)] and seq.holding == 0


def test_without_backfill_gaps_pass_through():
    seq = BarSequencer(backfill=False)
    seq.live(bar(0), 0)
    assert seq.live(bar(5), 0) == ([bar(5)], None, "published")
