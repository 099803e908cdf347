"""Bounded bus input: whatever arrives on the market-data topic, the router answers with one of its
outcomes, counts it, and never lets a bad message change what happens to the good ones."""

import json
import logging

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from farmkit.live.router import OUTCOMES, BarRouter
from farmkit.model import Bar, MalformedMessage, parse_message

NOW = pd.Timestamp("2025-01-15 15:00", tz="UTC")


class Feed:
    takes_ack = False

    def __init__(self):
        self.bars = []

    def put(self, bar, ack=None):
        self.bars.append(bar)

    def stop_feed(self):
        pass


def router(**kwargs):
    events = []
    feeds = {"AAPL": Feed(), "MSFT": Feed()}
    r = BarRouter(feeds, on_event=lambda *e: events.append(e), clock=lambda: NOW.timestamp(), **kwargs)
    return r, feeds, events


def wire(**changes):
    body = {"type": "bar", "symbol": "AAPL", "timestamp": "2025-01-15T14:30:00Z", "open": 100.0, "high": 101.0,
            "low": 99.5, "close": 100.5, "volume": 1000, "source": "test"}
    body.update(changes)
    return json.dumps(body).encode()


def minute(i):
    return (pd.Timestamp("2025-01-15 14:00", tz="UTC") + pd.Timedelta(minutes=i)).isoformat().replace("+00:00", "Z")


def test_a_bar_from_the_future_is_rejected_and_does_not_make_the_real_bars_late():
    r, feeds, events = router()
    assert r.route(wire(timestamp="2099-01-01T00:00:00Z")) == "malformed"
    outcomes = [r.route(wire(timestamp=minute(i))) for i in range(59)]
    assert outcomes == ["routed"] * 59
    assert len(feeds["AAPL"].bars) == 59
    assert r.counts == {"malformed": 1, "routed": 59}
    assert events[0][:2] == ("AAPL", "malformed") and "future" in events[0][2]


def test_the_future_tolerance_is_a_setting():
    r, _, _ = router(max_future=3600)
    assert r.route(wire(timestamp="2025-01-15T15:30:00Z")) == "routed"
    r, _, _ = router(max_future=60)
    assert r.route(wire(timestamp="2025-01-15T15:30:00Z")) == "malformed"


@pytest.mark.parametrize("changes, why", [
    (dict(open=1e308, high=1e308, close=1e308), "price"),
    (dict(volume=1e300), "volume"),
    (dict(timestamp="2025-01-15T14:30:30Z"), "grid"),
    (dict(high=99.0, low=100.0), "high"),
    (dict(close=float("nan")), "not"),
])
def test_absurd_bars_are_malformed(changes, why):
    r, feeds, events = router(bar_seconds=60)
    data = wire(**changes) if "nan" not in str(changes) else wire().replace(b'"close": 100.5', b'"close": NaN')
    assert r.route(data) == "malformed"
    assert feeds["AAPL"].bars == []
    assert why in events[-1][2]
    assert r.route(wire()) == "routed"      # and the next good bar goes through


@pytest.mark.parametrize("data", [
    b'{"type": "bar", "open": ' + b"9" * 5000 + b"}",      # int() refuses more than 4300 digits
    wire(open=10 ** 400, high=10 ** 400),                    # an int too big for a float
    b"[" * 100_000 + b"]" * 100_000,                         # nesting deeper than the parser's recursion
    b'{"a": ' * 50_000 + b"1" + b"}" * 50_000,
])
def test_messages_that_break_the_parser_are_malformed_not_raised(data):
    with pytest.raises(MalformedMessage):
        parse_message(data)
    r, _, events = router()
    assert r.route(data) == "malformed"
    assert r.counts == {"malformed": 1}


def test_an_unexpected_error_is_counted_acked_and_logged_honestly(caplog):
    class Broken(Feed):
        def put(self, bar, ack=None):
            raise RuntimeError("feed exploded")

    acked = []
    r = BarRouter({"AAPL": Broken()}, clock=lambda: NOW.timestamp())

    class Message:
        data, attributes = wire(), {}

        def ack(self):
            acked.append(True)

    with caplog.at_level(logging.ERROR):
        r.on_message(Message())
    assert acked == [True]
    assert r.counts == {"failed": 1}
    assert "acked, not redelivered" in caplog.text and "feed exploded" in caplog.text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30)
bar_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["bar", "news", "trade", 1]), "symbol": st.sampled_from(["AAPL", "MSFT", "", 3]),
     "timestamp": st.one_of(st.datetimes().map(lambda d: d.isoformat() + "Z"), st.text(max_size=30), json_values)},
    optional={name: st.one_of(st.floats(), st.integers(), json_values)
              for name in ("open", "high", "low", "close", "volume", "revision")})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()),
                          bar_like.map(lambda v: json.dumps(v).encode()),
                          st.integers(0, 119).map(lambda i: wire(timestamp=minute(i)))), max_size=20),
       st.dictionaries(st.sampled_from(["type", "symbol", "x"]), st.text(max_size=8), max_size=3))
def test_the_router_answers_every_message_with_an_outcome(messages, attributes):
    r, feeds, _ = router()
    outcomes = [r.route(m, attributes) for m in messages]
    assert set(outcomes) <= set(OUTCOMES)
    assert sum(r.counts.values()) == len(messages)
    for feed in feeds.values():     # whatever reached a feed is a valid bar, in time order, once each
        stamps = [b.timestamp for b in feed.bars]
        assert all(isinstance(b, Bar) for b in feed.bars)
        assert stamps == sorted(set(stamps))
        assert all(b.timestamp <= NOW + pd.Timedelta(minutes=5) for b in feed.bars)
