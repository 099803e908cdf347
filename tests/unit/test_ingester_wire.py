import msgpack
import pandas as pd
import pytest

from farmkit.model import Bar, MalformedMessage, parse_message
from ingester.wire import Revisions, rest_bar, rest_news, stream_bar, stream_trade

T = pd.Timestamp("2025-01-15 14:30", tz="UTC")
MSG = {"T": "b", "S": "AAPL", "o": 150.25, "h": 151.0, "l": 150.1, "c": 150.75, "v": 1000000, "n": 10, "vw": None,
       "t": msgpack.Timestamp.from_unix_nano(T.value)}


def test_stream_bar_is_the_documented_wire_form():
    bar = stream_bar(MSG, "alpaca_stock")
    assert bar.to_wire() == (b'{"type": "bar", "symbol": "AAPL", "timestamp": "2025-01-15T14:30:00Z", "open": 150.25, '
                             b'"high": 151.0, "low": 150.1, "close": 150.75, "volume": 1000000, "source": "alpaca_stock"}')
    assert bar.attributes() == {"type": "bar", "symbol": "AAPL"}
    assert parse_message(bar.to_wire(), bar.attributes()) == bar


def test_updated_bars_carry_a_revision_per_minute():
    revisions = Revisions()
    assert [revisions.next("AAPL", T), revisions.next("AAPL", T), revisions.next("MSFT", T)] == [1, 2, 1]
    bar = stream_bar({**MSG, "T": "u"}, "alpaca_stock", revision=2)
    assert b'"revision": 2' in bar.to_wire() and parse_message(bar.to_wire()).revision == 2


@pytest.mark.parametrize("change, reason", [
    ({"t": "2025-01-15T14:30:00Z"}, "string"), ({"o": None}, "not a number"), ({"h": 1.0}, "high"),
])
def test_malformed_stream_bars_say_why(change, reason):
    with pytest.raises(MalformedMessage, match=reason):
        stream_bar({**MSG, **change}, "alpaca_stock")
    with pytest.raises(MalformedMessage, match="no field 'c'"):
        stream_bar({k: v for k, v in MSG.items() if k != "c"}, "alpaca_stock")


def test_rest_bars_are_marked_backfill_and_news_parse():
    bar = rest_bar("AAPL", {"t": "2025-01-15T14:31:00Z", "o": 1, "h": 2, "l": 1, "c": 2, "v": 5})
    assert bar == Bar("AAPL", T + pd.Timedelta(minutes=1), 1, 2, 1, 2, 5, source="backfill")
    news = rest_news({"id": 7, "headline": "x", "symbols": ["AAPL"], "created_at": "2025-01-15T14:00:00Z",
                      "updated_at": "2025-01-15T14:05:00Z", "url": "u", "content": ""})
    assert parse_message(news.to_wire(), news.attributes()) == news and news.source == "alpaca_news"


def test_trades_have_their_own_type():
    trade = stream_trade({"T": "t", "S": "AAPL", "p": 1.5, "s": 100, "i": 9, "x": "V", "c": ["@"], "z": "C",
                          "t": MSG["t"]}, "alpaca_stock")
    assert trade.attributes()["type"] == "trade" and b'"price": 1.5' in trade.to_wire()
