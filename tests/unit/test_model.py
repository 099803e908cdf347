"""Wire form of bars and news: round trips, the documented JSON, and every way a message can be malformed."""

import dataclasses
import json

import pandas as pd
import pytest

from farmkit.errors import DataError, FarmError
from farmkit.model import Bar, MalformedMessage, NewsItem, parse_message

T = pd.Timestamp("2025-01-15 14:30", tz="UTC")
BAR = Bar("AAPL", T, 150.25, 151.0, 150.1, 150.75, 1_000_000, source="alpaca_stock")
NEWS = NewsItem(24843171, "Apple beats", "Summary.", ("AAPL", "MSFT"), T, T + pd.Timedelta("5min"),
                "https://example.com/a", "alpaca_news")
GOOD_BAR = {"type": "bar", "symbol": "AAPL", "timestamp": "2025-01-15T14:30:00Z", "open": 150.25,
            "high": 151.0, "low": 150.1, "close": 150.75, "volume": 1000000, "source": "alpaca_stock"}
DROP = object()  # a field to leave out of the message


def wire(**changes) -> bytes:
    body = {**GOOD_BAR, **changes}
    return json.dumps({k: v for k, v in body.items() if v is not DROP}).encode()



def test_bar_wire_form_is_the_documented_one():
    assert json.loads(BAR.to_wire()) == GOOD_BAR
    assert BAR.to_wire().decode().startswith('{"type": "bar", "symbol": "AAPL", "timestamp": "2025-01-15T14:30:00Z"')
    assert BAR.attributes() == {"type": "bar", "symbol": "AAPL"}


@pytest.mark.parametrize("record", [
    BAR,
    Bar("BTC/USD", T + pd.Timedelta("1s"), 1.5, 2.5, 0.5, 2.0, 0.125, revision=2),
    Bar("X", pd.Timestamp("2025-01-15 14:30:00.123456", tz="UTC"), 1, 1, 1, 1, 0),
    NEWS,
    NewsItem("abc", "h", "", (), T, T, "", ""),
])
def test_round_trip(record):
    assert parse_message(record.to_wire(), record.attributes()) == record


def test_timestamps_are_normalised_to_utc():
    bar = Bar("AAPL", pd.Timestamp("2025-01-15 09:30", tz="America/New_York"), 1, 1, 1, 1, 1)
    assert bar.timestamp == T and str(bar.timestamp.tz) == "UTC"
    assert json.loads(bar.to_wire())["timestamp"] == "2025-01-15T14:30:00Z"
    assert parse_message(wire(timestamp="2025-01-15T09:30:00-05:00")).timestamp == T


def test_news_wire_form_and_defaults():
    body = json.loads(NEWS.to_wire())
    assert body == {"type": "news", "id": 24843171, "headline": "Apple beats", "summary": "Summary.",
                    "symbols": ["AAPL", "MSFT"], "created_at": "2025-01-15T14:30:00Z",
                    "updated_at": "2025-01-15T14:35:00Z", "url": "https://example.com/a", "source": "alpaca_news"}
    assert NEWS.attributes() == {"type": "news", "symbol": "AAPL,MSFT"}
    minimal = parse_message(json.dumps({"type": "news", "id": 1, "headline": "h", "symbols": [],
                                        "created_at": "2025-01-15T14:30:00Z"}).encode())
    assert minimal.updated_at == minimal.created_at == T and minimal.url == minimal.summary == ""


def test_unknown_fields_are_ignored_and_revision_is_read():
    bar = parse_message(wire(vwap=150.5, revision=3))
    assert bar.revision == 3 and bar.close == 150.75


MALFORMED = [  # (data, attributes, words the reason must contain)
    (b"\xff\xfe{", {}, "not UTF-8"),
    (b"{not json", {}, "not JSON"),
    (b"[1, 2]", {}, "not an object"),
    (b'{"type": "trade"}', {}, "unknown type 'trade'; known: bar, news"),
    (b'{"symbol": "AAPL"}', {}, "unknown type None"),
    (wire(close=DROP), {}, "no field 'close'"),
    (wire(timestamp=DROP), {}, "no field 'timestamp'"),
    (wire(symbol=DROP), {}, "no field 'symbol'"),
    (wire(open="150.25"), {}, "'open' is not a number"),
    (wire(volume=None), {}, "'volume' is not a number"),
    (wire(high=True), {}, "'high' is not a number"),
    (wire(low=float("nan")), {}, "'low' is not finite"),
    (wire(high=float("inf")), {}, "'high' is not finite"),
    (wire(open=-1.0), {}, "open must be > 0"),
    (wire(open=0), {}, "open must be > 0"),
    (wire(volume=-5), {}, "volume must be >= 0"),
    (wire(high=150.0, low=150.1), {}, "high 150.0 < low 150.1"),
    (wire(open=152.0), {}, "open 152.0 is outside [low 150.1, high 151.0]"),
    (wire(close=150.0), {}, "close 150.0 is outside"),
    (wire(timestamp="yesterday"), {}, "'timestamp' is not an ISO 8601 timestamp"),
    (wire(timestamp="2025-01-15T14:30:00"), {}, "has no time zone"),
    (wire(timestamp=1736951400), {}, "'timestamp' is not an ISO 8601 string"),
    (wire(timestamp="2025-13-45T14:30:00Z"), {}, "not an ISO 8601 timestamp"),
    (wire(symbol=7), {}, "'symbol' is not a string"),
    (wire(symbol=""), {}, "symbol is empty"),
    (wire(revision=-1), {}, "'revision' is not a non-negative integer"),
    (wire(), {"type": "news"}, "attribute type='news' but the body says 'bar'"),
    (wire(), {"symbol": "MSFT"}, "attribute symbol='MSFT' but the body says 'AAPL'"),
    (b'{"type": "news", "id": 1, "headline": "h", "symbols": "AAPL", "created_at": "2025-01-15T14:30:00Z"}',
     {}, "'symbols' is not a list of strings"),
    (b'{"type": "news", "id": 1, "symbols": [], "created_at": "2025-01-15T14:30:00Z"}', {}, "no field 'headline'"),
    (b'{"type": "news", "id": true, "headline": "h", "symbols": [], "created_at": "2025-01-15T14:30:00Z"}',
     {}, "'id' is not an integer"),
    (b'{"type": "news", "id": 1, "headline": "h", "symbols": [], "created_at": "soon"}', {}, "'created_at'"),
]


@pytest.mark.parametrize("data, attributes, reason", MALFORMED, ids=[m[2][:40] for m in MALFORMED])
def test_malformed_messages_say_why(data, attributes, reason):
    with pytest.raises(MalformedMessage) as caught:
        parse_message(data, attributes)
    assert reason in caught.value.reason
    assert isinstance(caught.value, FarmError) and str(caught.value).startswith("malformed message: ")


def test_parse_rejects_non_bytes():
    with pytest.raises(MalformedMessage, match="not bytes"):
        parse_message(None, {})


def test_invalid_bars_cannot_be_built():
    with pytest.raises(DataError, match="high 1.0 < low 2.0"):
        Bar("AAPL", T, 1.5, 1, 2, 1.5, 10)
    with pytest.raises(DataError, match="volume is not a number"):
        Bar("AAPL", T, 1, 1, 1, 1, "lots")
    with pytest.raises(dataclasses.FrozenInstanceError):
        BAR.close = 1.0
